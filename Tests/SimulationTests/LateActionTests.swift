import Testing
import Platform
import Kernel
@testable import Simulation

/// A strict DMA-API burst of 300 map/unmap pairs takes about half a millisecond of virtual
/// time; everything timed inside that half millisecond is due while it runs.
private func lateScenario(churnStart: Int, churnStop: Int, mayIdle: Bool = false) -> String {
    """
    name: late
    machine: {policy: strict}
    units:
      - {name: dmar0}
    devices:
      - {name: nic0, rid: "00:02.0", unit: dmar0}
    buffers:
      - {name: rx, domain: nic0, iova: 0x100000, count: 4}
    workloads:
      - {name: churner, type: churn, buffers: rx, period-ns: 20000, start: \(churnStart), stop: \(churnStop)\(mayIdle ? ", may-idle: true" : "")}
    actions:
      - {at: 0, do: map, buffers: rx}
      - {at: 1000, do: dma-burst, device: nic0, pairs: 300, cpu: 0}
      - {at: 10000, do: dma, device: nic0, address: 0x100000, length: 64, count: 1}
    end-ns: 500000
    """
}

@Suite("LateActions: a timed item due while software still runs is performed late, reported, and never starves the events due before it")
struct LateActionTests {
    @Test("events due while a long action ran still run when the next item is reached late; the late items are reported")
    func lateItemsRunDueEvents() throws {
        let s = try ScenarioLoader.load(yaml: lateScenario(churnStart: 0, churnStop: 400_000), file: "late.yaml")
        let o = try runScenario(s)
        let churner = try #require(o.result.workloads.first { $0.name == "churner" })
        #expect(churner.startedNs != nil)
        #expect(churner.operations >= 1, "the churn tick due at 20 µs ran late instead of never")
        #expect(o.result.churnRounds >= 1)
        let late = o.result.lateItems.map(\.label)
        #expect(late.contains("nic0 writes 0x100000"), "\(late)")
        #expect(late.contains("stop churner"), "\(late)")
        let dma = try #require(o.result.lateItems.first { $0.label == "nic0 writes 0x100000" })
        #expect(dma.dueNs == 10_000 && dma.ranNs > 100_000)
        #expect(!o.result.lateItems.contains { $0.label == "map rx" }, "items due before the timeline began (probing) are not late")
        #expect(o.expectationFailures.isEmpty, "\(o.expectationFailures)")
    }

    @Test("the scheduler runs overdue events when asked to run until a time the clock has passed")
    func schedulerRunsOverdueEvents() {
        let s = Scheduler(seed: 1)
        var ran = false
        s.schedule(at: 500, kind: .software) { ran = true }
        // Software busy until 1 µs: a wait runs hardware events only, so the software event stays due.
        #expect(throws: SchedulerError.self) { try s.wait(until: { false }, timeoutNs: 1_000) }
        #expect(!ran && s.now == 1_000)
        s.run(until: 800)
        #expect(ran, "the event due at 500 ns ran although the target (800) is behind the clock")
        #expect(s.now == 1_000, "the clock never goes back")
    }

    @Test("a started workload whose whole window passed inside a long action did nothing: the run's expectations fail")
    func idleWorkloadFailsExpectations() throws {
        let s = try ScenarioLoader.load(yaml: lateScenario(churnStart: 10_000, churnStop: 300_000), file: "late.yaml")
        let o = try runScenario(s)
        let churner = try #require(o.result.workloads.first { $0.name == "churner" })
        #expect(churner.operations == 0 && churner.idleUnexpectedly)
        #expect(o.expectationFailures.contains { $0.contains("workload churner") && $0.contains("did nothing") }, "\(o.expectationFailures)")
    }

    @Test("may-idle: true lets a workload do nothing without failing the run")
    func mayIdleAllowsIdleWorkload() throws {
        let s = try ScenarioLoader.load(yaml: lateScenario(churnStart: 10_000, churnStop: 300_000, mayIdle: true), file: "late.yaml")
        let o = try runScenario(s)
        #expect(o.result.workloads.first { $0.name == "churner" }?.operations == 0)
        #expect(o.expectationFailures.isEmpty, "\(o.expectationFailures)")
    }
}
