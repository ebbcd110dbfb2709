import Testing
import Platform
import Kernel
import IOMMUFD
@testable import Simulation

/// PASID_ATTACH / REPLACE / DETACH / CHECK_HWPT with the mock's pasid 1024 quirk (notes:
/// mock-driver §2 ops 18–21, §3.12), and TRIGGER_IOPF into a fault queue (§2 op 15, §3.8).
@Suite struct SelftestPASIDFaultTests {
    struct PASIDSetup {
        let t: SelftestRig
        let ioas: UInt32
        let m: SelftestRig.MockDevice   // PASID-capable
        let np: SelftestRig.MockDevice  // not
        let s2: UInt32, s2b: UInt32, parent: UInt32
    }

    /// A PASID device (RID on the PASID-capable `s2`) and a plain one; two PASID-capable
    /// HWPTs and a NEST_PARENT one that is not.
    static func pasidSetup() throws -> PASIDSetup {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        let m = try t.requireMock(ioas, flags: SelftestRig.pasid)
        let np = try t.requireMock(ioas, flags: 0)
        let s2 = try t.requireHWPT(dev: m.idev, pt: ioas, flags: UAPI.hwptAllocPASID)
        let s2b = try t.requireHWPT(dev: m.idev, pt: ioas, flags: UAPI.hwptAllocPASID)
        let parent = try t.requireHWPT(dev: m.idev, pt: ioas, flags: UAPI.hwptAllocNestParent)
        #expect(t.pasidOp(.pasidAttach, m.stdev, pasid: 100, s2).rc == -Errno.EINVAL) // RID on a non-PASID HWPT
        try #require(t.replace(m.stdev, s2).rc == 0)
        return PASIDSetup(t: t, ioas: ioas, m: m, np: np, s2: s2, s2b: s2b, parent: parent)
    }

    @Test func pasidAttachReplaceDetachAreSeenByCheckHWPT() throws {
        let s = try Self.pasidSetup()
        let t = s.t
        #expect(t.opU32(.pasidDetach, id: s.m.stdev, 100) == 0) // nothing attached: still 0
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 100, 0).rc == 0)
        let a = t.pasidOp(.pasidAttach, s.m.stdev, pasid: 100, s.s2)
        #expect(a.rc == 0 && a.id == s.s2)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 100, s.s2).rc == 0)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 100, s.s2b).rc == -Errno.EINVAL)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 100, 0).rc == -Errno.EINVAL)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 100, 999).rc == -Errno.ENOENT)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 100, s.ioas).rc == -Errno.EINVAL)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 200, 0).rc == 0)
        #expect(t.pasidOp(.pasidAttach, s.m.stdev, pasid: 100, s.s2b).rc == -Errno.EBUSY)
        let r = t.pasidOp(.pasidReplace, s.m.stdev, pasid: 100, s.s2b)
        #expect(r.rc == 0 && r.id == s.s2b)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 100, s.s2b).rc == 0)
        #expect(t.pasidOp(.pasidReplace, s.m.stdev, pasid: 100, s.ioas).rc == -Errno.EINVAL)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 100, s.s2b).rc == 0)
        #expect(t.pasidOp(.pasidReplace, s.m.stdev, pasid: 200, s.s2).rc == -Errno.EINVAL) // not attached
        #expect(t.destroy(s.s2b) == -Errno.EBUSY)
        #expect(t.opU32(.pasidDetach, id: s.m.stdev, 100) == 0)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 100, 0).rc == 0)
        #expect(t.pasidOp(.pasidAttach, s.m.stdev, pasid: 100, s.parent).rc == -Errno.EINVAL) // not PASID-capable
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 100, 0).rc == 0)
        #expect(t.destroy(s.s2b) == 0)
    }

    @Test func pasid1024SecondSetFailsENOMEMAndKeepsTheOldHWPT() throws {
        let s = try Self.pasidSetup()
        let t = s.t
        #expect(t.pasidOp(.pasidAttach, s.m.stdev, pasid: 1024, s.s2).rc == 0)
        #expect(t.pasidOp(.pasidReplace, s.m.stdev, pasid: 1024, s.s2b).rc == -Errno.ENOMEM)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 1024, s.s2).rc == 0)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 1024, s.s2b).rc == -Errno.EINVAL)
        // The failure disarmed it: the next replace works (and arms it again).
        #expect(t.pasidOp(.pasidReplace, s.m.stdev, pasid: 1024, s.s2b).rc == 0)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 1024, s.s2b).rc == 0)
        #expect(t.pasidOp(.pasidReplace, s.m.stdev, pasid: 1024, s.s2).rc == -Errno.ENOMEM)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 1024, s.s2b).rc == 0)
        // Detach (the blocked domain) disarms: attach then replace behaves as at first.
        #expect(t.pasidOp(.pasidReplace, s.m.stdev, pasid: 1024, s.s2).rc == 0)
        #expect(t.opU32(.pasidDetach, id: s.m.stdev, 1024) == 0)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 1024, 0).rc == 0)
        #expect(t.pasidOp(.pasidAttach, s.m.stdev, pasid: 1024, s.s2b).rc == 0)
        #expect(t.pasidOp(.pasidReplace, s.m.stdev, pasid: 1024, s.s2).rc == -Errno.ENOMEM)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.stdev, pasid: 1024, s.s2b).rc == 0)
        // Other PASIDs have no such rule.
        #expect(t.pasidOp(.pasidAttach, s.m.stdev, pasid: 1023, s.s2).rc == 0)
        #expect(t.pasidOp(.pasidReplace, s.m.stdev, pasid: 1023, s.s2b).rc == 0)
        #expect(t.pasidOp(.pasidReplace, s.m.stdev, pasid: 1023, s.s2).rc == 0)
    }

    @Test func pasidAttachOnADeviceWithoutPASIDIsEINVAL() throws {
        let s = try Self.pasidSetup()
        let t = s.t
        #expect(t.pasidOp(.pasidAttach, s.np.stdev, pasid: 100, s.s2).rc == -Errno.EINVAL)
        #expect(t.replace(s.np.stdev, s.s2).rc == 0) // its RID may use a PASID-capable HWPT
        #expect(t.pasidOp(.pasidAttach, s.np.stdev, pasid: 100, s.s2b).rc == -Errno.EINVAL)
        #expect(t.pasidOp(.pasidAttach, s.np.stdev, pasid: 1, s.s2b).rc == -Errno.EINVAL)
        #expect(t.opU32(.pasidDetach, id: s.np.stdev, 1) == 0)
        #expect(t.pasidOp(.pasidAttach, 999, pasid: 100, s.s2).rc == -Errno.ENOENT)
        #expect(t.pasidOp(.pasidCheckHWPT, s.m.idev, pasid: 100, 0).rc == -Errno.ENOENT) // an idev, not a stdev
        #expect(t.opU32(.pasidDetach, id: 999, 100) == -Errno.ENOENT)
    }

    // MARK: TRIGGER_IOPF

    func triggerIOPF(_ t: SelftestRig, dev: UInt32, pasid: UInt32 = 0, group: UInt32 = 2, perm: UInt32 = 3,
                     addr: UInt64 = 0xdeadbeaf) -> Int32 {
        t.cmd(.triggerIOPF) { s in s.set32(16, dev); s.set32(20, pasid); s.set32(24, group); s.set32(28, perm); s.set64(32, addr) }.rc
    }

    @Test func triggerIOPFOnAFaultHWPTQueuesOneRecordWithTheIdevAndTheGivenFields() throws {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        let m = try t.requireMock(ioas)
        let f = t.rig.run(.faultQueueAlloc)
        try #require(f.rc == 0)
        let fault = try #require(t.ctx.object(f.out.u32(8)) as? FaultObject)
        let h = try t.hwptAlloc(dev: m.idev, pt: ioas, flags: UAPI.hwptFaultIDValid, fault: fault.id)
        try #require(h.rc == 0, "\(t.lastError)")
        let r = t.replace(m.stdev, h.id)
        #expect(r.rc == 0 && r.id == h.id)
        #expect(triggerIOPF(t, dev: m.idev) == 0)
        let bytes = try fault.read(count: 80)
        #expect(bytes.count == 40)
        let rec = FaultObject.decode(bytes)
        #expect(rec.devID == m.idev)
        #expect(rec.flags == 2)          // LAST_PAGE
        #expect(rec.pasid == 0)
        #expect(rec.groupIndex == 2 && rec.permissions == 3)
        #expect(rec.address == 0xdeadbeaf && rec.length == 0)
        #expect(try fault.read(count: 40).isEmpty)
        // Other values go through as given.
        #expect(triggerIOPF(t, dev: m.idev, group: 7, perm: 1, addr: 0x1234_5000) == 0)
        let rec2 = FaultObject.decode(try fault.read(count: 40))
        #expect(rec2.devID == m.idev && rec2.groupIndex == 7 && rec2.permissions == 1 && rec2.address == 0x1234_5000)
        #expect(rec2.cookie != rec.cookie)
        // A response is taken once.
        var resp = StructBytes(bytes: [UInt8](repeating: 0, count: 8))
        resp.set32(0, rec.cookie)
        #expect(try fault.write(resp.bytes) == 8)
        #expect(triggerIOPF(t, dev: 999) == -Errno.ENOENT)
        #expect(triggerIOPF(t, dev: m.stdev) == -Errno.ENOENT)
    }

    @Test func triggerIOPFWithoutAFaultHandlerReturnsZeroAndQueuesNothing() throws {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        let m = try t.requireMock(ioas)
        let f = t.rig.run(.faultQueueAlloc)
        let fault = try #require(t.ctx.object(f.out.u32(8)) as? FaultObject)
        let h = try t.hwptAlloc(dev: m.idev, pt: ioas, flags: UAPI.hwptFaultIDValid, fault: fault.id)
        try #require(h.rc == 0)
        // The device sits on its auto HWPT, which has no handler.
        #expect(triggerIOPF(t, dev: m.idev) == 0)
        #expect(try fault.read(count: 40).isEmpty)
        #expect(fault.queue.undelivered == 0)
        // Back off the fault HWPT: dropped again.
        #expect(t.replace(m.stdev, h.id).rc == 0)
        #expect(t.replace(m.stdev, ioas).rc == 0)
        #expect(triggerIOPF(t, dev: m.idev) == 0)
        #expect(try fault.read(count: 40).isEmpty)
    }
}
