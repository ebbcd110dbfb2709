import Testing
import Synchronization
import Platform
@testable import Kernel

/// A settable clock for depot trimming.
final class IOVATestClock: @unchecked Sendable {
    var now: UInt64 = 0
}

/// Brute-force reference: the highest `size`-block aligned to `align` at or below `limit` that
/// avoids every allocated range.
private func referenceHighest(_ ranges: [(UInt64, UInt64)], size: UInt64, align: UInt64, limit: UInt64, start: UInt64) -> UInt64? {
    func fit(_ lo: UInt64, _ hi: UInt64) -> UInt64? {
        guard hi >= lo, hi - lo + 1 >= size else { return nil }
        let c = (hi - size + 1) & ~(align - 1)
        return c >= lo ? c : nil
    }
    var top = limit
    for (lo, hi) in ranges.sorted(by: { $0.0 > $1.0 }) where lo <= top {
        if hi < top, let c = fit(hi + 1, top) { return c }
        guard lo > start else { return nil }
        top = lo - 1
    }
    return fit(start, top)
}

@Suite("IOVA allocator: tree, alignment, 32-bit rules, per-CPU caches")
struct IOVAAllocatorTests {
    func domain(end: UInt64 = (1 << 36) - 1, cpus: Int = 2, clock: IOVATestClock = IOVATestClock()) -> IOVADomain {
        IOVADomain(granuleShift: 12, startPFN: 1, endPFN: end, cpus: cpus, clock: { clock.now })
    }

    @Test("freeing a batch of cached and uncached ranges leaves the allocator as freeing them one by one does")
    func batchFreeMatchesSingleFrees() {
        let one = domain(), batch = domain()
        var rng = SeededRNG(seed: 7)
        var ranges: [(pfn: UInt64, pages: UInt64)] = []
        // 320 ranges of one cached size, more than a CPU's two magazines hold (2 x 127), so
        // frees push full magazines to the depot; and sizes beyond the caches (the tree).
        for i in 0..<400 {
            let pages = i % 5 == 0 ? 33 + rng.next(below: 100) : 1
            let a = one.allocate(pages: pages, limitPFN: (1 << 32) - 1, cpu: 1)
            let b = batch.allocate(pages: pages, limitPFN: (1 << 32) - 1, cpu: 1)
            #expect(a != nil && a == b)
            if let a { ranges.append((a, pages)) }
        }
        for r in ranges { one.free(pfn: r.pfn, pages: r.pages, cpu: 1) }
        ranges.withUnsafeBufferPointer { batch.free($0, cpu: 1) }
        #expect(one.allocatedRanges == batch.allocatedRanges)
        #expect(one.cachedRanges == batch.cachedRanges)
        #expect(one.depotMagazines > 0)
        #expect(one.depotMagazines == batch.depotMagazines)
        // Both hand out the same ranges afterwards.
        for i in 0..<400 {
            let pages = 1 + UInt64(i % 40)
            #expect(one.allocate(pages: pages, limitPFN: (1 << 32) - 1, cpu: 1) == batch.allocate(pages: pages, limitPFN: (1 << 32) - 1, cpu: 1))
        }
    }

    @Test("allocation is top-down below the limit and size-aligned to the power of two above the size")
    func topDownAligned() {
        let d = domain()
        let limit: UInt64 = 0xF_FFFF
        #expect(d.allocate(pages: 1, limitPFN: limit, cpu: 0) == limit)
        let four = d.allocate(pages: 4, limitPFN: limit, cpu: 0)
        #expect(four.map { $0 % 4 == 0 && $0 + 3 < limit } == true)
        let forty = d.allocate(pages: 40, limitPFN: limit, cpu: 0)   // beyond the cached sizes: aligned to 64
        #expect(forty.map { $0 % 64 == 0 } == true)
        #expect(d.validateTree())
    }

    @Test("cached sizes round up to a power of two; larger sizes are kept exact")
    func roundedSizes() {
        #expect(IOVADomain.roundedSize(1) == 1)
        #expect(IOVADomain.roundedSize(3) == 4)
        #expect(IOVADomain.roundedSize(17) == 32)
        #expect(IOVADomain.roundedSize(32) == 32)
        #expect(IOVADomain.roundedSize(33) == 33)
    }

    @Test("the exact search finds the brute-force placement; the budgeted one a valid block exactly when one exists", arguments: [UInt64(1), 2, 3])
    func matchesReference(seed: UInt64) {
        var tree = IOVATree(start: 1, end: 1 << 16)
        var live: [(UInt64, UInt64)] = []
        var rng = SeededRNG(seed: seed)
        for _ in 0..<3000 {
            if live.isEmpty || rng.next(below: 3) != 0 {
                let size = 1 + rng.next(below: 200)
                let align = UInt64(1) << rng.next(below: 8)
                let limit = 1 + rng.next(below: 1 << 16)
                let expected = referenceHighest(live, size: size, align: align, limit: min(limit, 1 << 16), start: 1)
                let got = tree.findHighest(size: size, align: align, limit: limit, budget: .max)
                #expect(got == expected, "size \(size) align \(align) limit \(limit)")
                let quick = tree.findHighest(size: size, align: align, limit: limit)
                #expect((quick == nil) == (expected == nil))
                if let q = quick {
                    #expect(q % align == 0 && q >= 1 && q + size - 1 <= min(limit, 1 << 16))
                    #expect(!live.contains { $0.0 <= q + size - 1 && q <= $0.1 }, "the budgeted block is free")
                }
                if let lo = got {
                    let inserted = tree.insert(lo: lo, hi: lo + size - 1)
                    #expect(inserted)
                    live.append((lo, lo + size - 1))
                }
            } else {
                let i = Int(rng.next(below: UInt64(live.count)))
                let removed = tree.remove(lo: live[i].0)
                #expect(removed == live[i].1)
                live.remove(at: i)
            }
        }
        let valid = tree.validate(), count = tree.count
        #expect(valid)
        #expect(count == live.count)
    }

    @Test("allocations along the search path and removals of every shape keep the tree's balance, order and gap aggregates exact after each step", arguments: [UInt64(4), 5])
    func everyStepKeepsAggregates(seed: UInt64) {
        var tree = IOVATree(start: 1, end: 1 << 20)
        var live: [UInt64] = []
        var rng = SeededRNG(seed: seed)
        var broken = 0, refused = 0
        for step in 0..<4000 {
            if live.isEmpty || rng.next(below: 5) < 3 {
                let size = 1 + rng.next(below: 300)
                let align = UInt64(1) << rng.next(below: 9)
                let limit = 1 + rng.next(below: 1 << 20)
                if let lo = tree.allocate(size: size, align: align, limit: limit) {
                    if lo % align != 0 || lo + size - 1 > limit { refused += 1 }
                    live.append(lo)
                }
            } else {
                let i = Int(rng.next(below: UInt64(live.count)))
                if tree.remove(lo: live[i]) == nil { refused += 1 }
                live.swapAt(i, live.count - 1)
                live.removeLast()
            }
            if !tree.validate() || tree.count != live.count { broken = step; break }
        }
        #expect(broken == 0, "the tree broke at step \(broken)")
        #expect(refused == 0, "a placement broke its alignment or limit, or a live range could not be removed")
        #expect(live.count > 100, "the run kept a populated tree")
    }

    @Test("overlapping insertions and removals of ranges that do not exist are refused and change nothing")
    func treeRefusesBadRequests() {
        var tree = IOVATree(start: 1, end: 1000)
        let first = tree.insert(lo: 10, hi: 20)
        let overlapping = tree.insert(lo: 15, hi: 30)
        let zero = tree.insert(lo: 0, hi: 5)
        let beyond = tree.insert(lo: 990, hi: 2000)
        let notStart = tree.remove(lo: 11)
        let absent = tree.remove(lo: 500)
        #expect(first)
        #expect(!overlapping)
        #expect(!zero, "frame 0 is never handed out")
        #expect(!beyond)
        #expect(notStart == nil)
        #expect(absent == nil)
        let count = tree.count, valid = tree.validate()
        #expect(count == 1 && valid)
    }

    @Test("freeing 0 granules, or asking about a range that overflows, is refused and changes nothing")
    func zeroAndOverflowingRangesAreRefused() throws {
        let d = domain()
        let pfn = try #require(d.allocate(pages: 1, limitPFN: 1 << 20, cpu: 0))
        let before = (d.allocatedRanges, d.cachedRanges)
        #expect(!d.free(pfn: pfn, pages: 0, cpu: 0))
        let zeros: [(pfn: UInt64, pages: UInt64)] = [(pfn, 0), (pfn + 1, 0)]
        zeros.withUnsafeBufferPointer { d.free($0, cpu: 1) }
        #expect(d.allocatedRanges == before.0 && d.cachedRanges == before.1)
        #expect(!d.isAllocated(pfn: pfn, pages: .max))
        #expect(!d.isAllocated(pfn: pfn, pages: 0))
        #expect(d.isAllocated(pfn: pfn, pages: 1))
        #expect(d.validateTree())
    }

    @Test("a space reaching the top frame keeps its sentinel above it: reservations and allocations stay ordered")
    func spaceAtTheTopOfTheAddressRange() throws {
        let d = IOVADomain(granuleShift: 12, startPFN: 1, endPFN: .max, cpus: 1, clock: { 0 })
        #expect(d.reserve(lo: 5, hi: 10))
        let top = try #require(d.allocate(pages: 64, limitPFN: .max, cpu: 0))
        let low = try #require(d.allocate(pages: 64, limitPFN: 1000, cpu: 0))
        #expect(top > low && top &+ 63 < .max)
        #expect(!d.reserve(lo: 8, hi: 9), "overlaps the reservation")
        #expect(d.isAllocated(pfn: top, pages: 64) && d.isAllocated(pfn: low, pages: 64))
        #expect(d.validateTree())
    }

    @Test("the fragmentation case from the allocator's history (500 + 12 + 499 MB) still finds the freed space")
    func fragmentation() {
        // A 2 GiB space (4 KiB granules, size-aligned as the DMA layer asks): allocate 500 MB,
        // 12 MB, 499 MB, free the 500 MB and 499 MB ranges, then both sizes must fit again.
        let d = IOVADomain(endPFN: (1 << 19) - 1, clock: { 0 })
        let mb: UInt64 = 256
        let limit: UInt64 = (1 << 19) - 1
        let a = d.allocate(pages: 500 * mb, limitPFN: limit, cpu: 0)
        let b = d.allocate(pages: 12 * mb, limitPFN: limit, cpu: 0)
        let c = d.allocate(pages: 499 * mb, limitPFN: limit, cpu: 0)
        #expect(a != nil && b != nil && c != nil)
        #expect(d.free(pfn: a!, pages: 500 * mb, cpu: 0))
        #expect(d.free(pfn: c!, pages: 499 * mb, cpu: 0))
        #expect(d.allocate(pages: 500 * mb, limitPFN: limit, cpu: 0) != nil)
        #expect(d.allocate(pages: 499 * mb, limitPFN: limit, cpu: 0) != nil)
        #expect(d.validateTree())
    }

    @Test("a failed 32-bit allocation makes larger 32-bit requests fail fast until something below 4 GiB is freed")
    func fastFail32() {
        let d = domain()
        let limit32 = d.dma32PFN - 1
        // Leave one 8-frame hole below 4 GiB.
        #expect(d.reserve(lo: 1, hi: limit32 - 8))
        #expect(d.allocate(pages: 64, limitPFN: limit32, cpu: 0, flushOnFailure: false) == nil)
        let before = d.counters.fastFails
        #expect(d.allocate(pages: 128, limitPFN: limit32, cpu: 0, flushOnFailure: false) == nil)
        #expect(d.counters.fastFails == before + 1)
        let small = d.allocate(pages: 40, limitPFN: d.dma32PFN * 4, cpu: 0)
        #expect(small.map { $0 >= d.dma32PFN } == true, "the full mask still works")
        // A small 32-bit request still fits in the hole; freeing it resets the fast-fail size.
        let eight = d.allocate(pages: 8, limitPFN: limit32, cpu: 0)
        #expect(eight != nil)
        #expect(d.free(pfn: d.allocate(pages: 33, limitPFN: d.dma32PFN * 4, cpu: 0)!, pages: 33, cpu: 0))
        #expect(d.validateTree())
    }

    @Test("a freed cached-size range is reused from the same CPU's magazine, last in first out")
    func magazineReuse() {
        let d = domain()
        let a = d.allocate(pages: 2, limitPFN: 1 << 30, cpu: 0)!
        let b = d.allocate(pages: 2, limitPFN: 1 << 30, cpu: 0)!
        d.free(pfn: a, pages: 2, cpu: 0)
        d.free(pfn: b, pages: 2, cpu: 0)
        // The miss took the rest of a's page-table line as well (`refill`): 4 ranges of 2.
        #expect(d.cachedRanges == 4)
        #expect(d.allocatedRanges == 4, "cached ranges stay allocated in the tree")
        #expect(d.allocate(pages: 2, limitPFN: 1 << 30, cpu: 0) == b)
        #expect(d.allocate(pages: 2, limitPFN: 1 << 30, cpu: 1) != a, "another CPU does not see CPU 0's magazine")
    }

    @Test("a cache miss takes the rest of the page-table line from the tree and hands it out in the tree's own order")
    func refillTakesTheLine() {
        let d = domain()
        let limit: UInt64 = (1 << 20) - 1
        let first = d.allocate(pages: 1, limitPFN: limit, cpu: 0)!
        #expect(first == limit, "top-down, as the tree gives it")
        #expect(d.allocatedRanges == 8 && d.cachedRanges == 7, "the other 7 granules of its line wait in the magazine")
        let trees = d.counters.treeAllocations
        for i in 1..<8 {
            #expect(d.allocate(pages: 1, limitPFN: limit, cpu: 0) == first - UInt64(i), "next below, as the tree would give it")
        }
        #expect(d.counters.treeAllocations == trees, "no tree allocation until the line is used up")
        #expect(d.allocate(pages: 1, limitPFN: limit, cpu: 0) == first - 8)
        #expect(d.allocatedRanges == 16)
        // A size-aligned range that already starts a line takes nothing more.
        let eight = d.allocate(pages: 8, limitPFN: limit, cpu: 0)!
        #expect(eight & 7 == 0 && d.allocatedRanges == 17)
        // Sizes of 4 take two per line; the cache flush gives every extra range back.
        _ = d.allocate(pages: 4, limitPFN: limit, cpu: 1)
        #expect(d.allocatedRanges == 19)
        d.flushCaches()
        #expect(d.cachedRanges == 0 && d.allocatedRanges == 11, "only the ranges handed out stay allocated")
        #expect(d.validateTree())
    }

    @Test("two CPUs missing their caches in turn get whole page-table lines each, never one line between them")
    func refillKeepsLinesApart() {
        let d = domain()
        var lines: [Set<UInt64>] = [[], []]
        for _ in 0..<40 {
            for cpu in 0..<2 {
                let pfn = d.allocate(pages: 1, limitPFN: (1 << 20) - 1, cpu: cpu)!
                lines[cpu].insert(pfn >> 3)
            }
        }
        #expect(lines[0].count == 5 && lines[1].count == 5)
        #expect(lines[0].isDisjoint(with: lines[1]))
    }

    @Test("a CPU takes its own magazine back from the depot first, and another CPU's only when it has none there")
    func depotGivesOwnMagazinesFirst() {
        let d = domain(cpus: 3)
        let limit: UInt64 = (1 << 30) - 1
        // 510 distinct ranges (through CPU 2), then 255 freed on each of CPUs 0 and 1: each
        // fills its two magazines (254) and pushes one full magazine to the depot.
        var ranges: [UInt64] = []
        for _ in 0..<510 { ranges.append(d.allocate(pages: 1, limitPFN: limit, cpu: 2)!) }
        let mine = Set(ranges[0..<255]), theirs = Set(ranges[255...])
        for p in ranges[0..<255] { d.free(pfn: p, pages: 1, cpu: 0) }
        for p in ranges[255...] { d.free(pfn: p, pages: 1, cpu: 1) }
        #expect(d.depotMagazines == 2)
        // CPU 0 uses up its two magazines (128 ranges), then takes from the depot: its own.
        var fromMine = 0
        for _ in 0..<128 { if mine.contains(d.allocate(pages: 1, limitPFN: limit, cpu: 0)!) { fromMine += 1 } }
        #expect(fromMine == 128 && d.depotMagazines == 2)
        for _ in 0..<127 { if mine.contains(d.allocate(pages: 1, limitPFN: limit, cpu: 0)!) { fromMine += 1 } }
        #expect(fromMine == 255 && d.depotMagazines == 1, "CPU 0 took its own magazine and left CPU 1's")
        // None of its own left: CPU 1's magazine rather than the tree.
        let trees = d.counters.treeAllocations
        #expect(theirs.contains(d.allocate(pages: 1, limitPFN: limit, cpu: 0)!))
        #expect(d.depotMagazines == 0 && d.counters.treeAllocations == trees)
    }

    @Test("a cached range above the request's limit is not handed out")
    func cacheRespectsLimit() {
        let d = domain()
        let high = d.allocate(pages: 1, limitPFN: 1 << 30, cpu: 0)!
        d.free(pfn: high, pages: 1, cpu: 0)
        let low = d.allocate(pages: 1, limitPFN: 1000, cpu: 0)
        #expect(low.map { $0 <= 1000 } == true)
    }

    @Test("full magazines go to the depot, which is trimmed back to the tree one magazine per 100 ms")
    func depotAndTrim() {
        let clock = IOVATestClock()
        let d = domain(cpus: 1, clock: clock)
        var pfns: [UInt64] = []
        for _ in 0..<(127 * 5) { pfns.append(d.allocate(pages: 1, limitPFN: 1 << 30, cpu: 0)!) }
        for p in pfns { d.free(pfn: p, pages: 1, cpu: 0) }
        #expect(d.depotMagazines >= 2)
        let allocatedBefore = d.allocatedRanges
        #expect(d.counters.depotTrims == 0, "nothing is trimmed before the delay")
        clock.now = IOVADomain.depotDelayNs + 1
        // Emptying the loaded and previous magazines makes the next allocation take from the
        // depot, which runs the due trim.
        for _ in 0..<300 { _ = d.allocate(pages: 1, limitPFN: 1 << 30, cpu: 0) }
        #expect(d.counters.depotTrims >= 1)
        #expect(d.allocatedRanges == allocatedBefore - 127, "one magazine went back to the tree")
        #expect(d.validateTree())
    }

    @Test("when the tree is exhausted by cached ranges, allocation flushes the caches and retries once")
    func flushAndRetry() {
        let d = IOVADomain(endPFN: 64, cpus: 2, clock: { 0 })
        var got: [UInt64] = []
        while let p = d.allocate(pages: 1, limitPFN: 64, cpu: 0, flushOnFailure: false) { got.append(p) }
        #expect(got.count == 64)
        for p in got { d.free(pfn: p, pages: 1, cpu: 0) }
        // CPU 1 has nothing cached and the tree is full: only a flush helps.
        #expect(d.allocate(pages: 2, limitPFN: 64, cpu: 1, flushOnFailure: false) == nil)
        #expect(d.allocate(pages: 2, limitPFN: 64, cpu: 1) != nil)
        #expect(d.counters.cacheFlushes == 1)
        #expect(d.cachedRanges == 0)
    }

    @Test("a long random soak keeps the tree valid and every live range allocated")
    func soak() {
        let d = domain(end: (1 << 24) - 1, cpus: 4)
        var rng = SeededRNG(seed: 9)
        var live: [(pfn: UInt64, pages: UInt64)] = []
        for _ in 0..<50_000 {
            if live.count < 2000 && (live.isEmpty || rng.next(below: 2) == 0) {
                let pages = rng.next(below: 10) == 0 ? 33 + rng.next(below: 300) : 1 + rng.next(below: 32)
                let limit = rng.next(below: 4) == 0 ? d.dma32PFN - 1 : (1 << 24) - 1
                if let p = d.allocate(pages: pages, limitPFN: limit, cpu: Int(rng.next(below: 4))) {
                    live.append((p, pages))
                }
            } else {
                let i = Int(rng.next(below: UInt64(live.count)))
                let r = live.remove(at: i)
                #expect(d.free(pfn: r.pfn, pages: r.pages, cpu: Int(rng.next(below: 4))))
            }
        }
        #expect(d.validateTree())
        for r in live { #expect(d.isAllocated(pfn: r.pfn, pages: IOVADomain.roundedSize(r.pages))) }
        // Live ranges never overlap.
        let sorted = live.sorted { $0.pfn < $1.pfn }
        for (x, y) in zip(sorted, sorted.dropFirst()) { #expect(x.pfn + IOVADomain.roundedSize(x.pages) <= y.pfn) }
        d.flushCaches()
        #expect(d.allocatedRanges == live.count)
    }
}
