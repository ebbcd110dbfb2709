import Platform
import Formats

/// The IO page-fault pipeline (drivers/iommu/io-pgfault.c): drivers report page requests,
/// the core keeps partial requests per device until the group's last one, builds the group,
/// hands it to the fault handler of the domain attached to (device, PASID) at that time, and
/// sends exactly one response per group. There is no timeout: a group stays pending until its
/// handler answers, its attachment goes away, or the device leaves the queue.
extension IOMMUCore {
    /// A new fault queue (Linux `iopf_queue_alloc`); drivers make one per unit.
    public func allocIOPFQueue(name: String) -> IOPFQueue {
        IOPFQueue(name: name, scheduler: platform.scheduler)
    }

    /// Lets `device` report recoverable faults through `queue` (Linux `iopf_queue_add_device`).
    public func iopfAddDevice(_ device: Device, to queue: IOPFQueue) throws(IOMMUError) {
        guard device.driver.supportsPageResponse else { throw .noDevice("\(device.driver.name) cannot send page responses") }
        guard device.faultParam == nil else { throw .busy("\(device) already reports faults") }
        device.faultParam = FaultParam(queue: queue)
        queue.devices.append(device)
    }

    /// Stops fault reporting for `device` (Linux `iopf_queue_remove_device`). The driver has
    /// already stopped page requests from it reaching software and drained its queue. Partial
    /// requests are dropped and every pending group is answered Invalid Request; responses
    /// handlers make later are ignored.
    /// The device is being reset: its driver lets go of what the IOMMU holds for it (an
    /// SMMUv3 terminates its stalled transactions).
    public func prepareDeviceReset(_ device: Device) {
        device.driver.deviceReset(device)
    }

    public func iopfRemoveDevice(_ device: Device) {
        guard let param = device.faultParam else { return }
        param.partial = []
        for g in param.pending.values.sorted(by: { $0.reportedAt < $1.reportedAt }) { respond(g, .invalidRequest) }
        param.queue.devices.removeAll { $0 === device }
        device.faultParam = nil
    }

    /// Waits until the fault work queued for `device` has run (Linux `iopf_queue_flush_dev`).
    /// It does not touch partial requests or pending groups.
    public func flushFaultWork(_ device: Device) {
        device.faultParam?.queue.runAll()
    }

    /// Drops every device's partial requests (Linux `iopf_queue_discard_partial`): after a
    /// hardware queue overflow the last request of some groups may be lost. No responses.
    public func discardPartialFaults(_ queue: IOPFQueue) {
        for d in queue.devices { d.faultParam?.partial = [] }
        partialsDiscarded += 1
    }

    /// Drops the partial requests of `device` for `pasid` (nil: its RID): the PASID was torn
    /// down and drained, so its groups will never be completed (the device stopped using it;
    /// PCIe stop marker semantics). Left behind, they would be merged into a group of the
    /// PASID's next owner that happens to reuse their PRG index.
    public func discardPartialFaults(_ device: Device, pasid: PASID?) {
        guard let param = device.faultParam else { return }
        if injectedBugs.contains(.keepPartialsAtTeardown) { return }
        let before = param.partial.count
        param.partial.removeAll { $0.requestPASID == pasid }
        partialsDroppedAtTeardown += before - param.partial.count
    }

    /// Most partial requests kept per device; beyond it (a device that never ends its groups)
    /// the oldest are dropped.
    static let partialLimit = 4096

    /// A driver reports one page request of `device` (Linux `iommu_report_device_fault`).
    public func reportPageFault(_ device: Device, _ fault: PageFault) {
        var fault = fault
        fault.reportedAt = platform.scheduler.now
        pageFaultsReported += 1
        observer?.pageFaultReported(device, fault)
        let domain: IOMMUDomain?
        if let p = fault.requestPASID {
            // Linux `find_fault_handler`: with a guest-owned PASID table, a PASID the host
            // has no attachment for is the guest's, served by the nested RID domain.
            if let d = device.attachedPASIDs[p.rawValue] {
                domain = d
            } else if device.driver.usesUserPASIDTable, let rid = device.attachedDomain, rid.type == .nested {
                domain = rid
            } else {
                domain = nil
            }
        } else {
            domain = device.attachedDomain
        }
        guard let param = device.faultParam, let domain, let handler = domain.iopfHandler else {
            // No handler: Invalid Request. Only a group's last request is answered, so the
            // group gets exactly one response (Linux answers every request here; Intel's own
            // bad-request path answers only LPIG ones).
            pageFaultsWithoutHandler += 1
            if fault.isLast { sendPageResponse(device, fault, .invalidRequest) }
            return
        }
        guard fault.isLast else {
            if param.partial.count >= Self.partialLimit {
                param.partial.removeFirst()
                partialsDropped += 1
            }
            param.partial.append(fault)
            return
        }
        // A group is one (PASID, PRG index): indices are the function's, and a device may use
        // one index for groups of two PASIDs once the first was stopped.
        func member(_ f: PageFault) -> Bool { f.groupIndex == fault.groupIndex && f.requestPASID == fault.requestPASID }
        var faults = param.partial.filter(member)
        param.partial.removeAll(where: member)
        faults.append(fault)
        let group = IOPFGroup(device: device, faults: faults, domain: domain, reportedAt: platform.scheduler.now)
        observer?.pageFaultGroupBuilt(group)
        param.pending[ObjectIdentifier(group)] = group
        pageFaultGroups += 1
        do { try handler.handle(group) } catch {
            respond(group, .responseFailure)
        }
    }

    /// Answers a group (Linux `iopf_group_response`): only while it is pending, so a late or
    /// second answer does nothing.
    public func respond(_ group: IOPFGroup, _ code: PageResponseCode) {
        guard group.isPending else {
            lateResponses += 1
            return
        }
        group.isPending = false
        group.device.faultParam?.pending[ObjectIdentifier(group)] = nil
        sendPageResponse(group.device, group.last, code)
    }

    func sendPageResponse(_ device: Device, _ fault: PageFault, _ code: PageResponseCode) {
        observer?.pageResponseSent(device, fault, code)
        pageResponses[Int(code.rawValue == 0xF ? 2 : code.rawValue)] += 1
        device.driver.pageResponse(device, to: fault, code: code)
    }

    /// Groups of `device` waiting for a response.
    public func pendingFaultGroups(of device: Device) -> [IOPFGroup] {
        (device.faultParam?.pending.values).map { $0.sorted { $0.reportedAt < $1.reportedAt } } ?? []
    }

    /// Tells the fault handler of `old` that (`device`, `pasid`) left it.
    func faultHandlerDetached(_ old: IOMMUDomain?, _ device: Device, pasid: PASID?, new: IOMMUDomain?) {
        guard let old, old !== new, let h = old.iopfHandler else { return }
        h.detached(device, pasid: pasid, from: old)
    }

    /// Makes `handler` take the recoverable faults of `domain` (Linux: `domain->iopf_handler`
    /// set at allocation, `IOMMU_HWPT_FAULT_ID_VALID`): only for user domains not attached
    /// anywhere yet, and never for a nesting parent.
    public func setFaultHandler(_ handler: (any IOPFHandler)?, for domain: IOMMUDomain) throws(IOMMUError) {
        try checkAlive(domain)
        guard domain.type == .unmanaged || domain.type == .nested else {
            throw .invalidArgument("\(domain) is not a user domain")
        }
        guard !domain.flags.contains(.nestParent) else { throw .invalidArgument("a nesting parent cannot take faults") }
        guard domain.attachments == 0 else { throw .busy("\(domain) is attached already") }
        domain.iopfHandler = handler
    }
}
