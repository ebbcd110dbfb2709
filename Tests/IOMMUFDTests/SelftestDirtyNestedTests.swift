import Testing
import Platform
import Kernel
import IOMMUFD
@testable import Simulation

/// Dirty tracking with the mock (notes: mock-driver §2 DIRTY, §3.6) and nested mock HWPTs
/// with their IOTLB slots and HWPT_INVALIDATE (§3.7).
@Suite struct SelftestDirtyNestedTests {
    static let start = SelftestRig.start
    static let step = SelftestRig.mockPage

    struct Dirty {
        let t: SelftestRig
        let ioas: UInt32
        let m: SelftestRig.MockDevice
        let hwpt: UInt32
        let length: UInt64
    }

    /// A mock device on an IOAS with `length` bytes mapped at START and a DIRTY_TRACKING HWPT
    /// (not attached: HWPT_ALLOC fills it from the IOAS).
    static func dirtySetup(huge: Bool = false) throws -> Dirty {
        let t = try SelftestRig(memory: 128 << 20)
        let ioas = try t.ioas()
        let m = try t.requireMock(ioas, flags: huge ? SelftestRig.hugeIOVA : 0)
        let length: UInt64 = huge ? 2 << 20 : 64 << 10
        let ram = huge ? try t.process.mmapContiguous(length: length, permissions: .readWrite) : try t.rig.touchedRAM(length)
        #expect(t.rig.map(ioas, va: ram, length: length, iova: start).rc == 0)
        let hwpt = try t.requireHWPT(dev: m.idev, pt: ioas, flags: UAPI.hwptAllocDirtyTracking)
        return Dirty(t: t, ioas: ioas, m: m, hwpt: hwpt, length: length)
    }

    @Test func dirtyWithTrackingOffIsEINVALAndMarksNothing() throws {
        let s = try Self.dirtySetup()
        let r = try s.t.markDirty(s.hwpt, iova: Self.start, length: s.length, pageSize: Self.step, bits: [0, 1])
        #expect(r.rc == -Errno.EINVAL)
        let d = try s.t.pagingDomain(s.hwpt)
        #expect(!d.trackingDirty)
        #expect(d.slots.values.allSatisfy { $0 & MockPagingDomain.dirtyBit == 0 })
        // A HWPT without dirty operations is EINVAL too (the mock's flag is off).
        #expect(try s.t.markDirty(s.m.hwpt, iova: Self.start, length: s.length, pageSize: Self.step, bits: [0]).rc == -Errno.EINVAL)
    }

    @Test func dirtyCountsOnlyPresentSlotsAndSetsTheirDirtyBit() throws {
        let s = try Self.dirtySetup()
        #expect(s.t.setTracking(s.hwpt, true) == 0)
        // 64 KiB mapped = bits 0..31; bit 40 lies past the mapping.
        let r = try s.t.markDirty(s.hwpt, iova: Self.start, length: 2 * s.length, pageSize: Self.step, bits: [0, 3, 5, 31, 40])
        #expect(r.rc == 0 && r.count == 4)
        let d = try s.t.pagingDomain(s.hwpt)
        let dirty = Set(d.slots.filter { $0.value & MockPagingDomain.dirtyBit != 0 }.keys)
        #expect(dirty == Set([0, 3, 5, 31].map { Self.start / Self.step + UInt64($0) }))
        // Argument checks come before the lookup.
        #expect(try s.t.markDirty(999, iova: Self.start, length: s.length, pageSize: 0, bits: []).rc == -Errno.EINVAL)
        #expect(try s.t.markDirty(s.hwpt, iova: Self.start, length: 0, pageSize: Self.step, bits: []).rc == -Errno.EINVAL)
        #expect(try s.t.markDirty(s.hwpt, iova: Self.start + 1024, length: s.length, pageSize: Self.step, bits: []).rc == -Errno.EINVAL)
        #expect(try s.t.markDirty(s.ioas, iova: Self.start, length: s.length, pageSize: Self.step, bits: []).rc == -Errno.ENOENT)
    }

    @Test func getDirtyBitmapReportsExactlyTheMarkedPagesAndClearsThemUnlessNoClear() throws {
        let s = try Self.dirtySetup()
        #expect(s.t.setTracking(s.hwpt, true) == 0)
        let marked: UInt64 = 1 << 0 | 1 << 3 | 1 << 5 | 1 << 31
        #expect(try s.t.markDirty(s.hwpt, iova: Self.start, length: s.length, pageSize: Self.step, bits: [0, 3, 5, 31]).count == 4)
        let noClear = try s.t.dirtyBitmap(s.hwpt, iova: Self.start, length: s.length, pageSize: Self.step, flags: UAPI.getDirtyBitmapNoClear)
        #expect(noClear.rc == 0 && noClear.words == [marked])
        let d = try s.t.pagingDomain(s.hwpt)
        #expect(d.slots.values.filter { $0 & MockPagingDomain.dirtyBit != 0 }.count == 4)
        let first = try s.t.dirtyBitmap(s.hwpt, iova: Self.start, length: s.length, pageSize: Self.step)
        #expect(first.rc == 0 && first.words == [marked])
        #expect(d.slots.values.allSatisfy { $0 & MockPagingDomain.dirtyBit == 0 })
        let second = try s.t.dirtyBitmap(s.hwpt, iova: Self.start, length: s.length, pageSize: Self.step)
        #expect(second.rc == 0 && second.words == [0])
        // 4 KiB pages: bit i covers slots 2i and 2i + 1.
        #expect(try s.t.markDirty(s.hwpt, iova: Self.start, length: s.length, pageSize: Self.step, bits: [1, 6, 7]).count == 3)
        let coarse = try s.t.dirtyBitmap(s.hwpt, iova: Self.start, length: s.length, pageSize: 4096)
        #expect(coarse.rc == 0 && coarse.words == [1 << 0 | 1 << 3])
        #expect(s.t.mock.warnings.isEmpty)
    }

    @Test func enablingTrackingAgainStartsFromACleanSnapshot() throws {
        let s = try Self.dirtySetup()
        #expect(s.t.setTracking(s.hwpt, true) == 0)
        #expect(try s.t.markDirty(s.hwpt, iova: Self.start, length: s.length, pageSize: Self.step, bits: [2, 9]).count == 2)
        #expect(s.t.setTracking(s.hwpt, false) == 0)
        #expect(try s.t.markDirty(s.hwpt, iova: Self.start, length: s.length, pageSize: Self.step, bits: [2]).rc == -Errno.EINVAL)
        #expect(s.t.setTracking(s.hwpt, true) == 0)
        let r = try s.t.dirtyBitmap(s.hwpt, iova: Self.start, length: s.length, pageSize: Self.step)
        #expect(r.rc == 0 && r.words == [0])
    }

    @Test func aDirtySlotOfAHugeIOPTEReportsTheWhole1MiB() throws {
        let s = try Self.dirtySetup(huge: true)
        let d = try s.t.pagingDomain(s.hwpt)
        try #require(d.isHuge && d.slots.count == 1024 && d.slots.values.allSatisfy { $0 & MockPagingDomain.hugeBit != 0 })
        #expect(s.t.setTracking(s.hwpt, true) == 0)
        // Slot 600 lies in the second 1 MiB IOPTE.
        #expect(try s.t.markDirty(s.hwpt, iova: Self.start, length: s.length, pageSize: Self.step, bits: [600]).count == 1)
        let r = try s.t.dirtyBitmap(s.hwpt, iova: Self.start, length: s.length, pageSize: Self.step)
        #expect(r.rc == 0)
        #expect(r.words == [UInt64](repeating: 0, count: 8) + [UInt64](repeating: .max, count: 8))
        #expect(d.slots.values.allSatisfy { $0 & MockPagingDomain.dirtyBit == 0 })
        let again = try s.t.dirtyBitmap(s.hwpt, iova: Self.start, length: s.length, pageSize: Self.step)
        #expect(again.words == [UInt64](repeating: 0, count: 16))
        // With 1 MiB bitmap pages, one bit per IOPTE.
        #expect(try s.t.markDirty(s.hwpt, iova: Self.start, length: s.length, pageSize: Self.step, bits: [0]).count == 1)
        let mib = try s.t.dirtyBitmap(s.hwpt, iova: Self.start, length: s.length, pageSize: 1 << 20)
        #expect(mib.rc == 0 && mib.words == [1])
    }

    // MARK: Nested

    struct Nested {
        let t: SelftestRig
        let ioas: UInt32
        let m: SelftestRig.MockDevice
        let parent: UInt32
        let n: UInt32
        let n2: UInt32
    }

    static func nestedSetup() throws -> Nested {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        let m = try t.requireMock(ioas)
        let parent = try t.requireHWPT(dev: m.idev, pt: ioas, flags: UAPI.hwptAllocNestParent)
        let n = try t.nested(dev: m.idev, parent: parent), n2 = try t.nested(dev: m.idev, parent: parent)
        try #require(n.rc == 0 && n2.rc == 0, "\(t.lastError)")
        return Nested(t: t, ioas: ioas, m: m, parent: parent, n: n.id, n2: n2.id)
    }

    static let D = SelftestRig.iotlbDefault
    static let T = MockNestedDomain.invalidateDataType

    @Test func checkIOTLBSeesTheAllocDataInAllFourSlots() throws {
        let s = try Self.nestedSetup()
        #expect(s.t.slots(.checkIOTLB, s.n, are: [Self.D, Self.D, Self.D, Self.D]))
        #expect(s.t.checkSlot(.checkIOTLB, s.n, slot: 0, 0) == -Errno.EINVAL)
        #expect(s.t.checkSlot(.checkIOTLB, s.n, slot: 4, Self.D) == -Errno.EINVAL)
        #expect(s.t.checkSlot(.checkIOTLB, s.parent, slot: 0, Self.D) == -Errno.ENOENT)
        let other = try s.t.nested(dev: s.m.idev, parent: s.parent, iotlb: 0x1234)
        #expect(other.rc == 0 && s.t.slots(.checkIOTLB, other.id, are: [0x1234, 0x1234, 0x1234, 0x1234]))
        let n = try #require((s.t.ctx.object(s.n) as? HWPTNested)?.domain as? MockNestedDomain)
        #expect(n.iotlb == [Self.D, Self.D, Self.D, Self.D])
    }

    @Test func invalidateOfOneEntryClearsOneSlotAndFlagAllClearsAll() throws {
        let s = try Self.nestedSetup()
        let r = try s.t.invalidate(s.n, type: Self.T, entries: [[0, 2]], entryLen: 8)
        #expect(r.rc == 0 && r.num == 1)
        #expect(s.t.slots(.checkIOTLB, s.n, are: [Self.D, Self.D, 0, Self.D]))
        let all = try s.t.invalidate(s.n2, type: Self.T, entries: [[MockNestedDomain.invalidateFlagAll, 0]], entryLen: 8)
        #expect(all.rc == 0 && all.num == 1)
        #expect(s.t.slots(.checkIOTLB, s.n2, are: [0, 0, 0, 0]))
        #expect(s.t.slots(.checkIOTLB, s.n, are: [Self.D, Self.D, 0, Self.D]))
        let none = try s.t.invalidate(s.n, type: Self.T, entries: [[0, 0]], entryLen: 8, num: 0)
        #expect(none.rc == 0 && none.num == 0)
        #expect(s.t.slots(.checkIOTLB, s.n, are: [Self.D, Self.D, 0, Self.D]))
    }

    @Test func invalidateWithEntryLen12IsEINVALWithNothingDone() throws {
        let s = try Self.nestedSetup()
        let r = try s.t.invalidate(s.n, type: Self.T, entries: [[0, 1, 0]], entryLen: 12)
        #expect(r.rc == -Errno.EINVAL && r.num == 0)
        #expect(s.t.slots(.checkIOTLB, s.n, are: [Self.D, Self.D, Self.D, Self.D]))
    }

    @Test func invalidateOfIOTLBID4IsEINVALAndEntryNumCountsTheEntriesDone() throws {
        let s = try Self.nestedSetup()
        let r = try s.t.invalidate(s.n, type: Self.T, entries: [[0, 1], [0, 3], [0, 4], [0, 0]], entryLen: 8)
        #expect(r.rc == -Errno.EINVAL && r.num == 2)
        #expect(s.t.slots(.checkIOTLB, s.n, are: [Self.D, 0, Self.D, 0]))
        // Even with FLAG_ALL the id is checked first.
        let all = try s.t.invalidate(s.n, type: Self.T, entries: [[MockNestedDomain.invalidateFlagAll, 4]], entryLen: 8)
        #expect(all.rc == -Errno.EINVAL && all.num == 0)
        #expect(s.t.slots(.checkIOTLB, s.n, are: [Self.D, 0, Self.D, 0]))
    }

    @Test func invalidateWithUnknownEntryFlagsIsEOPNOTSUPP() throws {
        let s = try Self.nestedSetup()
        let r = try s.t.invalidate(s.n, type: Self.T, entries: [[0, 0], [2, 1]], entryLen: 8)
        #expect(r.rc == -Errno.EOPNOTSUPP && r.num == 1)
        #expect(s.t.slots(.checkIOTLB, s.n, are: [0, Self.D, Self.D, Self.D]))
        let other = try s.t.invalidate(s.n, type: 0xdadbeef, entries: [], entryLen: 8)
        #expect(other.rc == -Errno.EINVAL && other.num == 0)
        #expect(try s.t.invalidate(s.parent, type: Self.T, entries: [[0, 0]], entryLen: 8).rc == -Errno.EINVAL)
    }
}
