import Platform
import Formats

/// The page request side of the unit (VT-d §7.4, §7.10): page requests from devices are
/// checked against the context and PASID entries, written into the page request queue in
/// memory, or answered by the unit itself; page group responses travel back through the
/// fabric; a page-drain wait completes only when no page traffic is in flight.
extension VTdUnit {
    var pageRequestQueueBytes: UInt64 { 4096 << (pageRequestQueueAddress & 7) }
    var pageRequestQueueBase: UInt64 { pageRequestQueueAddress & ~0xFFF }

    /// A page request message has reached the unit from the device with `d.requester`: it
    /// takes the unit's internal path (`pageRequestInternalNs`, in order) before it is
    /// checked and queued or answered.
    public func receivePageRequest(_ d: PageRequestDescriptor) {
        pageRequestsAccepted &+= 1
        let delay = configuration.latency.pageRequestInternalNs
        guard delay > 0 else { processPageRequest(d); return }
        // One request at a time: a burst queues up behind the writes before it.
        let due = max(scheduler.now, lastPageRequestDue) &+ delay
        lastPageRequestDue = due
        scheduler.schedule(at: due, kind: .hardware) { [ref] in ref.target?.processPageRequest(d) }
    }

    /// The end of the internal path: the request is checked and queued (or answered).
    func processPageRequest(_ d: PageRequestDescriptor) {
        handlePageRequest(d)
        pageRequestsProcessed &+= 1
        pageTrafficLeft()
    }

    private func handlePageRequest(_ d: PageRequestDescriptor) {
        let c = countersStorage
        c.pointee.pageRequests &+= 1
        let now = scheduler.now
        platform.trace.record(TraceEvent(time: now, kind: .pageRequest, track: trackID, a: d.address,
                                         b: UInt64(d.groupIndex) | (d.lastInGroup ? 1 << 9 : 0) | (d.isStopMarker ? 1 << 10 : 0),
                                         c: d.pasid.map { UInt64($0.rawValue) } ?? .max))
        // A request that needs an answer (the last of its group) gets one from the unit
        // whenever it does not reach software. A stop marker needs none.
        let needsResponse = d.lastInGroup && !d.isStopMarker
        func autoRespond(_ code: PageResponseCode) {
            guard needsResponse else {
                if d.isStopMarker { c.pointee.stopMarkersDiscarded &+= 1 }
                return
            }
            c.pointee.pageRequestsAutoResponded &+= 1
            sendPageResponse(PageGroupResponse(requester: d.requester, pasid: d.pasid, responseCode: code.rawValue,
                                               groupIndex: d.groupIndex))
        }
        guard translationEnabled, configuration.extendedCapability.pageRequests, pageRequestQueueAddress != 0 else {
            autoRespond(.invalidRequest)
            return
        }
        // Context: present with PRE set (VT-d §7.4.1.1: otherwise a fault and an Invalid
        // Request response).
        var access: DMAAccess = d.write ? .write : .read
        if d.execute { access.insert(.execute) }
        if d.privileged { access.insert(.privileged) }
        let ctx: ContextCacheEntry
        switch contextEntry(d.requester) {
        case .success(let e): ctx = e
        case .failure(let f):
            noteFault(f.reason, source: d.requester, pasid: d.pasid, address: d.address, access: access, fpd: f.fpd)
            autoRespond(.invalidRequest)
            return
        }
        guard ctx.flags & ContextCacheEntry.pageRequest != 0 else {
            noteFault(.smPREClear, source: d.requester, pasid: d.pasid, address: d.address, access: access,
                      fpd: ctx.flags & ContextCacheEntry.fpd != 0)
            autoRespond(.invalidRequest)
            return
        }
        // PASID entry: a request for a PASID whose entry is not present is answered Invalid
        // Request by the unit (the PASID was torn down; software never sees it).
        let effective: UInt32
        if let p = d.pasid {
            guard ctx.flags & ContextCacheEntry.pasidEnable != 0, p.rawValue < ctx.pasidLimit else {
                autoRespond(.invalidRequest)
                return
            }
            effective = p.rawValue
        } else {
            effective = ctx.ridPASID
        }
        let pkey = UInt64(d.requester.rawValue) << 20 | UInt64(effective)
        if pasidCache.lookup(pkey, 0) == nil {
            switch fetchPASIDEntry(ctx, pasid: effective) {
            case .success(let e): pasidCache.insert(pkey, 0, e)
            case .failure:
                autoRespond(.invalidRequest)
                return
            }
        }
        // Queue full (one slot is always left empty): set PRO and answer Success so the
        // device retries later (VT-d §7.4.1.2).
        let size = pageRequestQueueBytes
        let tail = pageRequestQueueTail % size
        if (tail + PageRequestDescriptor.size) % size == pageRequestQueueHead % size {
            c.pointee.pageRequestOverflows &+= 1
            pageRequestStatus |= VTdPageRequestStatus.overflow
            autoRespond(.success)
            return
        }
        let raw = d.encode()
        let at = pageRequestQueueBase + tail
        do {
            try memory.deviceStore(at, raw.qw0)
            try memory.deviceStore(at + 8, raw.qw1)
            try memory.deviceStore(at + 16, raw.qw2)
            try memory.deviceStore(at + 24, raw.qw3)
        } catch {
            autoRespond(.responseFailure)
            return
        }
        pageRequestQueueTail = (tail + PageRequestDescriptor.size) % size
        c.pointee.pageRequestsQueued &+= 1
        // The page request event is raised when PPR goes from clear to set.
        if pageRequestStatus & VTdPageRequestStatus.pending == 0 {
            pageRequestStatus |= VTdPageRequestStatus.pending
            raiseInterrupt(control: &pageRequestEventControl, handler: onPageRequestEvent)
        }
    }

    /// Sends a page group response to the device it names (dropped if there is none).
    func sendPageResponse(_ r: PageGroupResponse) {
        guard let port = endpoints[r.requester.rawValue] else { return }
        countersStorage.pointee.pageResponsesSent &+= 1
        port.link.down(pageResponse: true) { port.receivePageGroupResponse(r) }
    }

    /// An invalidation completion message for no invalidation the unit requested (a
    /// misbehaving device): counted and ignored.
    public func receiveUnsolicitedInvalidationCompletion(from source: RequesterID) {
        countersStorage.pointee.unsolicitedCompletions &+= 1
    }

    /// What must still arrive, per link, for the page traffic in flight now to be out.
    func pageTrafficInFlight() -> [(PCIeLink, UInt64, UInt64)] {
        endpoints.values.compactMap { port in
            let l = port.link
            return l.pageTrafficIdle ? nil : (l, l.pageRequestsSent, l.pageResponsesSent)
        }
    }

    /// A page message left the fabric, or a request left the unit's internal path: a held
    /// page-drain wait moves on. In three bounded phases (later traffic cannot starve it):
    /// the requests and responses in the fabric when it was reached arrive; the requests
    /// received by then leave the internal path (queued or answered); the responses sent by
    /// then, those answers included, reach their devices.
    func pageTrafficLeft() {
        guard var p = parkedDrain else { return }
        func arrived(_ links: [(PCIeLink, UInt64, UInt64)]) -> Bool {
            links.allSatisfy { $0.0.pageRequestsArrived >= $0.1 && $0.0.pageResponsesArrived >= $0.2 }
        }
        if case .fabric = p.phase {
            guard arrived(p.links) else { return }
            p.phase = .internalPath(received: pageRequestsAccepted)
        }
        if case .internalPath(let received) = p.phase {
            guard pageRequestsProcessed >= received else { parkedDrain = p; return }
            p.links = pageTrafficInFlight().map { ($0.0, 0, $0.2) }
            p.phase = .responses
        }
        guard arrived(p.links) else { parkedDrain = p; return }
        parkedDrain = nil
        complete(p.descriptor, raw: p.raw, dropped: false, drained: true)
    }

    /// Entries between head and tail (for traces and tests).
    public var pageRequestQueueDepth: Int {
        guard pageRequestQueueAddress != 0 else { return 0 }
        let size = pageRequestQueueBytes
        return Int(((pageRequestQueueTail &+ size &- pageRequestQueueHead) % size) / PageRequestDescriptor.size)
    }
}

/// A page-drain wait descriptor parked at the head of the invalidation queue (VT-d §7.10).
struct ParkedDrain {
    var descriptor: InvalidationDescriptor
    var raw: RawDescriptor
    /// Per link: the page requests and responses that must have arrived (this phase).
    var links: [(PCIeLink, UInt64, UInt64)]
    var phase: Phase

    enum Phase {
        /// The traffic in the fabric when the wait was reached must arrive.
        case fabric
        /// The unit must have handled the first `received` requests it accepted.
        case internalPath(received: UInt64)
        /// The responses sent when the internal path was clear must reach their devices.
        case responses
    }
}
