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
        /// The fault the soonest seed injected (with `--inject-faults`), as `point` and hit.
        public var injection: Injection?
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
        public init(scenario: String, runs: Int, findings: [Finding], wallNs: UInt64, translations: UInt64) {
            self.scenario = scenario; self.runs = runs; self.findings = findings; self.wallNs = wallNs; self.translations = translations
        }
    }

    /// One injected fault: the `nth` hit of `point` fails (`iommu-sim run --fail-point point
    /// --fail-nth nth` replays it).
    public struct Injection: Sendable, Equatable, CustomStringConvertible {
        public var point: String
        public var nth: Int
        public var description: String { "\(point) hit \(nth)" }
    }

    /// What one seed showed: its first occurrence of each invariant.
    struct SeedResult: Sendable {
        var seed: UInt64
        var firsts: [(invariant: String, detail: String, time: UInt64)]
        var translations: UInt64
        var injection: Injection? = nil
    }

    public let scenario: Scenario
    public let breakage: Set<Breakage>
    /// Each seed also fails one fault-injection point at one hit, both chosen from the seed
    /// among the points a counting run reaches, so error paths meet the yield points.
    public let injectFaults: Bool
    public init(scenario: Scenario, breakage: Set<Breakage> = [], injectFaults: Bool = false) {
        self.scenario = scenario
        self.breakage = breakage
        self.injectFaults = injectFaults
    }

    /// A run of `seed` with this explorer's breakage.
    private func options(_ seed: UInt64) -> ScenarioRunner.Options {
        var o = ScenarioRunner.Options(seed: seed)
        o.breakage = breakage
        return o
    }

    /// The fault seed `seed` injects, from the points (and their hit counts) a counting run
    /// reached; nil when it reached none.
    static func injection(for seed: UInt64, points: [(String, Int)]) -> Injection? {
        let reachable = points.filter { $0.1 > 0 }
        guard !reachable.isEmpty else { return nil }
        var rng = SeededRNG(seed: seed ^ 0x1A7E_C7ED_FA17_0001)
        let (point, hits) = reachable[Int(rng.next(below: UInt64(reachable.count)))]
        return Injection(point: point, nth: 1 + Int(rng.next(below: UInt64(hits))))
    }

    /// Fault points and hit counts of a counting run of the scenario (its first seed), or why
    /// there are none to inject.
    func countPoints(seed: UInt64) -> Result<[(String, Int)], CountingFailed> {
        var options = options(seed)
        options.tolerant = true
        options.faultMode = .count
        do {
            let points = try ScenarioRunner(scenario: scenario, options: options).run().pointHitsByName.filter { $0.1 > 0 }
            return points.isEmpty ? .failure(CountingFailed(reason: "the scenario reaches no fault-injection point")) : .success(points)
        } catch {
            return .failure(CountingFailed(reason: "the counting run failed: \(error)"))
        }
    }

    struct CountingFailed: Error { var reason: String }

    /// Runs one seed with `injection` (tolerant: steps after an injected failure may fail as
    /// designed) and reduces it to what is a bug: violations that are not the designed outcome
    /// of the injected fault, leaks, and failed steps that did not roll back.
    func runSeed(_ seed: UInt64, injection: Injection) -> SeedResult {
        var options = options(seed)
        options.tolerant = true
        options.faultMode = .failNth(injection.nth, only: FaultPoint(injection.point))
        var firsts: [(String, String, UInt64)] = []
        func add(_ invariant: String, _ detail: String, _ time: UInt64) {
            if !firsts.contains(where: { $0.0 == invariant }) { firsts.append((invariant, "\(detail) [injected: \(injection)]", time)) }
        }
        do {
            let outcome = try ScenarioRunner(scenario: scenario, options: options).run()
            for v in outcome.result.violations where !FaultSweep.isDesignedOutcome(v, injectedPoint: injection.point) {
                add(v.invariant, v.detail, v.time)
            }
            for s in outcome.steps where !s.notRolledBack.isEmpty {
                add("rollback-incomplete", "'\(s.label)' failed (\(s.error ?? "")) but \(s.notRolledBack.joined(separator: "; "))", s.time)
            }
            return SeedResult(seed: seed, firsts: firsts, translations: outcome.result.translations, injection: injection)
        } catch {
            add("run-failed", "\(error)", 0)
        }
        return SeedResult(seed: seed, firsts: firsts, translations: 0, injection: injection)
    }

    /// Runs one seed and reduces it to first occurrences per invariant. A step that fails
    /// (without any injection, so a bug) counts as the invariant `step-failed`, a run past its
    /// budget as `budget-exceeded`; unmet expectations other than the violation count as
    /// `expectation`.
    func runSeed(_ seed: UInt64) -> SeedResult {
        let options = options(seed)
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
            for v in f.outcome?.result.violations ?? [] { add(v.invariant, v.detail, v.time) }
            add("step-failed", f.description, f.record.time)
        } catch let b as ScenarioRunner.BudgetExceeded {
            add("budget-exceeded", b.description, b.virtualTimeNs)
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
        // Each seed's result is folded in as it arrives and dropped: a campaign of any length
        // keeps one finding per invariant, never one record per seed.
        var violating = 0
        var translations: UInt64 = 0
        var findings = Findings()
        var counted: [(String, Int)] = []
        if injectFaults {
            switch countPoints(seed: seeds.lowerBound) {
            case .success(let p): counted = p
            case .failure(let f):
                // Seeds would run without any injection: say so rather than pass quietly.
                findings.add(SeedResult(seed: seeds.lowerBound, firsts: [("inject-faults-unavailable", f.reason, 0)], translations: 0))
            }
        }
        let points = counted
        ParallelJobs.forEach(count: count, jobs: jobs, { i in
            let seed = seeds.lowerBound + UInt64(i)
            if self.injectFaults, let injection = Self.injection(for: seed, points: points) { return self.runSeed(seed, injection: injection) }
            return self.runSeed(seed)
        }) { _, r, done in
            findings.add(r)
            if !r.firsts.isEmpty { violating += 1 }
            translations &+= r.translations
            progress?(done, count, violating)
        }
        return Report(scenario: scenario.name, runs: count, findings: findings.sorted,
                      wallNs: HostClock.elapsed(start, HostClock.now()), translations: translations)
    }

    /// One finding per invariant: the earliest occurrence over all seeds (ties: lowest seed).
    static func merge(_ results: [SeedResult]) -> [Finding] {
        var f = Findings()
        for r in results { f.add(r) }
        return f.sorted
    }

    /// The running merge of seed results: per invariant the earliest occurrence (ties: lowest
    /// seed) and the number of seeds that showed it. The result does not depend on the order
    /// seeds are added in.
    struct Findings {
        private var byInvariant: [String: Finding] = [:]

        mutating func add(_ r: SeedResult) {
            for f in r.firsts {
                if var existing = byInvariant[f.invariant] {
                    existing.seeds += 1
                    if (f.time, r.seed) < (existing.timeNs, existing.seed) {
                        existing.seed = r.seed; existing.timeNs = f.time; existing.detail = f.detail; existing.injection = r.injection
                    }
                    byInvariant[f.invariant] = existing
                } else {
                    byInvariant[f.invariant] = Finding(invariant: f.invariant, detail: f.detail, injection: r.injection,
                                                       seed: r.seed, timeNs: f.time, seeds: 1)
                }
            }
        }

        var sorted: [Finding] { byInvariant.keys.sorted().compactMap { byInvariant[$0] } }
    }
}
