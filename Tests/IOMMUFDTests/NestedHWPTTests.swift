import Testing
import Platform
import Formats
import Hardware
@testable import Kernel
import IOMMUFD
@testable import Simulation

/// A VMM over iommufd: a nest parent HWPT over an IOAS holding guest RAM (a table region at
/// GPA 0x4000_0000 and a data region at GPA 0x4010_0000, separate IOAS areas), the guest's
/// first-stage table in the table region, and a scratch buffer (not guest RAM) for the
/// structs passed by pointer.
final class NestedVMM {
    let rig: IOMMUFDRig
    let device: Device
    let ep: PCIeEndpoint
    let devID: UInt32
    let ioas: UInt32
    let parent: UInt32
    let tableVA: UInt64
    let dataVA: UInt64
    let scratch: UInt64
    let guest: GuestPageTable
    static let tableGPA: UInt64 = 0x4000_0000
    static let dataGPA: UInt64 = 0x4010_0000
    static let regionSize: UInt64 = 64 << 10

    /// `beforeBind` sees the machine with the device probed and the VMM's memory touched,
    /// before anything of iommufd exists.
    init(parentFlags: UInt32 = UAPI.hwptAllocNestParent | UAPI.hwptAllocPASID, ats: Bool = false,
         beforeBind: (IOMMUFDRig) -> Void = { _ in }) throws {
        rig = try IOMMUFDRig(memory: 128 << 20)
        (device, ep) = try rig.addDevice("vf", dev: 1, pasids: 64, ats: ats)
        tableVA = try rig.touchedRAM(Self.regionSize)
        dataVA = try rig.touchedRAM(Self.regionSize)
        scratch = try rig.touchedRAM(4 * 4096)
        rig.machine.scheduler.runUntilIdle()
        beforeBind(rig)
        devID = try rig.ctx.bind(device)
        ioas = try rig.ioasAlloc()
        let p = rig.hwptAlloc(dev: devID, pt: ioas, flags: parentFlags)
        try #require(p.rc == 0, "\(rig.ctx.lastError.map { "\($0)" } ?? "")")
        parent = p.id
        try #require(rig.map(ioas, va: tableVA, length: Self.regionSize, iova: Self.tableGPA).rc == 0)
        try #require(rig.map(ioas, va: dataVA, length: Self.regionSize, iova: Self.dataGPA).rc == 0)
        guest = try GuestPageTable(region: "guest", process: rig.process, va: tableVA, gpaBase: Self.tableGPA,
                                   tablePages: Int(Self.regionSize / 4096), levels: 4)
    }

    var oracle: Oracle { rig.machine.oracle }
    var violations: [Violation] { oracle.violations }

    func write(_ address: UInt64, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { rig.process.copyOut(to: address, from: $0) }
    }

    /// HWPT_ALLOC of a nested HWPT over the parent with `data` at the scratch buffer.
    func allocNested(flags: UInt32 = UAPI.hwptAllocPASID, dataType: UInt32 = UAPI.hwptDataVTdS1, data: [UInt8],
                     dataLength: UInt32? = nil, uptr: UInt64? = nil, parent pt: UInt32? = nil) -> (rc: Int32, id: UInt32) {
        write(scratch, data)
        let (rc, out) = rig.run(.hwptAlloc) { s in
            s.set32(4, flags); s.set32(8, self.devID); s.set32(12, pt ?? self.parent)
            s.set32(24, dataType); s.set32(28, dataLength ?? UInt32(data.count)); s.set64(32, uptr ?? self.scratch)
        }
        return (rc, out.u32(16))
    }

    func s1(flags: UInt64 = 0, width: UInt32 = 48) -> [UInt8] {
        VTdStage1Configuration(flags: flags, tableAddress: guest.root, addressWidth: width).bytes
    }

    /// `struct iommu_hwpt_vtd_s1_invalidate`.
    static func entry(addr: UInt64, pages: UInt64, flags: UInt32 = 1, reserved: UInt32 = 0, length: Int = 24) -> [UInt8] {
        var s = StructBytes(size: length)
        s.set64(0, addr); s.set64(8, pages); s.set32(16, flags); s.set32(20, reserved)
        return s.bytes
    }

    /// HWPT_INVALIDATE; returns (rc, entry_num after).
    func invalidate(_ id: UInt32, entries: [[UInt8]] = [], entryLength: UInt32? = nil, count: UInt32? = nil,
                    uptr: UInt64? = nil, dataType: UInt32 = UAPI.invalidateDataVTdS1, reserved: UInt32 = 0) -> (rc: Int32, done: UInt32) {
        write(scratch, entries.flatMap { $0 })
        let (rc, out) = rig.run(.hwptInvalidate) { s in
            s.set32(4, id); s.set64(8, uptr ?? self.scratch); s.set32(16, dataType)
            s.set32(20, entryLength ?? UInt32(entries.first?.count ?? 24)); s.set32(24, count ?? UInt32(entries.count))
            s.set32(28, reserved)
        }
        return (rc, out.u32(24))
    }

    /// A nested HWPT on the guest table, attached to the RID.
    func attachedNested() throws -> UInt32 {
        let n = allocNested(data: s1())
        try #require(n.rc == 0, "\(rig.ctx.lastError.map { "\($0)" } ?? "")")
        try rig.ctx.attach(devID, to: n.id)
        return n.id
    }

    func nestedDomain(_ id: UInt32) throws -> VTdNestedDomain {
        try #require((rig.ctx.object(id) as? HWPTNested)?.domain as? VTdNestedDomain)
    }

    func pasidEntry(pasid: UInt32 = 0) throws -> PASIDEntry {
        let u = try #require(rig.machine.vtdDriver?.units.first)
        let info = try #require(u.devices[device.requesterID.rawValue])
        let address = try #require(try u.pasidEntryAddress(info, pasid, create: false))
        return try u.readEntry(address)
    }

    /// The guest unmaps `gva` (clears its leaf), optionally invalidating, as the oracle is told.
    func guestUnmap(_ nested: UInt32, gva: UInt64, invalidate: Bool) throws -> (rc: Int32, done: UInt32)? {
        let domain = try #require((rig.ctx.object(nested) as? HWPTNested)?.domain)
        oracle.guestUnmapBegan(domain, gva: gva, pages: 1)
        #expect(try guest.unmap(gva: gva))
        // A skipped invalidation is the guest claiming it done; a failed one leaves the old
        // translation permitted.
        let result = invalidate ? self.invalidate(nested, entries: [Self.entry(addr: gva, pages: 1)]) : nil
        oracle.guestUnmapEnded(domain, gva: gva, pages: 1, invalidated: result.map { $0.rc == 0 } ?? true)
        return result
    }
}

/// The errno code of an `Errno` thrown by `body`, or nil.
func errnoOf(_ body: () throws -> Void) -> Int32? {
    do { try body() } catch let e as Errno { return e.code } catch { return -1 }
    return nil
}

@Suite("nested HWPTs through iommufd: DMA at guest addresses, guest invalidations, the parent's unmaps and dirty tracking")
struct NestedHWPTTests {
    @Test("DMA at a GVA through a nested HWPT, on the RID and on a PASID, lands on the host page the parent maps at the guest's GPA")
    func dmaThroughGuestTable() throws {
        let v = try NestedVMM()
        let gpa = NestedVMM.dataGPA + 0x3000
        try v.guest.map(gva: 0x1234_5000, gpa: gpa, writable: true)
        let n = try v.attachedNested()
        try v.rig.ctx.attach(v.devID, to: n, pasid: PASID(truncating: 7))
        let e = try v.pasidEntry()
        #expect(e.pgtt == .nested && e.firstStageTable == v.guest.root)
        #expect(try v.pasidEntry(pasid: 7).pgtt == .nested)
        #expect(v.rig.dma(v.ep, write: 0x1234_5040, value: 0xA1)?.fault == nil)
        #expect(v.rig.read(va: v.dataVA + 0x3040, count: 1) == [0xA1])
        #expect(v.rig.dma(v.ep, write: 0x1234_5100, value: 0xA2, pasid: PASID(truncating: 7))?.fault == nil)
        #expect(v.rig.read(va: v.dataVA + 0x3100, count: 1) == [0xA2])
        // The GPA itself is not an address the device can use through the nested HWPT.
        #expect(v.rig.dma(v.ep, write: gpa)?.fault != nil)
        #expect(v.violations.isEmpty, "\(v.violations)")
    }

    @Test("after the guest clears its leaf and invalidates it (LEAF), DMA at the GVA faults")
    func guestInvalidationDropsTheTranslation() throws {
        let v = try NestedVMM()
        try v.guest.map(gva: 0x5000, gpa: NestedVMM.dataGPA, writable: true)
        let n = try v.attachedNested()
        #expect(v.rig.dma(v.ep, write: 0x5000)?.fault == nil)
        let did = try #require(try v.nestedDomain(n).did(on: 0))
        #expect(v.rig.machine.units[0].cachedEntries(taggedWith: did).iotlb >= 1)
        let r = try v.guestUnmap(n, gva: 0x5000, invalidate: true)
        #expect(r?.rc == 0 && r?.done == 1)
        #expect(v.rig.dma(v.ep, write: 0x5000)?.fault != nil)
        #expect(v.violations.isEmpty, "\(v.violations)")
    }

    @Test("without the guest's invalidation the cleared leaf is still used from the IOTLB (a stale translation) until it is invalidated")
    func withoutInvalidationTheIOTLBKeepsTheTranslation() throws {
        let v = try NestedVMM()
        try v.guest.map(gva: 0x5000, gpa: NestedVMM.dataGPA, writable: true)
        let n = try v.attachedNested()
        #expect(v.rig.dma(v.ep, write: 0x5000, value: 1)?.fault == nil)
        _ = try v.guestUnmap(n, gva: 0x5000, invalidate: false)
        #expect(v.rig.dma(v.ep, write: 0x5000, value: 2)?.fault == nil, "the IOTLB still holds the translation")
        #expect(v.rig.read(va: v.dataVA, count: 1) == [2])
        #expect(v.violations.contains { $0.invariant == "stale-translation" }, "\(v.violations)")
        #expect(v.invalidate(n, entries: [NestedVMM.entry(addr: 0x5000, pages: 1)]) == (0, 1))
        #expect(v.rig.dma(v.ep, write: 0x5000, value: 3)?.fault != nil)
        #expect(v.rig.read(va: v.dataVA, count: 1) == [2])
    }

    @Test("a host IOAS_UNMAP of the guest's GPA invalidates the nested translation; with parentFlushSkipsNested it stays cached")
    func hostUnmapInvalidatesNestedTranslation() throws {
        for bug in [false, true] {
            let v = try NestedVMM()
            if bug { v.rig.core.injectedBugs = .parentFlushSkipsNested }
            try v.guest.map(gva: 0x9000, gpa: NestedVMM.dataGPA, writable: true)
            let n = try v.attachedNested()
            let did = try #require(try v.nestedDomain(n).did(on: 0))
            #expect(v.rig.dma(v.ep, write: 0x9000)?.fault == nil)
            let type2 = v.rig.machine.units[0].counters.descriptorsByType[Int(InvalidationDescriptor.iotlbType)]
            #expect(v.rig.unmap(v.ioas, iova: NestedVMM.dataGPA, length: NestedVMM.regionSize) == (0, NestedVMM.regionSize))
            let after = v.rig.machine.units[0].counters.descriptorsByType[Int(InvalidationDescriptor.iotlbType)]
            let write = v.rig.dma(v.ep, write: 0x9000)
            if bug {
                #expect(after == type2)
                #expect(v.rig.machine.units[0].cachedEntries(taggedWith: did).iotlb >= 1)
                #expect(write?.fault == nil)
                #expect(v.violations.contains { $0.invariant == "stale-translation" }, "\(v.violations)")
            } else {
                #expect(after > type2)
                #expect(write?.fault != nil)
                #expect(v.violations.isEmpty, "\(v.violations)")
            }
        }
    }

    @Test("an ATS device attached nested gets a device-TLB invalidation on the parent's unmap")
    func hostUnmapFlushesNestedDeviceTLB() throws {
        let v = try NestedVMM(ats: true)
        try v.guest.map(gva: 0x9000, gpa: NestedVMM.dataGPA, writable: true)
        _ = try v.attachedNested()
        #expect(v.rig.dma(v.ep, write: 0x9000)?.fault == nil)
        let before = v.rig.machine.units[0].counters.descriptorsByType[Int(InvalidationDescriptor.deviceTLBType)]
        #expect(v.rig.unmap(v.ioas, iova: NestedVMM.dataGPA, length: NestedVMM.regionSize).rc == 0)
        #expect(v.rig.machine.units[0].counters.descriptorsByType[Int(InvalidationDescriptor.deviceTLBType)] == before + 1)
        #expect(v.violations.isEmpty, "\(v.violations)")
    }

    @Test("dirty tracking on a nest parent sets SSADE in the nested entry, and a write at a GVA shows in the parent's bitmap at its GPA")
    func dirtyWriteThroughNestedShowsAtGPA() throws {
        let v = try NestedVMM(parentFlags: UAPI.hwptAllocNestParent | UAPI.hwptAllocDirtyTracking | UAPI.hwptAllocPASID)
        try v.guest.map(gva: 0x2_0000, gpa: NestedVMM.dataGPA + 0x5000, writable: true)
        try v.guest.map(gva: 0x2_1000, gpa: NestedVMM.dataGPA + 0x9000, writable: true)
        _ = try v.attachedNested()
        #expect(try !v.pasidEntry().secondStageAD)
        #expect(v.rig.run(.hwptSetDirtyTracking) { $0.set32(4, UAPI.dirtyTrackingEnable); $0.set32(8, v.parent) }.rc == 0)
        #expect(try v.pasidEntry().secondStageAD)
        #expect(v.rig.dma(v.ep, write: 0x2_0000)?.fault == nil)
        var done: PCIeEndpoint.Completion?
        v.ep.submit(.read(0x2_1000, length: 64)) { done = $0 }
        try v.rig.machine.scheduler.wait(until: { done != nil }, timeoutNs: 1_000_000)
        #expect(done?.fault == nil)
        let bitmap = v.scratch + 3 * 4096
        v.write(bitmap, [UInt8](repeating: 0, count: 8))
        let rc = v.rig.run(.hwptGetDirtyBitmap) { b in
            b.set32(4, v.parent); b.set64(16, NestedVMM.dataGPA); b.set64(24, NestedVMM.regionSize); b.set64(32, 4096); b.set64(40, bitmap)
        }.rc
        #expect(rc == 0)
        #expect(StructBytes(bytes: v.rig.read(va: bitmap, count: 8)).u64(0) == 1 << 5, "only the written GPA page is dirty")
        #expect(v.violations.isEmpty, "\(v.violations)")
    }

    @Test("attach refuses stage-1 flags beyond SRE|EAFE|WPE, EAFE without EAFS, and address widths other than 48/57 with EINVAL")
    func attachErrors() throws {
        let v = try NestedVMM()
        for (flags, width) in [(UInt64(8), UInt32(48)), (2, 48), (0, 39)] {
            let n = v.allocNested(data: v.s1(flags: flags, width: width))
            #expect(n.rc == 0, "the driver checks the stage-1 configuration at attach")
            #expect(errnoOf { _ = try v.rig.ctx.attach(v.devID, to: n.id) } == Errno.EINVAL, "flags \(flags) width \(width)")
            #expect(errnoOf { _ = try v.rig.ctx.attach(v.devID, to: n.id, pasid: PASID(truncating: 3)) } == Errno.EINVAL)
            #expect(v.rig.machine.vtdDriver?.units.first?.domainIDs.allocated == 0, "nothing holds a DID")
        }
        let ok = v.allocNested(data: v.s1(flags: 1, width: 57))
        #expect(ok.rc == 0 && errnoOf { _ = try v.rig.ctx.attach(v.devID, to: ok.id) } == nil)
        #expect(try v.pasidEntry().fspm == 1)
    }

    @Test("nested HWPT_ALLOC: non-nest-parent EINVAL, data_len other than 24 EINVAL (even with a zero tail), unreadable data EFAULT, other flags or types EOPNOTSUPP")
    func allocErrors() throws {
        let v = try NestedVMM()
        let objects = v.rig.ctx.objects.count, domains = v.rig.core.liveDomains.count
        let plain = v.rig.hwptAlloc(dev: v.devID, pt: v.ioas)
        try #require(plain.rc == 0)
        #expect(v.allocNested(data: v.s1(), parent: plain.id).rc == -Errno.EINVAL)
        #expect(v.allocNested(data: Array(v.s1().prefix(16))).rc == -Errno.EINVAL)
        #expect(v.allocNested(data: Array(v.s1().prefix(23))).rc == -Errno.EINVAL)
        var tail = v.s1() + [UInt8](repeating: 0, count: 8)
        tail[28] = 1
        #expect(v.allocNested(data: tail).rc == -Errno.EINVAL)
        #expect(v.allocNested(data: v.s1(), uptr: 0x10).rc == -Errno.EFAULT)
        #expect(v.allocNested(flags: UAPI.hwptAllocNestParent, data: v.s1()).rc == -Errno.EOPNOTSUPP)
        #expect(v.allocNested(flags: UAPI.hwptAllocDirtyTracking, data: v.s1()).rc == -Errno.EOPNOTSUPP)
        #expect(v.allocNested(flags: 1 << 5, data: v.s1()).rc == -Errno.EOPNOTSUPP)
        #expect(v.allocNested(dataType: UAPI.hwptDataARMSMMUv3, data: v.s1()).rc == -Errno.EOPNOTSUPP)
        #expect(v.rig.ctx.objects.count == objects + 1 && v.rig.core.liveDomains.count == domains + 1,
                "only the plain paging HWPT was made")
        // Longer than the struct is EINVAL even with a zero tail: v6.17's
        // __iommu_copy_struct_from_user refuses a user length above the kernel's size.
        #expect(v.allocNested(data: v.s1() + [UInt8](repeating: 0, count: 40)).rc == -Errno.EINVAL)
        #expect(v.rig.ctx.objects.count == objects + 1, "nothing was made")
        let faultID = v.allocNested(flags: UAPI.hwptFaultIDValid, data: v.s1())
        #expect(faultID.rc == -Errno.ENOENT, "FAULT_ID_VALID is taken, and the fault ID 0 then looked up")
    }
}

@Suite("IOMMU_HWPT_INVALIDATE on a nested VT-d HWPT: each check in the kernel's order, entry_num written back")
struct NestedInvalidateRuleTests {
    static func setup() throws -> (NestedVMM, UInt32) {
        let v = try NestedVMM()
        try v.guest.map(gva: 0x5000, gpa: NestedVMM.dataGPA, writable: true)
        return (v, try v.attachedNested())
    }

    static let good = NestedVMM.entry(addr: 0x5000, pages: 1)

    @Test("the core's checks come first and leave entry_num 0: __reserved EOPNOTSUPP, no data_uptr or entry_len EINVAL, unknown ID ENOENT, a paging HWPT or IOAS EINVAL")
    func coreChecks() throws {
        let (v, n) = try Self.setup()
        #expect(v.invalidate(999, entries: [Self.good], reserved: 1) == (-Errno.EOPNOTSUPP, 0))
        #expect(v.invalidate(n, entries: [Self.good], reserved: 1) == (-Errno.EOPNOTSUPP, 0))
        #expect(v.invalidate(999, entries: [Self.good], uptr: 0) == (-Errno.EINVAL, 0))
        #expect(v.invalidate(n, entries: [Self.good], entryLength: 0) == (-Errno.EINVAL, 0))
        #expect(v.invalidate(999, entries: [Self.good]) == (-Errno.ENOENT, 0))
        #expect(v.invalidate(v.parent, entries: [Self.good]) == (-Errno.EINVAL, 0))
        #expect(v.invalidate(v.ioas, entries: [Self.good]) == (-Errno.EINVAL, 0))
        // No entries: data_uptr and entry_len may be 0.
        #expect(v.invalidate(n, entries: [], entryLength: 0, uptr: 0) == (0, 0))
    }

    @Test("the driver checks data_type before any entry: type 5 is EINVAL even with no entries, type 0 with none is 0")
    func dataTypeFirst() throws {
        let (v, n) = try Self.setup()
        #expect(v.invalidate(n, entries: [], dataType: 5) == (-Errno.EINVAL, 0))
        #expect(v.invalidate(n, entries: [Self.good, Self.good], dataType: 5) == (-Errno.EINVAL, 0))
        #expect(v.invalidate(n, entries: [], dataType: 0) == (0, 0))
    }

    @Test("per entry: entry_len under 24 EINVAL; bad flags or __reserved EOPNOTSUPP; unaligned addr or npages U64_MAX at addr≠0 EINVAL; entry_num counts the entries done")
    func entryChecks() throws {
        let (v, n) = try Self.setup()
        #expect(v.invalidate(n, entries: [Array(Self.good.prefix(16))]) == (-Errno.EINVAL, 0))
        #expect(v.invalidate(n, entries: [Self.good, NestedVMM.entry(addr: 0x5000, pages: 1, flags: 2), Self.good]) == (-Errno.EOPNOTSUPP, 1))
        #expect(v.invalidate(n, entries: [Self.good, Self.good, NestedVMM.entry(addr: 0, pages: 1, reserved: 1)]) == (-Errno.EOPNOTSUPP, 2))
        #expect(v.invalidate(n, entries: [NestedVMM.entry(addr: 0x5800, pages: 1), Self.good]) == (-Errno.EINVAL, 0))
        #expect(v.invalidate(n, entries: [Self.good, NestedVMM.entry(addr: 0x1000, pages: .max)]) == (-Errno.EINVAL, 1))
        #expect(v.invalidate(n, entries: [NestedVMM.entry(addr: 0, pages: .max), NestedVMM.entry(addr: 0, pages: 0, flags: 0)]) == (0, 2))
        #expect(v.invalidate(n, entries: [Self.good, Self.good, Self.good]) == (0, 3))
        #expect(v.violations.isEmpty, "\(v.violations)")
    }

    @Test("an entry_len over 24 is EINVAL before any entry is done, whatever its tail holds (iommu_copy_struct_from_user_array)")
    func longerEntries() throws {
        let (v, n) = try Self.setup()
        var bad = NestedVMM.entry(addr: 0x5000, pages: 1, length: 32)
        bad[28] = 0x80
        #expect(v.invalidate(n, entries: [NestedVMM.entry(addr: 0x5000, pages: 1, length: 32), bad]) == (-Errno.EINVAL, 0))
        #expect(v.invalidate(n, entries: [NestedVMM.entry(addr: 0x5000, pages: 1, length: 32)]) == (-Errno.EINVAL, 0))
    }

    @Test("an unreadable entry array is EFAULT, with entry_num the entries read before it")
    func unreadableArrayIsEFAULT() throws {
        let (v, n) = try Self.setup()
        #expect(v.invalidate(n, entries: [Self.good], uptr: 0x10_0000) == (-Errno.EFAULT, 0))
        // Two pages, the second unmapped: the second entry straddles the end of the first.
        let va = try v.rig.touchedRAM(2 * 4096)
        try v.rig.process.munmap(address: va + 4096, length: 4096)
        v.write(va + 4096 - 48, Self.good + Self.good)
        let (rc, out) = v.rig.run(.hwptInvalidate) { s in
            s.set32(4, n); s.set64(8, va + 4096 - 48); s.set32(16, 0); s.set32(20, 24); s.set32(24, 3)
        }
        #expect(rc == -Errno.EFAULT && out.u32(24) == 2)
    }

    @Test("a 32-byte entry over unreadable memory is EINVAL, not EFAULT: the length is refused before anything is read")
    func lengthCheckedBeforeCopy() throws {
        let (v, n) = try Self.setup()
        let va = try v.rig.touchedRAM(2 * 4096)
        try v.rig.process.munmap(address: va, length: 4096)
        let (rc, out) = v.rig.run(.hwptInvalidate) { s in
            s.set32(4, n); s.set64(8, va + 4096 - 24); s.set32(16, 0); s.set32(20, 32); s.set32(24, 1)
        }
        #expect(rc == -Errno.EINVAL && out.u32(24) == 0)
        // At the right length the same unreadable entry is EFAULT.
        #expect(v.rig.run(.hwptInvalidate) { s in
            s.set32(4, n); s.set64(8, va + 4096 - 24); s.set32(16, 0); s.set32(20, 24); s.set32(24, 1)
        }.rc == -Errno.EFAULT)
    }
}
