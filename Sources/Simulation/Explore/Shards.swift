/// Sharded exploration: a seed range cut into `count` deterministic contiguous slices, one
/// per batch-engine task (a Kubernetes Indexed Job's JOB_COMPLETION_INDEX, a CI matrix
/// entry), and the shard reports merged back into the report one run over the whole range
/// gives: runs summed, each invariant once with its soonest seed (ties: the lowest seed) and
/// the number of seeds that showed it.
public struct Shard: Sendable, Equatable {
    public var index: Int
    public var count: Int

    /// `K/N` with 0 ≤ K < N, 1 ≤ N ≤ 1,000,000.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let k = Int(parts[0]), let n = Int(parts[1]), (1...1_000_000).contains(n), (0..<n).contains(k) else {
            return nil
        }
        index = k; count = n
    }

    public init(index: Int, count: Int) { self.index = index; self.count = count }

    /// This shard's slice of `seeds`: [A + ⌊K·S/N⌋, A + ⌊(K+1)·S/N⌋) for S seeds; nil when
    /// it is empty (more shards than seeds).
    public func slice(of seeds: ClosedRange<UInt64>) -> ClosedRange<UInt64>? {
        let total = seeds.upperBound - seeds.lowerBound + 1   // ranges are capped far below 2^64
        let lo = total.multipliedFullWidth(by: UInt64(index)), hi = total.multipliedFullWidth(by: UInt64(index + 1))
        let start = UInt64(count).dividingFullWidth((lo.high, lo.low)).quotient
        let end = UInt64(count).dividingFullWidth((hi.high, hi.low)).quotient
        guard end > start else { return nil }
        return (seeds.lowerBound + start)...(seeds.lowerBound + end - 1)
    }
}

/// One explore report as printed with `--json`, the fields a merge needs.
public struct ExploreSummary: Sendable, Equatable {
    public struct Violation: Sendable, Equatable {
        public var seed: UInt64
        public var invariant: String
        public var detail: String
        public var seeds: Int
        public var timeNs: UInt64
        public var replay: String
        public init(seed: UInt64, invariant: String, detail: String, seeds: Int, timeNs: UInt64, replay: String) {
            self.seed = seed; self.invariant = invariant; self.detail = detail; self.seeds = seeds; self.timeNs = timeNs; self.replay = replay
        }
    }
    public var scenario: String
    /// The whole range, as `A..B`.
    public var seeds: String
    public var runs: Int
    public var violations: [Violation]
    public var shard: Shard?
    public init(scenario: String, seeds: String, runs: Int, violations: [Violation], shard: Shard?) {
        self.scenario = scenario; self.seeds = seeds; self.runs = runs; self.violations = violations; self.shard = shard
    }
}

/// Why shard reports do not merge.
public enum ShardMergeError: Error, Equatable, CustomStringConvertible {
    case noReports
    case notSharded(Int)
    case mismatch(String)
    case missing([Int])
    case duplicate(Int)

    public var description: String {
        switch self {
        case .noReports: return "no reports to merge"
        case .notSharded(let i): return "report \(i + 1) was not made with --shard"
        case .mismatch(let s): return "the reports are not shards of one campaign: \(s)"
        case .missing(let ks): return "missing shard(s) \(ks.map(String.init).joined(separator: ", ")) of the campaign"
        case .duplicate(let k): return "shard \(k) appears twice"
        }
    }
}

extension ExploreSummary {
    /// Merges the shard reports of one campaign (same scenario, range and shard count, every
    /// index once) into the report of the whole range.
    public static func merge(_ reports: [ExploreSummary]) throws(ShardMergeError) -> ExploreSummary {
        guard let first = reports.first else { throw .noReports }
        guard let n = first.shard?.count else { throw .notSharded(0) }
        var seen = Set<Int>()
        var runs = 0
        var byInvariant: [String: Violation] = [:]
        for (i, r) in reports.enumerated() {
            guard let s = r.shard else { throw .notSharded(i) }
            guard r.scenario == first.scenario else { throw .mismatch("scenario \(r.scenario) beside \(first.scenario)") }
            guard r.seeds == first.seeds else { throw .mismatch("seeds \(r.seeds) beside \(first.seeds)") }
            guard s.count == n else { throw .mismatch("\(s.count) shards beside \(n)") }
            guard seen.insert(s.index).inserted else { throw .duplicate(s.index) }
            runs += r.runs
            for v in r.violations {
                guard var m = byInvariant[v.invariant] else { byInvariant[v.invariant] = v; continue }
                let seeds = m.seeds + v.seeds
                if (v.timeNs, v.seed) < (m.timeNs, m.seed) { m = v }
                m.seeds = seeds
                byInvariant[v.invariant] = m
            }
        }
        let missing = (0..<n).filter { !seen.contains($0) }
        guard missing.isEmpty else { throw .missing(missing) }
        return ExploreSummary(scenario: first.scenario, seeds: first.seeds, runs: runs,
                              violations: byInvariant.keys.sorted().compactMap { byInvariant[$0] }, shard: nil)
    }
}
