import Platform
import Formats

/// Per-device fault state (Linux `struct iommu_fault_param`): requests waiting for their
/// group's last request, and groups waiting for their response.
final class FaultParam {
    unowned(unsafe) let queue: IOPFQueue
    var partial: [PageFault] = []
    var pending: [ObjectIdentifier: IOPFGroup] = [:]
    init(queue: IOPFQueue) { self.queue = queue }
}

/// A fault queue with its work queue (Linux `struct iopf_queue`, one per IOMMU unit): handlers
/// that need process context (SVA) queue work here; it runs as software events, in order.
/// `flush` runs everything queued now (Linux `flush_workqueue`).
public final class IOPFQueue: @unchecked Sendable {
    public let name: String
    let scheduler: Scheduler
    /// Delay from queueing work to a worker running it.
    public var workLatencyNs: UInt64 = 1_000
    private var work: [() -> Void] = []
    private var head = 0
    private var scheduled = false
    public internal(set) var devices: [Device] = []
    public private(set) var workRun: UInt64 = 0

    init(name: String, scheduler: Scheduler) { self.name = name; self.scheduler = scheduler }

    /// Drops its devices and queued work without running anything (the machine is going;
    /// they hold the devices, which hold the driver, which holds this queue).
    func forgetAll() {
        devices = []
        work = []
        head = 0
    }

    /// Work items queued and not yet run.
    public var queuedWork: Int { work.count - head }

    func queueWork(_ body: @escaping () -> Void) {
        work.append(body)
        guard !scheduled else { return }
        scheduled = true
        scheduler.schedule(after: workLatencyNs, kind: .software) { [weak self] in
            self?.scheduled = false
            self?.runAll()
        }
    }

    /// Runs queued work until none is left (work queued meanwhile included).
    func runAll() {
        while head < work.count {
            let item = work[head]
            head += 1
            workRun += 1
            item()
        }
        work.removeAll(keepingCapacity: true)
        head = 0
    }
}
