import Platform
import Hardware
import Kernel
import Simulation

/// Scenario YAML (docs/scenarios.md) as `iommu-sim run` takes it: the input's bytes as text
/// (lossy UTF-8) through the real loader (`ScenarioLoader.load`); a load error is a refusal
/// (`rejected`), never a trap. A scenario that loads is clamped so a run stays short (every
/// timed item at most 200 µs of virtual time, an event and a host-time budget, through the
/// `Scenario` value: the loader's limits are its own) and run by the real `ScenarioRunner`,
/// tolerant of failing steps so that the teardown always runs (the run goes on past a step
/// that fails, as fault sweeps do). Checks: no trap; every failed step rolled back what it
/// changed; the oracle saw no violation (which covers the teardown's leak checks: frames,
/// domains, PASIDs) unless the file makes the hardware or its guest misbehave on purpose (a
/// `descriptor-fault` that drops or delays invalidations, a `guest-unmap` with `invalidate:
/// false`: violations are then the point); a guest table a device overwrote is the file's
/// guest's bug, reported once (`guest-table-overwritten`) and not held against the run.
/// A run that spends its budget is not torn down and counts as refused.
enum ScenarioYAMLTarget {
    /// The timed phase's end, at most (virtual ns).
    static let maxTimedNs: UInt64 = 200_000
    static let maxEvents: UInt64 = 300_000
    static let maxWallSeconds = 5.0
    /// The idle phase before teardown, at most: long enough for a lazy flush queue's 10 ms
    /// timer (drivers/iommu/dma-iommu.c, IOVA_DEFAULT_FQ_SIZE's timeout) to fire.
    static let maxSettleNs: UInt64 = 11_000_000

    /// Prints load errors, failed steps and counts (seed checks in a debug session).
    nonisolated(unsafe) static var trace = false

    static func run(_ input: inout FuzzInput, _ result: inout FuzzResult) {
        let text = String(decoding: input.rest(), as: UTF8.self)
        var scenario: Scenario
        do { scenario = try ScenarioLoader.load(yaml: text, file: "fuzz.yaml") } catch {
            if trace { print("load: \(error)") }
            result.rejected = true
            return
        }
        clamp(&scenario)
        let outcome: ScenarioOutcome
        do {
            var options = ScenarioRunner.Options(seed: 1)
            options.tolerant = true
            outcome = try ScenarioRunner(scenario: scenario, options: options).run()
        } catch is ScenarioRunner.BudgetExceeded {
            if trace { print("budget exceeded") }
            result.rejected = true
            return
        } catch {
            // The machine could not be built (a unit configuration the hardware refuses), or a
            // step failed outside tolerance: the scenario was refused, nothing to check.
            if trace { print("run: \(error)") }
            result.rejected = true
            return
        }
        if trace {
            for s in outcome.steps { print("step \(s.label) at \(s.time): \(s.error ?? "ok")") }
            print("events \(outcome.result.eventsRun), translations \(outcome.result.translations), violations \(outcome.result.violationCount), end \(outcome.result.virtualTimeNs) ns")
        }
        for s in outcome.steps where !s.notRolledBack.isEmpty {
            result.fail("step '\(s.label)' (line \(s.line)) failed with \(s.error ?? "no error") and did not roll back: \(s.notRolledBack.joined(separator: "; "))")
        }
        // The oracle reports a guest table written behind its guest once, then stops judging
        // that nested domain: the file's guest broke its own rules.
        let judged = outcome.result.violations.filter { $0.invariant != "guest-table-overwritten" }
        let judgedCount = outcome.result.violationCount - (outcome.result.violations.count - judged.count)
        if judgedCount > 0 && !breaksHardware(scenario) && !skipsGuestInvalidation(scenario) {
            for v in judged.prefix(5) { result.fail("oracle: \(v)") }
            if judgedCount > 5 { result.fail("… \(judgedCount) violations in all") }
        }
    }

    /// Shortens the run: the end of the timed phase, every action and workload start or stop
    /// at most `maxTimedNs` (their order kept: the runner sorts by time, stable in file
    /// order), the settle phase and the budgets capped.
    static func clamp(_ s: inout Scenario) {
        s.endNs = min(s.endNs, maxTimedNs)
        for i in s.actions.indices { s.actions[i].at = min(s.actions[i].at, maxTimedNs) }
        for i in s.workloads.indices {
            s.workloads[i].start = min(s.workloads[i].start, maxTimedNs)
            if let stop = s.workloads[i].stop { s.workloads[i].stop = min(stop, maxTimedNs) }
        }
        s.machine.settleNs = min(s.machine.settleNs, maxSettleNs)
        s.machine.maxEvents = min(s.machine.maxEvents, maxEvents)
        s.machine.maxWallSeconds = min(s.machine.maxWallSeconds, maxWallSeconds)
    }

    /// The file's guest unmaps without invalidating (`invalidate: false`, a guest bug on
    /// purpose: the stale translations it leaves are what the oracle should then find).
    static func skipsGuestInvalidation(_ s: Scenario) -> Bool {
        s.actions.contains { a in
            if case .iommufd(.guestUnmap(_, _, _, let invalidate)) = a.action { return !invalidate }
            return false
        }
    }

    /// The file makes a VT-d unit drop or delay invalidation descriptors (a broken unit:
    /// stale translations are what the oracle should then find).
    static func breaksHardware(_ s: Scenario) -> Bool {
        s.actions.contains { a in
            if case .descriptorFault(_, _, let fault) = a.action { return fault != nil }
            return false
        }
    }
}
