import Testing
import Formats
import Hardware
import Kernel
import IOMMUFD

/// IOMMU_VFIO_IOAS and the VFIO type1 container ioctls /dev/iommu answers
/// (drivers/iommu/iommufd/vfio_compat.c), on the compatibility IOAS.
@Suite struct VFIOCompatTests {
    typealias C = IOMMUFDContext

    @Test func vfioIOASGetWithoutOneIsENODEVSetTakesOnlyAnIOASAndClearDestroysNothing() throws {
        let rig = try IOMMUFDRig()
        #expect(rig.vfioIOAS(UAPI.vfioIOASGet).rc == -Errno.ENODEV)
        let ioas = try rig.ioasAlloc()
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let devID = try rig.ctx.bind(dev)
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, 999).rc == -Errno.ENOENT)
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, devID).rc == -Errno.ENOENT)   // not an IOAS
        #expect(rig.vfioIOAS(UAPI.vfioIOASGet).rc == -Errno.ENODEV)
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, ioas).rc == 0)
        let get = rig.vfioIOAS(UAPI.vfioIOASGet)
        #expect(get.rc == 0 && get.id == ioas)
        #expect(rig.vfioIOAS(3).rc == -Errno.EOPNOTSUPP)
        #expect(rig.vfioIOAS(UAPI.vfioIOASGet, reserved: 1).rc == -Errno.EOPNOTSUPP)
        #expect(rig.vfioIOAS(UAPI.vfioIOASClear).rc == 0)
        #expect(rig.vfioIOAS(UAPI.vfioIOASGet).rc == -Errno.ENODEV)
        #expect(rig.ctx.object(ioas) != nil)
        #expect(rig.vfioIOAS(UAPI.vfioIOASClear).rc == 0)                   // clearing nothing is fine
        // Destroying the compatibility IOAS unsets it.
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, ioas).rc == 0)
        #expect(rig.run(.destroy) { $0.set32(4, ioas) }.rc == 0)
        #expect(rig.vfioIOAS(UAPI.vfioIOASGet).rc == -Errno.ENODEV)
    }

    @Test func checkExtensionAnswersType1Type1v2AndUnmapAllAndNeedsTheIOASOnlyForDMACacheCoherency() throws {
        let rig = try IOMMUFDRig()
        #expect(rig.ctx.ioctl(C.vfioGetAPIVersion, value: 0) == 0)
        for ext: UInt64 in [1, 3, 9] { #expect(rig.ctx.ioctl(C.vfioCheckExtension, value: ext) == 1) }
        // SPAPR (2, 7), EEH (5), the old nesting type (6), UPDATE_VADDR (10), anything else: 0.
        for ext: UInt64 in [2, 5, 6, 7, 10, 11, 1000] { #expect(rig.ctx.ioctl(C.vfioCheckExtension, value: ext) == 0) }
        #expect(rig.ctx.ioctl(C.vfioCheckExtension, value: 4) == -Errno.ENODEV)
        let ioas = try rig.ioasAlloc()
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, ioas).rc == 0)
        #expect(rig.ctx.ioctl(C.vfioCheckExtension, value: 4) == 1)          // no domain: coherent
        _ = try rig.attachedDevice(to: ioas)
        #expect(rig.ctx.ioctl(C.vfioCheckExtension, value: 4) == 1)          // VT-d domains enforce coherency
        // VFIO_IOMMU_DIRTY_PAGES and unknown numbers are not answered.
        var bytes = [UInt8](repeating: 0, count: 32)
        #expect(rig.ctx.ioctl(0x3b75, &bytes) == -Errno.ENOTTY)
    }

    @Test func setIOMMUTakesOnlyType1OrType1v2BeforeLookingForTheIOASAndType1DisablesHugePages() throws {
        let rig = try IOMMUFDRig()
        #expect(rig.ctx.ioctl(C.vfioSetIOMMU, value: 2) == -Errno.EINVAL)
        #expect(rig.ctx.ioctl(C.vfioSetIOMMU, value: 8) == -Errno.EINVAL)    // no-iommu mode is not on
        #expect(rig.ctx.ioctl(C.vfioSetIOMMU, value: 3) == -Errno.ENODEV)
        #expect(rig.ctx.ioctl(C.vfioSetIOMMU, value: 1) == -Errno.ENODEV)
        let ioas = try rig.ioasAlloc()
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, ioas).rc == 0)
        #expect(rig.ctx.ioctl(C.vfioSetIOMMU, value: 3) == 0)
        #expect(try rig.ioasObject(ioas).disableLargePages == false)
        #expect(rig.ctx.ioctl(C.vfioSetIOMMU, value: 1) == 0)
        let huge = rig.run(.option) { $0.set32(4, UAPI.optionHugePages); $0.set16(8, UAPI.optionOpGet); $0.set32(12, ioas) }
        #expect(huge.rc == 0 && huge.out.u64(16) == 0)
        // Type1 on an IOAS with mappings in a domain cannot disable huge pages: EINVAL.
        let other = try rig.ioasAlloc()
        _ = try rig.attachedDevice(to: other)
        #expect(rig.map(other, va: try rig.guestRAM(4096), length: 4096).rc == 0)
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, other).rc == 0)
        #expect(rig.ctx.ioctl(C.vfioSetIOMMU, value: 1) == -Errno.EINVAL)
    }

    @Test func mapDMAMapsAtTheFixedIOVAAndArgszOrUnknownFlagsAreEINVALBeforeTheIOASLookup() throws {
        let rig = try IOMMUFDRig()
        let ram = try rig.guestRAM(64 << 10)
        #expect(rig.vfioMapDMA(va: ram, iova: 0x10_0000, size: 16384, argsz: 31) == -Errno.EINVAL)
        #expect(rig.vfioMapDMA(va: ram, iova: 0x10_0000, size: 16384, flags: 0x4) == -Errno.EINVAL) // VADDR
        #expect(rig.vfioMapDMA(va: ram, iova: 0x10_0000, size: 16384) == -Errno.ENODEV)
        let ioas = try rig.ioasAlloc()
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, ioas).rc == 0)
        let (_, _, ep) = try rig.attachedDevice(to: ioas)
        #expect(rig.vfioMapDMA(va: ram, iova: 0x10_0000, size: 16384, argsz: 40) == 0)  // a larger argsz is fine
        #expect(try rig.ioasObject(ioas).mappings.map(\.iova) == [0x10_0000])
        #expect(rig.dma(ep, write: 0x10_1000, value: 0x3C)?.fault == nil)
        #expect(rig.read(va: ram + 0x1000, count: 2) == [0x3C, 0x3C])
        // Errors of the mapping come back as they are.
        #expect(rig.vfioMapDMA(va: ram, iova: 0x10_2000, size: 4096) == -Errno.EEXIST)
        #expect(rig.vfioMapDMA(va: ram, iova: 0x20_0800, size: 4096) == -Errno.EINVAL)  // not page aligned
        // Read-only: the device cannot write through it.
        #expect(rig.vfioMapDMA(va: ram + 0x8000, iova: 0x30_0000, size: 4096, flags: 1) == 0)
        #expect(rig.dma(ep, write: 0x30_0000)?.fault != nil)
    }

    @Test func unmapDMAWritesBackTheBytesUnmappedAndUnmapAllTakesOnlyIOVAAndSizeZero() throws {
        let rig = try IOMMUFDRig()
        #expect(rig.vfioUnmapDMA(iova: 0x10_0000, size: 4096, argsz: 23).rc == -Errno.EINVAL)
        #expect(rig.vfioUnmapDMA(iova: 0x10_0000, size: 4096).rc == -Errno.ENODEV)
        let ioas = try rig.ioasAlloc()
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, ioas).rc == 0)
        for flags: UInt32 in [0x1, 0x4] {                                      // GET_DIRTY_BITMAP, VADDR
            #expect(rig.vfioUnmapDMA(iova: 0x10_0000, size: 4096, flags: flags).rc == -Errno.EINVAL)
        }
        let ram = try rig.guestRAM(64 << 10)
        #expect(rig.vfioMapDMA(va: ram, iova: 0x10_0000, size: 16384) == 0)
        #expect(rig.vfioMapDMA(va: ram, iova: 0x20_0000, size: 8192) == 0)
        #expect(rig.vfioMapDMA(va: ram, iova: 0x30_0000, size: 4096) == 0)
        let one = rig.vfioUnmapDMA(iova: 0x0F_0000, size: 0x2_0000)           // a superset of one mapping
        #expect(one.rc == 0 && one.size == 16384)
        let bad = rig.vfioUnmapDMA(iova: 0x20_0000, size: 0, flags: 0x2)      // ALL with a non-zero iova
        #expect(bad.rc == -Errno.EINVAL && bad.size == 0)
        let badSize = rig.vfioUnmapDMA(iova: 0, size: 4096, flags: 0x2)
        #expect(badSize.rc == -Errno.EINVAL && badSize.size == 4096)          // nothing written back
        let all = rig.vfioUnmapDMA(iova: 0, size: 0, flags: 0x2)
        #expect(all.rc == 0 && all.size == 8192 + 4096)
        #expect(try rig.ioasObject(ioas).areaCount == 0)
        let empty = rig.vfioUnmapDMA(iova: 0, size: 0, flags: 0x2)
        #expect(empty.rc == 0 && empty.size == 0)
    }

    @Test func getInfoRewritesArgszToTheSizeNeededAndReportsPageSizesAndTheIOVARangeCapability() throws {
        let rig = try IOMMUFDRig()
        #expect(rig.vfioGetInfo(argsz: 15).rc == -Errno.EINVAL)
        #expect(rig.vfioGetInfo(argsz: 16).rc == -Errno.ENODEV)
        let ioas = try rig.ioasAlloc()
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, ioas).rc == 0)
        // Fixed part only: argsz says how much is needed, nothing past argsz is written.
        let short = rig.vfioGetInfo(argsz: 16)
        #expect(short.rc == 0 && short.out.u32(0) == 24 + 16 + 32 && short.out.u32(4) == 0x3)
        #expect(short.out.u64(8) == 0xFFFF_FFFF_FFFF_F000)                    // no domain: PAGE_MASK
        #expect(short.out.bytes[16..<24].allSatisfy { $0 == 0xEE })
        let fixed = rig.vfioGetInfo(argsz: 24)
        #expect(fixed.rc == 0 && fixed.out.u32(16) == 0)                      // no room for the caps: no cap_offset
        // Everything: DMA_AVAIL (id 3) at 24 chained to IOVA_RANGE (id 1) at 40, one range [0, U64_MAX].
        let full = rig.vfioGetInfo(argsz: 72)
        #expect(full.rc == 0 && full.out.u32(0) == 72 && full.out.u32(16) == 24)
        #expect(full.out.u16(24) == 3 && full.out.u16(26) == 1 && full.out.u32(28) == 40 && full.out.u32(32) == .max)
        #expect(full.out.u16(40) == 1 && full.out.u16(42) == 1 && full.out.u32(44) == 0 && full.out.u32(48) == 1)
        #expect(full.out.u64(56) == 0 && full.out.u64(64) == .max)
        // With a VT-d domain: its page sizes, and the holes around its reserved ranges.
        let (_, hwpt, _) = try rig.attachedDevice(to: ioas)
        let ranges = rig.run(.ioasIOVARanges) { $0.set32(4, ioas) }.out.u32(8)
        #expect(ranges == 2)
        let needed = 24 + 16 + 16 + 16 * Int(ranges)
        let again = rig.vfioGetInfo(argsz: 24)
        #expect(again.out.u32(0) == UInt32(needed) && again.out.u64(8) == hwpt.domain.pageSizes)
        let all = rig.vfioGetInfo(argsz: UInt32(needed))
        #expect(all.out.u32(16) == 24 && all.out.u32(48) == ranges)
        #expect(all.out.u64(56) == 0 && all.out.u64(64) == 0xFEDF_FFFF && all.out.u64(72) == 0xFEF0_0000)
    }

    @Test
    func getInfoWritesACapabilityOnlyWhenItFitsInArgszAndLeavesThePaddingAlone() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, ioas).rc == 0)
        // 8 bytes of room after the fixed part: DMA_AVAIL (12 bytes) is not written.
        let tiny = rig.vfioGetInfo(argsz: 32)
        #expect(tiny.rc == 0 && tiny.out.bytes[24..<32].allSatisfy { $0 == 0xEE })
        // Room for DMA_AVAIL and the IOVA_RANGE header but not its range: only DMA_AVAIL.
        let partial = rig.vfioGetInfo(argsz: 60)
        #expect(partial.rc == 0 && partial.out.u16(24) == 3 && partial.out.u32(28) == 40)
        #expect(partial.out.bytes[40..<60].allSatisfy { $0 == 0xEE })
        // The 4 bytes padding DMA_AVAIL to 16 are not written.
        let full = rig.vfioGetInfo(argsz: 72)
        #expect(full.rc == 0 && full.out.bytes[36..<40].allSatisfy { $0 == 0xEE })
    }

    @Test
    func type1UnmapDMACutsMappingsSoUnmappingPartOfOneSucceeds() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, ioas).rc == 0)
        #expect(rig.ctx.ioctl(C.vfioSetIOMMU, value: 1) == 0)
        let ram = try rig.guestRAM(64 << 10)
        #expect(rig.vfioMapDMA(va: ram, iova: 0x10_0000, size: 16384) == 0)
        let middle = rig.vfioUnmapDMA(iova: 0x10_1000, size: 4096)
        #expect(middle.rc == 0 && middle.size == 4096)
        let left = try rig.ioasObject(ioas).mappings
        #expect(left.map(\.iova) == [0x10_0000, 0x10_2000] && left.map(\.length) == [4096, 8192])
    }

    @Test func type1v2UnmapDMAOfPartOfAMappingIsENOENTAndUnmapsNothing() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, ioas).rc == 0)
        #expect(rig.ctx.ioctl(C.vfioSetIOMMU, value: 3) == 0)
        #expect(rig.vfioMapDMA(va: try rig.guestRAM(64 << 10), iova: 0x10_0000, size: 16384) == 0)
        let middle = rig.vfioUnmapDMA(iova: 0x10_1000, size: 4096)
        #expect(middle.rc == -Errno.ENOENT && middle.size == 0)
        #expect(try rig.ioasObject(ioas).areaCount == 1)
    }

    @Test
    func mapDMAWhoseVaddrPlusSizeOverflowsIsEOVERFLOW() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, ioas).rc == 0)
        #expect(rig.vfioMapDMA(va: 0xFFFF_FFFF_FFFF_F000, iova: 0x10_0000, size: 0x2000) == -Errno.EOVERFLOW)
        #expect(rig.vfioMapDMA(va: 0x4000_0000, iova: 0x10_0000, size: 0) == -Errno.EINVAL)
    }
}
