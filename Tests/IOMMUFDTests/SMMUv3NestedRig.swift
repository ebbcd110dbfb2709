import Testing
import Platform
import Formats
import Hardware
@testable import Kernel
import IOMMUFD
@testable import Simulation

/// A VMM with an SMMUv3 guest over iommufd: one SMMUv3 unit (S2FWB, so a vIOMMU is
/// possible), a device behind it, a nest-parent HWPT over an IOAS holding guest RAM (a
/// table region at GPA 0x4000_0000, a data region at GPA 0x4010_0000), the guest's CD
/// table (one CD, page 0 of the table region) and its stage 1 tables (pages 1–4), and a
/// scratch buffer for the structs passed by pointer.
final class ArmNestedVMM {
    let machine: Machine
    let process: Process
    let ctx: IOMMUFDContext
    let device: Device
    let ep: PCIeEndpoint
    private(set) var devID: UInt32 = 0
    private(set) var ioas: UInt32 = 0
    private(set) var parent: UInt32 = 0
    let tableVA: UInt64
    let dataVA: UInt64
    let scratch: UInt64
    static let tableGPA: UInt64 = 0x4000_0000
    static let dataGPA: UInt64 = 0x4010_0000
    static let regionSize: UInt64 = 64 << 10
    /// Where the guest maps the data region (GVA), and the guest's ASID.
    static let gva: UInt64 = 0x1000_0000
    static let guestASID: UInt16 = 7
    static let vsid: UInt64 = 0x42

    init(features: SMMUv3Features = ArmNestedVMM.features, parentFlags: UInt32 = UAPI.hwptAllocNestParent, ats: Bool = false,
         pasids: UInt32 = 0) throws {
        machine = try Machine(seed: 1, memorySize: 128 << 20, unitConfigurations: [.smmuv3(SMMUv3Configuration(name: "smmu0", features: features))])
        process = try machine.core.createProcess()
        ctx = IOMMUFDContext(core: machine.core, memory: process, ledger: PinLedger())
        (device, ep) = try machine.addDevices([DeviceDescription(name: "vf", requesterID: RequesterID(bus: 0, device: 1, function: 0),
                                                                 unit: 0, maxPASIDs: pasids, ats: ats)])[0]
        let process = self.process
        func touched(_ length: UInt64) throws -> UInt64 {
            let va = try process.mmap(length: length, permissions: .readWrite)
            for p in stride(from: va, to: va + length, by: 4096) { _ = process.fault(at: p, access: [.read, .write]) }
            return va
        }
        tableVA = try touched(Self.regionSize)
        dataVA = try touched(Self.regionSize)
        scratch = try touched(4 * 4096)
        machine.scheduler.runUntilIdle()
        devID = try ctx.bind(device)
        ioas = try #require(Self.id(run(.ioasAlloc), at: 8))
        let p = hwptAlloc(pt: ioas, flags: parentFlags)
        try #require(p.rc == 0, "\(ctx.lastError.map { "\($0)" } ?? "")")
        parent = p.id
        try #require(map(va: tableVA, iova: Self.tableGPA) == 0)
        try #require(map(va: dataVA, iova: Self.dataGPA) == 0)
    }

    static var features: SMMUv3Features {
        var f = SMMUv3Features()
        f.s2FWB = true
        return f
    }

    var unit: SMMUv3Unit { machine.smmuUnits[0] }
    var driver: ArmSMMUv3Driver { machine.smmuDriver! }
    var errno: Int32 { ctx.lastError?.code ?? 0 }

    static func id(_ r: (rc: Int32, out: StructBytes), at offset: Int) -> UInt32? { r.rc == 0 ? r.out.u32(offset) : nil }

    @discardableResult
    func run(_ c: IOMMUFDCommand, size: Int? = nil, _ fill: (inout StructBytes) -> Void = { _ in }) -> (rc: Int32, out: StructBytes) {
        var s = StructBytes(size: size ?? c.size)
        fill(&s)
        let rc = ctx.ioctl(c.number, &s.bytes)
        return (rc, s)
    }

    func map(va: UInt64, iova: UInt64, length: UInt64 = regionSize) -> Int32 {
        run(.ioasMap) { s in
            s.set32(4, UAPI.mapReadable | UAPI.mapWriteable | UAPI.mapFixedIOVA); s.set32(8, ioas)
            s.set64(16, va); s.set64(24, length); s.set64(32, iova)
        }.rc
    }

    func unmap(iova: UInt64, length: UInt64) -> Int32 {
        run(.ioasUnmap) { s in s.set32(4, ioas); s.set64(8, iova); s.set64(16, length) }.rc
    }

    func hwptAlloc(pt: UInt32, flags: UInt32 = 0, dev: UInt32? = nil, dataType: UInt32 = 0, data: [UInt8] = [],
                   dataLength: UInt32? = nil, uptr: UInt64? = nil) -> (rc: Int32, id: UInt32) {
        if !data.isEmpty { write(scratch, data) }
        let (rc, out) = run(.hwptAlloc) { s in
            s.set32(4, flags); s.set32(8, dev ?? devID); s.set32(12, pt)
            s.set32(24, dataType); s.set32(28, dataLength ?? UInt32(data.count)); s.set64(32, uptr ?? (data.isEmpty ? 0 : scratch))
        }
        return (rc, out.u32(16))
    }

    /// IOMMU_VIOMMU_ALLOC {size, flags @4, type @8, dev_id @12, hwpt_id @16, out @20, data_len @24, __reserved @28, data_uptr @32}.
    func viommuAlloc(type: UInt32 = ArmVSMMU.type, dev: UInt32? = nil, hwpt: UInt32? = nil, flags: UInt32 = 0) -> (rc: Int32, id: UInt32) {
        let (rc, out) = run(.viommuAlloc) { s in
            s.set32(4, flags); s.set32(8, type); s.set32(12, dev ?? devID); s.set32(16, hwpt ?? parent)
        }
        return (rc, out.u32(20))
    }

    /// IOMMU_VDEVICE_ALLOC {size, viommu_id @4, dev_id @8, out @12, virt_id @16}.
    func vdeviceAlloc(_ viommu: UInt32, virtID: UInt64 = vsid, dev: UInt32? = nil) -> (rc: Int32, id: UInt32) {
        let (rc, out) = run(.vdeviceAlloc) { s in s.set32(4, viommu); s.set32(8, dev ?? devID); s.set64(16, virtID) }
        return (rc, out.u32(12))
    }

    /// IOMMU_VEVENTQ_ALLOC {size, flags @4, viommu_id @8, type @12, depth @16, out id @20, out fd @24}.
    func veventqAlloc(_ viommu: UInt32, depth: UInt32 = 8) -> (rc: Int32, id: UInt32) {
        let (rc, out) = run(.veventqAlloc) { s in s.set32(8, viommu); s.set32(12, ArmVSMMU.eventType); s.set32(16, depth) }
        return (rc, out.u32(20))
    }

    func destroy(_ id: UInt32) -> Int32 { run(.destroy) { s in s.set32(4, id) }.rc }

    func write(_ address: UInt64, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { process.copyOut(to: address, from: $0) }
    }

    func write64(_ address: UInt64, _ v: UInt64) { write(address, (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) }) }

    func read(va: UInt64, count: Int = 64) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        _ = out.withUnsafeMutableBytes { process.copyIn(from: va, into: $0) }
        return out
    }

    static func bytes(_ words: [UInt64]) -> [UInt8] {
        words.flatMap { w in (0..<8).map { UInt8(truncatingIfNeeded: w >> (8 * UInt64($0))) } }
    }

    // MARK: The guest's structures

    static var cdGPA: UInt64 { tableGPA }
    static func tableGPA(level: Int) -> UInt64 { tableGPA + UInt64(1 + level) * 4096 }
    func tableVA(level: Int) -> UInt64 { tableVA + UInt64(1 + level) * 4096 }

    /// The guest's CD 0 (ASID 7, TTB0 = its level 0 table) and a 4-level stage 1 table
    /// mapping GVA `gva` + i pages to the data region's page i, for `pages` pages.
    func buildGuestTables(pages: Int = 4) {
        let cd = ContextDescriptor.s1(asid: Self.guestASID, ttb: Self.tableGPA(level: 0))
        write(tableVA, Self.bytes((0..<8).map { cd.data[$0] }))
        for level in 0..<3 {
            let index = (Self.gva >> UInt64(39 - 9 * level)) & 0x1FF
            write64(tableVA(level: level) + index * 8, ArmStage1Format.table(address: Self.tableGPA(level: level + 1)))
        }
        for i in 0..<pages { setGuestPTE(page: i, present: true) }
    }

    func setGuestPTE(page: Int, present: Bool) {
        let index = ((Self.gva >> 12) & 0x1FF) + UInt64(page)
        let pte = present ? ArmStage1Format.leaf(address: Self.dataGPA + UInt64(page) * 4096, permissions: [.read, .write, .user], level: 1) : 0
        write64(tableVA(level: 3) + index * 8, pte)
    }

    /// A vSTE: S1 translate through the guest's CD table (linear, one CD), WB inner-shareable
    /// CD fetches, `eats` in word 1.
    static func vSTE(config: UInt64 = 0b101, eats: UInt64 = 0, extra0: UInt64 = 0, extra1: UInt64 = 0) -> [UInt64] {
        [1 | config << 1 | cdGPA | extra0, 1 << 2 | 1 << 4 | 3 << 6 | eats << 28 | extra1]
    }

    func allocNested(_ viommu: UInt32, ste: [UInt64] = ArmNestedVMM.vSTE(), flags: UInt32 = 0,
                     dataType: UInt32 = ArmVSMMU.nestedDataType, dataLength: UInt32? = nil) -> (rc: Int32, id: UInt32) {
        hwptAlloc(pt: viommu, flags: flags, dataType: dataType, data: Self.bytes(ste), dataLength: dataLength)
    }

    /// vIOMMU, vDEVICE, guest tables, nested HWPT, attached.
    func nestedSetup(vdevice: Bool = true) throws -> (viommu: UInt32, vdev: UInt32?, nested: UInt32) {
        let v = viommuAlloc()
        try #require(v.rc == 0, "\(ctx.lastError.map { "\($0)" } ?? "")")
        var vd: UInt32?
        if vdevice {
            let d = vdeviceAlloc(v.id)
            try #require(d.rc == 0)
            vd = d.id
        }
        buildGuestTables()
        let n = allocNested(v.id)
        try #require(n.rc == 0, "\(ctx.lastError.map { "\($0)" } ?? "")")
        _ = try ctx.attach(devID, to: n.id)
        return (v.id, vd, n.id)
    }

    // MARK: DMA and invalidation

    func dmaWrite(_ address: UInt64, value: UInt8 = 0x5A, pasid: PASID? = nil) -> PCIeEndpoint.Completion? {
        var done: PCIeEndpoint.Completion?
        ep.submit(.write(address, [UInt8](repeating: value, count: 64), pasid: pasid)) { done = $0 }
        try? machine.scheduler.wait(until: { done != nil }, timeoutNs: 1_000_000)
        return done
    }

    /// Writes through GVA page `page` and tells whether it landed in the data region.
    func dmaReaches(page: Int, value: UInt8) -> Bool {
        guard let c = dmaWrite(Self.gva + UInt64(page) * 4096, value: value), c.fault == nil else { return false }
        return read(va: dataVA + UInt64(page) * 4096, count: 64).allSatisfy { $0 == value }
    }

    /// IOMMU_HWPT_INVALIDATE on `id` with raw command pairs; returns (rc, entry_num out).
    func invalidate(_ id: UInt32, _ commands: [[UInt64]], dataType: UInt32 = ArmVSMMU.invalidateDataType,
                    entryLength: UInt32 = 16) -> (rc: Int32, done: UInt32) {
        var bytes: [UInt8] = []
        for c in commands {
            var e = Self.bytes(c)
            if Int(entryLength) > e.count { e += [UInt8](repeating: 0, count: Int(entryLength) - e.count) }
            bytes += e.prefix(Int(entryLength))
        }
        if !bytes.isEmpty { write(scratch, bytes) }
        let (rc, out) = run(.hwptInvalidate) { s in
            s.set32(4, id); s.set64(8, scratch); s.set32(16, dataType); s.set32(20, entryLength); s.set32(24, UInt32(commands.count))
        }
        return (rc, out.u32(24))
    }

    /// CMD_TLBI_NH_VA {op 0x12, VMID @32 (w0), ASID @48 (w0); Leaf @0, Address @12 (w1)}.
    static func tlbiNHVA(asid: UInt16 = guestASID, vmid: UInt16 = 0, address: UInt64) -> [UInt64] {
        [0x12 | UInt64(vmid) << 32 | UInt64(asid) << 48, address & ~0xFFF]
    }
}
