import Platform
import Kernel
import CReference

/// `iommu-sim bench iova`: the IOVA allocator's two paths, each beside the C reference of
/// the same algorithm (Sources/CReference/iova_reference.c).
/// - Fast path: alloc + free of one granule on one CPU slot: a magazine pop and push
///   under the slot's lock. Timed in batches of 1000 pairs; p50 over batches.
/// - Slow path: 10^4 live ranges of 33…1024 granules (too large for the caches, so every
///   operation is a tree search, insert and removal under the tree lock); each step frees a
///   random live range and allocates a new one of a random size. Every allocation is timed
///   alone (a clock read costs about 20 ns on both sides); p99 over all, and p99 of the
///   first and last tenth of the run to show the tree does not degrade. Swift runs the
///   whole sequence first, then C replays it and must place every range identically.
struct IOVABenchmark {
    struct Fast { var swiftNs: Double; var cNs: Double }
    struct Slow {
        var swift: Samples, c: Samples
        var swiftFirstP99: Double, swiftLastP99: Double, cFirstP99: Double, cLastP99: Double
    }
    struct Result {
        var fastSwift: Double, fastC: Double, fastRatio: Double
        var slowSwiftP50: Double, slowSwiftP99: Double, slowCP50: Double, slowCP99: Double, slowRatio: Double
        var swiftFirstP99: Double, swiftLastP99: Double
        var operations: Int, rounds: Int, liveRanges: Int
    }
    struct Failure: Error, CustomStringConvertible { var description: String }

    let operations: Int
    let rounds: Int
    let liveRanges = 10_000
    static let endPFN: UInt64 = (1 << 36) - 1

    func run() throws -> Result {
        var fast: [Fast] = []
        var slow: [Slow] = []
        for r in 0..<rounds {
            fast.append(try fastPath())
            slow.append(try slowPath(seed: UInt64(r + 1)))
        }
        let slowRatios = slow.map { $0.swift.percentile(0.99) / max($0.c.percentile(0.99), 1) }
        return Result(fastSwift: median(fast.map(\.swiftNs)), fastC: median(fast.map(\.cNs)),
                      fastRatio: median(fast.map { $0.swiftNs / max($0.cNs, 0.001) }),
                      slowSwiftP50: median(slow.map { $0.swift.percentile(0.5) }), slowSwiftP99: median(slow.map { $0.swift.percentile(0.99) }),
                      slowCP50: median(slow.map { $0.c.percentile(0.5) }), slowCP99: median(slow.map { $0.c.percentile(0.99) }),
                      slowRatio: median(slowRatios),
                      swiftFirstP99: median(slow.map(\.swiftFirstP99)), swiftLastP99: median(slow.map(\.swiftLastP99)),
                      operations: operations, rounds: rounds, liveRanges: liveRanges)
    }

    private func fastPath() throws -> Fast {
        let d = IOVADomain(endPFN: Self.endPFN, cpus: 1, clock: { HostClock.now() })
        guard let c = ref_iova_create(1, Self.endPFN, 1) else { throw Failure(description: "C reference") }
        defer { ref_iova_destroy(c) }
        let limit = Self.endPFN
        // Warm: one range into each side's magazine.
        guard let p = d.allocate(pages: 1, limitPFN: limit, cpu: 0) else { throw Failure(description: "allocation failed") }
        d.free(pfn: p, pages: 1, cpu: 0)
        ref_iova_free(c, ref_iova_alloc(c, 1, limit, 0), 1, 0)
        let batches = max(1, operations / 1000)
        var swiftSamples: [Double] = [], cSamples: [Double] = []
        var sum: UInt64 = 0
        for _ in 0..<batches {
            var t0 = HostClock.now()
            for _ in 0..<1000 {
                let pfn = d.allocate(pages: 1, limitPFN: limit, cpu: 0) ?? 0
                sum &+= pfn
                d.free(pfn: pfn, pages: 1, cpu: 0)
            }
            swiftSamples.append(Double(HostClock.elapsed(t0, HostClock.now())) / 1000)
            t0 = HostClock.now()
            for _ in 0..<1000 {
                let pfn = ref_iova_alloc(c, 1, limit, 0)
                sum &-= pfn
                ref_iova_free(c, pfn, 1, 0)
            }
            cSamples.append(Double(HostClock.elapsed(t0, HostClock.now())) / 1000)
        }
        guard sum == 0 else { throw Failure(description: "Swift and C handed out different frames") }
        return Fast(swiftNs: median(swiftSamples), cNs: median(cSamples))
    }

    private func slowPath(seed: UInt64) throws -> Slow {
        let limit = Self.endPFN
        // Swift first, alone, recording every placement; then C alone, replaying the same
        // sequence and checking it places every range where Swift did. Run apart, neither
        // side's tree evicts the other's from the caches between timed allocations.
        var placed: [UInt64] = []
        placed.reserveCapacity(liveRanges + operations)
        let d = IOVADomain(endPFN: Self.endPFN, cpus: 1, clock: { HostClock.now() })
        let sw = try replay(seed: seed, allocate: { d.allocate(pages: $0, limitPFN: limit, cpu: 0) },
                            free: { d.free(pfn: $0, pages: $1, cpu: 0) }) { _, p in
            guard let p else { throw Failure(description: "allocation failed") }
            placed.append(p)
            return p
        }
        guard let c = ref_iova_create(1, Self.endPFN, 1) else { throw Failure(description: "C reference") }
        defer { ref_iova_destroy(c) }
        let cs = try replay(seed: seed, allocate: { let q = ref_iova_alloc(c, $0, limit, 0); return q == 0 ? nil : q },
                            free: { ref_iova_free(c, $0, $1, 0) }) { k, q in
            guard let q, q == placed[k] else { throw Failure(description: "Swift and C placed a range differently") }
            return q
        }
        let tenth = max(1, operations / 10)
        return Slow(swift: sw, c: cs,
                    swiftFirstP99: percentileOf(sw.values.prefix(tenth), 0.99), swiftLastP99: percentileOf(sw.values.suffix(tenth), 0.99),
                    cFirstP99: percentileOf(cs.values.prefix(tenth), 0.99), cLastP99: percentileOf(cs.values.suffix(tenth), 0.99))
    }

    /// One side's run: `liveRanges` allocations, then `operations` steps that each free a
    /// random live range and allocate one of a random size, every allocation timed alone.
    /// `placed(k, pfn)` sees the k-th placement and returns it or throws.
    @inline(__always)
    private func replay(seed: UInt64, allocate: (UInt64) -> UInt64?, free: (UInt64, UInt64) -> Void,
                        placed: (Int, UInt64?) throws -> UInt64) throws -> Samples {
        var rng = SeededRNG(seed: seed)
        var live: [(UInt64, UInt64)] = []
        live.reserveCapacity(liveRanges)
        var k = 0
        for _ in 0..<liveRanges {
            let pages = 33 + rng.next(below: 992)
            live.append((try placed(k, allocate(pages)), pages))
            k += 1
        }
        var samples = Samples(capacity: operations)
        for _ in 0..<operations {
            let i = Int(rng.next(below: UInt64(liveRanges)))
            let pages = 33 + rng.next(below: 992)
            free(live[i].0, live[i].1)
            let t0 = HostClock.now()
            let p = allocate(pages)
            samples.add(Double(HostClock.elapsed(t0, HostClock.now())))
            live[i] = (try placed(k, p), pages)
            k += 1
        }
        return samples
    }
}
