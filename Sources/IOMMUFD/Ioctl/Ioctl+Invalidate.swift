import Platform
import Kernel

/// IOMMU_HWPT_INVALIDATE (drivers/iommu/iommufd/hw_pagetable.c
/// `iommufd_hwpt_invalidate`, with the entry copy of include/linux/iommu.h
/// `iommu_copy_struct_from_user_array` and the driver's `cache_invalidate_user`).
extension IOMMUFDContext {
    /// {size, hwpt_id @4, data_uptr @8, data_type @16, entry_len @20, entry_num @24 (in/out),
    /// __reserved @28}. `entry_num` goes back whatever happens: 0 before the driver ran,
    /// then the number of entries it handled, also when one of them failed.
    func invalidateIoctl(_ a: inout IoctlArgument) throws(Errno) {
        let requested = a.u32(24)
        a.set32(24, 0)
        a.respond()
        guard a.u32(28) == 0 else { throw Errno.notsupp("__reserved is not zero") }
        let base = a.u64(8), entryLength = Int(a.u32(20))
        guard requested == 0 || (base != 0 && entryLength != 0) else { throw Errno.inval("entries without data_uptr or entry_len") }
        guard let o = table.object(a.u32(4)), !o.isDestroyed else { throw Errno.noent("no object with ID \(a.u32(4))") }
        let domain: IOMMUDomain
        switch o {
        case let n as HWPTNested: domain = n.domain
        case let v as VIOMMUObject:
            try invalidateVIOMMU(v, &a, requested: requested)
            return
        case is HWPTPaging: throw Errno.inval("a paging HWPT takes no user invalidations")
        default: throw Errno.inval("\(o) takes no invalidations")
        }
        guard let dataType = domain.userInvalidationDataType else { throw Errno.notsupp("\(domain) takes no user invalidations") }
        // The driver: the array's type first (EINVAL), then each entry copied and acted on.
        guard a.u32(16) == dataType else { throw Errno.inval("invalidation data type \(a.u32(16))") }
        let size = domain.userInvalidationEntrySize
        var processed: UInt32 = 0
        while processed < requested {
            let address = base &+ UInt64(processed) &* UInt64(entryLength)
            do throws(Errno) {
                // iommu_copy_struct_from_user_array: below the entry's first version or above
                // its size is EINVAL (the drivers' entries have one version).
                guard entryLength == size else { throw Errno.inval("entry_len \(entryLength) is not the \(size)-byte entry") }
                let entry = try copyIn(address, count: size)
                do throws(IOMMUError) { try domain.cacheInvalidateUser(entry: entry) } catch { throw Errno(error) }
            } catch {
                a.set32(24, processed)
                a.respond()
                throw error
            }
            processed += 1
        }
        a.set32(24, processed)
        a.respond()
    }

    /// The vIOMMU's invalidation (its `cache_invalidate`): the driver copies the whole array
    /// first (Linux `iommu_copy_struct_from_full_user_array`: the type must be the driver's,
    /// EINVAL; each entry zero-extended or tail-checked, E2BIG), then acts on the entries
    /// in order, stopping at the first that fails.
    private func invalidateVIOMMU(_ v: VIOMMUObject, _ a: inout IoctlArgument, requested: UInt32) throws(Errno) {
        guard let dataType = v.viommu.userInvalidationDataType else { throw Errno.notsupp("\(v) takes no invalidations") }
        let base = a.u64(8), entryLength = Int(a.u32(20)), size = v.viommu.userInvalidationEntrySize
        if requested == 0 && a.u32(16) == dataType { return }
        guard a.u32(16) == dataType else { throw Errno.inval("invalidation data type \(a.u32(16))") }
        // The driver copies the whole array into one kernel allocation (kcalloc): beyond
        // KMALLOC_MAX_SIZE (4 MiB on x86-64) it fails.
        guard UInt64(requested) * UInt64(size) <= 4 << 20 else { throw Errno.nomem("\(requested) invalidation entries") }
        var entries: [[UInt8]] = []
        entries.reserveCapacity(Int(min(requested, 4096)))
        for i in 0..<UInt64(requested) {
            let address = base &+ i &* UInt64(entryLength)
            if entryLength > size { try checkZeroTail(address &+ UInt64(size), entryLength - size) }
            var e = try copyIn(address, count: min(entryLength, size))
            if e.count < size { e += [UInt8](repeating: 0, count: size - e.count) }
            entries.append(e)
        }
        // The driver acts on the array and says how many entries it handled.
        let (done, error) = v.viommu.cacheInvalidateUser(entries: entries)
        a.set32(24, UInt32(done))
        a.respond()
        if let error { throw Errno(error) }
    }

    /// `copy_struct_from_user` with a user struct longer than the kernel's: the extra bytes
    /// must be zero (E2BIG), read in pieces (EFAULT).
    func checkZeroTail(_ address: UInt64, _ count: Int) throws(Errno) {
        var at = 0
        while at < count {
            // Page by page: a non-zero byte before an unreadable page is E2BIG, not EFAULT.
            let n = min(count - at, 4096 - Int((address &+ UInt64(at)) & 0xFFF))
            let bytes = try copyIn(address &+ UInt64(at), count: n)
            if let i = bytes.firstIndex(where: { $0 != 0 }) {
                throw Errno(Errno.E2BIG, "byte \(at + i) past the \(count)-byte entry's struct is not zero")
            }
            at += n
        }
    }
}
