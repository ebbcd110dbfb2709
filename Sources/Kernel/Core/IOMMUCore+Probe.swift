import Platform
import Formats

extension IOMMUCore {
    /// Probes devices behind `driver` (Linux `iommu_probe_device` for a bus): each is set up
    /// by the driver and put in a group, then every new group gets a default domain chosen
    /// by the policy and is attached to it. A device whose setup fails is left out and its
    /// error thrown after the others are undone, so the call changes nothing on failure.
    @discardableResult
    public func probe(_ descriptions: [DeviceDescription], driver: any IOMMUDriver) throws(IOMMUError) -> [Device] {
        guard drivers.contains(where: { $0 === driver }) else { throw .noDevice("driver \(driver.name) is not registered") }
        var added: [Device] = []
        var newGroups: [Group] = []
        func undo() {
            for d in added.reversed() { forget(d) }
            for g in newGroups { groups.removeAll { $0 === g } }
        }
        for desc in descriptions {
            guard desc.unit >= 0, desc.unit < driver.unitCount else {
                undo(); throw .noDevice("\(desc.name): no IOMMU unit \(desc.unit) in \(driver.name)")
            }
            guard device(driver: driver, unit: desc.unit, requesterID: desc.requesterID) == nil,
                  !added.contains(where: { $0.unit == desc.unit && $0.requesterID == desc.requesterID }) else {
                undo(); throw .exists("\(desc.name): \(desc.requesterID) is already probed on unit \(desc.unit)")
            }
            let key = "\(UInt(bitPattern: ObjectIdentifier(driver))):\(desc.groupKey ?? "dev:\(desc.unit):\(desc.requesterID.rawValue)")"
            let existing = groups.first(where: { $0.key == key })
            // A device joining a group with PASID attachments would share PASIDs it has no
            // entries for.
            if let existing, !existing.pasidDomains.isEmpty {
                undo(); throw .busy("\(desc.name): \(existing) has PASIDs attached; detach them before adding devices")
            }
            let dev = Device(desc, driver: driver)
            dev.objectID = nextDeviceObjectID
            nextDeviceObjectID &+= 1
            let unitLimit: UInt32
            do { unitLimit = try driver.probeDevice(dev) } catch { undo(); throw error }
            dev.maxPASIDs = min(desc.maxPASIDs, unitLimit)
            let group: Group
            if let existing {
                group = existing
            } else {
                group = Group(id: nextGroupID, key: key)
                nextGroupID += 1
                groups.append(group)
                newGroups.append(group)
            }
            group.devices.append(dev)
            dev.group = group
            devices.append(dev)
            added.append(dev)
        }
        for g in groups where g.defaultDomain == nil {
            do { try setUpDefaultDomain(g) } catch { undo(); throw error }
        }
        // Devices joining an existing group take the group's current domain.
        for d in added where d.attachedDomain == nil {
            guard let g = d.group, let domain = g.domain else { continue }
            do { try attachOne(d, to: domain, old: nil) } catch { undo(); throw error }
        }
        return added
    }

    /// Default domain type for a group (Linux `iommu_get_default_domain_type`): the policy,
    /// overridden by device preferences (identity wins a conflict), and untrusted devices
    /// always translated and strict.
    func defaultDomainType(_ g: Group) -> (DomainType, DomainFlags) {
        guard let first = g.devices.first else { return (.dma, []) }
        let driver = first.driver
        var type: DomainType = policy == .passthrough ? .identity : .dma
        let preferences = g.devices.compactMap(\.preferredDomain)
        if preferences.contains(.identity) { type = .identity } else if preferences.contains(.dma) { type = .dma }
        let untrusted = g.devices.contains(where: \.untrusted)
        if untrusted || driver.identityDomain == nil { type = .dma }
        var flags: DomainFlags = []
        let trustRule = untrusted && !injectedBugs.contains(.flushQueueForUntrusted)
        if type == .dma, policy == .lazy, !trustRule, g.devices.allSatisfy({ driver.capable($0, .deferredFlush) }) {
            flags.insert(.deferredFlush)
        }
        if g.devices.contains(where: { $0.maxPASIDs > 0 }) { flags.insert(.pasid) }
        return (type, flags)
    }

    func setUpDefaultDomain(_ g: Group) throws(IOMMUError) {
        guard let first = g.devices.first else { return }
        let driver = first.driver
        let (type, flags) = defaultDomainType(g)
        let domain: IOMMUDomain
        if let fixed = driver.defaultDomain {
            domain = fixed
        } else if type == .identity, let identity = driver.identityDomain {
            domain = identity
        } else {
            if platform.faults.shouldFail(.domainAlloc) { throw .noMemory("default domain allocation (injected)") }
            // The driver never sees deferredFlush (Linux IOMMU_DOMAIN_ALLOC_FLAGS masks DMA_FQ);
            // the core sets it on the domain it gets back.
            let d = try driver.allocPagingDomain(for: first, type: .dma, flags: flags.subtracting(.deferredFlush))
            d.flags.formUnion(flags.intersection(.deferredFlush))
            d.isCoreOwned = true
            adopt(d)
            domain = d
        }
        g.defaultDomain = domain
        g.blockingDomain = driver.blockedDomain
        // The first attach of the default domain must succeed (MUST_SUCCEED).
        do {
            try setGroupDomain(g, domain, mustSucceed: false)
        } catch {
            g.defaultDomain = nil
            if liveDomains[domain.id] === domain { release(domain) }
            throw error
        }
    }

    /// Removes a device (Linux `iommu_release_device`): its PASIDs are detached, it is put in
    /// the blocked domain (the driver's `release_domain`), the driver frees its state, and it
    /// leaves its group; an empty group's default domain is freed.
    public func release(_ device: Device) throws(IOMMUError) {
        try checkProbed(device)
        forget(device)
    }

    /// Takes a device out of every domain and off the core's books (also the undo of a
    /// failed probe).
    func forget(_ device: Device) {
        for raw in device.attachedPASIDs.keys.sorted() {
            let pasid = PASID(truncating: raw)
            removePASID(device, pasid)
            if let g = device.group { dropEmptyPASIDSlot(g, pasid) }
        }
        if let current = device.attachedDomain {
            observer?.transitionBegan(device, pasid: nil, from: current, to: nil)
            _ = try? device.driver.blockedDomain.attach(device, old: current)
            current.attachments -= 1
            device.attachedDomain = nil
            observer?.transitionEnded(device, pasid: nil, current: nil, path: .removed)
            faultHandlerDetached(current, device, pasid: nil, new: nil)
        }
        device.driver.releaseDevice(device)
        device.isReleased = true
        devices.removeAll { $0 === device }
        guard let g = device.group else { return }
        g.devices.removeAll { $0 === device }
        device.group = nil
        if g.devices.isEmpty {
            if let d = g.defaultDomain, liveDomains[d.id] === d {
                if d.attachments == 0 { release(d) } else { d.isCoreOwned = false }
            }
            g.defaultDomain = nil
            g.domain = nil
            g.pasidDomains = [:]
            groups.removeAll { $0 === g }
        }
    }
}
