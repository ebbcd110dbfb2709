import Platform
import Formats
import Synchronization

/// How a DMA domain defers unmap invalidations (Linux `struct iommu_dma_options`).
public struct FlushQueueOptions: Equatable, Sendable {
    public enum Kind: String, Equatable, Sendable {
        /// A ring per CPU (Linux `IOMMU_DMA_OPTS_PER_CPU_QUEUE`).
        case perCPU
        /// One large ring for all CPUs, when invalidations are expensive
        /// (Linux `IOMMU_DMA_OPTS_SINGLE_QUEUE`, chosen by `shadow_on_flush`).
        case single
    }
    public var kind: Kind
    /// Entries per ring.
    public var size: Int
    /// Longest an entry may wait for its flush.
    public var timeoutNs: UInt64

    public init(kind: Kind, size: Int, timeoutNs: UInt64) {
        self.kind = kind; self.size = max(1, size); self.timeoutNs = max(1, timeoutNs)
    }

    /// 256 entries per CPU, 10 ms (Linux `IOVA_DEFAULT_FQ_SIZE`, `IOVA_DEFAULT_FQ_TIMEOUT`).
    public static let perCPU = FlushQueueOptions(kind: .perCPU, size: 256, timeoutNs: 10_000_000)
    /// 32768 entries, 1 s (Linux `IOVA_SINGLE_FQ_SIZE`, `IOVA_SINGLE_FQ_TIMEOUT`).
    public static let single = FlushQueueOptions(kind: .single, size: 32768, timeoutNs: 1_000_000_000)
}

/// Deferred unmap invalidation (the flush queue of drivers/iommu/dma-iommu.c): an unmapped
/// IOVA range and its unlinked table pages wait in a ring until a flush of the whole domain
/// that *started after* they were queued has finished; only then are they freed. Two
/// counters tell which flushes qualify (Linux `fq_flush_start_cnt`/`fq_flush_finish_cnt`):
/// an entry is tagged with the number of flushes started when it was queued, and is free
/// once a flush with a higher ticket has completed. Here the second counter is the highest
/// ticket completed rather than a count of completions, so a failed flush, or flushes
/// completing out of order on real threads, never holds back entries a later flush covered.
///
/// Flushes happen when a ring is full (at once, in the unmapping thread), from a timer, and
/// when IOVA allocation fails (the rollover point, so an exhausted space first gets back
/// what the queues hold). The timer differs from Linux in one way, recorded in
/// docs/architecture.md: it measures from the oldest entry no flush has covered yet, so
/// under steady load the full-ring flushes cover everything and the timer adds none.
final class FlushQueue: @unchecked Sendable {
    struct Entry {
        var pfn: UInt64
        var pages: UInt64
        /// Flushes started when the entry was queued.
        var tag: UInt64
        /// The one unlinked table page most unmaps free at most (0: none).
        var table: UInt64
        var hasSpill: Bool
    }

    struct Ring {
        let entries: UnsafeMutablePointer<Entry>
        let size: UInt64
        var head: UInt64 = 0
        var tail: UInt64 = 0
        /// `head` and `tail` modulo `size`, kept apart so no step divides (sizes need not be
        /// powers of two).
        var headSlot = 0
        var tailSlot = 0
        /// Table pages of entries that unlinked more than one, by IOVA frame.
        var spill: [UInt64: [UInt64]] = [:]
        var queued: UInt64 = 0
        var freed: UInt64 = 0
        var isFull: Bool { tail &- head == size }
        @inline(__always) func next(_ slot: Int) -> Int { slot &+ 1 == Int(size) ? 0 : slot &+ 1 }
        var count: Int { Int(tail &- head) }
    }

    let options: FlushQueueOptions
    /// The rings (one, or one per CPU), each behind its own spin lock (Linux `fq->lock`, under
    /// which a full ring is flushed too) on its own cache lines, in raw storage so reaching
    /// one costs no reference counting.
    let rings: PerCPU<Ring>
    let ringCount: Int
    let iova: IOVADomain
    /// Back references, not counted: the core owns the domain, which owns its cookie, which
    /// owns this queue, and the unmapping threads are the core's callers.
    unowned(unsafe) let core: IOMMUCore
    unowned(unsafe) let domain: IOMMUDomain
    /// The same, for the timer, which runs on its own thread and may fire after either is
    /// gone: it takes them from these weak references or does nothing.
    weak var timerCore: IOMMUCore?
    weak var timerDomain: IOMMUDomain?
    /// Held while the timer's body runs, so `destroy` can wait for it.
    private let timerRunning = Mutex<Void>(())
    /// Flushes started, and the highest ticket (start number) of a completed flush.
    let started = Atomic<UInt64>(0)
    let finished = Atomic<UInt64>(0)
    let timerOn = Atomic<Bool>(false)
    /// When the oldest entry not covered by a started flush was queued (0: none).
    let uncoveredSince = Atomic<UInt64>(0)
    let flushes = Atomic<UInt64>(0)
    let fullFlushes = Atomic<UInt64>(0)
    let timerFlushes = Atomic<UInt64>(0)
    let rolloverFlushes = Atomic<UInt64>(0)
    let failedFlushes = Atomic<UInt64>(0)
    let destroyed = Atomic<Bool>(false)
    /// IOVA granules and table pages given up because a flush failed with a full ring.
    let lostPages = Atomic<UInt64>(0)
    let lostTables = Mutex<[UInt64]>([])

    init(core: IOMMUCore, domain: IOMMUDomain, iova: IOVADomain, options: FlushQueueOptions, cpus: Int) {
        self.core = core
        self.domain = domain
        timerCore = core
        timerDomain = domain
        self.iova = iova
        self.options = options
        ringCount = options.kind == .single ? 1 : max(1, cpus)
        rings = PerCPU(count: ringCount) { _ in Ring(entries: .allocate(capacity: options.size), size: UInt64(options.size)) }
    }

    deinit {
        for i in 0..<ringCount { rings.withLock(i) { $0.entries.deallocate() } }
    }

    // MARK: Queueing

    /// Queues an unmapped range with its unlinked tables (Linux `queue_iova`). The PTE
    /// clear happened before: the lock acquisition orders it before any flush that could
    /// free the entry.
    func queue(pfn: UInt64, pages: UInt64, tables: [UInt64], cpu: Int) {
        // Order the PTE clear before reading the flush tag (Linux's smp_mb in queue_iova): a
        // flush that starts after the tag is read must see the cleared entry.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        rings.withLock(cpu) { r in
            freeCompleted(&r, cpu: cpu)
            if r.isFull {
                fullFlushes.add(1, ordering: .relaxed)
                _ = flush()
                freeCompleted(&r, cpu: cpu)
            }
            if r.isFull {
                // Nothing could be freed: the flush failed. The IOVA and tables stay
                // allocated for ever rather than be reused while possibly cached.
                lostPages.add(IOVADomain.roundedSize(pages), ordering: .relaxed)
                lostTables.withLock { $0 += tables }
                return
            }
            let i = r.tailSlot
            r.entries[i] = Entry(pfn: pfn, pages: pages, tag: started.load(ordering: .sequentiallyConsistent),
                                 table: tables.first ?? 0, hasSpill: tables.count > 1)
            if tables.count > 1 { r.spill[pfn] = tables }
            r.tail &+= 1
            r.tailSlot = r.next(i)
            r.queued &+= 1
        }
        if uncoveredSince.load(ordering: .sequentiallyConsistent) == 0 {
            _ = uncoveredSince.compareExchange(expected: 0, desired: max(1, core.platform.clockNs()), ordering: .sequentiallyConsistent)
        }
        armTimerIfOff(afterNs: options.timeoutNs)
    }

    private func armTimerIfOff(afterNs delay: UInt64) {
        if !timerOn.load(ordering: .sequentiallyConsistent), !timerOn.exchange(true, ordering: .sequentiallyConsistent) {
            armTimer(afterNs: delay)
        }
    }

    /// Frees entries at the head that a finished flush covers (Linux `fq_ring_free_locked`).
    /// Their IOVA ranges go back in batches, one CPU-cache lock round trip per batch: after
    /// a flush a whole ring's worth comes free at once.
    private func freeCompleted(_ r: inout Ring, cpu: Int) {
        let done = finished.load(ordering: .acquiring)
        guard r.head != r.tail, r.entries[r.headSlot].tag < done else { return }
        let batchLimit = 64
        withUnsafeTemporaryAllocation(of: (pfn: UInt64, pages: UInt64).self, capacity: batchLimit) { batch in
            guard let base = batch.baseAddress else { return }
            var n = 0
            while r.head != r.tail {
                let e = r.entries[r.headSlot]
                guard e.tag < done else { break }
                releaseTables(of: e, &r)
                (base + n).initialize(to: (e.pfn, e.pages))
                n += 1
                r.head &+= 1
                r.headSlot = r.next(r.headSlot)
                r.freed &+= 1
                if n == batchLimit {
                    iova.free(UnsafeBufferPointer(start: base, count: n), cpu: cpu)
                    n = 0
                }
            }
            if n > 0 { iova.free(UnsafeBufferPointer(start: base, count: n), cpu: cpu) }
        }
    }

    /// Frees the table pages an entry's unmap unlinked.
    private func releaseTables(of e: Entry, _ r: inout Ring) {
        if e.hasSpill {
            freeTables(r.spill.removeValue(forKey: e.pfn) ?? [])
        } else if e.table != 0 {
            freeTables([e.table])
        }
    }

    private func freeTables(_ tables: [UInt64]) {
        guard !tables.isEmpty else { return }
        core.putPages(domain, tables, flushed: true)
    }

    // MARK: Flushing

    /// Invalidates everything the domain may cache and waits (Linux `fq_flush_iotlb`).
    /// Returns whether it completed.
    @discardableResult
    func flush() -> Bool {
        guard !destroyed.load(ordering: .acquiring) else { return false }
        let since = uncoveredSince.exchange(0, ordering: .sequentiallyConsistent)
        let ticket = started.add(1, ordering: .sequentiallyConsistent).newValue
        flushes.add(1, ordering: .relaxed)
        do {
            try core.flushDeferred(domain)
        } catch {
            // Entries stay queued for a later flush; the timer must still cover them.
            failedFlushes.add(1, ordering: .relaxed)
            if since != 0 { _ = uncoveredSince.compareExchange(expected: 0, desired: since, ordering: .sequentiallyConsistent) }
            armTimerIfOff(afterNs: options.timeoutNs)
            return false
        }
        var done = finished.load(ordering: .sequentiallyConsistent)
        while done < ticket {
            let (exchanged, found) = finished.compareExchange(expected: done, desired: ticket, ordering: .sequentiallyConsistent)
            if exchanged { break }
            done = found
        }
        return true
    }

    /// Flushes and frees every ring (the timer's work, and the rollover point).
    func flushAndFreeAll(cpu: Int) {
        flush()
        freeAllCompleted(cpu: cpu)
    }

    func freeAllCompleted(cpu: Int) {
        for i in 0..<ringCount {
            rings.withLock(i) { r in freeCompleted(&r, cpu: ringCount == 1 ? cpu : i) }
        }
    }

    /// Re-arms the timer while anything is still queued, so no entry is left without one.
    private func rearmIfPending() {
        if pending > 0 { armTimerIfOff(afterNs: options.timeoutNs) }
    }

    private func armTimer(afterNs delay: UInt64) {
        core.platform.startTimer(afterNs: delay) { [self] in timerFired() }
    }

    /// The timer (Linux `fq_flush_timeout`): flush if the oldest uncovered entry has waited
    /// its timeout, else wait for that moment; then free what is complete.
    ///
    /// It holds the core and the domain for its whole run, so neither is freed under it.
    /// Those references are dropped after `timerRunning` is unlocked: when the timer holds
    /// the last one, the core or domain is freed here, on the timer's thread, and its
    /// teardown may call `destroy`, which takes that lock.
    func timerFired() {
        guard let core = timerCore, let domain = timerDomain else { return }
        withExtendedLifetime(core) {
            withExtendedLifetime(domain) {
                timerRunning.withLock { _ in timerBody() }
            }
        }
    }

    private func timerBody() {
        guard !destroyed.load(ordering: .acquiring) else { return }
        timerOn.store(false, ordering: .sequentiallyConsistent)
        let since = uncoveredSince.load(ordering: .sequentiallyConsistent)
        let now = core.platform.clockNs()
        if since != 0 {
            let due = since &+ options.timeoutNs
            if now >= due {
                timerFlushes.add(1, ordering: .relaxed)
                flush()
            } else {
                armTimerIfOff(afterNs: due - now)
            }
        }
        freeAllCompleted(cpu: 0)
        rearmIfPending()
    }

    /// Entries waiting in all rings.
    var pending: Int { (0..<ringCount).reduce(0) { n, i in n + rings.withLock(i) { $0.count } } }
    var queued: UInt64 { (0..<ringCount).reduce(0) { n, i in n + rings.withLock(i) { $0.queued } } }
    var freed: UInt64 { (0..<ringCount).reduce(0) { n, i in n + rings.withLock(i) { $0.freed } } }

    /// The domain is going away, detached and fully invalidated: free queued tables (the
    /// IOVA space goes with the domain) and stop the timer (Linux `iommu_dma_free_fq`).
    func destroy() {
        guard !destroyed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        // Wait for a timer already running (Linux `del_timer_sync`); later ones see `destroyed`.
        timerRunning.withLock { _ in }
        freeTables(lostTables.withLock { t in let all = t; t = []; return all })
        for i in 0..<ringCount {
            rings.withLock(i) { r in
                while r.head != r.tail {
                    releaseTables(of: r.entries[r.headSlot], &r)
                    r.head &+= 1
                    r.headSlot = r.next(r.headSlot)
                }
            }
        }
    }
}
