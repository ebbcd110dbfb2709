import Testing
import Foundation
import Platform
import Kernel
@testable import Simulation

/// A device streaming DMA every nanosecond for 1000 s of virtual time: a runaway.
private func runaway(_ machine: String) -> String {
    """
    name: runaway
    machine: {\(machine)}
    units: [{name: dmar0}]
    devices: [{name: nic0, rid: "00:02.0", unit: dmar0}]
    buffers: [{name: rx, domain: nic0, iova: 0x100000, count: 4}]
    workloads:
      - {name: t, type: dma, device: nic0, buffers: rx, interval-ns: 1}
    actions:
      - {at: 0, do: map, buffers: rx}
    end-ns: 1000000000000
    """
}

/// The small scenario with a second detach of U, which fails (ENOENT) on line 21.
let failingScenario = smallScenario.replacingOccurrences(
    of: "  - {at: 20000, do: detach, domain: U, device: vf0}",
    with: "  - {at: 20000, do: detach, domain: U, device: vf0}\n  - {at: 25000, do: detach, domain: U, device: vf0}")

@Suite("RunStops: a run that stops early says file:line and why, carries what it did, and a runaway is stopped by its budget")
struct RunStopTests {
    @Test("a failing step stops the run with file:line: step '…' failed, and the error carries the run so far")
    func stepFailureNamesFileAndLine() throws {
        let s = try ScenarioLoader.load(yaml: failingScenario, file: "fail.yaml")
        let e = try #require(throws: ScenarioRunner.StepFailed.self) { try runScenario(s) }
        #expect(e.description.hasPrefix("fail.yaml:21: step 'detach U from vf0's group' failed at "), "\(e)")
        #expect(e.description.contains("ENOENT"), "\(e)")
        let o = try #require(e.outcome)
        #expect(o.steps.count == 1 && o.steps[0].line == 21, "\(o.steps)")
        #expect(o.result.log.contains { $0.text.contains("detach U from vf0's group failed") }, "the log goes up to the failure")
        #expect(o.result.translations > 0, "the counters are those of the run so far")
        #expect(o.expectationFailures.isEmpty, "a stopped run's expectations are not checked")
    }

    @Test("machine.max-events stops a runaway at exactly that many events, naming the file and the key's line, at the time it stopped")
    func eventBudgetStopsARunaway() throws {
        let s = try ScenarioLoader.load(yaml: runaway("max-events: 20000"), file: "runaway.yaml")
        #expect(s.machine.maxEvents == 20000 && s.machine.maxEventsLine == 2)
        let e = try #require(throws: ScenarioRunner.BudgetExceeded.self) { try runScenario(s) }
        #expect(e.budget == .events)
        #expect(e.eventsRun == 20000)
        #expect(e.virtualTimeNs < 1_000_000, "the clock stopped where the events did: \(e.virtualTimeNs)")
        #expect(e.description.hasPrefix("runaway.yaml:2: run stopped after 20000 events"), "\(e)")
        #expect(e.description.contains("machine.max-events"))
        let o = try #require(e.outcome)
        #expect(o.result.eventsRun == 20000)
        #expect(o.result.log.last?.text.contains("max-events") == true)
    }

    @Test("machine.max-wall-s stops a runaway by host time, reading the clock while events run")
    func wallBudgetStopsARunaway() throws {
        let s = try ScenarioLoader.load(yaml: runaway("max-wall-s: 0.05"), file: "runaway.yaml")
        let start = ContinuousClock.now
        let e = try #require(throws: ScenarioRunner.BudgetExceeded.self) { try runScenario(s) }
        #expect(ContinuousClock.now - start < .seconds(30))
        #expect(e.budget == .wall && e.line == 2, "\(e)")
        #expect(e.eventsRun < Scenario.Machine.defaultMaxEvents, "stopped by the clock, not the event budget")
        #expect(e.description.contains("machine.max-wall-s (0.05 s of host time)"), "\(e)")
    }

    @Test("out-of-range budgets are load errors", arguments: ["max-events: 0", "max-wall-s: 0", "max-wall-s: 100000"])
    func budgetRanges(field: String) throws {
        #expect(throws: ScenarioError.self) { try ScenarioLoader.load(yaml: runaway(field), file: "runaway.yaml") }
    }

    @Test("every built-in scenario takes under 1% of the default event budget", arguments: BuiltinScenarios.names)
    func defaultBudgetIsGenerous(name: String) throws {
        let o = try runScenario(try BuiltinScenarios.load(name), seed: 2)
        #expect(o.result.eventsRun * 100 < Scenario.Machine.defaultMaxEvents, "\(o.result.eventsRun) events")
    }

    @Test("explore reports a run past its budget as the invariant budget-exceeded")
    func exploreReportsBudget() throws {
        let s = try ScenarioLoader.load(yaml: runaway("max-events: 5000"), file: "runaway.yaml")
        let r = Explorer(scenario: s).run(seeds: 1...2, jobs: 2)
        #expect(r.findings.map(\.invariant) == ["budget-exceeded"], "\(r.findings)")
        #expect(r.findings.first?.seeds == 2)
        #expect(r.findings.first?.detail.hasPrefix("runaway.yaml:2:") == true)
    }

    @Test("a fault sweep never offers --fail-nth 0: the counting run's failure replays as a plain run, or not at all when the file injects")
    func sweepReplaysAreRunnable() throws {
        let s = try ScenarioLoader.load(yaml: failingScenario, file: "fail.yaml")
        let sweep = FaultSweep(scenario: s, seed: 3)
        let r = try sweep.run(jobs: 2)
        let clean = try #require(r.failures.first { $0.n == 0 }, "the counting run records the failing detach")
        #expect(sweep.replay(clean) == "--seed 3")
        for f in r.failures where f.n > 0 { #expect(sweep.replay(f) == "--seed 3 --fail-nth \(f.n)") }
        let injecting = try ScenarioLoader.load(yaml: failingScenario.replacingOccurrences(
            of: "actions:\n", with: "actions:\n  - {at: 0, do: inject, point: hw.invalidation-delay, probability: 0.5}\n"), file: "fail.yaml")
        #expect(FaultSweep(scenario: injecting, seed: 3).replay(clean) == nil)
    }
}
