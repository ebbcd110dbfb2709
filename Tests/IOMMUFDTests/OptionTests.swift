import Testing
import Formats
import Hardware
import Kernel
import IOMMUFD

/// IOMMU_OPTION (drivers/iommu/iommufd/main.c iommufd_option, ioas.c iommufd_ioas_option).
@Suite struct OptionTests {
    /// {size, option_id @4, op @8 (u16), __reserved @10 (u16), object_id @12, val64 @16}: (rc, val64 after).
    func option(_ rig: IOMMUFDRig, _ id: UInt32, op: UInt16, object: UInt32 = 0, value: UInt64 = 0,
                reserved: UInt16 = 0) -> (rc: Int32, value: UInt64) {
        let (rc, out) = rig.run(.option) { s in
            s.set32(4, id); s.set16(8, op); s.set16(10, reserved); s.set32(12, object); s.set64(16, value)
        }
        return (rc, out.u64(16))
    }

    @Test func rlimitModeSetWithoutCapSysResourceIsEPERMWhileGetNeedsNoPrivilege() throws {
        let rig = try IOMMUFDRig()
        rig.ctx.capSysResource = false
        #expect(option(rig, UAPI.optionRlimitMode, op: UAPI.optionOpSet, value: 1).rc == -Errno.EPERM)
        #expect(option(rig, UAPI.optionRlimitMode, op: UAPI.optionOpSet, value: 0).rc == -Errno.EPERM)
        #expect(option(rig, UAPI.optionRlimitMode, op: UAPI.optionOpSet, value: 7).rc == -Errno.EPERM) // before EINVAL
        let get = option(rig, UAPI.optionRlimitMode, op: UAPI.optionOpGet, value: 0x55)
        #expect(get.rc == 0 && get.value == 0)
        #expect(rig.ctx.accountToProcess == false)
        // object_id is checked before the privilege; EPERM comes before EBUSY.
        #expect(option(rig, UAPI.optionRlimitMode, op: UAPI.optionOpSet, object: 1, value: 1).rc == -Errno.EOPNOTSUPP)
        _ = try rig.ioasAlloc()
        #expect(option(rig, UAPI.optionRlimitMode, op: UAPI.optionOpSet, value: 1).rc == -Errno.EPERM)
    }

    @Test func rlimitModeTakesOnlyZeroOrOneAndTheEmptyContextCheckComesFirst() throws {
        let rig = try IOMMUFDRig()
        #expect(option(rig, UAPI.optionRlimitMode, op: UAPI.optionOpSet, value: 2).rc == -Errno.EINVAL)
        #expect(option(rig, UAPI.optionRlimitMode, op: UAPI.optionOpSet, value: 1).rc == 0)
        #expect(option(rig, UAPI.optionRlimitMode, op: UAPI.optionOpGet).value == 1)
        #expect(option(rig, UAPI.optionRlimitMode, op: UAPI.optionOpSet, value: 0).rc == 0)
        #expect(option(rig, UAPI.optionRlimitMode, op: UAPI.optionOpGet).value == 0)
        let ioas = try rig.ioasAlloc()
        #expect(option(rig, UAPI.optionRlimitMode, op: UAPI.optionOpSet, value: 2).rc == -Errno.EBUSY)
        // Any object counts, and the context is empty again once it is gone.
        #expect(rig.run(.destroy) { $0.set32(4, ioas) }.rc == 0)
        #expect(option(rig, UAPI.optionRlimitMode, op: UAPI.optionOpSet, value: 1).rc == 0)
    }

    @Test func anUnknownOptionOpOrNonZeroReservedIsEOPNOTSUPPAndNothingIsWrittenBack() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        for id: UInt32 in [2, 3, .max] {
            let r = option(rig, id, op: UAPI.optionOpGet, object: ioas, value: 0x1234)
            #expect(r.rc == -Errno.EOPNOTSUPP && r.value == 0x1234)
        }
        let badOp = option(rig, UAPI.optionRlimitMode, op: 2, value: 0x1234)
        #expect(badOp.rc == -Errno.EOPNOTSUPP && badOp.value == 0x1234)
        #expect(option(rig, UAPI.optionHugePages, op: 2, object: ioas).rc == -Errno.EOPNOTSUPP)
        #expect(option(rig, UAPI.optionHugePages, op: 2, object: 999).rc == -Errno.ENOENT)  // the IOAS first
        #expect(option(rig, UAPI.optionHugePages, op: UAPI.optionOpGet, object: ioas, reserved: 1).rc == -Errno.EOPNOTSUPP)
        #expect(option(rig, UAPI.optionRlimitMode, op: UAPI.optionOpGet, reserved: 1).rc == -Errno.EOPNOTSUPP)
        #expect(option(rig, 9, op: UAPI.optionOpGet, reserved: 1).rc == -Errno.EOPNOTSUPP)
    }

    @Test func hugePagesGetReportsOneUntilDisabledAndTakesOnlyAnIOASID() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let devID = try rig.ctx.bind(dev)
        let fresh = option(rig, UAPI.optionHugePages, op: UAPI.optionOpGet, object: ioas, value: 0x77)
        #expect(fresh.rc == 0 && fresh.value == 1)
        #expect(option(rig, UAPI.optionHugePages, op: UAPI.optionOpGet, object: 999).rc == -Errno.ENOENT)
        #expect(option(rig, UAPI.optionHugePages, op: UAPI.optionOpGet, object: devID).rc == -Errno.ENOENT)
        #expect(option(rig, UAPI.optionHugePages, op: UAPI.optionOpGet, object: 0).rc == -Errno.ENOENT)
        // Disabling raises the alignment to PAGE_SIZE; enabling lowers it again.
        let off = option(rig, UAPI.optionHugePages, op: UAPI.optionOpSet, object: ioas, value: 0)
        #expect(off.rc == 0 && off.value == 0)
        #expect(option(rig, UAPI.optionHugePages, op: UAPI.optionOpGet, object: ioas).value == 0)
        #expect(rig.run(.ioasIOVARanges) { $0.set32(4, ioas) }.out.u64(24) == 4096)
        #expect(option(rig, UAPI.optionHugePages, op: UAPI.optionOpSet, object: ioas, value: 0).rc == 0) // again: no-op
        #expect(option(rig, UAPI.optionHugePages, op: UAPI.optionOpSet, object: ioas, value: 1).rc == 0)
        #expect(option(rig, UAPI.optionHugePages, op: UAPI.optionOpGet, object: ioas).value == 1)
        #expect(rig.run(.ioasIOVARanges) { $0.set32(4, ioas) }.out.u64(24) == 1)
        // A mapping that is not page aligned keeps huge pages on: EADDRINUSE, and GET still says 1.
        #expect(rig.map(ioas, va: 0x4000_0800, length: 0x800).rc == 0)
        #expect(option(rig, UAPI.optionHugePages, op: UAPI.optionOpSet, object: ioas, value: 0).rc == -Errno.EADDRINUSE)
        #expect(option(rig, UAPI.optionHugePages, op: UAPI.optionOpGet, object: ioas).value == 1)
    }
}
