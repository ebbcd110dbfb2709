import Testing
import Formats
import Hardware
import Kernel
import IOMMUFD

/// IOMMU_IOAS_MAP_FILE (drivers/iommu/iommufd/ioas.c, io_pagetable.c iopt_map_file_pages):
/// pages of a memfd, identified by file and offset, pinned only when a domain needs them.
@Suite struct MapFileTests {
    @Test func anFdTheProcessHasNotOpenIsEBADFButOnlyAfterTheFlagOverflowPermissionAndIOASChecks() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        #expect(rig.mapFile(ioas, fd: 7, start: 0, length: 4096).rc == -Errno.EBADF)
        #expect(rig.mapFile(ioas, fd: -1, start: 0, length: 4096).rc == -Errno.EBADF)
        // Every earlier check wins over the descriptor.
        #expect(rig.mapFile(ioas, fd: 7, start: 0, length: 4096, flags: 0x8 | UAPI.mapReadable).rc == -Errno.EOPNOTSUPP)
        #expect(rig.mapFile(ioas, fd: 7, start: 0, length: .max).rc == -Errno.EOVERFLOW)
        #expect(rig.mapFile(ioas, fd: 7, start: 0, length: 4096, flags: 0).rc == -Errno.EINVAL)
        #expect(rig.mapFile(ioas + 100, fd: 7, start: 0, length: 4096).rc == -Errno.ENOENT)
        // Once the fd is open the same call maps.
        rig.memfd(64 << 10, fd: 7)
        #expect(rig.mapFile(ioas, fd: 7, start: 0, length: 4096).rc == 0)
        #expect(try rig.ioasObject(ioas).areaCount == 1)
    }

    @Test func memfdPagesArePinnedAndChargedOnlyWhenADomainNeedsThemAndReleasedWithTheMapping() throws {
        let rig = try IOMMUFDRig()
        let file = rig.memfd(64 << 10)
        let ioas = try rig.ioasAlloc()
        let m = rig.mapFile(ioas, start: 0, length: 16 << 10)
        #expect(m.rc == 0 && m.iova >= 4096)
        #expect(file.pinnedPages == 0 && rig.ctx.ledger.chargedPages == 0)
        // The first domain pins every page of the mapping, and charges each once.
        _ = try rig.attachedDevice(to: ioas)
        #expect(file.pinnedPages == 4 && rig.ctx.ledger.chargedPages == 4)
        #expect(rig.process.pinnedPages == 0) // the process's own memory is not involved
        // With a domain present a new mapping is pinned at once.
        #expect(rig.mapFile(ioas, start: 0x8000, length: 4096, iova: 0x80_0000).rc == 0)
        #expect(file.pinnedPages == 5 && rig.ctx.ledger.chargedPages == 5)
        #expect(rig.unmap(ioas, iova: m.iova, length: 16 << 10).rc == 0)
        #expect(file.pinnedPages == 1 && rig.ctx.ledger.chargedPages == 1)
        #expect(rig.unmap(ioas, iova: 0, length: .max).rc == 0)
        #expect(file.pinnedPages == 0 && rig.ctx.ledger.chargedPages == 0)
    }

    @Test func twoMappingsOfOneMemfdShareItsFramesSoDMAWrittenThroughOneIOVAIsReadThroughTheOther() throws {
        let rig = try IOMMUFDRig()
        let file = rig.memfd(64 << 10)
        let ioas = try rig.ioasAlloc()
        let (_, hwpt, ep) = try rig.attachedDevice(to: ioas)
        #expect(rig.mapFile(ioas, start: 0, length: 32 << 10, iova: 0x10_0000).rc == 0)
        #expect(rig.mapFile(ioas, start: 0x2000, length: 8 << 10, iova: 0x80_0000).rc == 0)
        // IOVA 0x10_2000 and 0x80_0000 are both file offset 0x2000.
        let phys = rig.core.iovaToPhys(hwpt.domain, 0x10_2000)
        #expect(phys != nil && phys == rig.core.iovaToPhys(hwpt.domain, 0x80_0000))
        let w = rig.dma(ep, write: 0x10_2040, value: 0xC3)
        #expect(w?.fault == nil && w?.transferred == 64)
        let r = rig.dmaRead(ep, 0x80_0040)
        #expect(r?.fault == nil && r?.data == [UInt8](repeating: 0xC3, count: 64))
        // Each mapping is its own page set: both pin (and charge) the shared pages.
        #expect(file.pinnedPages == 8 + 2 && rig.ctx.ledger.chargedPages == 10)
        #expect(rig.machine.oracle.violations.isEmpty)
    }

    @Test func aFileStartOffsetInsideAPageIsKeptInTheIOVAWhileTheAlignmentIsOneAndIsEINVALOnceItIsAPage() throws {
        let rig = try IOMMUFDRig()
        rig.memfd(64 << 10)
        let ioas = try rig.ioasAlloc()
        // No domain: alignment 1; the automatic IOVA keeps the file offset's in-page bits.
        let m = rig.mapFile(ioas, start: 0x1800, length: 0x800)
        #expect(m.rc == 0 && m.iova & 0xFFF == 0x800)
        // A domain raises the alignment to 4 KiB: the existing mapping does not fit it.
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let devID = try rig.ctx.bind(dev)
        #expect(throws: Errno(Errno.EADDRINUSE)) { try rig.ctx.attach(devID, to: ioas) }
        #expect(rig.unmap(ioas, iova: 0, length: .max).rc == 0)
        try rig.ctx.attach(devID, to: ioas)
        #expect(try rig.ioasObject(ioas).iovaAlignment == 4096)
        // Automatic: the offset's alignment (2 KiB) is below the IOAS's.
        #expect(rig.mapFile(ioas, start: 0x1800, length: 0x1000).rc == -Errno.EINVAL)
        // Fixed: the in-page offset of the start is not aligned.
        #expect(rig.mapFile(ioas, start: 0x1800, length: 0x1000, iova: 0x10_0000).rc == -Errno.EINVAL)
        // Lengths and IOVAs must be aligned too.
        #expect(rig.mapFile(ioas, start: 0x1000, length: 0x800, iova: 0x10_0000).rc == -Errno.EINVAL)
        #expect(rig.mapFile(ioas, start: 0x1000, length: 0x1000, iova: 0x10_0800).rc == -Errno.EINVAL)
        #expect(rig.mapFile(ioas, start: 0x1000, length: 0x1000, iova: 0x10_0000).rc == 0)
        #expect(try rig.ioasObject(ioas).areaCount == 1)
    }

    @Test func iovaOrLengthOfU64MaxAndAFileRangeEndingPastU64MaxAreEOVERFLOWAndLengthZeroIsEINVAL() throws {
        let rig = try IOMMUFDRig()
        rig.memfd(64 << 10)
        let ioas = try rig.ioasAlloc()
        #expect(rig.mapFile(ioas, start: 0, length: 4096, iova: .max).rc == -Errno.EOVERFLOW)
        // iova is checked even without FIXED_IOVA.
        let unfixed = rig.run(.ioasMapFile) { s in
            s.set32(4, UAPI.mapReadable); s.set32(8, ioas); s.set32(12, 3); s.set64(24, 4096); s.set64(32, .max)
        }
        #expect(unfixed.rc == -Errno.EOVERFLOW)
        #expect(rig.mapFile(ioas, start: 0, length: .max).rc == -Errno.EOVERFLOW)
        // EOVERFLOW comes before the permission check.
        #expect(rig.mapFile(ioas, start: 0, length: .max, flags: 0).rc == -Errno.EOVERFLOW)
        #expect(rig.mapFile(ioas, start: .max - 0xFFF, length: 0x2000).rc == -Errno.EOVERFLOW)
        #expect(rig.mapFile(ioas, start: 0, length: 0).rc == -Errno.EINVAL)
        // A fixed IOVA whose end passes U64_MAX.
        #expect(rig.mapFile(ioas, start: 0, length: 0x2000, iova: .max - 0xFFF).rc == -Errno.EOVERFLOW)
        #expect(try rig.ioasObject(ioas).areaCount == 0)
    }
}
