import Testing
import Formats
import Hardware
@testable import Kernel
import IOMMUFD
@testable import Simulation

/// Dirty tracking on SMMUv3 through iommufd (Linux 6.17: a stage 1 HWPT whose CD has HA|HD;
/// `arm_smmu_set_dirty_tracking` returns 0, the hardware always tracks;
/// `arm_lpae_read_and_clear_dirty` reads and cleans the DBM leaves).
@Suite struct SMMUv3DirtyTrackingTests {
    let t = DirtyTrackingTests()

    @Test func aDirtyTrackingHWPTIsStage1AndHWInfoReportsTheCapability() throws {
        let s = try DirtyTrackingTests.setup(smmuv3: true)
        let info = s.rig.run(.getHWInfo) { $0.set32(8, 1) }
        #expect(info.rc == 0 && info.out.u64(32) & UAPI.hwCapDirtyTracking != 0)
        let driver = try #require(s.rig.machine.smmuDriver)
        let h = try #require(s.device?.group?.domain)
        #expect(h.flags.contains(.dirtyTracking) && driver.context(of: h)?.stage == .s1)
        let master = try #require(s.device?.driverData as? ArmSMMUMaster)
        let cd = ContextDescriptor(words: master.cd0)
        #expect(cd.ha && cd.hd)
        // NEST_PARENT | DIRTY_TRACKING: stage 2 does not track dirty pages (EOPNOTSUPP).
        let (dev, _) = try s.rig.addDevice("other", dev: 2)
        let id = try s.rig.ctx.bind(dev)
        let r = s.rig.hwptAlloc(dev: id, pt: s.ioas, flags: UAPI.hwptAllocDirtyTracking | UAPI.hwptAllocNestParent)
        #expect(r.rc == -Errno.EOPNOTSUPP)
    }

    @Test func writesShowInTheBitmapNoClearKeepsThemAndAClearingReadEmptiesIt() throws {
        let s = try DirtyTrackingTests.setup(smmuv3: true)
        #expect(t.setTracking(s, true) == 0)
        #expect(t.bitmap(s) == (0, 0), "enabling cleaned the writable-dirty fresh leaves")
        #expect(s.rig.dma(s.ep, write: 0x4000_3000)?.fault == nil)
        #expect(s.rig.dma(s.ep, write: 0x4000_5000)?.fault == nil)
        #expect(t.bitmap(s, noClear: true) == (0, 1 << 3 | 1 << 5))
        #expect(t.bitmap(s) == (0, 1 << 3 | 1 << 5))
        #expect(t.bitmap(s) == (0, 0))
        // The cached translation was invalidated with the clear: a new write is seen.
        #expect(s.rig.dma(s.ep, write: 0x4000_3000)?.fault == nil)
        #expect(t.bitmap(s) == (0, 1 << 3))
        #expect(s.rig.machine.oracle.violations.isEmpty)
    }

    @Test func aBlockIsReportedWhole() throws {
        let s = try DirtyTrackingTests.setup(contiguous: true, smmuv3: true)
        #expect(t.setTracking(s, true) == 0)
        #expect(s.rig.dma(s.ep, write: 0x4000_0000 + 0x12_3000)?.fault == nil)
        #expect(t.bitmap(s, pages: 64) == (0, .max))
    }

    @Test func aClearWithoutTheIOTLBSyncLosesAWriteAndTheOracleSaysSo() throws {
        for bug in [InjectedBugs(), .dirtyClearWithoutFlush] {
            let s = try DirtyTrackingTests.setup(smmuv3: true)
            s.rig.core.injectedBugs = bug
            #expect(t.setTracking(s, true) == 0)
            #expect(s.rig.dma(s.ep, write: 0x4000_4000)?.fault == nil)
            #expect(t.bitmap(s) == (0, 1 << 4))
            #expect(s.rig.dma(s.ep, write: 0x4000_4000)?.fault == nil)
            _ = t.bitmap(s)
            let v = s.rig.machine.oracle.violations
            if bug.isEmpty { #expect(v.isEmpty, "\(v)") } else { #expect(v.contains { $0.invariant == "dirty-write-missed" }, "\(v)") }
        }
    }
}
