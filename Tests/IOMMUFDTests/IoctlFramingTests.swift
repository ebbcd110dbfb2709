import Testing
import Kernel
import IOMMUFD

/// The dispatcher's framing rules (drivers/iommu/iommufd/main.c `iommufd_fops_ioctl`).
@Suite struct IoctlFramingTests {
    @Test func commandNumbersAreIOSemicolonAndTheLastIsHWQueueAlloc() {
        #expect(IOMMUFDCommand.destroy.number == 0x3b80)
        #expect(IOMMUFDCommand.hwQueueAlloc.number == 0x3b94)
        #expect(IOMMUFDCommand.allCases.count == 21)
        #expect(IOMMUFDCommand.hwptAlloc.size == 48 && IOMMUFDCommand.hwptAlloc.minimumSize == 24)
        #expect(IOMMUFDCommand.getHWInfo.minimumSize == 32 && IOMMUFDCommand.veventqAlloc.minimumSize == 28)
    }

    @Test func aNumberWithSizeOrDirectionBitsIsENOTTY() throws {
        let rig = try IOMMUFDRig()
        var s = StructBytes(size: 12)
        #expect(rig.ctx.ioctl(0xC00C_3b81, &s.bytes) == -Errno.ENOTTY)
    }

    @Test func anUnknownNumberGoesToVFIOCompatAndIsENOTTY() throws {
        let rig = try IOMMUFDRig()
        var s = StructBytes(size: 16)
        #expect(rig.ctx.ioctl(0x3ba0, &s.bytes) == -Errno.ENOTTY)
        #expect(rig.ctx.ioctl(0x3b75, &s.bytes) == -Errno.ENOTTY) // VFIO_IOMMU_DIRTY_PAGES
        #expect(rig.ctx.ioctl(0x3b64, value: 0) == 0)             // VFIO_GET_API_VERSION
    }

    @Test func aSizeBelowTheMinimumIsEINVAL() throws {
        let rig = try IOMMUFDRig()
        #expect(rig.run(.ioasAlloc, size: 8).rc == -Errno.EINVAL)
        #expect(rig.run(.hwptAlloc, size: 20).rc == -Errno.EINVAL)
    }

    @Test func nonZeroBytesPastTheKernelStructAreE2BIGAndZeroBytesAreAccepted() throws {
        let rig = try IOMMUFDRig()
        let bad = rig.run(.ioasAlloc, size: 16) { $0.set8(13, 1) }
        #expect(bad.rc == -Errno.E2BIG)
        let good = rig.run(.ioasAlloc, size: 16)
        #expect(good.rc == 0 && good.out.u32(8) == 1)
    }

    @Test func anArgumentShorterThanFourBytesOrThanItsSizeIsEFAULT() throws {
        let rig = try IOMMUFDRig()
        var tiny: [UInt8] = [12, 0]
        #expect(rig.ctx.ioctl(IOMMUFDCommand.ioasAlloc.number, &tiny) == -Errno.EFAULT)
        var short: [UInt8] = [12, 0, 0, 0, 0, 0, 0, 0]
        #expect(rig.ctx.ioctl(IOMMUFDCommand.ioasAlloc.number, &short) == -Errno.EFAULT)
    }

    @Test func aShorterGrownStructIsZeroExtendedAndGetsOnlyItsOwnBytesBack() throws {
        let rig = try IOMMUFDRig()
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let devID = try rig.ctx.bind(dev)
        // GET_HW_INFO of the 32-byte layout (before out_capabilities).
        let (rc, out) = rig.run(.getHWInfo, size: 32) { $0.set32(8, devID) }
        #expect(rc == 0)
        #expect(out.bytes.count == 32 && out.u32(24) == UAPI.hwInfoTypeIntelVTd && out.u32(12) == 24)
    }

    @Test func unknownFlagsAndReservedFieldsAreEOPNOTSUPP() throws {
        let rig = try IOMMUFDRig()
        #expect(rig.run(.ioasAlloc) { $0.set32(4, 1) }.rc == -Errno.EOPNOTSUPP)
        let ioas = try rig.ioasAlloc()
        #expect(rig.run(.ioasMap) { $0.set32(4, 8 | UAPI.mapReadable); $0.set32(8, ioas); $0.set64(24, 4096) }.rc == -Errno.EOPNOTSUPP)
        #expect(rig.run(.ioasIOVARanges) { $0.set32(4, ioas); $0.set32(12, 1) }.rc == -Errno.EOPNOTSUPP)
        #expect(rig.run(.option) { $0.set16(10, 1) }.rc == -Errno.EOPNOTSUPP)
    }

    @Test func objectIDsStartAtOneAndTheLowestFreeIDIsReused() throws {
        let rig = try IOMMUFDRig()
        let a = try rig.ioasAlloc(), b = try rig.ioasAlloc(), c = try rig.ioasAlloc()
        #expect([a, b, c] == [1, 2, 3])
        #expect(rig.run(.destroy) { $0.set32(4, b) }.rc == 0)
        #expect(try rig.ioasAlloc() == 2)
        #expect(try rig.ioasAlloc() == 4)
    }

    @Test func destroyOfAMissingIDIsENOENTAndOfAnIDInUseIsEBUSY() throws {
        let rig = try IOMMUFDRig()
        #expect(rig.run(.destroy) { $0.set32(4, 9) }.rc == -Errno.ENOENT)
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let devID = try rig.ctx.bind(dev)
        let ioas = try rig.ioasAlloc()
        let hwpt = rig.hwptAlloc(dev: devID, pt: ioas)
        #expect(hwpt.rc == 0)
        #expect(rig.run(.destroy) { $0.set32(4, ioas) }.rc == -Errno.EBUSY)   // the HWPT holds it
        #expect(rig.run(.destroy) { $0.set32(4, devID) }.rc == -Errno.EBUSY)  // the binding driver holds it
        #expect(rig.run(.destroy) { $0.set32(4, hwpt.id) }.rc == 0)
        #expect(rig.run(.destroy) { $0.set32(4, ioas) }.rc == 0)
    }

    @Test func anIDOfAnotherTypeIsENOENT() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        let fault = rig.run(.faultQueueAlloc)
        #expect(fault.rc == 0)
        #expect(rig.unmap(fault.out.u32(8), iova: 0, length: .max).rc == -Errno.ENOENT)
        #expect(rig.run(.hwptSetDirtyTracking) { $0.set32(8, ioas) }.rc == -Errno.ENOENT)
    }
}
