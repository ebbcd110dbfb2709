import Platform
import Formats
@testable import Hardware

/// An SMMUv3 unit with its test bench, and helpers to attach streams.
final class SMMUv3Rig {
    let platform: PlatformContext
    let unit: SMMUv3Unit
    let bench: SMMUv3TestBench
    let sid: UInt32 = 0x10

    init(configuration: SMMUv3Configuration = SMMUv3Configuration(), memory: UInt64 = 256 << 20, seed: UInt64 = 1,
         twoLevel: Bool = false, streamTableLog2: UInt8? = nil, eventQueueLog2: UInt8 = 7, priQueueLog2: UInt8 = 8, enable: Bool = true) throws {
        platform = try PlatformContext(memorySize: memory, seed: seed)
        unit = SMMUv3Unit(configuration: configuration, platform: platform)
        bench = try SMMUv3TestBench(platform: platform, unit: unit, streamTableLog2: streamTableLog2 ?? (twoLevel ? 16 : 8), twoLevel: twoLevel,
                                    eventQueueLog2: eventQueueLog2, priQueueLog2: priQueueLog2)
        if enable { try bench.enable() }
    }

    var memory: PhysicalMemory { platform.memory }

    /// `sid` → a CD table with 2^`ssidBits` CDs, CD `ssid` translating through `table`.
    @discardableResult
    func attachStage1(_ table: IOPageTable<ArmStage1Format>, asid: UInt16 = 1, ssidBits: UInt8 = 0, ssid: UInt32 = 0,
                      stall: Bool = false, cd: ContextDescriptor? = nil, sid: UInt32? = nil) throws -> SMMUv3TestBench.CDTable {
        let cdt = try bench.makeCDTable(ssidBits: ssidBits)
        try bench.setCD(cdt, ssid: ssid, cd ?? .s1(asid: asid, ttb: table.root, stall: stall))
        try bench.setSTE(sid ?? self.sid, bench.stage1STE(cdt))
        return cdt
    }

    func attachStage2(_ table: IOPageTable<ArmStage2Format>, vmid: UInt16 = 3, stall: Bool = false, sid: UInt32? = nil) throws {
        try bench.setSTE(sid ?? self.sid, .s2Domain(vmid: vmid, translation: .granule4K(levels: table.levels, outputBits: 48),
                                                     ttb: table.root, stall: stall))
    }

    func translate(_ address: UInt64, _ access: DMAAccess = .read, ssid: UInt32? = nil, sid: UInt32? = nil) -> SMMUv3TranslationResult {
        unit.translate(streamID: sid ?? self.sid, substreamID: ssid, address: address, access: access)
    }

    func physical(_ address: UInt64, _ access: DMAAccess = .read, ssid: UInt32? = nil, sid: UInt32? = nil) -> UInt64? {
        if case .translated(let pa, _, _) = translate(address, access, ssid: ssid, sid: sid) { return pa }
        return nil
    }

    func fault(_ address: UInt64, _ access: DMAAccess = .read, ssid: UInt32? = nil, sid: UInt32? = nil) -> SMMUEventID? {
        if case .terminated(let e) = translate(address, access, ssid: ssid, sid: sid) { return e }
        return nil
    }

    func events() throws -> [SMMUEventRecord] { try bench.drainEvents().events }

    /// A frame inside memory that was never backed.
    var unbackedFrame: UInt64 { memory.size - 4096 }
}

/// An endpoint port that records what reaches it and answers ATC invalidations after
/// `atcDelayNs` (nil: never).
final class RecordingEndpoint: SMMUv3EndpointPort {
    let streamID: UInt32
    let scheduler: Scheduler
    var atcDelayNs: UInt64?
    var atcInvalidations: [(ssid: UInt32?, address: UInt64, size: UInt8)] = []
    var responses: [(ssid: UInt32?, group: UInt16, code: PageResponseCode)] = []
    var smmuLink: PCIeLink? { nil }

    init(streamID: UInt32, scheduler: Scheduler, atcDelayNs: UInt64? = 500) {
        self.streamID = streamID; self.scheduler = scheduler; self.atcDelayNs = atcDelayNs
    }

    func receiveATCInvalidation(ssid: UInt32?, global: Bool, address: UInt64, size: UInt8, completion: @escaping () -> Void) {
        atcInvalidations.append((ssid, address, size))
        guard let d = atcDelayNs else { return }
        scheduler.schedule(after: d, kind: .hardware, completion)
    }

    func receivePRIResponse(ssid: UInt32?, groupIndex: UInt16, response: PageResponseCode) {
        responses.append((ssid, groupIndex, response))
    }
}
