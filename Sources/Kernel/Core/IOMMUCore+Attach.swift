import Platform
import Formats

extension IOMMUCore {
    /// Checks that `domain` may be attached to devices of `group`'s driver.
    func checkOwner(_ domain: IOMMUDomain, _ group: Group) throws(IOMMUError) {
        guard let first = group.devices.first else { throw .noDevice("\(group) has no devices") }
        guard domain.owner == ObjectIdentifier(first.driver) else {
            throw .incompatible("\(domain) belongs to another IOMMU driver than \(first)")
        }
    }

    func isCoreDomain(_ domain: IOMMUDomain?, of g: Group) -> Bool {
        domain == nil || domain === g.defaultDomain || domain === g.blockingDomain
    }

    /// Attaches a user domain to a group (Linux `iommu_attach_group`): allowed only while the
    /// group is in its default or blocking domain (`EBUSY` otherwise).
    public func attach(_ domain: IOMMUDomain, to group: Group) throws(IOMMUError) {
        try checkAlive(domain)
        try checkAttachable(domain, group)
        guard isCoreDomain(group.domain, of: group) else { throw .busy("\(group) is attached to \(group.domain.map { "\($0)" } ?? "a user domain") already") }
        try setGroupDomain(group, domain, mustSucceed: false)
    }

    /// Attaches a domain to a single-device group (Linux `iommu_attach_device`).
    public func attach(_ domain: IOMMUDomain, to device: Device) throws(IOMMUError) {
        try checkProbed(device)
        guard let g = device.group, g.devices.count == 1 else {
            throw .invalidArgument("\(device) shares its group with other devices: attach the group")
        }
        try attach(domain, to: g)
    }

    /// Moves a group back from a user domain to its core domain (the blocking domain while a
    /// user owns the group's DMA, the default domain otherwise). This cannot fail once the
    /// arguments are right: a device that cannot take the core domain is blocked.
    public func detach(_ domain: IOMMUDomain, from group: Group) throws(IOMMUError) {
        try checkAlive(domain)
        guard !group.devices.isEmpty else { throw .noDevice("\(group) has no devices") }
        guard group.domain === domain, !isCoreDomain(domain, of: group) else {
            throw .notFound("\(domain) is not attached to \(group)")
        }
        try setGroupDomain(group, coreDomain(of: group), mustSucceed: true)
    }

    /// Replaces a group's domain without passing through the blocking domain (Linux
    /// `iommu_replace_group_handle`). From a core domain it behaves as attach. If a device
    /// fails part-way, the devices already switched go back to the old domain (and to the
    /// blocked domain if even that fails); the error is returned and the group keeps the old
    /// domain.
    public func replace(_ group: Group, with domain: IOMMUDomain) throws(IOMMUError) {
        try checkAlive(domain)
        try checkAttachable(domain, group)
        try setGroupDomain(group, domain, mustSucceed: false)
    }

    /// A user (VFIO/iommufd) takes over the group's DMA (Linux `iommu_group_claim_dma_owner`):
    /// the group must be in its default domain with no PASIDs; it moves to the blocking domain.
    public func claimDMAOwner(_ group: Group) throws(IOMMUError) {
        guard !group.devices.isEmpty else { throw .noDevice("\(group) has no devices") }
        guard !group.dmaOwned else { throw .busy("\(group) already has a DMA owner") }
        guard group.domain === group.defaultDomain, group.pasidDomains.isEmpty else {
            throw .busy("\(group) is not in its default domain")
        }
        guard let blocking = group.blockingDomain else { throw .notSupported("no blocking domain") }
        try setGroupDomain(group, blocking, mustSucceed: false)
        group.dmaOwned = true
    }

    /// The user gives the group's DMA back; it returns to its default domain.
    public func releaseDMAOwner(_ group: Group) throws(IOMMUError) {
        guard group.dmaOwned else { throw .notFound("\(group) has no DMA owner") }
        guard isCoreDomain(group.domain, of: group), group.pasidDomains.isEmpty else {
            throw .busy("\(group) still has a user domain attached")
        }
        group.dmaOwned = false
        if let d = group.defaultDomain { try setGroupDomain(group, d, mustSucceed: true) }
    }

    /// A user claims DMA ownership through one device (Linux
    /// `iommu_device_claim_dma_owner`): the first claim moves the group to its blocking
    /// domain; later claims by the same owner only count; another owner gets `EBUSY`.
    public func claimDMAOwner(_ device: Device, owner: AnyObject) throws(IOMMUError) {
        try checkProbed(device)
        guard let g = device.group else { throw .noDevice("\(device) has no group") }
        if g.dmaOwned {
            guard let id = g.dmaOwnerID, id == ObjectIdentifier(owner) else { throw .busy("\(g) has another DMA owner") }
            g.dmaOwnerCount += 1
            return
        }
        try claimDMAOwner(g)
        g.dmaOwnerID = ObjectIdentifier(owner)
        g.dmaOwnerCount = 1
    }

    /// Drops one claim made through a device (Linux `iommu_device_release_dma_owner`); the
    /// last one gives the group back to its default domain.
    public func releaseDMAOwner(_ device: Device, owner: AnyObject) throws(IOMMUError) {
        guard let g = device.group, g.dmaOwned, g.dmaOwnerID == ObjectIdentifier(owner), g.dmaOwnerCount > 0 else {
            throw .notFound("\(device) is not claimed by this owner")
        }
        if g.dmaOwnerCount > 1 { g.dmaOwnerCount -= 1; return }
        try releaseDMAOwner(g)
        g.dmaOwnerID = nil
        g.dmaOwnerCount = 0
    }

    func coreDomain(of g: Group) -> IOMMUDomain {
        if g.dmaOwned, let b = g.blockingDomain { return b }
        return g.defaultDomain ?? g.devices[0].driver.blockedDomain
    }

    func checkAttachable(_ domain: IOMMUDomain, _ group: Group) throws(IOMMUError) {
        try checkOwner(domain, group)
        guard !domain.isCoreOwned || domain === group.defaultDomain else {
            throw .invalidArgument("\(domain) is the default domain of another group")
        }
        switch domain.type {
        case .blocked, .identity, .unmanaged, .dma, .nested: break
        case .sva: throw .invalidArgument("an SVA domain attaches to a PASID, not to a RID")
        }
    }

    /// Switches every device of `g` to `new` (Linux `__iommu_group_set_domain_internal`).
    /// DMA of each device sees the old or the new domain, never anything else. On failure
    /// the switched devices are reverted (with MUST_SUCCEED) and the error is thrown; with
    /// `mustSucceed` a device that fails goes to the blocked domain and nothing is thrown.
    func setGroupDomain(_ g: Group, _ new: IOMMUDomain, mustSucceed: Bool) throws(IOMMUError) {
        let old = g.domain
        if old === new && g.devices.allSatisfy({ $0.attachedDomain === new }) { return }
        defer { observer?.groupDomainChangeEnded(g) }
        var switched: [Device] = []
        for (i, dev) in g.devices.enumerated() {
            if i > 0 { yield(KernelYield.insideReplace) }
            if dev.attachedDomain === new { continue }
            do {
                try attachOne(dev, to: new, old: dev.attachedDomain)
                switched.append(dev)
            } catch {
                if mustSucceed {
                    block(dev)
                    continue
                }
                var undo = switched
                if injectedBugs.contains(.incompleteGroupRollback), !undo.isEmpty { undo.removeFirst() }
                for d in undo.reversed() { revert(d, to: old) }
                throw error
            }
        }
        g.domain = new
    }

    /// One device's RID translation to `new`, with observer events around the driver call.
    func attachOne(_ dev: Device, to new: IOMMUDomain, old: IOMMUDomain?) throws(IOMMUError) {
        observer?.transitionBegan(dev, pasid: nil, from: old, to: new)
        let path: UpdatePath
        do {
            path = try new.attach(dev, old: old)
        } catch {
            observer?.transitionEnded(dev, pasid: nil, current: old, path: .unchanged)
            throw error
        }
        old?.attachments -= 1
        new.attachments += 1
        dev.attachedDomain = new
        lastUpdatePath = path
        observer?.transitionEnded(dev, pasid: nil, current: new, path: path)
        faultHandlerDetached(old, dev, pasid: nil, new: new)
    }

    /// Puts a device back in `old` (MUST_SUCCEED); failing that, in the blocked domain.
    func revert(_ dev: Device, to old: IOMMUDomain?) {
        if let old, !old.isDestroyed {
            do { try attachOne(dev, to: old, old: dev.attachedDomain); return } catch {}
        }
        block(dev)
    }

    /// The blocked domain never fails to attach: it only removes a translation.
    func block(_ dev: Device) {
        let blocked = dev.driver.blockedDomain
        let current = dev.attachedDomain
        guard current !== blocked else { return }
        observer?.transitionBegan(dev, pasid: nil, from: current, to: blocked)
        _ = try? blocked.attach(dev, old: current)
        current?.attachments -= 1
        blocked.attachments += 1
        dev.attachedDomain = blocked
        blockedByRollback += 1
        observer?.transitionEnded(dev, pasid: nil, current: blocked, path: .removed)
        faultHandlerDetached(current, dev, pasid: nil, new: blocked)
    }
}
