import Platform
import Formats
import Hardware

/// A device accessing memory through ATS as a scenario workload: every `intervalNs` it starts
/// an access of `pagesPerAccess` pages at a random page of its target (a process region
/// through an SVA bind, or an IOVA window), unless `outstanding` accesses already wait for
/// their translations or page requests. Outcomes are counted by kind.
final class ATSStreamEngine {
    let spec: Scenario.ATSStream
    let endpoint: PCIeEndpoint
    let scheduler: Scheduler
    /// Where to access now: the PASID (nil: RID only), the target's base address and its
    /// size in pages; nil when there is nothing to access (the bind or region is gone).
    var target: () -> (pasid: PASID?, base: UInt64, pages: Int)? = { nil }
    private(set) var running = false
    private var generation: UInt64 = 0
    private(set) var inFlight = 0
    /// Accesses started, and how they ended.
    private(set) var started = 0
    private(set) var completed = 0
    private(set) var failed: [String: Int] = [:]

    init(spec: Scenario.ATSStream, endpoint: PCIeEndpoint, scheduler: Scheduler) {
        self.spec = spec
        self.endpoint = endpoint
        self.scheduler = scheduler
    }

    func start() {
        guard !running else { return }
        running = true
        generation &+= 1
        schedule(generation)
    }

    func stop() { running = false }

    private func schedule(_ g: UInt64) {
        scheduler.schedule(after: spec.intervalNs, kind: .hardware) { [weak self] in
            guard let self, self.running, self.generation == g else { return }
            self.tick()
            self.schedule(g)
        }
    }

    /// Called with (access start, result) for an access that sent page requests (set only
    /// when a run records: `RunRecorder.pageFault`).
    var onPageFaultAccess: ((UInt64, ATSAccessResult) -> Void)?

    private func tick() {
        guard inFlight < spec.outstanding, let t = target(), t.pages > 0 else { return }
        let span = min(spec.pagesPerAccess, t.pages)
        let page = scheduler.random(below: UInt64(t.pages - span + 1))
        let write: Bool
        switch spec.direction {
        case .read: write = false
        case .write: write = true
        case .both: write = scheduler.random(below: 2) == 0
        }
        inFlight += 1
        started += 1
        let startNs = scheduler.now
        endpoint.atsAccess(pasid: t.pasid, address: t.base &+ page << 12, length: span << 12, write: write) { [weak self] r in
            guard let self else { return }
            self.inFlight -= 1
            if r.groups > 0, let observe = self.onPageFaultAccess { observe(startNs, r) }
            if r.outcome == .completed { self.completed += 1 } else { self.failed[Self.name(r.outcome), default: 0] += 1 }
        }
    }

    static func name(_ o: ATSAccessOutcome) -> String {
        switch o {
        case .completed: "completed"
        case .unsupportedRequest: "unsupported request"
        case .noAccess: "no access"
        case .invalidResponse: "answered invalid"
        case .responseFailure: "response failure"
        case .retriesExhausted: "retries exhausted"
        case .stopped: "stopped"
        case .fault: "faulted"
        }
    }

    /// "N started, N completed, N stopped, ..." for the log.
    var summary: String {
        let f = failed.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }
        return (["\(started) accesses", "\(completed) completed"] + f).joined(separator: ", ")
    }
}
