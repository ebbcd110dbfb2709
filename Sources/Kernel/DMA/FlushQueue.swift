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
/// counters tell which flushes qualify: an entry is tagged with the number of flushes
/// started when it was queued, and is free once more flushes than that have finished.
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
        /// Table pages of entries that unlinked more than one, by IOVA frame.
        var spill: [UInt64: [UInt64]] = [:]
        var queued: UInt64 = 0
        var freed: UInt64 = 0
        var isFull: Bool { tail &- head == size }
        var count: Int { Int(tail &- head) }
    }

    final class RingBox: @unchecked Sendable {
        let lock: Mutex<Ring>
        let cpu: Int
        init(size: Int, cpu: Int) {
            let p = UnsafeMutablePointer<Entry>.allocate(capacity: size)
            lock = Mutex(Ring(entries: p, size: UInt64(size)))
            self.cpu = cpu
        }
        deinit { lock.withLock { $0.entries.deallocate() } }
    }

    let options: FlushQueueOptions
    let rings: [RingBox]
    unowned let cookie: DMACookie
    /// Flushes started and finished (Linux `fq_flush_start_cnt`, `fq_flush_finish_cnt`).
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

    init(cookie: DMACookie, options: FlushQueueOptions, cpus: Int) {
        self.cookie = cookie
        self.options = options
        let n = options.kind == .single ? 1 : max(1, cpus)
        rings = (0..<n).map { RingBox(size: options.size, cpu: $0) }
    }

    // MARK: Queueing

    /// Queues an unmapped range with its unlinked tables (Linux `queue_iova`). The PTE
    /// clear happened before: the lock acquisition orders it before any flush that could
    /// free the entry.
    func queue(pfn: UInt64, pages: UInt64, tables: [UInt64], cpu: Int) {
        let box = rings.count == 1 ? rings[0] : rings[cpu % rings.count]
        box.lock.withLock { r in
            freeCompleted(&r, cpu: cpu)
            if r.isFull {
                fullFlushes.add(1, ordering: .relaxed)
                flush()
                freeCompleted(&r, cpu: cpu)
            }
            if r.isFull {
                // Nothing could be freed: the flush failed. The IOVA and tables stay
                // allocated for ever rather than be reused while possibly cached.
                cookie.lostToFailedFlush(pfn: pfn, pages: pages, tables: tables)
                return
            }
            let i = Int(r.tail % r.size)
            r.entries[i] = Entry(pfn: pfn, pages: pages, tag: started.load(ordering: .acquiring),
                                 table: tables.first ?? 0, hasSpill: tables.count > 1)
            if tables.count > 1 { r.spill[pfn] = tables }
            r.tail &+= 1
            r.queued &+= 1
        }
        if uncoveredSince.load(ordering: .relaxed) == 0 {
            _ = uncoveredSince.compareExchange(expected: 0, desired: max(1, cookie.core.platform.clockNs()), ordering: .relaxed)
        }
        if !timerOn.load(ordering: .relaxed), !timerOn.exchange(true, ordering: .acquiringAndReleasing) {
            armTimer(afterNs: options.timeoutNs)
        }
    }

    /// Frees entries at the head that a finished flush covers (Linux `fq_ring_free_locked`).
    private func freeCompleted(_ r: inout Ring, cpu: Int) {
        let done = finished.load(ordering: .acquiring)
        while r.head != r.tail {
            let e = r.entries[Int(r.head % r.size)]
            guard e.tag < done else { break }
            if e.hasSpill {
                cookie.core.putPages(cookie.domain, r.spill.removeValue(forKey: e.pfn) ?? [], flushed: true)
            } else if e.table != 0 {
                cookie.core.putPages(cookie.domain, [e.table], flushed: true)
            }
            cookie.iova.free(pfn: e.pfn, pages: e.pages, cpu: cpu)
            r.head &+= 1
            r.freed &+= 1
        }
    }

    // MARK: Flushing

    /// Invalidates everything the domain may cache and waits (Linux `fq_flush_iotlb`).
    func flush() {
        uncoveredSince.store(0, ordering: .relaxed)
        started.add(1, ordering: .acquiringAndReleasing)
        flushes.add(1, ordering: .relaxed)
        do {
            try cookie.core.flushDeferred(cookie.domain)
            finished.add(1, ordering: .acquiringAndReleasing)
        } catch {
            // Not counted as finished: entries wait for the next flush that succeeds.
            failedFlushes.add(1, ordering: .relaxed)
        }
    }

    /// Flushes and frees every ring (the timer's work, and the rollover point).
    func flushAndFreeAll(cpu: Int) {
        flush()
        freeAllCompleted(cpu: cpu)
    }

    func freeAllCompleted(cpu: Int) {
        for box in rings {
            box.lock.withLock { r in freeCompleted(&r, cpu: rings.count == 1 ? cpu : box.cpu) }
        }
    }

    private func armTimer(afterNs delay: UInt64) {
        cookie.core.platform.startTimer(afterNs: delay) { [weak self] in self?.timerFired() }
    }

    /// The timer (Linux `fq_flush_timeout`): flush if the oldest uncovered entry has waited
    /// its timeout, else wait for that moment; then free what is complete.
    func timerFired() {
        guard !destroyed.load(ordering: .acquiring) else { return }
        timerOn.store(false, ordering: .releasing)
        let since = uncoveredSince.load(ordering: .relaxed)
        let now = cookie.core.platform.clockNs()
        if since != 0 {
            let due = since &+ options.timeoutNs
            if now >= due {
                timerFlushes.add(1, ordering: .relaxed)
                flush()
            } else if !timerOn.exchange(true, ordering: .acquiringAndReleasing) {
                armTimer(afterNs: due - now)
            }
        }
        freeAllCompleted(cpu: 0)
    }

    /// Entries waiting in all rings.
    var pending: Int { rings.reduce(0) { $0 + $1.lock.withLock { $0.count } } }
    var queued: UInt64 { rings.reduce(0) { $0 + $1.lock.withLock { $0.queued } } }
    var freed: UInt64 { rings.reduce(0) { $0 + $1.lock.withLock { $0.freed } } }

    /// The domain is going away, detached and fully invalidated: free queued tables (the
    /// IOVA space goes with the domain) and stop the timer (Linux `iommu_dma_free_fq`).
    func destroy() {
        destroyed.store(true, ordering: .releasing)
        for box in rings {
            box.lock.withLock { r in
                while r.head != r.tail {
                    let e = r.entries[Int(r.head % r.size)]
                    if e.hasSpill {
                        cookie.core.putPages(cookie.domain, r.spill.removeValue(forKey: e.pfn) ?? [], flushed: true)
                    } else if e.table != 0 {
                        cookie.core.putPages(cookie.domain, [e.table], flushed: true)
                    }
                    r.head &+= 1
                }
            }
        }
    }
}
