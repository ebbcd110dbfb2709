import Testing
import Platform
import Kernel
import IOMMUFD
@testable import Simulation

/// The mock paging domain's IOPTE table as IOAS_MAP fills it (notes: mock-driver §3.5:
/// one slot per 2 KiB keyed IOVA / 2 KiB, PA / 2 KiB in the low 53 bits, MARK bit 53 on a
/// map call's first and last slot, HUGE bit 55 on every slot of a 1 MiB mapping), and the
/// MD_CHECK_MAP / MD_CHECK_REFS commands that read it (§2 ops 3 and 4).
@Suite struct SelftestIOPTETests {
    static let pfnMask: UInt64 = (1 << 53) - 1
    static let start = SelftestRig.start
    static let step = SelftestRig.mockPage

    /// The slots of [iova, iova + length) in order (nil where empty).
    static func slots(_ d: MockPagingDomain, _ iova: UInt64, _ length: UInt64) -> [UInt64?] {
        (0..<length / step).map { d.slots[iova / step + $0] }
    }

    @Test func eachMapCallWritesOneSlotPer2KiBWithPAOver2KAndMarksOnlyItsFirstAndLastSlot() throws {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        let m = try t.requireMock(ioas)
        let d = try t.pagingDomain(m.hwpt)
        #expect(!d.isHuge)
        let ram = try t.process.mmapContiguous(length: 2 << 20, permissions: .readWrite)
        let pa = try t.physical(ram)
        // Two IOAS_MAPs of physically adjacent memory: two areas, two map calls.
        #expect(t.rig.map(ioas, va: ram, length: 16 << 10, iova: Self.start).rc == 0)
        #expect(t.rig.map(ioas, va: ram + (16 << 10), length: 8 << 10, iova: Self.start + (16 << 10)).rc == 0)
        #expect(d.slots.count == 12)
        let s = Self.slots(d, Self.start, 24 << 10)
        for (i, e) in s.enumerated() {
            let e = try #require(e, "slot \(i) is empty")
            #expect(e & Self.pfnMask == pa / Self.step + UInt64(i), "slot \(i)")
            let marked = [0, 7, 8, 11].contains(i)
            #expect((e & MockPagingDomain.markBit != 0) == marked, "slot \(i) MARK")
            #expect(e & MockPagingDomain.hugeBit == 0, "slot \(i) HUGE")
            #expect(e & MockPagingDomain.dirtyBit == 0, "slot \(i) DIRTY")
        }
        #expect(d.slots[Self.start / Self.step - 1] == nil && d.slots[(Self.start + (24 << 10)) / Self.step] == nil)
        #expect(t.rig.unmap(ioas, iova: Self.start, length: 24 << 10).rc == 0)
        #expect(d.slots.isEmpty)
        #expect(t.mock.warnings.isEmpty, "\(t.mock.warnings)")
    }

    @Test func scatteredPagesGetOneMapCallPerPhysicallyContiguousRun() throws {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        let m = try t.requireMock(ioas)
        let d = try t.pagingDomain(m.hwpt)
        let ram = try t.rig.touchedRAM(32 << 10)
        let frames = try (0..<8).map { try t.physical(ram + UInt64($0) << 12) }
        #expect(t.rig.map(ioas, va: ram, length: 32 << 10, iova: Self.start).rc == 0)
        // Expected MARKs: the first and last 2 KiB of every run of contiguous frames.
        var marks = Set<Int>()
        var runStart = 0
        for k in 0..<8 where k == 7 || frames[k + 1] != frames[k] + 4096 {
            marks.insert(2 * runStart)
            marks.insert(2 * k + 1)
            runStart = k + 1
        }
        let s = Self.slots(d, Self.start, 32 << 10)
        #expect(s.count == 16)
        for (i, e) in s.enumerated() {
            let e = try #require(e, "slot \(i) is empty")
            #expect(e & Self.pfnMask == (frames[i / 2] + UInt64(i % 2) * Self.step) / Self.step, "slot \(i)")
            #expect((e & MockPagingDomain.markBit != 0) == marks.contains(i), "slot \(i) MARK")
        }
        #expect(t.rig.unmap(ioas, iova: Self.start, length: 32 << 10).rc == 0)
        #expect(d.slots.isEmpty)
        #expect(t.mock.warnings.isEmpty, "\(t.mock.warnings)")
    }

    @Test func aHugeIOVADeviceOverContiguousMemoryGets1MiBIOPTEsWithHUGEOnEverySlot() throws {
        let t = try SelftestRig(memory: 128 << 20)
        let ioas = try t.ioas()
        let m = try t.requireMock(ioas, flags: SelftestRig.hugeIOVA)
        let d = try t.pagingDomain(m.hwpt)
        #expect(d.isHuge)
        #expect(d.pageSizes == 2048 | 1 << 20)
        let ram = try t.process.mmapContiguous(length: 2 << 20, permissions: .readWrite)
        let pa = try t.physical(ram)
        #expect(pa % (2 << 20) == 0)
        #expect(t.rig.map(ioas, va: ram, length: 2 << 20, iova: Self.start).rc == 0)
        let s = Self.slots(d, Self.start, 2 << 20)
        #expect(s.count == 1024 && d.slots.count == 1024)
        var bad = 0
        for (i, e) in s.enumerated() {
            guard let e, e & Self.pfnMask == pa / Self.step + UInt64(i), e & MockPagingDomain.hugeBit != 0,
                  (e & MockPagingDomain.markBit != 0) == (i == 0 || i == 1023) else { bad += 1; continue }
        }
        #expect(bad == 0)
        #expect(t.checkMap(m.hwpt, iova: Self.start, length: 2 << 20, uptr: ram) == 0)
        #expect(t.rig.unmap(ioas, iova: Self.start, length: 2 << 20).rc == 0)
        #expect(d.slots.isEmpty)
        #expect(t.mock.warnings.isEmpty, "\(t.mock.warnings)")
    }

    // MARK: MD_CHECK_MAP

    @Test func checkMapIsZeroForTheMappedMemoryAndEINVALForAnythingElse() throws {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        let m = try t.requireMock(ioas)
        let buf = try t.rig.touchedRAM(64 << 10)
        #expect(t.rig.map(ioas, va: buf, length: 64 << 10, iova: Self.start).rc == 0)
        #expect(t.checkMap(m.hwpt, iova: Self.start, length: 64 << 10, uptr: buf) == 0)
        #expect(t.checkMap(m.hwpt, iova: Self.start + 3 * Self.step, length: Self.step, uptr: buf + 3 * Self.step) == 0)
        #expect(t.checkMap(m.hwpt, iova: Self.start, length: 0, uptr: buf) == 0)
        #expect(t.checkMap(m.hwpt, iova: Self.start, length: 4096, uptr: buf + 4096) == -Errno.EINVAL)
        #expect(t.checkMap(m.hwpt, iova: Self.start + 4096, length: 4096, uptr: buf) == -Errno.EINVAL)
        #expect(t.checkMap(m.hwpt, iova: Self.start + (64 << 10), length: 4096, uptr: buf) == -Errno.EINVAL) // not mapped
        // Misaligned arguments, checked before the lookup.
        #expect(t.checkMap(m.hwpt, iova: Self.start + 1, length: Self.step, uptr: buf) == -Errno.EINVAL)
        #expect(t.checkMap(m.hwpt, iova: Self.start, length: 100, uptr: buf) == -Errno.EINVAL)
        #expect(t.checkMap(m.hwpt, iova: Self.start, length: Self.step, uptr: buf + 1) == -Errno.EINVAL)
        #expect(t.checkMap(999, iova: Self.start + 1, length: 4096, uptr: buf) == -Errno.EINVAL)
        #expect(t.checkMap(m.hwpt, iova: Self.start, length: 4096, uptr: UInt64.max & ~0x7FF) == -Errno.EINVAL) // overflow
        // Wrong object types.
        #expect(t.checkMap(ioas, iova: Self.start, length: 4096, uptr: buf) == -Errno.ENOENT)
        #expect(t.checkMap(m.idev, iova: Self.start, length: 4096, uptr: buf) == -Errno.ENOENT)
        #expect(t.checkMap(999, iova: Self.start, length: 4096, uptr: buf) == -Errno.ENOENT)
        // After the unmap the slots are gone.
        #expect(t.rig.unmap(ioas, iova: Self.start, length: 64 << 10).rc == 0)
        #expect(t.checkMap(m.hwpt, iova: Self.start, length: 4096, uptr: buf) == -Errno.EINVAL)
    }

    @Test func checkMapOfANestedHWPTIsENOENT() throws {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        let m = try t.requireMock(ioas)
        let buf = try t.rig.touchedRAM(16 << 10)
        #expect(t.rig.map(ioas, va: buf, length: 16 << 10, iova: Self.start).rc == 0)
        let parent = try t.requireHWPT(dev: m.idev, pt: ioas, flags: UAPI.hwptAllocNestParent)
        let n = try t.nested(dev: m.idev, parent: parent)
        try #require(n.rc == 0, "\(t.lastError)")
        #expect(t.ctx.object(n.id) is HWPTNested)
        #expect(t.checkMap(n.id, iova: Self.start, length: 4096, uptr: buf) == -Errno.ENOENT)
        #expect(t.checkMap(parent, iova: Self.start, length: 16 << 10, uptr: buf) == 0)
    }

    @Test func checkMapOfUnmappedUserMemoryIsEFAULT() throws {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        let m = try t.requireMock(ioas)
        let buf = try t.rig.touchedRAM(16 << 10)
        #expect(t.rig.map(ioas, va: buf, length: 16 << 10, iova: Self.start).rc == 0)
        let hole = buf + (16 << 10) // the guard gap after the mapping
        try #require(t.process.vma(containing: hole) == nil)
        #expect(t.checkMap(m.hwpt, iova: Self.start, length: 4096, uptr: hole) == -Errno.EFAULT)
    }

    // MARK: MD_CHECK_REFS

    @Test func checkRefsCountsOnePinWhileMappedWithADomainAndNoneAfterTheUnmap() throws {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        _ = try t.requireMock(ioas)
        let buf = try t.rig.touchedRAM(64 << 10)
        #expect(t.checkRefs(buf, length: 64 << 10, refs: 0) == 0)
        #expect(t.rig.map(ioas, va: buf, length: 64 << 10, iova: Self.start).rc == 0)
        #expect(t.checkRefs(buf, length: 64 << 10, refs: 1) == 0)
        #expect(t.checkRefs(buf, length: 64 << 10, refs: 2) == -Errno.EIO)
        #expect(t.checkRefs(buf, length: 64 << 10, refs: 0) == -Errno.EIO)
        #expect(t.process.pinnedPages == 16)
        #expect(t.rig.unmap(ioas, iova: Self.start, length: 64 << 10).rc == 0)
        #expect(t.checkRefs(buf, length: 64 << 10, refs: 0) == 0)
        #expect(t.checkRefs(buf, length: 64 << 10, refs: 1) == -Errno.EIO)
        #expect(t.process.pinnedPages == 0)
    }

    @Test func checkRefsIsEINVALForMisalignedArgumentsAndEFAULTForUnmappedMemory() throws {
        let t = try SelftestRig()
        let buf = try t.rig.touchedRAM(16 << 10)
        #expect(t.checkRefs(buf + 2048, length: 4096, refs: 0) == -Errno.EINVAL)
        #expect(t.checkRefs(buf, length: 2048, refs: 0) == -Errno.EINVAL)
        #expect(t.checkRefs(UInt64.max & ~0xFFF, length: 8192, refs: 0) == -Errno.EINVAL) // overflow
        let hole = buf + (16 << 10)
        try #require(t.process.vma(containing: hole) == nil)
        #expect(t.checkRefs(hole, length: 4096, refs: 0) == -Errno.EFAULT)
        #expect(t.checkRefs(buf + (12 << 10), length: 8192, refs: 0) == -Errno.EFAULT) // runs off the end
        #expect(t.checkRefs(buf, length: 0, refs: 7) == 0)
    }
}
