import Platform
import Formats

extension IOMMUCore {
    /// Allocates a PASID from the global space for use with `device` (Linux
    /// `iommu_alloc_global_pasid`): the lowest free one in [1, device limit).
    public func allocGlobalPASID(for device: Device) throws(IOMMUError) -> PASID {
        try checkProbed(device)
        guard device.maxPASIDs > 1 else { throw .notSupported("\(device) has no PASID capability") }
        if platform.faults.shouldFail(.pasidAlloc) { throw .noSpace("PASID allocation (injected)") }
        guard let p = pasids.allocate(below: device.maxPASIDs) else { throw .noSpace("no free PASID below \(device.maxPASIDs)") }
        return p
    }

    /// Returns a PASID to the global space. It must not be attached anywhere.
    public func freeGlobalPASID(_ pasid: PASID) throws(IOMMUError) {
        guard pasids.isAllocated(pasid), pasid != .noPASID else { throw .notFound("\(pasid) is not allocated") }
        if let g = groups.first(where: { $0.pasidDomains[pasid.rawValue] != nil }) {
            throw .busy("\(pasid) is still attached in \(g)")
        }
        _ = pasids.free(pasid)
    }

    func checkPASID(_ domain: IOMMUDomain, _ device: Device, _ pasid: PASID) throws(IOMMUError) -> Group {
        try checkProbed(device)
        try checkAlive(domain)
        guard let g = device.group else { throw .noDevice("\(device) is not probed") }
        guard pasid != .noPASID else { throw .invalidArgument("PASID 0 is the RID's (IOMMU_NO_PASID)") }
        guard device.maxPASIDs > 0 else { throw .notSupported("\(device) has no PASID capability") }
        for d in g.devices where d.maxPASIDs > 0 && pasid.rawValue >= d.maxPASIDs {
            throw .invalidArgument("\(pasid) is beyond the limit of \(d) (\(d.maxPASIDs))")
        }
        try checkOwner(domain, g)
        guard !domain.isCoreOwned || domain === g.defaultDomain else {
            throw .invalidArgument("\(domain) is the default domain of another group")
        }
        switch domain.type {
        case .unmanaged, .dma:
            guard domain.flags.contains(.pasid) else { throw .notSupported("\(domain) was not allocated for PASID use") }
        case .identity, .sva, .nested: break
        case .blocked: throw .invalidArgument("detach the PASID instead of attaching the blocked domain")
        }
        return g
    }

    /// Attaches `domain` to `pasid` of every PASID-capable device in `device`'s group (Linux
    /// `iommu_attach_device_pasid`). `EBUSY` if the PASID is already attached. On failure
    /// the devices already set are removed again and nothing is recorded.
    @discardableResult
    public func attachPASID(_ domain: IOMMUDomain, to device: Device, pasid: PASID) throws(IOMMUError) -> UpdatePath {
        let g = try checkPASID(domain, device, pasid)
        guard g.pasidDomains[pasid.rawValue] == nil else { throw .busy("\(pasid) is already attached in \(g)") }
        var done: [Device] = []
        var worst = UpdatePath.fresh
        for (i, d) in g.devices.enumerated() where d.maxPASIDs > 0 {
            if i > 0 { yield(KernelYield.insideReplace) }
            observer?.transitionBegan(d, pasid: pasid, from: nil, to: domain)
            do {
                let path = try domain.setDevicePASID(d, pasid: pasid, old: nil)
                if !path.isHitless { worst = path }
                d.attachedPASIDs[pasid.rawValue] = domain
                domain.attachments += 1
                done.append(d)
                observer?.transitionEnded(d, pasid: pasid, current: domain, path: path)
            } catch {
                observer?.transitionEnded(d, pasid: pasid, current: nil, path: .unchanged)
                for u in done.reversed() { removePASID(u, pasid) }
                throw error
            }
        }
        g.pasidDomains[pasid.rawValue] = domain
        lastUpdatePath = worst
        return worst
    }

    /// Replaces the domain of an attached PASID (Linux `iommu_replace_device_pasid`): the
    /// driver switches each device with the old domain as `old`, hitless where it can. On
    /// partial failure, devices already switched are put back in the old domain (or, if that
    /// fails, removed). Returns the path the driver took (the least hitless one).
    @discardableResult
    public func replacePASID(_ domain: IOMMUDomain, on device: Device, pasid: PASID) throws(IOMMUError) -> UpdatePath {
        let g = try checkPASID(domain, device, pasid)
        guard let old = g.pasidDomains[pasid.rawValue] else { throw .invalidArgument("\(pasid) is not attached in \(g)") }
        if old === domain { return .unchanged }
        var done: [Device] = []
        var worst = UpdatePath.singleWord
        for (i, d) in g.devices.enumerated() {
            guard let current = d.attachedPASIDs[pasid.rawValue] else { continue }
            if i > 0 { yield(KernelYield.insideReplace) }
            observer?.transitionBegan(d, pasid: pasid, from: current, to: domain)
            do {
                let path = try domain.setDevicePASID(d, pasid: pasid, old: current)
                if !path.isHitless || worst == .singleWord { worst = path }
                d.attachedPASIDs[pasid.rawValue] = domain
                current.attachments -= 1
                domain.attachments += 1
                done.append(d)
                observer?.transitionEnded(d, pasid: pasid, current: domain, path: path)
                faultHandlerDetached(current, d, pasid: pasid, new: domain)
            } catch {
                observer?.transitionEnded(d, pasid: pasid, current: current, path: .unchanged)
                for u in done.reversed() {
                    observer?.transitionBegan(u, pasid: pasid, from: domain, to: old)
                    do {
                        let p = try old.setDevicePASID(u, pasid: pasid, old: domain)
                        u.attachedPASIDs[pasid.rawValue] = old
                        domain.attachments -= 1
                        old.attachments += 1
                        observer?.transitionEnded(u, pasid: pasid, current: old, path: p)
                    } catch {
                        observer?.transitionEnded(u, pasid: pasid, current: domain, path: .unchanged)
                        removePASID(u, pasid)
                    }
                }
                dropEmptyPASIDSlot(g, pasid)
                throw error
            }
        }
        g.pasidDomains[pasid.rawValue] = domain
        lastUpdatePath = worst
        return worst
    }

    /// Detaches `domain` from `pasid` (Linux `iommu_detach_device_pasid`): the blocked
    /// domain's PASID operation removes the entry on each device. Cannot fail once the
    /// arguments are right.
    public func detachPASID(_ domain: IOMMUDomain, from device: Device, pasid: PASID) throws(IOMMUError) {
        try checkProbed(device)
        guard let g = device.group, g.pasidDomains[pasid.rawValue] === domain else {
            throw .notFound("\(domain) is not attached to \(pasid) of \(device)")
        }
        detachPASIDInternal(from: g, pasid: pasid)
    }

    func detachPASIDInternal(from g: Group, pasid: PASID) {
        var first = true
        for d in g.devices where d.attachedPASIDs[pasid.rawValue] != nil {
            if !first { yield(KernelYield.insideReplace) }
            first = false
            removePASID(d, pasid)
        }
        g.pasidDomains[pasid.rawValue] = nil
    }

    /// Removes one device's PASID translation through the blocked domain (never fails).
    func removePASID(_ d: Device, _ pasid: PASID) {
        guard let domain = d.attachedPASIDs[pasid.rawValue] else { return }
        observer?.transitionBegan(d, pasid: pasid, from: domain, to: nil)
        _ = try? d.driver.blockedDomain.setDevicePASID(d, pasid: pasid, old: domain)
        d.attachedPASIDs[pasid.rawValue] = nil
        domain.attachments -= 1
        observer?.transitionEnded(d, pasid: pasid, current: nil, path: .removed)
        faultHandlerDetached(domain, d, pasid: pasid, new: nil)
    }

    /// Forgets a group's PASID slot once no device holds the PASID any more.
    func dropEmptyPASIDSlot(_ g: Group, _ pasid: PASID) {
        if !g.devices.contains(where: { $0.attachedPASIDs[pasid.rawValue] != nil }) { g.pasidDomains[pasid.rawValue] = nil }
    }
}
