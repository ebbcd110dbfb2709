import Platform
import Formats
import Kernel

/// The VFIO type1 container ioctls /dev/iommu also answers (drivers/iommu/iommufd/
/// vfio_compat.c), on the IOAS set with IOMMU_VFIO_IOAS (ENODEV without one). Numbers are
/// `_IO(';', 100 + n)`; structs are framed by `argsz`.
extension IOMMUFDContext {
    public static let vfioGetAPIVersion: UInt32 = 0x3b64
    public static let vfioCheckExtension: UInt32 = 0x3b65
    public static let vfioSetIOMMU: UInt32 = 0x3b66
    public static let vfioIOMMUGetInfo: UInt32 = 0x3b70
    public static let vfioIOMMUMapDMA: UInt32 = 0x3b71
    public static let vfioIOMMUUnmapDMA: UInt32 = 0x3b72

    /// VFIO ioctls whose argument is a value, not a pointer (CHECK_EXTENSION, SET_IOMMU).
    public func ioctl(_ cmd: UInt32, value: UInt64) -> Int32 {
        guard !isClosed else { return fail(Errno(Errno.EBADF, "the context is closed")) }
        switch cmd {
        case Self.vfioGetAPIVersion: return 0
        case Self.vfioCheckExtension:
            switch value {
            case 1, 3, 9: return 1 // TYPE1, TYPE1v2, UNMAP_ALL
            case 4: // DMA_CC_IOMMU
                guard let ioas = vfioIOAS else { return fail(Errno(Errno.ENODEV, "no VFIO compatibility IOAS")) }
                _ = ioas
                return 1 // every domain here enforces cache coherency
            default: return 0
            }
        case Self.vfioSetIOMMU:
            guard value == 1 || value == 3 else { return fail(Errno.inval("VFIO IOMMU type \(value)")) }
            guard let ioas = vfioIOAS else { return fail(Errno(Errno.ENODEV, "no VFIO compatibility IOAS")) }
            if value == 1 && !ioas.disableLargePages {
                // Type1 (v1) allows partial unmaps: map page by page (Linux iopt_disable_large_pages).
                guard ioas.domains.isEmpty || ioas.areas.isEmpty else { return fail(Errno.inval("mappings are in a domain already")) }
                ioas.disableLargePages = true
                let alignment = ioas.computeAlignment()
                do throws(Errno) { try ioas.checkAreasAligned(alignment) } catch {
                    ioas.disableLargePages = false
                    return fail(error)
                }
                ioas.iovaAlignment = alignment
            }
            return 0
        default:
            return fail(Errno(Errno.ENOTTY, "ioctl 0x\(String(cmd, radix: 16))"))
        }
    }

    /// VFIO ioctls with a struct argument.
    func vfioIoctl(_ cmd: UInt32, _ arg: UnsafeMutableRawBufferPointer) -> Int32 {
        guard !isClosed else { return fail(Errno(Errno.EBADF, "the context is closed")) }
        switch cmd {
        case Self.vfioGetAPIVersion, Self.vfioCheckExtension, Self.vfioSetIOMMU:
            return ioctl(cmd, value: arg.count >= 8 ? arg.loadUnaligned(as: UInt64.self) : 0)
        case Self.vfioIOMMUMapDMA:
            // struct vfio_iommu_type1_dma_map {argsz, flags @4, vaddr @8, iova @16, size @24}.
            guard arg.count >= 32 else { return fail(Errno.fault("argument not readable")) }
            let s = StructBytes(bytes: Array(arg[0..<32]))
            guard s.u32(0) >= 32, s.u32(4) & ~3 == 0 else { return fail(Errno.inval("dma_map argsz or flags")) }
            guard let ioas = vfioIOAS else { return fail(Errno(Errno.ENODEV, "no VFIO compatibility IOAS")) }
            let va = s.u64(8), iova = s.u64(16), length = s.u64(24)
            var perms: PagePermissions = []
            if s.u32(4) & 1 != 0 { perms.insert(.read) }
            if s.u32(4) & 2 != 0 { perms.insert(.write) }
            do throws(Errno) {
                guard !va.addingReportingOverflow(length).overflow else { throw Errno(Errno.EOVERFLOW, "vaddr + size overflows") }
                guard length != 0, length <= UInt64.max - IOAS.pageSize else { throw Errno.inval("size 0x\(String(length, radix: 16))") }
                let pages = IOPTPages(source: .user(memory, address: va & ~0xFFF), pageCount: IOAS.pageCount(offset: va & 0xFFF, length: length),
                                      writable: perms.contains(.write), accountMode: capIPCLock ? .none : .mm, ledger: ledger)
                _ = try ioas.insertOne(IOAS.Piece(pages: pages, pageOffset: va & 0xFFF, length: length), iova: iova, address: va, permissions: perms)
            } catch { return fail(error) }
            return 0
        case Self.vfioIOMMUUnmapDMA:
            // struct vfio_iommu_type1_dma_unmap {argsz, flags @4, iova @8, size @16}.
            guard arg.count >= 24 else { return fail(Errno.fault("argument not readable")) }
            let s = StructBytes(bytes: Array(arg[0..<24]))
            guard s.u32(0) >= 24, s.u32(4) & ~2 == 0 else { return fail(Errno.inval("dma_unmap argsz or flags")) }
            guard let ioas = vfioIOAS else { return fail(Errno(Errno.ENODEV, "no VFIO compatibility IOAS")) }
            let all = s.u32(4) & 2 != 0
            let iova = s.u64(8), size = s.u64(16)
            if all && (iova != 0 || size != 0) { return fail(Errno.inval("UNMAP_ALL takes iova 0 and size 0")) }
            var unmapped: UInt64 = 0
            var rc: Int32 = 0
            do throws(Errno) {
                if all {
                    try ioas.unmapRange(0, .max, unmapped: &unmapped)
                } else {
                    // Linux iopt_unmap_iova: length 0 is EINVAL, a range past U64_MAX EOVERFLOW.
                    guard size != 0 else { return fail(Errno.inval("size 0")) }
                    let (last, o) = iova.addingReportingOverflow(size - 1)
                    guard !o else { return fail(Errno(Errno.EOVERFLOW, "iova + size overflows")) }
                    if ioas.disableLargePages {
                        // Type1 (v1) may unmap part of a mapping: cut the areas at the range's
                        // edges first (the end, then the start); a failed cut reports nothing back.
                        do throws(Errno) {
                            try ioas.cut(at: last)
                            if iova != 0 { try ioas.cut(at: iova - 1) }
                        } catch { return fail(error) }
                    }
                    try ioas.unmapRange(iova, last, unmapped: &unmapped)
                    if unmapped == 0 { throw Errno.noent("nothing is mapped in the range") }
                }
            } catch { rc = fail(error) }
            // The bytes unmapped go back, also after an error part-way.
            arg.storeBytes(of: unmapped.littleEndian, toByteOffset: 16, as: UInt64.self)
            return rc
        case Self.vfioIOMMUGetInfo:
            // struct vfio_iommu_type1_info {argsz, flags @4, iova_pgsizes @8, cap_offset @16, pad @20}.
            guard arg.count >= 16 else { return fail(Errno.fault("argument not readable")) }
            let argsz = Int(arg.loadUnaligned(as: UInt32.self))
            guard argsz >= 16 else { return fail(Errno.inval("argsz \(argsz)")) }
            guard let ioas = vfioIOAS else { return fail(Errno(Errno.ENODEV, "no VFIO compatibility IOAS")) }
            // Linux `iommufd_get_pagesizes`: what every domain has, sizes below PAGE_SIZE
            // counting as PAGE_SIZE, and at least the IOAS's alignment.
            var sizes: UInt64 = .max
            for h in ioas.domains { sizes &= h.domain.pageSizes }
            if sizes & (IOAS.pageSize - 1) != 0 { sizes = (sizes & ~(IOAS.pageSize - 1)) | IOAS.pageSize }
            sizes = max(sizes, ioas.iovaAlignment)
            let ranges = ioas.usableRanges
            // The fixed part, then DMA_AVAIL (12 bytes, padded to 16) and IOVA_RANGE; each
            // capability is written only when all of it fits, the padding never.
            let total = 24 + 16 + 16 + 16 * ranges.count
            var out = StructBytes(bytes: [UInt8](repeating: 0, count: total))
            out.set32(0, UInt32(total)); out.set32(4, 0x3); out.set64(8, sizes)
            if argsz >= total { out.set32(16, 24) }
            out.set16(24, 3); out.set16(26, 1); out.set32(28, argsz >= 40 ? 40 : 0); out.set32(32, .max)
            out.set16(40, 1); out.set16(42, 1); out.set32(44, 0); out.set32(48, UInt32(ranges.count))
            for (i, r) in ranges.enumerated() { out.set64(56 + 16 * i, r.start); out.set64(64 + 16 * i, r.last) }
            var pieces: [Range<Int>] = [0..<min(argsz, 24)]
            if argsz >= 36 { pieces.append(24..<36) }
            if argsz >= total { pieces.append(40..<total) }
            for piece in pieces { for i in piece where i < arg.count { arg[i] = out.bytes[i] } }
            return 0
        default:
            return fail(Errno(Errno.ENOTTY, "ioctl 0x\(String(cmd, radix: 16)) is not an iommufd or VFIO command"))
        }
    }
}
