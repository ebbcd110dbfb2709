import Testing
import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD
@testable import Simulation

/// A machine with one VT-d unit, a simulated VMM process and one iommufd context; helpers
/// build each command's struct at its uAPI offsets and go through the ioctl entry.
final class IOMMUFDRig {
    let machine: Machine
    let process: Process
    let ctx: IOMMUFDContext
    var core: IOMMUCore { machine.core }

    /// `smmuv3`: one SMMUv3 unit instead of the VT-d unit.
    init(memory: UInt64 = 64 << 20, ledger: PinLedger = PinLedger(), smmuv3: Bool = false) throws {
        machine = try Machine(seed: 1, memorySize: memory,
                              unitConfigurations: [smmuv3 ? .smmuv3(SMMUv3Configuration(name: "smmu0")) : .vtd(VTdConfiguration(name: "dmar0"))],
                              policy: .strict)
        process = try machine.core.createProcess()
        ctx = IOMMUFDContext(core: machine.core, memory: process, ledger: ledger)
    }

    @discardableResult
    func addDevice(_ name: String, dev: UInt8, group: String? = nil, pasids: UInt32 = 0, ats: Bool = false, pri: Bool = false) throws -> (Device, PCIeEndpoint) {
        try machine.addDevices([DeviceDescription(name: name, requesterID: RequesterID(bus: 0, device: dev, function: 0), unit: 0,
                                                  groupKey: group, maxPASIDs: pasids, ats: ats, pri: pri)])[0]
    }

    /// Runs a command and returns (rc, the struct after the call).
    @discardableResult
    func run(_ c: IOMMUFDCommand, size: Int? = nil, _ fill: (inout StructBytes) -> Void = { _ in }) -> (rc: Int32, out: StructBytes) {
        var s = StructBytes(size: size ?? c.size)
        fill(&s)
        let rc = ctx.ioctl(c.number, &s.bytes)
        return (rc, s)
    }

    func ioasAlloc() throws -> UInt32 {
        let (rc, out) = run(.ioasAlloc)
        try #require(rc == 0, "IOAS_ALLOC: \(ctx.lastError.map { "\($0)" } ?? "")")
        return out.u32(8)
    }

    @discardableResult
    func map(_ ioas: UInt32, va: UInt64, length: UInt64, iova: UInt64? = nil, flags: UInt32 = UAPI.mapReadable | UAPI.mapWriteable) -> (rc: Int32, iova: UInt64) {
        let (rc, out) = run(.ioasMap) { s in
            s.set32(4, flags | (iova != nil ? UAPI.mapFixedIOVA : 0)); s.set32(8, ioas)
            s.set64(16, va); s.set64(24, length); s.set64(32, iova ?? 0)
        }
        return (rc, out.u64(32))
    }

    @discardableResult
    func unmap(_ ioas: UInt32, iova: UInt64, length: UInt64) -> (rc: Int32, length: UInt64) {
        let (rc, out) = run(.ioasUnmap) { s in s.set32(4, ioas); s.set64(8, iova); s.set64(16, length) }
        return (rc, out.u64(16))
    }

    func hwptAlloc(dev: UInt32, pt: UInt32, flags: UInt32 = 0, fault: UInt32? = nil) -> (rc: Int32, id: UInt32) {
        let (rc, out) = run(.hwptAlloc) { s in
            s.set32(4, flags | (fault != nil ? UAPI.hwptFaultIDValid : 0)); s.set32(8, dev); s.set32(12, pt); s.set32(40, fault ?? 0)
        }
        return (rc, out.u32(16))
    }

    /// Guest RAM: `length` bytes of the VMM's memory, touched so it is resident.
    func guestRAM(_ length: UInt64) throws -> UInt64 {
        let va = try process.mmap(length: length, permissions: .readWrite)
        return va
    }

    /// Guest RAM with every page resident (and the process's page tables for it built).
    func touchedRAM(_ length: UInt64) throws -> UInt64 {
        let va = try guestRAM(length)
        for p in stride(from: va, to: va + length, by: 4096) { process.fault(at: p, access: [.read, .write]) }
        return va
    }

    func dma(_ ep: PCIeEndpoint, write address: UInt64, value: UInt8 = 0x5A, pasid: PASID? = nil) -> PCIeEndpoint.Completion? {
        var done: PCIeEndpoint.Completion?
        ep.submit(.write(address, [UInt8](repeating: value, count: 64), pasid: pasid)) { done = $0 }
        try? machine.scheduler.wait(until: { done != nil }, timeoutNs: 1_000_000)
        return done
    }

    func read(va: UInt64, count: Int = 64) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        _ = out.withUnsafeMutableBytes { process.copyIn(from: va, into: $0) }
        return out
    }

    var errno: Int32 { ctx.lastError?.code ?? 0 }
}
