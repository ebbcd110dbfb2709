import Platform
import Formats
import Hardware

/// A device's DMA engine under a workload: every `intervalNs` (hardware time) it issues
/// `burst` requests, each to a random posted buffer of its sets, of a random size, as TLPs
/// that reach the unit at once. An IOTLB miss stalls the stream by the walk's memory
/// accesses × `walkAccessNs`. Per request nothing is allocated and no event is scheduled.
final class DMAStreamEngine {
    let endpoint: PCIeEndpoint
    let unit: UpstreamUnit
    let scheduler: Scheduler
    @exclusivity(unchecked) var sets: [LiveBuffers]
    @exclusivity(unchecked) var pasid: PASID?
    let intervalNs: UInt64
    let burst: Int
    let direction: Scenario.Direction
    let minBytes: Int
    let maxBytes: Int
    let walkAccessNs: UInt64
    /// Sequential pattern: buffers in order, each from its start (a ring), sizes still random.
    let sequential: Bool
    @exclusivity(unchecked) private var cursorSet = 0
    @exclusivity(unchecked) private var cursorBuffer = 0
    /// Called (rarely: at most every `sampleNs`) to record trace counters.
    @exclusivity(unchecked) var sampler: (() -> Void)?
    var sampleNs: UInt64 = 2_000
    @exclusivity(unchecked) private var lastSample: UInt64 = 0
    @exclusivity(unchecked) private(set) var running = false
    @exclusivity(unchecked) private(set) var issued: UInt64 = 0
    /// A tick is scheduled: a restart after a stop continues that chain rather than adding one.
    @exclusivity(unchecked) private var tickPending = false
    private let ref = PlatformContext.BackRef<DMAStreamEngine>()
    private var tickAction: () -> Void = {}

    init(endpoint: PCIeEndpoint, sets: [LiveBuffers], pasid: PASID?, intervalNs: UInt64, burst: Int,
         direction: Scenario.Direction, minBytes: Int, maxBytes: Int, walkAccessNs: UInt64, sequential: Bool = false) {
        self.sequential = sequential
        self.endpoint = endpoint
        self.unit = endpoint.upstream
        self.scheduler = endpoint.platform.scheduler
        self.sets = sets
        self.pasid = pasid
        self.intervalNs = max(1, intervalNs)
        self.burst = burst
        self.direction = direction
        self.minBytes = minBytes
        self.maxBytes = max(minBytes, maxBytes)
        self.walkAccessNs = walkAccessNs
        ref.target = self
        tickAction = { [ref] in ref.target?.tick() }
    }

    deinit { ref.target = nil }

    func start() {
        guard !running else { return }
        running = true
        guard !tickPending else { return }
        tickPending = true
        scheduler.schedule(after: scheduler.random(below: intervalNs) + 1, kind: .hardware, tickAction)
    }

    func stop() { running = false }

    private func tick() {
        tickPending = false
        guard running else { return }
        var stall: UInt64 = 0
        let walksBefore = walkAccessNs > 0 ? unit.walkMemoryAccesses : 0
        for _ in 0..<burst { issueOne() }
        if walkAccessNs > 0 { stall = (unit.walkMemoryAccesses &- walksBefore) &* walkAccessNs }
        if let sampler, scheduler.now &- lastSample >= sampleNs {
            lastSample = scheduler.now
            sampler()
        }
        tickPending = true
        scheduler.schedule(after: intervalNs / 2 + scheduler.random(below: intervalNs) + stall, kind: .hardware, tickAction)
    }

    @inline(__always)
    private func issueOne() {
        let n = sets.count
        guard n > 0 else { return }
        let set: LiveBuffers
        let k: Int
        if sequential {
            if cursorSet >= n { cursorSet = 0 }
            set = sets[cursorSet]
            if cursorBuffer >= set.count { cursorBuffer = 0; cursorSet = (cursorSet + 1) % n; return }
            k = cursorBuffer
            cursorBuffer += 1
        } else {
            set = sets[n == 1 ? 0 : Int(scheduler.random(below: UInt64(n)))]
            guard set.count > 0 else { return }
            k = Int(scheduler.random(below: UInt64(set.count)))
        }
        guard set.live[k] else { return }
        let span = UInt64(maxBytes - minBytes)
        var length = UInt64(minBytes) + (span == 0 ? 0 : scheduler.random(below: span + 1))
        length = max(64, length & ~63)
        length = min(length, set.length)
        let room = set.length - length
        let offset = sequential || room < 64 ? 0 : scheduler.random(below: room / 64 + 1) * 64
        let write: Bool
        if set.writeOnly { write = true } else if set.readOnly { write = false } else {
            switch direction {
            case .read: write = false
            case .write: write = true
            case .both: write = scheduler.random(below: 2) == 0
            }
        }
        issued &+= 1
        endpoint.transferNow(write: write, address: set.addresses[k] &+ offset, length: Int(length), pasid: pasid)
    }
}
