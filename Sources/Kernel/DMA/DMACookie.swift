import Platform
import Formats
import Synchronization

/// The DMA API's state for one DMA domain (Linux `struct iommu_dma_cookie`): the IOVA
/// space, the record of live mappings, the flush queue when unmaps are deferred, and
/// per-CPU counters.
public final class DMACookie: @unchecked Sendable {
    /// The domain owns its cookie and callers reach the cookie through a live domain, so
    /// this back reference is not counted (no ARC traffic on the map/unmap path).
    private let domainRef: Unmanaged<IOMMUDomain>
    public var domain: IOMMUDomain { domainRef.takeUnretainedValue() }
    public let iova: IOVADomain
    /// log2 of the granule: the domain's smallest page (Linux `iova_shift`).
    public let granuleShift: UInt64
    let live: LiveMappings
    let cpus: Int
    /// Per-CPU counters, one 128-byte line per CPU so CPUs do not share lines.
    private let stats: UnsafeMutablePointer<Atomic<UInt64>>
    static let statWords = 16
    enum Stat: Int { case maps, unmaps, strictInvalidations, mapFailures, fallbacksTo64Bit, lostPages }

    /// The flush queue; nil in strict mode.
    let queue: FlushQueue?
    /// The same, borrowed on the unmap path (loading `queue` would count a reference on an
    /// object every CPU shares).
    let queueRef: Unmanaged<FlushQueue>?

    init(domain: IOMMUDomain, core: IOMMUCore, cpus: Int, queue options: FlushQueueOptions?) {
        domainRef = Unmanaged.passUnretained(domain)
        self.cpus = max(1, cpus)
        let sizes = domain.pageSizes
        granuleShift = UInt64(sizes.trailingZeroBitCount)
        let platform = core.platform
        iova = IOVADomain(granuleShift: granuleShift, startPFN: 1, endPFN: domain.apertureEnd >> granuleShift,
                          cpus: self.cpus, clock: { platform.clockNs() })
        live = LiveMappings(capacity: 4096, shards: min(self.cpus, LiveMappings.maxShards))
        stats = .allocate(capacity: self.cpus * Self.statWords)
        for i in 0..<(self.cpus * Self.statWords) { (stats + i).initialize(to: Atomic(0)) }
        let (space, slots) = (iova, self.cpus)
        queue = options.map { FlushQueue(core: core, domain: domain, iova: space, options: $0, cpus: slots) }
        queueRef = queue.map { Unmanaged.passUnretained($0) }
    }

    /// Runs `body` with the domain borrowed (no reference counting: the domain owns us).
    @inline(__always)
    func withDomain<R>(_ body: (IOMMUDomain) throws(IOMMUError) -> R) throws(IOMMUError) -> R {
        try domainRef.borrow(body)
    }

    /// The granule offset of `start` and the granules that cover `length` bytes from it;
    /// nil if the range's end does not fit in 64 bits.
    @inline(__always)
    func granules(from start: UInt64, length: UInt64) -> (offset: UInt64, pages: UInt64)? {
        let mask = (UInt64(1) << granuleShift) - 1
        let offset = start & mask
        let (end, o1) = offset.addingReportingOverflow(length)
        let (span, o2) = end.addingReportingOverflow(mask)
        guard !o1, !o2 else { return nil }
        return (offset, span >> granuleShift)
    }

    deinit {
        stats.deinitialize(count: cpus * Self.statWords)
        stats.deallocate()
    }

    /// Whether unmaps are deferred to a flush queue.
    public var isDeferred: Bool { queue != nil }
    public var queueOptions: FlushQueueOptions? { queue?.options }

    /// Adds to a per-CPU counter. A CPU slot is one thread's at a time (the DMA API's rule),
    /// so its counters have one writer: a load and a store, no locked read-modify-write
    /// (as Linux `__this_cpu_inc` with preemption off). Readers still see whole values; two
    /// threads breaking the rule on one slot could lose counts, nothing else.
    @inline(__always)
    func count(_ s: Stat, cpu: Int, _ n: UInt64 = 1) {
        let c = stats + (cpuSlot(cpu, cpus) * Self.statWords + s.rawValue)
        c.pointee.store(c.pointee.load(ordering: .relaxed) &+ n, ordering: .relaxed)
    }

    private func total(_ s: Stat) -> UInt64 {
        (0..<cpus).reduce(0) { $0 + stats[$1 * Self.statWords + s.rawValue].load(ordering: .relaxed) }
    }

    /// A strict unmap's invalidation failed: its IOVA range is never handed out again.
    func lostToFailedFlush(pages: UInt64, cpu: Int) {
        count(.lostPages, cpu: cpu, pages)
    }

    /// The domain is being freed (after its last detach invalidated everything).
    func destroy() {
        queue?.destroy()
    }

    /// The domain is gone without a teardown: nothing may be freed or flushed for it.
    func markDead() {
        queue?.destroyed.store(true, ordering: .releasing)
    }

    /// A snapshot of what the DMA layer did for this domain.
    public var statistics: DMAStatistics {
        var s = DMAStatistics()
        s.maps = total(.maps)
        s.unmaps = total(.unmaps)
        s.mapFailures = total(.mapFailures)
        s.strictInvalidations = total(.strictInvalidations)
        s.fallbacksTo64Bit = total(.fallbacksTo64Bit)
        s.pagesLostToFailedFlush = total(.lostPages) + (queue?.lostPages.load(ordering: .relaxed) ?? 0)
        s.liveMappings = live.count
        if let q = queue {
            s.flushes = q.flushes.load(ordering: .relaxed)
            s.fullQueueFlushes = q.fullFlushes.load(ordering: .relaxed)
            s.timerFlushes = q.timerFlushes.load(ordering: .relaxed)
            s.rolloverFlushes = q.rolloverFlushes.load(ordering: .relaxed)
            s.failedFlushes = q.failedFlushes.load(ordering: .relaxed)
            s.entriesQueued = q.queued
            s.entriesFreed = q.freed
            s.entriesPending = q.pending
        }
        return s
    }
}

/// What the DMA layer did for one domain.
public struct DMAStatistics: Equatable, Sendable {
    public var maps: UInt64 = 0
    public var unmaps: UInt64 = 0
    public var mapFailures: UInt64 = 0
    /// Range invalidations + waits issued by strict unmaps.
    public var strictInvalidations: UInt64 = 0
    /// Whole-domain flushes of the flush queue, and why.
    public var flushes: UInt64 = 0
    public var fullQueueFlushes: UInt64 = 0
    public var timerFlushes: UInt64 = 0
    public var rolloverFlushes: UInt64 = 0
    public var failedFlushes: UInt64 = 0
    public var entriesQueued: UInt64 = 0
    public var entriesFreed: UInt64 = 0
    public var entriesPending: Int = 0
    /// Times a device's 32-bit-first allocation failed and it moved to its full mask.
    public var fallbacksTo64Bit: UInt64 = 0
    public var pagesLostToFailedFlush: UInt64 = 0
    public var liveMappings: Int = 0
    public init() {}

    /// Invalidation operations (each: descriptors + a wait) per unmap.
    public var invalidationsPerUnmap: Double {
        unmaps == 0 ? 0 : Double(strictInvalidations + flushes) / Double(unmaps)
    }

    /// Entries freed per completed flush.
    public var entriesPerFlush: Double {
        let done = flushes > failedFlushes ? flushes - failedFlushes : 0
        return done == 0 ? 0 : Double(entriesFreed) / Double(done)
    }
}
