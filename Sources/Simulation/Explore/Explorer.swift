import Foundation
import Platform

/// Interleaving exploration: runs a scenario under every seed of a range (each seed a
/// different choice at every yield point and tie), never stopping at a violation, and reports
/// each broken invariant once, with the seed that reproduces it soonest.
public struct Explorer: Sendable {
    /// One broken invariant, found under one or more seeds.
    public struct Finding: Sendable, Equatable {
        public var invariant: String
        public var detail: String
        /// The seed whose run shows it at the earliest virtual time (ties: the lowest seed).
        public var seed: UInt64
        public var timeNs: UInt64
        /// How many seeds showed it.
        public var seeds: Int
    }

    public struct Report: Sendable {
        public var scenario: String
        public var runs: Int
        public var findings: [Finding]
        public var wallNs: UInt64
        public var translations: UInt64
        public var seedsPerMinute: Double { wallNs == 0 ? 0 : Double(runs) * 60e9 / Double(wallNs) }
    }

    /// What one seed showed: its first occurrence of each invariant.
    struct SeedResult: Sendable {
        var seed: UInt64
        var firsts: [(invariant: String, detail: String, time: UInt64)]
        var translations: UInt64
    }

    public let scenario: Scenario
    public let breakage: Set<Breakage>
    public init(scenario: Scenario, breakage: Set<Breakage> = []) {
        self.scenario = scenario
        self.breakage = breakage
    }

    /// Runs one seed and reduces it to first occurrences per invariant. A step that fails
    /// (without any injection, so a bug) counts as the invariant `step-failed`; unmet
    /// expectations other than the violation count as `expectation`.
    func runSeed(_ seed: UInt64) -> SeedResult {
        var options = ScenarioRunner.Options(seed: seed)
        options.breakage = breakage
        var firsts: [(String, String, UInt64)] = []
        func add(_ invariant: String, _ detail: String, _ time: UInt64) {
            if !firsts.contains(where: { $0.0 == invariant }) { firsts.append((invariant, detail, time)) }
        }
        do {
            let outcome = try ScenarioRunner(scenario: scenario, options: options).run()
            for v in outcome.result.violations { add(v.invariant, v.detail, v.time) }
            if outcome.result.violationCount == 0 {
                for e in outcome.expectationFailures { add("expectation", e, outcome.result.virtualTimeNs) }
            }
            return SeedResult(seed: seed, firsts: firsts, translations: outcome.result.translations)
        } catch let f as ScenarioRunner.StepFailed {
            add("step-failed", f.description, f.record.time)
        } catch {
            add("run-failed", "\(error)", 0)
        }
        return SeedResult(seed: seed, firsts: firsts, translations: 0)
    }

    /// Runs seeds `seeds` on `jobs` threads. `progress(done, total, violationsSoFar)` is
    /// called after each seed.
    public func run(seeds: ClosedRange<UInt64>, jobs: Int,
                    progress: (@Sendable (_ done: Int, _ total: Int, _ violating: Int) -> Void)? = nil) -> Report {
        let start = HostClock.now()
        let count = Int(seeds.upperBound - seeds.lowerBound) + 1
        let violating = Counter()
        let results = ParallelJobs.map(count: count, jobs: jobs, progress: { done in
            progress?(done, count, violating.value)
        }) { i in
            let r = self.runSeed(seeds.lowerBound + UInt64(i))
            if !r.firsts.isEmpty { violating.increment() }
            return r
        }
        return Report(scenario: scenario.name, runs: count, findings: Self.merge(results),
                      wallNs: HostClock.elapsed(start, HostClock.now()), translations: results.reduce(0) { $0 + $1.translations })
    }

    /// One finding per invariant: the earliest occurrence over all seeds (ties: lowest seed).
    static func merge(_ results: [SeedResult]) -> [Finding] {
        var byInvariant: [String: Finding] = [:]
        var order: [String] = []
        for r in results {
            for f in r.firsts {
                if var existing = byInvariant[f.invariant] {
                    existing.seeds += 1
                    if (f.time, r.seed) < (existing.timeNs, existing.seed) {
                        existing.seed = r.seed; existing.timeNs = f.time; existing.detail = f.detail
                    }
                    byInvariant[f.invariant] = existing
                } else {
                    byInvariant[f.invariant] = Finding(invariant: f.invariant, detail: f.detail, seed: r.seed, timeNs: f.time, seeds: 1)
                    order.append(f.invariant)
                }
            }
        }
        return order.sorted().compactMap { byInvariant[$0] }
    }
}

/// A thread-safe counter for progress reports.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func increment() { lock.lock(); n += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}
