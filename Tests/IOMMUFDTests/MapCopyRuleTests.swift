import Testing
import Formats
import Hardware
import Kernel
import IOMMUFD

/// IOMMU_IOAS_MAP check order (drivers/iommu/iommufd/ioas.c iommufd_ioas_map,
/// io_pagetable.c iopt_map_user_pages / iopt_alloc_iova).
@Suite struct IOASMapRuleTests {
    @Test func iovaOrLengthOfU64MaxIsEOVERFLOWEvenWithoutFixedIOVAAndBeforeThePermissionCheck() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        func map(flags: UInt32, iova: UInt64, length: UInt64, ioasID: UInt32? = nil) -> Int32 {
            rig.run(.ioasMap) { s in
                s.set32(4, flags); s.set32(8, ioasID ?? ioas); s.set64(16, 0x4000_0000); s.set64(24, length); s.set64(32, iova)
            }.rc
        }
        #expect(map(flags: UAPI.mapReadable, iova: .max, length: 4096) == -Errno.EOVERFLOW)  // iova unused, still checked
        #expect(map(flags: UAPI.mapReadable | UAPI.mapFixedIOVA, iova: .max, length: 4096) == -Errno.EOVERFLOW)
        #expect(map(flags: UAPI.mapReadable, iova: 0, length: .max) == -Errno.EOVERFLOW)
        #expect(map(flags: 0, iova: 0, length: .max) == -Errno.EOVERFLOW)                    // before EINVAL
        #expect(map(flags: UAPI.mapReadable, iova: .max, length: 4096, ioasID: 999) == -Errno.EOVERFLOW) // before ENOENT
        #expect(map(flags: UAPI.mapReadable, iova: .max - 1, length: 4096) == 0)               // below U64_MAX: ignored
        #expect(try rig.ioasObject(ioas).areaCount == 1)
    }

    @Test func userVAPlusLengthOverflowIsEOVERFLOWBeforeTheLengthChecksAndLengthZeroIsEINVAL() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        #expect(rig.map(ioas, va: 0xFFFF_FFFF_FFFF_F000, length: 0x2000).rc == -Errno.EOVERFLOW)
        #expect(rig.map(ioas, va: 0xFFFF_FFFF_FFFF_F000, length: 0x2000, iova: 0x10_0000).rc == -Errno.EOVERFLOW)
        #expect(rig.map(ioas, va: 0x4000_0000, length: 0).rc == -Errno.EINVAL)
        // A fixed IOVA whose end passes U64_MAX is EOVERFLOW too.
        #expect(rig.map(ioas, va: 0x4000_0000, length: 0x2000, iova: .max - 0xFFF).rc == -Errno.EOVERFLOW)
        #expect(try rig.ioasObject(ioas).areaCount == 0)
    }

    @Test func aMappingNeitherReadableNorWriteableIsEINVALBeforeTheIOASLookupAndUnknownFlagsAreEOPNOTSUPP() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        #expect(rig.map(ioas, va: 0x4000_0000, length: 4096, flags: 0).rc == -Errno.EINVAL)
        #expect(rig.map(ioas, va: 0x4000_0000, length: 4096, iova: 0x10_0000, flags: 0).rc == -Errno.EINVAL) // FIXED_IOVA alone
        #expect(rig.map(999, va: 0x4000_0000, length: 4096, flags: 0).rc == -Errno.EINVAL)
        #expect(rig.map(999, va: 0x4000_0000, length: 4096, flags: UAPI.mapWriteable).rc == -Errno.ENOENT)
        #expect(rig.map(ioas, va: 0x4000_0000, length: 4096, flags: UAPI.mapReadable | 0x8).rc == -Errno.EOPNOTSUPP)
        let reserved = rig.run(.ioasMap) { s in
            s.set32(4, UAPI.mapReadable); s.set32(8, ioas); s.set32(12, 1); s.set64(16, 0x4000_0000); s.set64(24, 4096)
        }
        #expect(reserved.rc == -Errno.EOPNOTSUPP)
        // Write-only is a valid mapping.
        #expect(rig.map(ioas, va: 0x4000_0000, length: 4096, flags: UAPI.mapWriteable).rc == 0)
    }

    @Test func automaticIOVAIsENOSPCWhenTheAllowedRangesAreTooSmallWhileAFixedIOVAOutsideThemIsMapped() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        #expect(try rig.allowIOVAs(ioas, [(0x10_0000, 0x10_FFFF)]) == 0)                 // 64 KiB
        #expect(rig.map(ioas, va: 0x4000_0000, length: 128 << 10).rc == -Errno.ENOSPC)
        let fits = rig.map(ioas, va: 0x4000_0000, length: 64 << 10)
        #expect(fits.rc == 0 && fits.iova == 0x10_0000)
        #expect(rig.map(ioas, va: 0x4000_0000, length: 4096).rc == -Errno.ENOSPC)         // the range is full
        // Allowed ranges do not constrain FIXED_IOVA.
        #expect(rig.map(ioas, va: 0x4000_0000, length: 4096, iova: 0x4000_0000).rc == 0)
        #expect(try rig.ioasObject(ioas).areaCount == 2)
        // A second allowed range takes what the first cannot.
        #expect(try rig.allowIOVAs(ioas, [(0x10_0000, 0x10_FFFF), (0x100_0000, 0x1FF_FFFF)]) == 0)
        let second = rig.map(ioas, va: 0x4000_0000, length: 128 << 10)
        #expect(second.rc == 0 && second.iova == 0x100_0000)
    }
}

/// IOMMU_IOAS_COPY check order (ioas.c iommufd_ioas_copy, io_pagetable.c iopt_get_pages /
/// iopt_map_pages).
@Suite struct IOASCopyRuleTests {
    @Test func aWriteableCopyOfPagesMappedWithoutWriteIsEPERMWhileAReadableCopyIsFine() throws {
        let rig = try IOMMUFDRig()
        let a = try rig.ioasAlloc(), b = try rig.ioasAlloc()
        #expect(rig.map(a, va: 0x4000_0000, length: 8192, iova: 0x10_0000, flags: UAPI.mapReadable).rc == 0)
        #expect(rig.copy(from: a, 0x10_0000, to: b, 0x20_0000, length: 8192, flags: IOMMUFDRig.rw).rc == -Errno.EPERM)
        #expect(rig.copy(from: a, 0x10_0000, to: b, nil, length: 8192, flags: UAPI.mapWriteable).rc == -Errno.EPERM)
        #expect(try rig.ioasObject(b).areaCount == 0)
        // A source over two mappings, the first read-only: still EPERM, and nothing is left.
        #expect(rig.map(a, va: 0x4100_0000, length: 8192, iova: 0x10_2000).rc == 0)
        #expect(rig.copy(from: a, 0x10_1000, to: b, 0x20_0000, length: 8192, flags: IOMMUFDRig.rw).rc == -Errno.EPERM)
        #expect(try rig.ioasObject(b).areaCount == 0)
        // Readable copies of the same pages are fine; the writable pages may be copied writeable.
        #expect(rig.copy(from: a, 0x10_1000, to: b, 0x20_0000, length: 8192).rc == 0)
        #expect(rig.copy(from: a, 0x10_2000, to: b, 0x30_0000, length: 8192, flags: IOMMUFDRig.rw).rc == 0)
        #expect(try rig.ioasObject(b).areaCount == 3)
    }

    @Test func copyFlagsOutsideTheMapFlagsAreEOPNOTSUPPNoPermissionIsEINVALAndLengthZeroIsEINVAL() throws {
        let rig = try IOMMUFDRig()
        let a = try rig.ioasAlloc(), b = try rig.ioasAlloc()
        #expect(rig.map(a, va: 0x4000_0000, length: 8192, iova: 0x10_0000).rc == 0)
        #expect(rig.copy(from: a, 0x10_0000, to: b, nil, length: 4096, flags: UAPI.mapReadable | 0x8).rc == -Errno.EOPNOTSUPP)
        #expect(rig.copy(from: a, 0x10_0000, to: b, nil, length: 4096, flags: 0).rc == -Errno.EINVAL)
        #expect(rig.copy(from: 999, 0x10_0000, to: b, nil, length: 4096, flags: 0).rc == -Errno.EINVAL) // before the lookup
        #expect(rig.copy(from: a, 0x10_0000, to: b, nil, length: 0).rc == -Errno.EINVAL)
        #expect(rig.copy(from: a, 0x10_0000, to: 999, nil, length: 4096).rc == -Errno.ENOENT)
        #expect(try rig.ioasObject(b).areaCount == 0)
    }

    @Test func copyToAFixedIOVAOverAnExistingMappingIsEEXISTAndLeavesTheDestinationAsItWas() throws {
        let rig = try IOMMUFDRig()
        let a = try rig.ioasAlloc(), b = try rig.ioasAlloc()
        #expect(rig.map(a, va: 0x4000_0000, length: 16384, iova: 0x10_0000).rc == 0)
        #expect(rig.map(b, va: 0x5000_0000, length: 4096, iova: 0x20_3000).rc == 0)
        #expect(rig.copy(from: a, 0x10_0000, to: b, 0x20_0000, length: 16384).rc == -Errno.EEXIST)
        // Into the same IOAS, over its own source.
        #expect(rig.copy(from: a, 0x10_0000, to: a, 0x10_2000, length: 8192).rc == -Errno.EEXIST)
        #expect(try rig.ioasObject(b).mappings.map(\.iova) == [0x20_3000])
        #expect(try rig.ioasObject(a).areaCount == 1)
        // Next to it is fine, and an automatic destination avoids it.
        #expect(rig.copy(from: a, 0x10_0000, to: b, 0x20_4000, length: 16384).rc == 0)
        let auto = rig.copy(from: a, 0x10_0000, to: b, nil, length: 16384)
        #expect(auto.rc == 0 && (auto.iova + 16384 <= 0x20_3000 || auto.iova >= 0x20_8000))
    }

    @Test func copyLengthOrAnIOVAOfU64MaxAndASourceRangePastU64MaxAreEOVERFLOW() throws {
        let rig = try IOMMUFDRig()
        let a = try rig.ioasAlloc(), b = try rig.ioasAlloc()
        #expect(rig.map(a, va: 0x4000_0000, length: 8192, iova: 0x10_0000).rc == 0)
        #expect(rig.copy(from: a, 0x10_0000, to: b, nil, length: .max).rc == -Errno.EOVERFLOW)
        #expect(rig.copy(from: a, .max, to: b, nil, length: 4096).rc == -Errno.EOVERFLOW)
        #expect(rig.copy(from: a, 0x10_0000, to: b, .max, length: 4096).rc == -Errno.EOVERFLOW)
        // dst_iova is checked even without FIXED_IOVA, and before the permission check.
        let unfixed = rig.run(.ioasCopy) { s in
            s.set32(4, 0); s.set32(8, b); s.set32(12, a); s.set64(16, 4096); s.set64(24, .max); s.set64(32, 0x10_0000)
        }
        #expect(unfixed.rc == -Errno.EOVERFLOW)
        #expect(rig.copy(from: a, .max - 0xFFF, to: b, nil, length: 0x2000).rc == -Errno.EOVERFLOW)
        // A fixed destination whose end passes U64_MAX.
        #expect(rig.copy(from: a, 0x10_0000, to: b, .max - 0xFFF, length: 8192).rc == -Errno.EOVERFLOW)
        #expect(try rig.ioasObject(b).areaCount == 0)
    }
}
