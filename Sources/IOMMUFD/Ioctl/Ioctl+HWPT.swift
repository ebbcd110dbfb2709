import Platform
import Formats
import Kernel

/// HWPT, hardware-info, fault-queue and vIOMMU commands (drivers/iommu/iommufd/
/// hw_pagetable.c, device.c, eventq.c, viommu.c), each check in the kernel's order. Where
/// the driver has no operation for a command (the VT-d driver of the pinned release has no
/// vIOMMU), the answer is the kernel's for such a driver.
extension IOMMUFDContext {
    /// IOMMU_HWPT_ALLOC: {size, flags @4, dev_id @8, pt_id @12, out_hwpt_id @16,
    /// __reserved @20, data_type @24, data_len @28, data_uptr @32, fault_id @40}.
    func hwptAllocIoctl(_ a: inout IoctlArgument) throws(Errno) {
        guard a.u32(20) == 0 else { throw Errno.notsupp("__reserved is not zero") }
        let flags = a.u32(4), dataType = a.u32(24), dataLength = a.u32(28)
        guard (dataType == UAPI.hwptDataNone) == (dataLength == 0) else { throw Errno.inval("data_type \(dataType) with data_len \(dataLength)") }
        let dev: DeviceObject = try get(a.u32(8), .device)
        guard let pt = table.object(a.u32(12)), !pt.isDestroyed else { throw Errno.inval("no object with ID \(a.u32(12))") }
        let faultValid = flags & UAPI.hwptFaultIDValid != 0
        let h: HWPT
        switch pt {
        case let ioas as IOAS:
            let known = UAPI.hwptAllocNestParent | UAPI.hwptAllocDirtyTracking | UAPI.hwptFaultIDValid | UAPI.hwptAllocPASID
            guard flags & ~known == 0 else { throw Errno.notsupp("HWPT_ALLOC flags 0x\(String(flags, radix: 16))") }
            let dirty = flags & UAPI.hwptAllocDirtyTracking != 0, parent = flags & UAPI.hwptAllocNestParent != 0
            if dirty && !dev.device.driver.capable(dev.device, .dirtyTracking) { throw Errno.notsupp("\(dev.device) has no dirty tracking") }
            if faultValid && parent { throw Errno.notsupp("a nesting parent cannot take faults") }
            // A paging domain takes no driver data on this driver (Linux: domain_alloc_paging_flags with user_data).
            if dataLength > 0 { throw Errno.notsupp("paging domains take no driver data") }
            let p = try allocPaging(ioas, dev, nestParent: parent, dirtyTracking: dirty, pasid: flags & UAPI.hwptAllocPASID != 0,
                                    auto: false)
            if faultValid {
                // Looked up once the domain is made and added (their errors come first).
                do throws(Errno) { try give(p, fault: try get(a.u32(40), .fault)) } catch {
                    remove(p)
                    throw error
                }
            }
            h = p
        case let parent as HWPTPaging:
            guard flags & ~(UAPI.hwptFaultIDValid | UAPI.hwptAllocPASID) == 0, dataLength > 0 else {
                throw Errno.notsupp("a nested HWPT takes only FAULT_ID_VALID|PASID and driver data")
            }
            guard !parent.isAutoDomain, parent.isNestParent, parent.domain.owner == ObjectIdentifier(dev.device.driver) else {
                throw Errno.inval("\(parent) cannot be a nesting parent")
            }
            h = try allocNested(&a, dev, parent: parent, viommu: nil)
        case let v as VIOMMUObject:
            // Linux `iommufd_viommu_alloc_hwpt_nested`: the vIOMMU holds the parent. The
            // device must be behind the vIOMMU's unit (EINVAL) before anything else.
            guard v.driver == ObjectIdentifier(dev.device.driver), v.unit == dev.device.unit else {
                throw Errno.inval("\(dev.device) is not behind the unit of \(v)")
            }
            guard flags & ~(UAPI.hwptFaultIDValid | UAPI.hwptAllocPASID) == 0, dataLength > 0 else {
                throw Errno.notsupp("a nested HWPT takes only FAULT_ID_VALID|PASID and driver data")
            }
            h = try allocNested(&a, dev, parent: v.parent, viommu: v)
        default:
            throw Errno.inval("\(pt) cannot back a HWPT")
        }
        a.set32(16, h.id)
        a.respond()
    }

    /// The nested half of HWPT_ALLOC: the driver answers for the data type first, then its
    /// struct is copied as Linux `iommu_copy_struct_from_user` does in `domain_alloc_nested`
    /// (include/linux/iommu.h): a length below the struct's first version or above its
    /// size is EINVAL before anything is read (both drivers' structs have one version).
    private func allocNested(_ a: inout IoctlArgument, _ dev: DeviceObject, parent: HWPTPaging, viommu: VIOMMUObject?) throws(Errno) -> HWPT {
        let flags = a.u32(4), dataType = a.u32(24), dataLength = a.u32(28)
        var df: DomainFlags = []
        if flags & UAPI.hwptAllocPASID != 0 { df.insert(.pasid) }
        let domain: IOMMUDomain
        if let viommu, viommu.viommu.copiesNestedData {
            // The driver copies (and checks) the data itself, flags first.
            do throws(IOMMUError) {
                domain = try core.allocNestedDomain(on: viommu.viommu, for: dev.device, flags: df, dataType: dataType,
                                                    userData: userData(a.u64(32), length: Int(dataLength)))
            } catch { throw Errno(error) }
            return try finishNested(&a, domain, dev, parent: parent, viommu: viommu, pasid: df.contains(.pasid))
        }
        let size = dev.device.driver.nestedDataSize(for: dev.device, dataType: dataType)
        guard size > 0 else { throw Errno.notsupp("\(dev.device.driver.name) takes no nested data of type \(dataType)") }
        guard Int(dataLength) == size else { throw Errno.inval("data_len \(dataLength) is not the driver's \(size)-byte struct") }
        let data = try copyIn(a.u64(32), count: size)
        do throws(IOMMUError) {
            if let viommu {
                domain = try core.allocNestedDomain(on: viommu.viommu, for: dev.device, flags: df, dataType: dataType, data: data)
            } else {
                domain = try core.allocNestedDomain(for: dev.device, parent: parent.domain, flags: df, dataType: dataType, data: data)
            }
        } catch { throw Errno(error) }
        return try finishNested(&a, domain, dev, parent: parent, viommu: viommu, pasid: df.contains(.pasid))
    }

    /// The object of a nested domain the driver made: its fault looked up (the driver's
    /// error comes first), added, and its holds taken.
    private func finishNested(_ a: inout IoctlArgument, _ domain: IOMMUDomain, _ dev: DeviceObject, parent: HWPTPaging,
                              viommu: VIOMMUObject?, pasid: Bool) throws(Errno) -> HWPT {
        let flags = a.u32(4)
        let fault: FaultObject?
        do throws(Errno) { fault = flags & UAPI.hwptFaultIDValid != 0 ? try get(a.u32(40), .fault) : nil } catch {
            try? core.freeDomain(domain)
            throw error
        }
        let n = HWPTNested(domain: domain, parent: parent, viommu: viommu, fault: nil, pasidCompatible: pasid)
        do throws(Errno) {
            try add(n)
            if let fault { try give(n, fault: fault) }
        } catch {
            if n.id != 0 { table.remove(n) }
            try? core.freeDomain(domain)
            throw error
        }
        if let viommu { viommu.users += 1 } else { parent.users += 1 }
        return n
    }

    static let zeros = [UInt8](repeating: 0, count: 4096)

    /// IOMMU_GET_HW_INFO: {size, flags @4, dev_id @8, data_len @12 (in/out), data_uptr @16,
    /// in/out_data_type @24, out_max_pasid_log2 @28 (u8), __reserved[3] @29,
    /// out_capabilities @32}.
    func hwInfoIoctl(_ a: inout IoctlArgument) throws(Errno) {
        let flags = a.u32(4)
        guard flags & ~UAPI.hwInfoFlagInputType == 0, a.u8(29) == 0, a.u8(30) == 0, a.u8(31) == 0 else {
            throw Errno.notsupp("GET_HW_INFO flags 0x\(String(flags, radix: 16)) or __reserved")
        }
        let wanted = flags & UAPI.hwInfoFlagInputType != 0 ? a.u32(24) : UAPI.hwInfoTypeDefault
        let dev: DeviceObject = try get(a.u32(8), .device)
        let info = dev.device.driver.hardwareInfo(dev.device)
        if let info, wanted != UAPI.hwInfoTypeDefault, wanted != info.type { throw Errno.notsupp("hw_info type \(wanted)") }
        let payload = info?.payload ?? []
        let userLength = Int(a.u32(12)), address = a.u64(16)
        if userLength > 0 {
            // The payload, then zeros up to the user's length (Linux `clear_user`): written in
            // pieces, since the length is the user's and may be large.
            let head = min(userLength, payload.count)
            try copyOut(address, bytes: Array(payload[..<head]))
            var at = head
            while at < userLength {
                let n = min(userLength - at, Self.zeros.count)
                try copyOut(address &+ UInt64(at), bytes: n == Self.zeros.count ? Self.zeros : Array(Self.zeros[..<n]))
                at += n
            }
        }
        a.set32(12, UInt32(payload.count))
        a.set32(24, info?.type ?? 0)
        let pasids = dev.device.maxPASIDs
        a.set8(28, pasids > 1 ? UInt8(31 - pasids.leadingZeroBitCount) : 0)
        var caps: UInt64 = 0
        if dev.device.driver.capable(dev.device, .dirtyTracking) { caps |= UAPI.hwCapDirtyTracking }
        a.set64(32, caps)
        a.respond()
    }

    /// IOMMU_HWPT_SET_DIRTY_TRACKING: {size, flags @4, hwpt_id @8, __reserved @12}. Enabling
    /// first clears the D bits of every mapping (a clean start, Linux
    /// `iopt_clear_dirty_data`), then turns tracking on.
    func setDirtyTrackingIoctl(_ a: inout IoctlArgument) throws(Errno) {
        let flags = a.u32(4)
        guard flags & ~UAPI.dirtyTrackingEnable == 0 else { throw Errno.notsupp("flags 0x\(String(flags, radix: 16))") }
        let h: HWPTPaging = try get(a.u32(8), .hwptPaging)
        guard h.dirtyTracking else { throw Errno.notsupp("\(h) was not allocated for dirty tracking") }
        let enable = flags & UAPI.dirtyTrackingEnable != 0
        do throws(IOMMUError) {
            if enable {
                for (iova, length) in h.ioas.mappings { try core.readAndClearDirty(h.domain, iova: iova, size: length, clear: true, nil) }
            }
            try core.setDirtyTracking(h.domain, enable)
        } catch { throw Errno(error) }
    }

    /// IOMMU_HWPT_GET_DIRTY_BITMAP: {size, hwpt_id @4, flags @8, __reserved @12, iova @16,
    /// length @24, page_size @32, data @40}: bit i of the user's bitmap (u64 words) is set
    /// when page i of `page_size` from `iova` was written; D is cleared unless NO_CLEAR. Bits
    /// are ORed into the user's bitmap word by word (no buffer sized by the user's length).
    func getDirtyBitmapIoctl(_ a: inout IoctlArgument) throws(Errno) {
        guard a.u32(8) & ~UAPI.getDirtyBitmapNoClear == 0, a.u32(12) == 0 else { throw Errno.notsupp("flags or __reserved") }
        let h: HWPTPaging = try get(a.u32(4), .hwptPaging)
        let iova = a.u64(16), length = a.u64(24), pageSize = a.u64(32), data = a.u64(40)
        let (_, o) = iova.addingReportingOverflow(length &- 1)
        guard !o || (iova == 0 && length == 0) else { throw Errno(Errno.EOVERFLOW, "iova + length overflows") }
        let alignment = h.ioas.iovaAlignment
        guard iova & (alignment - 1) == 0, (iova &+ length) & (alignment - 1) == 0 else { throw Errno.inval("range not aligned to the IOAS") }
        guard pageSize != 0 else { throw Errno.inval("page_size 0") }
        guard iova & (pageSize - 1) == 0, (iova &+ length) & (pageSize - 1) == 0 else { throw Errno.inval("range not aligned to page_size") }
        guard h.dirtyTracking else { throw Errno.notsupp("\(h) has no dirty tracking") }
        let clear = a.u32(8) & UAPI.getDirtyBitmapNoClear == 0
        var failure: Errno?
        do throws(IOMMUError) {
            try core.readAndClearDirty(h.domain, iova: iova, size: length, clear: clear) { start, size in
                // The pages of `page_size` the leaf [start, start + size) touches, inside the range.
                let lo = max(start, iova), hi = min(start &+ size, iova &+ length)
                guard lo < hi else { return }
                var bit = (lo - iova) / pageSize
                let end = (hi - iova + pageSize - 1) / pageSize
                while bit < end {
                    let word = bit / 64, first = bit % 64, count = min(64 - first, end - bit)
                    let mask = count == 64 ? UInt64.max : ((UInt64(1) << count) - 1) << first
                    let at = data &+ word * 8
                    do throws(Errno) {
                        var w = StructBytes(bytes: try self.copyIn(at, count: 8))
                        w.set64(0, w.u64(0) | mask)
                        try self.copyOut(at, bytes: w.bytes)
                    } catch { failure = failure ?? error }
                    bit += count
                }
            }
        } catch {
            // Linux 6.17 ignores what the walk returns (io_pagetable.c
            // `iommu_read_and_clear_dirty`): a driver's refusal (tracking off) is not
            // reported either; the call returns 0 with nothing in the bitmap.
            _ = error
        }
        // Nor is a bitmap it could not write (EFAULT is not returned).
        _ = failure
    }

    /// IOMMU_FAULT_QUEUE_ALLOC: {size, flags @4, out_fault_id @8, out_fault_fd @12}.
    func faultAllocIoctl(_ a: inout IoctlArgument) throws(Errno) {
        guard a.u32(4) == 0 else { throw Errno.notsupp("flags 0x\(String(a.u32(4), radix: 16))") }
        let f = try allocFault()
        let fd = openFile(f)
        guard fd >= 0 else {
            f.closeFile()
            try? destroy(f.id)
            throw Errno.nomem("no file for the fault queue")
        }
        a.set32(8, f.id)
        a.set32(12, UInt32(bitPattern: fd))
        a.respond()
    }
}
