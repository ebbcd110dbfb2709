/// What a run records for `compare` and the HTML pages, only when asked
/// (`ScenarioRunner.Options.record`): the oracle and the runner call it where they already
/// are (a map, an unmap, a flush, a DMA-API call), so a run that does not record pays one nil check
/// at those points and nothing per DMA.
///
/// The **exposure window** of an unmapped page is how long after its unmap returned a device
/// could still reach it through a stale IOTLB entry: the oracle keeps such pages permitted
/// (`deferred`, then `covering`) until the flush that covers them completes, and that
/// completion is the end of the window. Strict unmaps invalidate and wait before they return,
/// so their window is 0; a deferred unmap's lasts until the flush queue's next flush of the
/// domain completes (Linux drivers/iommu/dma-iommu.c: a per-CPU ring of 256 entries flushed
/// when full or after 10 ms, or one ring of 32768 entries and 1 s where invalidations are
/// expensive). An unmap that returns only after the flush it triggered (a full ring) has a
/// window of 0.
public final class RunRecorder {
    /// A TLB flush as a timeline sees it: a strict unmap's invalidation and wait, or a flush
    /// queue's flush of a whole domain.
    public struct FlushEvent: Sendable, Equatable {
        public enum Kind: String, Sendable { case strict, deferred }
        public var startNs: UInt64
        public var endNs: UInt64
        public var kind: Kind
    }

    /// Counters of the whole machine at one virtual instant.
    public struct Sample: Sendable, Equatable {
        public var timeNs: UInt64
        public var totals: UnitTotals
    }

    /// A deferred unmap waiting for its flush.
    struct Entry {
        var clearedNs: UInt64
        var returnedNs: UInt64 = .max
        var flushedNs: UInt64 = .max
        var pages: UInt64
    }

    /// Flush events kept at most (the count goes on).
    public static let maxFlushEvents = 100_000

    // Exposure.
    var entries: [Entry] = []
    var deferredEntries: [Int: [Int]] = [:]
    var coveringEntries: [Int: [Int]] = [:]
    /// Deferred unmaps whose DMA-API call has not returned yet.
    var awaitingReturn: [Int] = []
    /// Strict unmaps: exposure 0, weighted by pages.
    var strictPages: UInt64 = 0
    var strictUnmaps: UInt64 = 0

    // Flushes.
    public private(set) var flushes: [FlushEvent] = []
    public private(set) var flushCount: UInt64 = 0
    var unmapStarted: [Int: UInt64] = [:]
    var flushStarted: [Int: UInt64] = [:]

    // IOVA space in use (4 KiB pages) over all paging domains: mapped, or unmapped and
    // awaiting the flush that covers it (from the run's start to the timed phase's end).
    public private(set) var iovaPagesInUse: Int64 = 0
    public private(set) var iovaPagesPeak: Int64 = 0
    public private(set) var iovaPagesAtEnd: Int64 = 0

    // DMA-API calls (virtual CPU time each took: its waits and yields).
    public private(set) var mapLatency = LatencyHistogram()
    public private(set) var unmapLatency = LatencyHistogram()
    /// Buffers a DMA-API ring turned around (unmapped and mapped again) and their bytes.
    public private(set) var buffersCycled: UInt64 = 0
    public private(set) var bytesCycled: UInt64 = 0

    // Timeline.
    public var sampleEveryNs: UInt64 = 10_000
    var nextSampleNs: UInt64 = 0
    public private(set) var samples: [Sample] = []
    /// IO page faults: an ATS access that sent page requests, from its start to its end.
    public private(set) var pageFaultLatency = LatencyHistogram()
    public private(set) var pageFaultSamples = DurationSamples()

    // The timed phase (traffic), for rates.
    public private(set) var timedPhaseStartNs: UInt64 = 0
    public private(set) var timedPhaseEndNs: UInt64 = 0
    public private(set) var totalsAtStart = UnitTotals()
    public private(set) var totalsAtEnd = UnitTotals()
    public private(set) var unmapsAtEnd: UInt64 = 0
    /// Teardown is not measured: only flush completions (ending exposure windows) count then.
    public private(set) var timedPhaseOver = false

    public init() {}

    // MARK: From the oracle

    func unmapBegan(domain: Int, now: UInt64) { unmapStarted[domain] = now }

    func unmapEnded(domain: Int, bytes: UInt64, now: UInt64) {
        guard !timedPhaseOver else { return }
        let pages = Self.pages(bytes)
        strictPages &+= pages
        strictUnmaps &+= 1
        inUse(-Int64(pages))
        addFlush(FlushEvent(startNs: unmapStarted.removeValue(forKey: domain) ?? now, endNs: now, kind: .strict))
    }

    func unmapDeferred(domain: Int, bytes: UInt64, now: UInt64) {
        unmapStarted[domain] = nil
        guard !timedPhaseOver else { return }
        awaitingReturn.append(entries.count)
        deferredEntries[domain, default: []].append(entries.count)
        entries.append(Entry(clearedNs: now, pages: Self.pages(bytes)))
    }

    func flushBegan(domain: Int, now: UInt64) {
        if !timedPhaseOver { flushStarted[domain] = now }
        if let d = deferredEntries.removeValue(forKey: domain) { coveringEntries[domain, default: []] += d }
    }

    func flushEnded(domain: Int, completed: Bool, now: UInt64) {
        let c = coveringEntries.removeValue(forKey: domain) ?? []
        if completed {
            var pages: UInt64 = 0
            for i in c { entries[i].flushedNs = now; pages &+= entries[i].pages }
            inUse(-Int64(pages))
        } else {
            deferredEntries[domain, default: []] += c
        }
        if let start = flushStarted.removeValue(forKey: domain) { addFlush(FlushEvent(startNs: start, endNs: now, kind: .deferred)) }
    }

    func mapped(bytes: UInt64) { if !timedPhaseOver { inUse(Int64(Self.pages(bytes))) } }

    /// A domain is freed after it was detached everywhere with a full invalidation: what
    /// still waited for a flush is no longer reachable.
    func domainFreed(_ domain: Int, now: UInt64) {
        let waiting = (deferredEntries.removeValue(forKey: domain) ?? []) + (coveringEntries.removeValue(forKey: domain) ?? [])
        for i in waiting { entries[i].flushedNs = now }
        unmapStarted[domain] = nil
        flushStarted[domain] = nil
    }

    // MARK: From the runner

    /// A DMA-API map took `ns` of virtual time.
    public func mapped(ns: UInt64) { if !timedPhaseOver { mapLatency.record(ns) } }

    /// A DMA-API unmap returned after `ns` of virtual time: deferred unmaps it made end
    /// their wait for the return.
    public func unmapReturned(ns: UInt64, now: UInt64) {
        if !timedPhaseOver { unmapLatency.record(ns) }
        for i in awaitingReturn { entries[i].returnedNs = now }
        awaitingReturn.removeAll(keepingCapacity: true)
    }

    public func cycled(bytes: UInt64) {
        guard !timedPhaseOver else { return }
        buffersCycled &+= 1
        bytesCycled &+= bytes
    }

    public func pageFault(latencyNs: UInt64) {
        guard !timedPhaseOver else { return }
        pageFaultLatency.record(latencyNs)
        pageFaultSamples.add(latencyNs)
    }

    /// Samples the machine's counters when the next sample is due (cheap otherwise).
    @inline(__always)
    public func maybeSample(_ m: Machine) {
        if m.scheduler.now >= nextSampleNs && !timedPhaseOver { sample(m) }
    }

    public func sample(_ m: Machine) {
        let now = m.scheduler.now
        samples.append(Sample(timeNs: now, totals: UnitTotals(m)))
        nextSampleNs = (now / sampleEveryNs + 1) * sampleEveryNs
    }

    public func timedPhaseBegan(_ m: Machine) {
        timedPhaseStartNs = m.scheduler.now
        totalsAtStart = UnitTotals(m)
        sample(m)
    }

    public func timedPhaseEnded(_ m: Machine) {
        timedPhaseEndNs = m.scheduler.now
        totalsAtEnd = UnitTotals(m)
        iovaPagesAtEnd = iovaPagesInUse
        unmapsAtEnd = unmapLatency.count
        sample(m)
        timedPhaseOver = true
    }

    // MARK: Results

    /// Exposure windows of every unmapped page whose staleness ended (strict: 0), weighted by
    /// pages; and the pages whose flush never completed during the run.
    public var exposure: (samples: DurationSamples, unflushedPages: UInt64) {
        var s = DurationSamples()
        if strictPages > 0 { s.add(0, weight: strictPages) }
        var unflushed: UInt64 = 0
        for e in entries {
            guard e.flushedNs != .max else { unflushed &+= e.pages; continue }
            let returned = e.returnedNs == .max ? e.clearedNs : e.returnedNs
            s.add(e.flushedNs > returned ? e.flushedNs - returned : 0, weight: e.pages)
        }
        return (s, unflushed)
    }

    public var deferredUnmaps: Int { entries.count }

    // MARK: Helpers

    static func pages(_ bytes: UInt64) -> UInt64 { Swift.max(1, (bytes + 4095) >> 12) }

    private func inUse(_ delta: Int64) {
        iovaPagesInUse &+= delta
        if iovaPagesInUse > iovaPagesPeak { iovaPagesPeak = iovaPagesInUse }
    }

    private func addFlush(_ e: FlushEvent) {
        flushCount &+= 1
        if flushes.count < Self.maxFlushEvents { flushes.append(e) }
    }
}
