import Platform
import Kernel

/// A fail_nth sweep: run the scenario once counting the fault-injection points it reaches,
/// then once per N with the Nth point failing, and check after each run that the failed
/// operation returned its error (or the failure was absorbed by a designed fallback), that
/// a failed step left the state as it found it, and that teardown left nothing behind.
public struct FaultSweep: Sendable {
    public struct Failure: Sendable, Equatable {
        /// The N of the run (the point hit that failed).
        public var n: Int
        public var point: String
        /// `leak`, `inconsistency`, `violation` or `aborted`.
        public var kind: String
        public var detail: String
    }

    public struct Report: Sendable {
        public var scenario: String
        public var seed: UInt64
        /// Injection points the clean run reached.
        public var points: Int
        /// Hits per point name in the clean run.
        public var pointsByName: [(String, Int)]
        public var runs: Int
        /// Runs that left frames, DIDs, PASIDs or domains behind.
        public var leaks: Int
        /// Runs in which a failed step did not roll back, or the kernel's state disagreed.
        public var inconsistencies: Int
        /// Runs in which a step returned the injected error.
        public var returnedError: Int
        /// Runs in which the failure was absorbed (a fallback, or hardware outside any step).
        public var absorbed: Int
        /// Absorbed runs by point name.
        public var absorbedByPoint: [(String, Int)]
        /// Runs with a dropped descriptor that the oracle flagged (hardware broke isolation:
        /// the oracle must see it; not a kernel failure).
        public var caughtByOracle: Int
        public var failures: [Failure]
        public var wallNs: UInt64
    }

    public let scenario: Scenario
    public let seed: UInt64
    public init(scenario: Scenario, seed: UInt64 = 1) { self.scenario = scenario; self.seed = seed }

    /// The `iommu-sim run` options (after the scenario) that replay `failure`, or nil when no
    /// run does. Run N ≥ 1 is `--fail-nth N`. N = 0 is the counting run, which fails nothing
    /// and ignores the file's inject actions: a plain run replays it only when the file has
    /// none (`--fail-nth 0` is not a run the command line takes).
    public func replay(_ failure: Failure) -> String? {
        if failure.n >= 1 { return "--seed \(seed) --fail-nth \(failure.n)" }
        let injects = scenario.actions.contains { if case .inject = $0.action { return true } else { return false } }
        return injects ? nil : "--seed \(seed)"
    }

    static let leakInvariants: Set<String> = ["frame-leak", "did-leak", "pasid-leak", "domain-leak", "pins-left", "object-leak"]

    /// Whether violation `v` is the designed consequence of the fault injected at `point`
    /// rather than a kernel bug: a DID quarantined, or pins kept, after a timed-out invalidation, or anything
    /// the oracle flags after the hardware dropped a descriptor (the hardware broke isolation;
    /// the oracle must see it).
    static func isDesignedOutcome(_ v: Violation, injectedPoint point: String) -> Bool {
        if point == FaultPoint.invalidationDrop.name { return !leakInvariants.contains(v.invariant) }
        return (v.invariant == "did-quarantined" || v.invariant == "pins-kept") && point == FaultPoint.invalidationTimeout.name
    }

    public func run(jobs: Int, progress: (@Sendable (_ done: Int, _ total: Int) -> Void)? = nil) throws -> Report {
        let start = HostClock.now()
        // The clean run, counting.
        var countOptions = ScenarioRunner.Options(seed: seed)
        countOptions.tolerant = true
        countOptions.faultMode = .count
        let clean = try ScenarioRunner(scenario: scenario, options: countOptions).run()
        let points = clean.pointHits
        var report = Report(scenario: scenario.name, seed: seed, points: points, pointsByName: clean.pointHitsByName,
                            runs: points + 1, leaks: 0, inconsistencies: 0, returnedError: 0, absorbed: 0, absorbedByPoint: [], caughtByOracle: 0,
                            failures: [], wallNs: 0)
        // A failure the file expects (expect-error) is part of a clean run.
        let failed = clean.steps.first { $0.error != nil && !$0.expected }
        if clean.result.violationCount > 0 || failed != nil {
            report.failures.append(Failure(n: 0, point: "none", kind: "violation",
                                           detail: "the clean run is not clean: \(clean.result.violations.first.map { "\($0)" } ?? failed?.error ?? "")"))
        }
        let scenario = self.scenario, seed = self.seed
        let runs = ParallelJobs.map(count: points, jobs: jobs, progress: { done in progress?(done, points) }) { i in
            Self.check(scenario: scenario, seed: seed, n: i + 1)
        }
        var absorbed: [String: Int] = [:]
        for r in runs {
            if r.absorbed { absorbed[r.point, default: 0] += 1 }
            if r.leak { report.leaks += 1 }
            if r.inconsistent { report.inconsistencies += 1 }
            if r.returnedError { report.returnedError += 1 }
            if r.absorbed { report.absorbed += 1 }
            if r.caught { report.caughtByOracle += 1 }
            report.failures += r.failures
        }
        report.absorbedByPoint = absorbed.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        report.wallNs = HostClock.elapsed(start, HostClock.now())
        return report
    }

    struct RunCheck: Sendable {
        var point = "none"
        var leak = false, inconsistent = false, returnedError = false, absorbed = false, caught = false
        var failures: [Failure] = []
    }

    static func check(scenario: Scenario, seed: UInt64, n: Int) -> RunCheck {
        var c = RunCheck()
        var options = ScenarioRunner.Options(seed: seed)
        options.tolerant = true
        options.faultMode = .failNth(n)
        let outcome: ScenarioOutcome
        do { outcome = try ScenarioRunner(scenario: scenario, options: options).run() } catch {
            c.failures.append(Failure(n: n, point: "?", kind: "aborted", detail: "\(error)"))
            return c
        }
        let point = outcome.injected.first?.0 ?? "none"
        c.point = point
        let hardwareDrop = point == FaultPoint.invalidationDrop.name
        // Did the failed operation return its error?
        if let s = outcome.steps.first(where: { $0.injected }) {
            if s.error != nil { c.returnedError = true } else { c.absorbed = true }
        } else {
            c.absorbed = true
        }
        // Rollback of every failed step.
        for s in outcome.steps where !s.notRolledBack.isEmpty {
            c.inconsistent = true
            c.failures.append(Failure(n: n, point: point, kind: "inconsistency",
                                      detail: "'\(s.label)' failed (\(s.error ?? "")) but \(s.notRolledBack.joined(separator: "; "))"))
        }
        // Leaks and violations.
        for v in outcome.result.violations {
            if isDesignedOutcome(v, injectedPoint: point) {
                if hardwareDrop { c.caught = true }
            } else if leakInvariants.contains(v.invariant) || v.invariant == "did-quarantined" {
                if !c.leak { c.failures.append(Failure(n: n, point: point, kind: "leak", detail: v.detail)) }
                c.leak = true
            } else {
                c.failures.append(Failure(n: n, point: point, kind: "violation", detail: "\(v)"))
                break
            }
        }
        return c
    }
}
