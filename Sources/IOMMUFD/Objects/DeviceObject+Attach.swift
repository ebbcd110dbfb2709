import Platform
import Formats
import Kernel

/// Attach, replace and detach of a bound device (Linux drivers/iommu/iommufd/device.c:
/// `iommufd_device_attach/replace/detach`, what VFIO's `ATTACH_IOMMUFD_PT` and
/// `DETACH_IOMMUFD_PT` call). `pasid` nil is the RID (`IOMMU_NO_PASID`). Every device of an
/// iommu group shares one attachment per PASID.
extension IOMMUFDContext {
    /// Attaches to an IOAS (an automatic domain: an existing compatible one, else a new
    /// one), a paging HWPT or a nested HWPT. Returns the HWPT's ID.
    @discardableResult
    public func attach(_ devID: UInt32, to ptID: UInt32, pasid: PASID? = nil) throws(Errno) -> UInt32 {
        let d: DeviceObject = try get(devID, .device)
        return try changePT(d, ptID, pasid: Self.userPASID(pasid), replace: false)
    }

    /// Replaces the attachment of (device, pasid) without passing through blocked.
    @discardableResult
    public func replace(_ devID: UInt32, with ptID: UInt32, pasid: PASID? = nil) throws(Errno) -> UInt32 {
        let d: DeviceObject = try get(devID, .device)
        return try changePT(d, ptID, pasid: Self.userPASID(pasid), replace: true)
    }

    /// Detaches (device, pasid); nothing happens if it is not attached.
    public func detach(_ devID: UInt32, pasid: PASID? = nil) throws(Errno) {
        detach(try get(devID, .device, as: DeviceObject.self), pasid: Self.userPASID(pasid))
    }

    /// PASID 0 is the RID (Linux `IOMMU_NO_PASID`).
    static func userPASID(_ p: PASID?) -> PASID? { p.flatMap { $0.rawValue == 0 ? nil : $0 } }

    func changePT(_ d: DeviceObject, _ ptID: UInt32, pasid: PASID?, replace: Bool) throws(Errno) -> UInt32 {
        guard let o = table.object(ptID), !o.isDestroyed else { throw Errno.noent("no object with ID \(ptID)") }
        switch o {
        case let h as HWPT:
            if replace { try replaceHWPT(h, d, pasid) } else { try attachHWPT(h, d, pasid) }
            return h.id
        case let ioas as IOAS:
            return try autoDomain(ioas, d, pasid, replace: replace)
        default:
            throw Errno.inval("\(o) cannot be attached to")
        }
    }

    /// PASID compatibility (Linux `iommufd_hwpt_pasid_compat`): a PASID takes only a HWPT
    /// allocated with IOMMU_HWPT_ALLOC_PASID, and only while the RID's HWPT is one too; the
    /// RID takes a HWPT without it only while no PASID is attached in the group.
    func checkPASIDCompat(_ h: HWPT, _ d: DeviceObject, _ pasid: PASID?) throws(Errno) {
        if pasid != nil {
            guard h.pasidCompatible else { throw Errno.inval("\(h) was not allocated for PASIDs") }
            if let rid = d.igroup.attachments[0], !rid.hwpt.pasidCompatible {
                throw Errno.inval("the RID's \(rid.hwpt) is not PASID compatible")
            }
        } else if !h.pasidCompatible && d.igroup.attachments.keys.contains(where: { $0 != 0 }) {
            throw Errno.inval("PASIDs are attached: the RID needs a PASID-compatible HWPT")
        }
    }

    func attachHWPT(_ h: HWPT, _ d: DeviceObject, _ pasid: PASID?) throws(Errno) {
        let key = pasid?.rawValue ?? 0
        let existing = d.igroup.attachments[key]
        if let e = existing {
            guard !e.devices.contains(where: { $0 === d }) else { throw Errno.busy("\(d.device) is attached already") }
            guard e.hwpt === h else { throw Errno.inval("\(d.igroup.group) is attached to \(e.hwpt)") }
        }
        let owner = ObjectIdentifier(d)
        let ioas = pasid == nil ? h.pagingBacking?.ioas : nil
        try ioas?.enforceReservedRegions(of: d.device, owner: owner)
        if let existing {
            existing.devices.append(d)
        } else {
            do throws(Errno) {
                try checkPASIDCompat(h, d, pasid)
                do throws(IOMMUError) {
                    if let pasid { try core.attachPASID(h.domain, to: d.device, pasid: pasid) } else { try core.attach(h.domain, to: d.igroup.group) }
                } catch { throw Errno(error) }
            } catch {
                ioas?.removeReservations(of: owner)
                throw error
            }
            d.igroup.attachments[key] = IGroup.Attachment(hwpt: h, devices: [d])
        }
        h.users += 1
        d.users += 1
    }

    func replaceHWPT(_ h: HWPT, _ d: DeviceObject, _ pasid: PASID?) throws(Errno) {
        let key = pasid?.rawValue ?? 0
        guard let e = d.igroup.attachments[key] else { throw Errno.inval("\(d.device) is not attached") }
        guard e.devices.contains(where: { $0 === d }) else { throw Errno.inval("\(d.device) is not attached") }
        let old = e.hwpt
        if old === h { return }
        let oldIOAS = pasid == nil ? old.pagingBacking?.ioas : nil
        let newIOAS = pasid == nil ? h.pagingBacking?.ioas : nil
        let moveReservations = newIOAS != nil && newIOAS !== oldIOAS
        if moveReservations, let newIOAS {
            var done: [DeviceObject] = []
            for m in e.devices {
                do { try newIOAS.enforceReservedRegions(of: m.device, owner: ObjectIdentifier(m)) } catch {
                    for x in done { newIOAS.removeReservations(of: ObjectIdentifier(x)) }
                    throw error
                }
                done.append(m)
            }
        }
        do throws(Errno) {
            try checkPASIDCompat(h, d, pasid)
            do throws(IOMMUError) {
                if let pasid { try core.replacePASID(h.domain, on: d.device, pasid: pasid) } else { try core.replace(d.igroup.group, with: h.domain) }
            } catch { throw Errno(error) }
        } catch {
            if moveReservations, let newIOAS { for m in e.devices { newIOAS.removeReservations(of: ObjectIdentifier(m)) } }
            throw error
        }
        if moveReservations, let oldIOAS { for m in e.devices { oldIOAS.removeReservations(of: ObjectIdentifier(m)) } }
        e.hwpt = h
        h.users += e.devices.count
        old.users -= e.devices.count
        autoDestroy(old)
    }

    func detach(_ d: DeviceObject, pasid: PASID?) {
        let key = pasid?.rawValue ?? 0
        guard let e = d.igroup.attachments[key], let i = e.devices.firstIndex(where: { $0 === d }) else { return }
        e.devices.remove(at: i)
        if e.devices.isEmpty {
            if let pasid { try? core.detachPASID(e.hwpt.domain, from: d.device, pasid: pasid) } else { try? core.detach(e.hwpt.domain, from: d.igroup.group) }
            d.igroup.attachments[key] = nil
        }
        if pasid == nil { e.hwpt.pagingBacking?.ioas.removeReservations(of: ObjectIdentifier(d)) }
        e.hwpt.users -= 1
        d.users -= 1
        autoDestroy(e.hwpt)
    }

    /// An automatic domain nothing uses any more goes (Linux `iommufd_hw_pagetable_put`
    /// of an `auto_domain`).
    func autoDestroy(_ h: HWPT) {
        if let p = h as? HWPTPaging, p.isAutoDomain, p.users == 0, !p.isDestroyed { remove(p) }
    }

    /// Attaching to an IOAS (Linux `iommufd_device_auto_get_domain`): the first automatic
    /// domain of the IOAS that takes the device (EINVAL means "try the next"), else a new one.
    func autoDomain(_ ioas: IOAS, _ d: DeviceObject, _ pasid: PASID?, replace: Bool) throws(Errno) -> UInt32 {
        for h in ioas.hwpts where h.isAutoDomain && !h.isDestroyed {
            do {
                if replace { try replaceHWPT(h, d, pasid) } else { try attachHWPT(h, d, pasid) }
                return h.id
            } catch where error.code == Errno.EINVAL {
                continue
            }
        }
        let h = try allocPaging(ioas, d, nestParent: false, dirtyTracking: false, pasid: false, auto: true)
        do {
            if replace { try replaceHWPT(h, d, pasid) } else { try attachHWPT(h, d, pasid) }
        } catch {
            if h.users == 0 { remove(h) }
            throw error
        }
        return h.id
    }

    /// A paging HWPT on `ioas` for devices like `d` (Linux `iommufd_hwpt_paging_alloc`).
    func allocPaging(_ ioas: IOAS, _ d: DeviceObject, nestParent: Bool, dirtyTracking: Bool, pasid: Bool,
                     auto: Bool) throws(Errno) -> HWPTPaging {
        var flags: DomainFlags = []
        if nestParent { flags.insert(.nestParent) }
        if pasid { flags.insert(.pasid) }
        if dirtyTracking { flags.insert(.dirtyTracking) }
        let domain: IOMMUDomain
        do { domain = try core.allocDomain(for: d.device, flags: flags) } catch { throw Errno(error) }
        let h = HWPTPaging(domain: domain, ioas: ioas, auto: auto, nestParent: nestParent, dirtyTracking: dirtyTracking,
                           fault: nil, pasidCompatible: pasid)
        do throws(Errno) {
            try add(h)
            try ioas.addDomain(h)
        } catch {
            if h.id != 0 { table.remove(h) }
            try? core.freeDomain(domain)
            throw error
        }
        ioas.users += 1
        ioas.hwpts.append(h)
        return h
    }

    /// Makes a HWPT not attached yet deliver its page faults to `fault`
    /// (`IOMMU_HWPT_FAULT_ID_VALID`); the HWPT then holds the fault object.
    func give(_ h: HWPT, fault: FaultObject) throws(Errno) {
        do throws(IOMMUError) { try core.setFaultQueue(fault.queue, for: h.domain) } catch { throw Errno(error) }
        h.fault = fault
        fault.users += 1
    }
}
