import Platform

/// The fabric between one endpoint and its IOMMU unit: two ordered lanes of messages, each
/// taking `latencyNs` of virtual time.
///
/// PCIe keeps posted requests in order and lets no completion pass a posted request going the
/// same way (PCIe ordering rules). So a device-TLB invalidation completion (upstream) arrives
/// after every page request the device sent before it, and a page group response sent before
/// an invalidation request (downstream) reaches the device first. That is what the VT-d §7.10
/// drain relies on; modelling each lane as a FIFO keeps it.
public final class PCIeLink: @unchecked Sendable {
    let scheduler: Scheduler
    public var latencyNs: UInt64
    /// Arrival time of the last message queued in each direction.
    private var lastUp: UInt64 = 0
    private var lastDown: UInt64 = 0
    /// Page requests sent upstream and arrived; page responses sent downstream and arrived
    /// (monotonic: each lane is FIFO, so "arrived ≥ n" means the first n are out).
    public private(set) var pageRequestsSent: UInt64 = 0
    public private(set) var pageRequestsArrived: UInt64 = 0
    public private(set) var pageResponsesSent: UInt64 = 0
    public private(set) var pageResponsesArrived: UInt64 = 0
    public var pageRequestsInFlight: UInt64 { pageRequestsSent - pageRequestsArrived }
    public var pageResponsesInFlight: UInt64 { pageResponsesSent - pageResponsesArrived }
    /// Told whenever a page message leaves the fabric (the unit's drain listens).
    var onPageTrafficLeft: (() -> Void)?

    init(scheduler: Scheduler, latencyNs: UInt64) {
        self.scheduler = scheduler
        self.latencyNs = latencyNs
    }

    /// Whether no page request or response is between device and unit.
    public var pageTrafficIdle: Bool { pageRequestsInFlight == 0 && pageResponsesInFlight == 0 }

    /// Each message arrives strictly after the one before it on its lane (events at the same
    /// instant run in a seeded random order, which would break the FIFO).
    private func arrival(after last: inout UInt64) -> UInt64 {
        let (t, o) = scheduler.now.addingReportingOverflow(latencyNs)
        let at = max(o ? .max : t, last == 0 ? 0 : last &+ 1)
        last = at
        return at
    }

    /// Sends a message from the device towards the unit; `deliver` runs when it arrives.
    func up(pageRequest: Bool = false, _ deliver: @escaping () -> Void) {
        if pageRequest { pageRequestsSent += 1 }
        scheduler.schedule(at: arrival(after: &lastUp), kind: .hardware) { [self] in
            if pageRequest { pageRequestsArrived += 1 }
            deliver()
            if pageRequest { onPageTrafficLeft?() }
        }
    }

    /// Sends a message from the unit towards the device; `deliver` runs when it arrives.
    func down(pageResponse: Bool = false, _ deliver: @escaping () -> Void) {
        if pageResponse { pageResponsesSent += 1 }
        scheduler.schedule(at: arrival(after: &lastDown), kind: .hardware) { [self] in
            if pageResponse { pageResponsesArrived += 1 }
            deliver()
            if pageResponse { onPageTrafficLeft?() }
        }
    }
}
