import Platform
import Formats
import Kernel

/// A device bound to a context (Linux `struct iommufd_device`): VFIO binds it
/// (`VFIO_DEVICE_BIND_IOMMUFD`), which claims DMA ownership of its group for the context;
/// the binding driver holds a reference until unbind, so IOMMU_DESTROY of it is EBUSY.
public final class DeviceObject: IOMMUFDObject {
    public let device: Device
    let igroup: IGroup
    /// Its vDEVICE, if it has one (one per device, on any vIOMMU).
    var vdevice: VDeviceObject?

    init(device: Device, igroup: IGroup) {
        self.device = device; self.igroup = igroup
        super.init(type: .device)
    }

    override func destroy(_ ctx: IOMMUFDContext) {
        igroup.members -= 1
        if igroup.members == 0 { ctx.groups[ObjectIdentifier(igroup.group)] = nil }
        device.boundContext = nil
        ctx.boundDevices[ObjectIdentifier(device)] = nil
        try? ctx.core.releaseDMAOwner(device, owner: ctx)
    }

    /// The HWPT the device's RID is attached to through this context.
    public var attachedHWPT: HWPT? { igroup.attachments[0].flatMap { $0.devices.contains { $0 === self } ? $0.hwpt : nil } }

    /// The HWPT attached to `pasid` of the device through this context.
    public func attachedHWPT(pasid: PASID) -> HWPT? {
        igroup.attachments[pasid.rawValue].flatMap { $0.devices.contains { $0 === self } ? $0.hwpt : nil }
    }
}

/// An iommu group as a context sees it (Linux `struct iommufd_group`): every device of the
/// group shares one attachment per PASID (key 0: the RID).
final class IGroup {
    final class Attachment {
        var hwpt: HWPT
        var devices: [DeviceObject]
        init(hwpt: HWPT, devices: [DeviceObject]) { self.hwpt = hwpt; self.devices = devices }
    }
    let group: Group
    var attachments: [UInt32: Attachment] = [:]
    var members = 0
    init(group: Group) { self.group = group }
}

extension IOMMUFDContext {
    // MARK: Bind / unbind (drivers/iommu/iommufd/device.c; VFIO's BIND_IOMMUFD)

    /// Binds a device: it must be cache coherent (EINVAL), in a group (ENODEV), not bound
    /// already (EINVAL, VFIO's "bound once"), and its group's DMA not owned by someone else
    /// (EPERM). Returns the device's ID.
    @discardableResult
    public func bind(_ device: Device) throws(Errno) -> UInt32 {
        guard !isClosed else { throw Errno(Errno.EBADF, "the context is closed") }
        guard device.boundContext == nil else { throw Errno.inval("\(device) is bound already") }
        guard device.driver.capable(device, .cacheCoherency) else { throw Errno.inval("\(device) is not cache coherent") }
        guard let group = device.group, !device.isReleased else { throw Errno(Errno.ENODEV, "\(device) has no iommu group") }
        do { try core.claimDMAOwner(device, owner: self) } catch {
            if case .busy = error { throw Errno(Errno.EPERM, "\(group)'s DMA is owned by another user") }
            throw Errno(error)
        }
        let key = ObjectIdentifier(group)
        let ig = groups[key] ?? IGroup(group: group)
        let d = DeviceObject(device: device, igroup: ig)
        do { try add(d) } catch {
            try? core.releaseDMAOwner(device, owner: self)
            throw error
        }
        groups[key] = ig
        ig.members += 1
        d.users = 1 // the binding driver's reference
        device.boundContext = ObjectIdentifier(self)
        boundDevices[ObjectIdentifier(device)] = d
        return d.id
    }

    /// Unbinds a device (VFIO close): its attachments are detached first.
    public func unbind(_ devID: UInt32) throws(Errno) {
        unbind(try get(devID, .device, as: DeviceObject.self))
    }

    func unbind(_ d: DeviceObject) {
        // Linux `iommufd_device_pre_destroy`: a vDEVICE left behind is destroyed and its ID
        // tombstoned.
        if let vd = d.vdevice { tombstone(vd) }
        for pasid in d.igroup.attachments.keys.sorted() where pasid != 0 { detach(d, pasid: PASID(truncating: pasid)) }
        detach(d, pasid: nil)
        d.users -= 1
        if d.users == 0 { remove(d) }
    }

    public func deviceObject(_ devID: UInt32) throws(Errno) -> DeviceObject { try get(devID, .device) }

    /// The device object of a core device bound here.
    func deviceObject(for device: Device) -> DeviceObject? { boundDevices[ObjectIdentifier(device)] }
}
