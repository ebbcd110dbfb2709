import Testing
import Formats
import Hardware
import Kernel
import IOMMUFD
@testable import Simulation

/// Dirty tracking on VT-d through iommufd: SSADE set in the PASID entries of a
/// DIRTY_TRACKING HWPT, the unit setting D on writes, GET_DIRTY_BITMAP reading and
/// clearing it (with the IOTLB flush that makes later writes set D again).
@Suite struct DirtyTrackingTests {
    struct Setup {
        let rig: IOMMUFDRig
        let ep: PCIeEndpoint
        let ioas: UInt32
        let hwpt: UInt32
        let bitmap: UInt64
        var device: Device? = nil
    }

    static func setup(contiguous: Bool = false, smmuv3: Bool = false) throws -> Setup {
        let rig = try IOMMUFDRig(memory: 128 << 20, smmuv3: smmuv3)
        let (dev, ep) = try rig.addDevice("nic", dev: 1)
        let id = try rig.ctx.bind(dev)
        let ioas = try rig.ioasAlloc()
        let h = rig.hwptAlloc(dev: id, pt: ioas, flags: UAPI.hwptAllocDirtyTracking)
        try #require(h.rc == 0, "\(rig.ctx.lastError.map { "\($0)" } ?? "")")
        try rig.ctx.attach(id, to: h.id)
        let ram = contiguous ? try rig.process.mmapContiguous(length: 2 << 20, permissions: .readWrite) : try rig.touchedRAM(64 << 10)
        #expect(rig.map(ioas, va: ram, length: contiguous ? 2 << 20 : 64 << 10, iova: 0x4000_0000).rc == 0)
        return Setup(rig: rig, ep: ep, ioas: ioas, hwpt: h.id, bitmap: try rig.touchedRAM(4096), device: dev)
    }

    func setTracking(_ s: Setup, _ on: Bool) -> Int32 {
        s.rig.run(.hwptSetDirtyTracking) { $0.set32(4, on ? UAPI.dirtyTrackingEnable : 0); $0.set32(8, s.hwpt) }.rc
    }

    /// GET_DIRTY_BITMAP over `pages` 4 KiB pages from 0x4000_0000; returns (rc, first word).
    func bitmap(_ s: Setup, pages: UInt64 = 16, noClear: Bool = false) -> (Int32, UInt64) {
        _ = [UInt8](repeating: 0, count: 64).withUnsafeBytes { s.rig.process.copyOut(to: s.bitmap, from: $0) }
        let rc = s.rig.run(.hwptGetDirtyBitmap) { b in
            b.set32(4, s.hwpt); b.set32(8, noClear ? UAPI.getDirtyBitmapNoClear : 0)
            b.set64(16, 0x4000_0000); b.set64(24, pages << 12); b.set64(32, 4096); b.set64(40, s.bitmap)
        }.rc
        return (rc, StructBytes(bytes: s.rig.read(va: s.bitmap, count: 8)).u64(0))
    }

    @Test func aDirtyTrackingHWPTIsAllocatedWhereTheUnitHasSSADSAndHWInfoSaysSo() throws {
        let s = try Self.setup()
        let info = s.rig.run(.getHWInfo) { $0.set32(8, 1) }
        #expect(info.rc == 0 && info.out.u64(32) & UAPI.hwCapDirtyTracking != 0)
    }

    /// v6.17 io_pagetable.c ignores what the walk returns: the driver's EINVAL (tracking
    /// off) is not reported, and nothing is set in the bitmap.
    @Test func readingBitsWhileTrackingIsOffReturnsZeroWithAnEmptyBitmap() throws {
        let s = try Self.setup()
        #expect(s.rig.dma(s.ep, write: 0x4000_0000 + 0x1000)?.fault == nil)
        let (rc, word) = bitmap(s)
        #expect(rc == 0 && word == 0)
    }

    @Test func writesAndOnlyWritesShowInTheBitmapAndAClearingReadEmptiesIt() throws {
        let s = try Self.setup()
        // A write before tracking starts is not reported (enabling clears first).
        #expect(s.rig.dma(s.ep, write: 0x4000_9000)?.fault == nil)
        #expect(setTracking(s, true) == 0)
        #expect(s.rig.dma(s.ep, write: 0x4000_3000)?.fault == nil)
        #expect(s.rig.dma(s.ep, write: 0x4000_5000)?.fault == nil)
        var done: PCIeEndpoint.Completion?
        s.ep.submit(.read(0x4000_7000, length: 64)) { done = $0 }
        try s.rig.machine.scheduler.wait(until: { done != nil }, timeoutNs: 1_000_000)
        let (rc, word) = bitmap(s, noClear: true)
        #expect(rc == 0 && word == (1 << 3 | 1 << 5))
        #expect(bitmap(s) == (0, 1 << 3 | 1 << 5))   // NO_CLEAR kept them
        #expect(bitmap(s) == (0, 0))                 // that read cleared them
        #expect(s.rig.machine.oracle.violations.isEmpty)
    }

    @Test func aWriteThroughATranslationCachedBeforeTheClearSetsDAgain() throws {
        let s = try Self.setup()
        #expect(setTracking(s, true) == 0)
        #expect(s.rig.dma(s.ep, write: 0x4000_2000)?.fault == nil)   // cached with D set
        #expect(bitmap(s) == (0, 1 << 2))
        #expect(s.rig.dma(s.ep, write: 0x4000_2000)?.fault == nil)   // the clear flushed the IOTLB
        #expect(bitmap(s) == (0, 1 << 2))
    }

    @Test func aSuperpageIsReportedWhole() throws {
        let s = try Self.setup(contiguous: true)
        #expect(setTracking(s, true) == 0)
        #expect(s.rig.dma(s.ep, write: 0x4000_0000 + 0x12_3000)?.fault == nil)
        let (rc, word) = bitmap(s, pages: 64)
        #expect(rc == 0 && word == .max, "all 64 reported pages of the 2 MiB leaf")
    }

    @Test func turningTrackingOffClearsSSADEAndItsFlagsAreChecked() throws {
        let s = try Self.setup()
        #expect(setTracking(s, true) == 0)
        #expect(setTracking(s, false) == 0)
        #expect(s.rig.dma(s.ep, write: 0x4000_0000 + 0x2000)?.fault == nil)
        #expect(bitmap(s) == (0, 0), "a write after tracking stopped is not reported")
        #expect(s.rig.run(.hwptSetDirtyTracking) { $0.set32(4, 2); $0.set32(8, s.hwpt) }.rc == -Errno.EOPNOTSUPP)
    }
}

/// The oracle's dirty completeness: a write before a clearing read is in that read.
@Suite struct DirtyCompletenessTests {
    static func run(bug: InjectedBugs) throws -> [Violation] {
        let s = try DirtyTrackingTests.setup()
        s.rig.core.injectedBugs = bug
        let t = DirtyTrackingTests()
        #expect(t.setTracking(s, true) == 0)
        #expect(s.rig.dma(s.ep, write: 0x4000_4000)?.fault == nil)
        #expect(t.bitmap(s) == (0, 1 << 4))
        // Written again through the translation cached with D set before the clear.
        #expect(s.rig.dma(s.ep, write: 0x4000_4000)?.fault == nil)
        _ = t.bitmap(s)
        return s.rig.machine.oracle.violations
    }

    @Test func aWriteBeforeAClearingReadIsReportedByIt() throws {
        #expect(try Self.run(bug: []).isEmpty)
    }

    @Test func aClearWithoutTheIOTLBFlushLosesAWriteAndTheOracleSaysSo() throws {
        let v = try Self.run(bug: .dirtyClearWithoutFlush)
        #expect(v.contains { $0.invariant == "dirty-write-missed" }, "\(v)")
    }
}
