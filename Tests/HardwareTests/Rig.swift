import Platform
import Formats
@testable import Hardware

/// A unit with a test bench, one device, and helpers to build tables.
final class Rig {
    let platform: PlatformContext
    let unit: VTdUnit
    let bench: VTdTestBench
    let rid = RequesterID(bus: 0, device: 2, function: 0)

    init(configuration: VTdConfiguration = VTdConfiguration(), memory: UInt64 = 256 << 20, seed: UInt64 = 1,
         enable: Bool = true) throws {
        platform = try PlatformContext(memorySize: memory, seed: seed)
        unit = VTdUnit(configuration: configuration, platform: platform)
        bench = try VTdTestBench(platform: platform, unit: unit)
        if enable { try bench.enable() }
    }

    var memory: PhysicalMemory { platform.memory }

    func secondStage(levels: Int = 4, maxLeaf: Int = 3) throws -> IOPageTable<SecondStageFormat> {
        try IOPageTable<SecondStageFormat>(memory: memory, frames: platform.frames, levels: levels, maxLeafLevel: maxLeaf,
                                           addressWidth: unit.configuration.hostAddressWidth)
    }

    func firstStage(levels: Int = 4, maxLeaf: Int = 3) throws -> IOPageTable<FirstStageFormat> {
        try IOPageTable<FirstStageFormat>(memory: memory, frames: platform.frames, levels: levels, maxLeafLevel: maxLeaf,
                                          addressWidth: unit.configuration.hostAddressWidth)
    }

    /// Device `rid` → RID_PASID 0 → second-stage table with `did`.
    func attachSecondStage(_ table: IOPageTable<SecondStageFormat>, did: UInt16 = 5, pasid: UInt32 = 0, pdts: UInt8 = 0) throws {
        if bench.contextEntryAddress(rid) == 0 || ((try? memory.load64(bench.contextEntryAddress(rid))) ?? 0) & 1 == 0 {
            try bench.setContext(rid, pdts: pdts)
        }
        try bench.setPASIDEntry(rid, pasid: pasid, .make(pgtt: .secondStage, did: DomainID(did), secondStageTable: table.root,
                                                         secondStageLevels: table.levels))
    }

    func translate(_ address: UInt64, pasid: UInt32? = nil, _ access: DMAAccess = .read, rid: RequesterID? = nil) -> TranslationResult {
        unit.translate(source: rid ?? self.rid, pasid: pasid.map { PASID(truncating: $0) }, address: address, access: access)
    }

    func physical(_ address: UInt64, pasid: UInt32? = nil, _ access: DMAAccess = .read) -> UInt64? {
        if case .translated(let pa, _, _) = translate(address, pasid: pasid, access) { return pa }
        return nil
    }

    func fault(_ address: UInt64, pasid: UInt32? = nil, _ access: DMAAccess = .read) -> VTdFaultReason? {
        if case .fault(let r) = translate(address, pasid: pasid, access) { return r }
        return nil
    }

    /// Frame that is inside memory but was never backed.
    var unbackedFrame: UInt64 { memory.size - 4096 }
}
