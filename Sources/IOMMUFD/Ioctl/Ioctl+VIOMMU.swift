import Platform
import Kernel

/// vIOMMU, vDEVICE, vEVENTQ and hardware-queue commands (drivers/iommu/iommufd/viommu.c,
/// eventq.c), each check in the kernel's order (notes: device-hwpt-rules §6). The driver
/// answers through its `IOMMUVIOMMU`; a driver without one (VT-d in the pinned release)
/// gets EOPNOTSUPP from `viommuSize`.
extension IOMMUFDContext {
    /// IOMMU_VIOMMU_ALLOC: {size, flags @4, type @8, dev_id @12, hwpt_id @16,
    /// out_viommu_id @20, data_len @24, __reserved @28, data_uptr @32}.
    func viommuAllocIoctl(_ a: inout IoctlArgument) throws(Errno) {
        guard a.u32(4) == 0, a.u32(8) != UAPI.viommuTypeDefault else { throw Errno.notsupp("flags or the default vIOMMU type") }
        let type = a.u32(8)
        let dev: DeviceObject = try get(a.u32(12), .device)
        guard dev.device.driver.viommuSize(for: dev.device, type: type) > 0 else {
            throw Errno.notsupp("\(dev.device.driver.name) has no vIOMMU of type 0x\(String(type, radix: 16))")
        }
        let parent: HWPTPaging = try get(a.u32(16), .hwptPaging)
        guard parent.isNestParent else { throw Errno.inval("\(parent) was not allocated as a nesting parent") }
        let viommu: IOMMUVIOMMU
        do { viommu = try dev.device.driver.allocVIOMMU(for: dev.device, parent: parent.domain, type: type) } catch { throw Errno(error) }
        let v = VIOMMUObject(viommu: viommu, parent: parent, device: dev.device)
        try reserve(v)
        parent.users += 1
        connect(v)
        let length = Int(a.u32(24)), address = a.u64(32)
        let data: IOMMUUserData? = length == 0 ? nil : userData(address, length: length)
        do throws(IOMMUError) { try viommu.initialize(data: data) } catch {
            abort(v)
            viommu.reportEvent = nil
            viommu.addMmapRegion = nil
            viommu.removeMmapRegion = nil
            parent.users -= 1
            throw Errno(error)
        }
        finalize(v)
        a.set32(20, v.id)
        a.respond()
    }

    /// Connects a vIOMMU's driver side to its object: events go to its queues, windows to
    /// the context's file.
    private func connect(_ v: VIOMMUObject) {
        v.viommu.reportEvent = { [unowned v] (type: UInt32, payload: [UInt8]) throws(IOMMUError) in
            guard let q = v.eventQueues.first(where: { $0.eventType == type }) else {
                throw IOMMUError.notSupported("no vEVENTQ of type 0x\(String(type, radix: 16))")
            }
            q.report(payload)
        }
        v.viommu.addMmapRegion = { [unowned(unsafe) self, unowned v] (frames: [UInt64]) throws(IOMMUError) -> UInt64 in
            self.addMmapRegion(frames: frames, owner: v)
        }
        v.viommu.removeMmapRegion = { [unowned(unsafe) self] offset in self.mmapRegions[offset] = nil }
    }

    /// A driver's view of user data at `address` (copies through the context's user memory).
    func userData(_ address: UInt64, length: Int) -> IOMMUUserData {
        IOMMUUserData(length: length, read: { [unowned self] (count: Int) throws(IOMMUError) -> [UInt8] in
            do throws(Errno) { return try self.copyIn(address, count: count) } catch { throw IOMMUError.user(errno: error.code, name: "EFAULT", message: error.message) }
        }, write: { [unowned self] (bytes: [UInt8]) throws(IOMMUError) in
            do throws(Errno) { try self.copyOut(address, bytes: bytes) } catch { throw IOMMUError.user(errno: error.code, name: "EFAULT", message: error.message) }
        })
    }

    /// IOMMU_VDEVICE_ALLOC: {size, viommu_id @4, dev_id @8, out_vdevice_id @12, virt_id @16}.
    func vdeviceAllocIoctl(_ a: inout IoctlArgument) throws(Errno) {
        let v: VIOMMUObject = try get(a.u32(4), .viommu)
        let dev: DeviceObject = try get(a.u32(8), .device)
        guard v.driver == ObjectIdentifier(dev.device.driver), v.unit == dev.device.unit else {
            throw Errno.inval("\(dev.device) is not behind the unit of \(v)")
        }
        guard dev.vdevice == nil else { throw Errno(Errno.EEXIST, "\(dev.device) has a vDEVICE already") }
        let virtualID = a.u64(16)
        let vd = VDeviceObject(viommu: v, device: dev, virtualID: virtualID)
        try reserve(vd)
        guard v.vdevices[virtualID] == nil else {
            abort(vd)
            throw Errno(Errno.EEXIST, "virtual ID \(virtualID) is taken on \(v)")
        }
        v.vdevices[virtualID] = vd
        v.viommu.virtualDevices[virtualID] = dev.device
        v.users += 1
        dev.users += 1
        dev.vdevice = vd
        a.set32(12, vd.id)
        a.respond()
        finalize(vd)
    }

    /// IOMMU_VEVENTQ_ALLOC: {size, flags @4, viommu_id @8, type @12, veventq_depth @16,
    /// out_veventq_id @20, out_veventq_fd @24, __reserved @28}.
    func veventqAllocIoctl(_ a: inout IoctlArgument) throws(Errno) {
        guard a.u32(4) == 0, a.u32(28) == 0, a.u32(12) != UAPI.veventqTypeDefault else { throw Errno.notsupp("flags, __reserved or the default type") }
        guard a.u32(16) != 0 else { throw Errno.inval("veventq_depth 0") }
        let v: VIOMMUObject = try get(a.u32(8), .viommu)
        let type = a.u32(12)
        guard !v.eventQueues.contains(where: { $0.eventType == type }) else {
            throw Errno(Errno.EEXIST, "\(v) has a vEVENTQ of type 0x\(String(type, radix: 16))")
        }
        let q = VEventQueueObject(viommu: v, type: type, depth: a.u32(16))
        try add(q)
        v.users += 1
        v.eventQueues.append(q)
        q.users = 1 // the file's
        let fd = openFile(q)
        guard fd >= 0 else {
            q.closeFile()
            remove(q)
            throw Errno.nomem("no file for the vEVENTQ")
        }
        a.set32(20, q.id)
        a.set32(24, UInt32(bitPattern: fd))
        a.respond()
    }

    /// IOMMU_HW_QUEUE_ALLOC: {size, flags @4, viommu_id @8, type @12, index @16,
    /// out_hw_queue_id @20, nesting_parent_iova @24, length @32}.
    func hwQueueAllocIoctl(_ a: inout IoctlArgument) throws(Errno) {
        guard a.u32(4) == 0, a.u32(12) != UAPI.hwQueueTypeDefault else { throw Errno.notsupp("flags or the default type") }
        let base = a.u64(24), length = a.u64(32), type = a.u32(12), index = a.u32(16)
        guard length != 0 else { throw Errno.inval("length 0") }
        guard !base.addingReportingOverflow(length - 1).overflow else { throw Errno(Errno.EOVERFLOW, "base + length overflows") }
        let v: VIOMMUObject = try get(a.u32(8), .viommu)
        guard v.viommu.hardwareQueueSize(type: type) > 0 else { throw Errno.notsupp("\(v) has no hardware queue of type 0x\(String(type, radix: 16))") }
        // The queue takes its ID, then the internal access the next one.
        let access = AccessObject(needsPinPages: true, isInternal: true)
        let q = HWQueueObject(viommu: v, index: index, access: access, iova: base, length: length)
        try reserve(q)
        let ioas = v.parent.ioas
        let alignment = max(ioas.iovaAlignment, access.iovaAlignment)
        do throws(Errno) {
            try ioas.checkAreasAligned(alignment)
            try add(access)
        } catch {
            abort(q)
            throw error
        }
        access.users = 2 // the queue's hold: IOMMU_DESTROY of it is EBUSY
        access.ioas = ioas
        ioas.accesses.append(access)
        ioas.users += 1
        ioas.iovaAlignment = alignment
        func undoAccess() {
            access.users = 1
            destroyAccess(access)
        }
        let frames: [UInt64]
        do { frames = try access.pinPages(iova: base, length: length, write: false) } catch {
            undoAccess(); abort(q)
            throw error
        }
        let physical = frames[0] + (base & 0xFFF)
        for (i, f) in frames.enumerated() where f != frames[0] + UInt64(i) * 4096 {
            access.unpinPages(iova: base, length: length)
            undoAccess(); abort(q)
            throw Errno.fault("the queue's memory is not physically contiguous")
        }
        let dependsOn: UInt32?
        do throws(IOMMUError) { dependsOn = try v.viommu.initHardwareQueue(type: type, index: index, physical: physical, base: base, length: length) } catch {
            access.unpinPages(iova: base, length: length)
            undoAccess(); abort(q)
            throw Errno(error)
        }
        v.users += 1
        if let d = dependsOn, let other = table.all.lazy.compactMap({ $0 as? HWQueueObject }).first(where: { $0.viommu === v && $0.index == d }) {
            q.dependsOn = other
            other.users += 1
        }
        a.set32(20, q.id)
        a.respond()
        finalize(q)
    }

    // MARK: File windows (Linux `iommufd_viommu_alloc_mmap`, `iommufd_fops_mmap`)

    /// Gives `frames` an offset in the context's file: the lowest page-aligned gap that fits,
    /// never page 0.
    func addMmapRegion(frames: [UInt64], owner: IOMMUFDObject) -> UInt64 {
        let length = UInt64(frames.count) * 4096
        var offset: UInt64 = 4096
        for (start, r) in mmapRegions.sorted(by: { $0.key < $1.key }) {
            if offset + length <= start { break }
            offset = max(offset, start + UInt64(r.frames.count) * 4096)
        }
        mmapRegions[offset] = (frames, owner)
        return offset
    }

    /// mmap of the context's file at `offset` for `length` bytes: the frames of the window
    /// that is exactly there (ENXIO otherwise); the mapping holds its owner until
    /// `releaseMmap`. A length not page-aligned is EINVAL.
    public func mapWindow(offset: UInt64, length: UInt64) throws(Errno) -> (frames: [UInt64], owner: IOMMUFDObject) {
        guard length & 0xFFF == 0, length > 0 else { throw Errno.inval("length \(length) is not page-aligned") }
        guard let r = mmapRegions[offset], UInt64(r.frames.count) * 4096 == length else {
            throw Errno(Errno.ENXIO, "no window at offset 0x\(String(offset, radix: 16)) of length 0x\(String(length, radix: 16))")
        }
        r.owner.users += 1
        return r
    }

    /// A mapping of a window went (munmap, exit).
    public func releaseMmap(_ owner: IOMMUFDObject) { owner.users -= 1 }
}
