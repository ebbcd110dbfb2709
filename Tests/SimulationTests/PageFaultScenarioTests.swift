import Testing
import Foundation
import Platform
import Kernel
@testable import Simulation

/// A small SVA scenario the tests below edit.
let svaScenario = """
name: sva-small
units:
  - {name: dmar0}
devices:
  - {name: acc0, rid: "00:06.0", unit: dmar0, pasids: 64, ats: true, pri: true, credits: 16}
workloads:
  - {name: touch, type: ats, device: acc0, bind: b1, region: heap, pages-per-access: 2, interval-ns: 500, outstanding: 4, start: 1000, stop: 40000}
actions:
  - {at: 0, do: create-process, name: app}
  - {at: 0, do: mmap, process: app, name: heap, pages: 64}
  - {at: 0, do: sva-bind, name: b1, device: acc0, process: app}
  - {at: 45000, do: sva-unbind, bind: b1, stop-marker: false}
  - {at: 45000, do: exit, process: app}
expect:
  violations: 0
  counters:
    page-faults: {at-least: 10}
"""

private func loadError(_ yaml: String) -> ScenarioError? {
    do { _ = try ScenarioLoader.load(yaml: yaml, file: "bad.yaml"); return nil } catch { return error }
}

@Suite("PageFaultScenarios: SVA, ATS streams, user fault handlers and page-fault expectations in scenario files")
struct PageFaultScenarioTests {
    @Test("the page-fault built-ins run clean, meet their expectations and leave nothing",
          arguments: ["sva-faults", "pasid-teardown", "prq-overflow", "user-faults", "misbehaving-device"])
    func builtinClean(name: String) throws {
        let s = try BuiltinScenarios.load(name)
        for seed: UInt64 in 1...2 {
            let o = try runScenario(s, seed: seed)
            #expect(o.result.violationCount == 0, "\(o.result.violations)")
            #expect(o.expectationFailures.isEmpty, "\(o.expectationFailures)")
            #expect(o.steps.isEmpty, "\(o.steps)")
            #expect(o.result.framesLeft == 0)
            #expect(o.result.pageFaultCounter("page-request-groups") > 0, "the devices really sent page requests")
        }
    }

    @Test("an SVA stream demand-pages the process: faults are answered SUCCESS and accesses complete")
    func svaStream() throws {
        let o = try runScenario(try ScenarioLoader.load(yaml: svaScenario, file: "sva.yaml"))
        let r = o.result
        #expect(o.expectationFailures.isEmpty, "\(o.expectationFailures)")
        #expect(r.pageFaultCounter("responses-success") > 0)
        #expect(r.pageFaultCounter("responses-success") == r.pageFaultCounter("fault-groups"), "every group of a resolvable fault is answered SUCCESS once")
        #expect(r.pageFaultCounter("ats-completed") > 0)
        #expect(r.pageFaultCounter("pasid-drains") > 0, "the unbind drained the PASID")
        #expect(r.pageFaultCounters.map(\.0) == RunResult.pageFaultCounterNames, "the counters a run reports are the names expectations accept")
        #expect(r.framesLeft == 0)
    }

    @Test("a counter expectation that is not met is reported with the counter's name")
    func counterExpectation() throws {
        let yaml = svaScenario.replacingOccurrences(of: "page-faults: {at-least: 10}", with: "prq-overflows: {at-least: 1}")
        let o = try runScenario(try ScenarioLoader.load(yaml: yaml, file: "x.yaml"))
        #expect(o.expectationFailures.contains { $0.contains("prq-overflows at least 1, found 0") }, "\(o.expectationFailures)")
    }

    @Test("exiting a process that is still bound fails the step with EBUSY")
    func exitWhileBound() throws {
        let yaml = svaScenario.replacingOccurrences(of: "  - {at: 45000, do: sva-unbind, bind: b1, stop-marker: false}\n", with: "")
        do {
            _ = try runScenario(try ScenarioLoader.load(yaml: yaml, file: "x.yaml"))
            Issue.record("exit while bound must fail")
        } catch let f as ScenarioRunner.StepFailed {
            #expect(f.record.error?.contains("EBUSY") == true, "\(f)")
        }
    }

    @Test("bad page-fault keys and references are refused before anything runs",
          arguments: [
            ("credits: 16}", "credits: 0}", "expected a value in"),
            ("pri: true, credits: 16}", "pri: false, credits: 16}", "credits needs pri: true"),
            ("credits: 16}", "credits: 16, misbehaviour: [lie]}", "expected one of"),
            ("bind: b1, region: heap", "bind: b9, region: heap", "no SVA bind named 'b9'"),
            ("bind: b1, region: heap", "bind: b1, region: stack", "no region named 'stack'"),
            ("bind: b1, region: heap", "region: heap", "missing 'iova'"),
            ("process: app, name: heap", "process: ghost, name: heap", "no process named 'ghost'"),
            ("page-faults: {at-least: 10}", "page-faultz: {at-least: 10}", "no counter named 'page-faultz'"),
            ("ats: true, pri: true, credits: 16}", "ats: false}", "has no ATS"),
            ("{at: 0, do: create-process, name: app}", "{at: 0, do: create-process, name: app}\n  - {at: 1, do: create-process, name: app}", "created twice"),
          ])
    func badInput(original: String, replacement: String, expected: String) throws {
        let yaml = svaScenario.replacingOccurrences(of: original, with: replacement)
        #expect(yaml != svaScenario)
        let e = try #require(loadError(yaml))
        #expect(e.message.contains(expected), "\(e)")
        #expect(e.line > 0)
    }

    @Test("a fault-handler workload needs a declared fault queue, and a domain's fault queue must exist")
    func faultQueueReferences() throws {
        let yaml = """
        name: uf
        units: [{name: dmar0}]
        devices: [{name: vf0, rid: "00:09.0", unit: dmar0, ats: true, pri: true}]
        workloads:
          - {name: h, type: fault-handler, queue: nope, iova: 0x1000, pages: 4}
        actions:
          - {at: 0, do: alloc-fault-queue, name: q}
        """
        #expect(try #require(loadError(yaml)).message.contains("no fault queue named 'nope'"))
        let yaml2 = yaml.replacingOccurrences(of: "queue: nope", with: "queue: q") + "\n  - {at: 0, do: alloc-domain, name: d, device: vf0, fault-queue: other}\n"
        #expect(try #require(loadError(yaml2)).message.contains("no fault queue named 'other'"))
    }
}

@Suite("IOPFRoundTrip: the bench's fault round trip runs the system's own path and every access completes", .serialized)
struct IOPFRoundTripTests {
    @Test("single pages and groups, one at a time or pipelined: every page request answered, every access completed, every fault timed")
    func roundTrips() throws {
        let rt = try IOPFRoundTrip(memorySize: 256 << 20)
        for (groups, size, outstanding) in [(200, 1, 1), (300, 1, 16), (40, 32, 8), (4, 512, 2)] {
            let r = try rt.run(groups: groups, groupSize: size, outstanding: outstanding)
            #expect(r.errors == 0, "\(groups) groups of \(size)")
            #expect(r.faults == groups * size && r.groups == groups)
            #expect(r.p50Ns > 0 && r.p99Ns >= r.p50Ns)
            #expect(r.faultsPerSecond > 0)
        }
    }

    @Test("bad sizes are refused with an error, not a trap")
    func badSizes() throws {
        let rt = try IOPFRoundTrip(memorySize: 64 << 20)
        #expect(throws: IOPFRoundTrip.Failure.self) { try rt.run(groups: 0, groupSize: 1) }
        #expect(throws: IOPFRoundTrip.Failure.self) { try rt.run(groups: 10, groupSize: 600) }
        #expect(throws: IOPFRoundTrip.Failure.self) { try rt.run(groups: 10, groupSize: 32, outstanding: 0) }
    }
}

@Suite("DeviceReset: the reset action resets the function's ATS and PRI state as hardware does")
struct DeviceResetTests {
    @Test("a reset under SVA traffic empties the device TLB, counts the reset, and traffic after it still completes cleanly")
    func resetRestoresEndpoint() throws {
        let base = try #require(BuiltinScenarios.text(named: "sva-faults"))
        let yaml = base.replacingOccurrences(of: "  - {at: 150000, do: munmap, region: stack}",
                                             with: "  - {at: 100000, do: reset, device: acc0, duration-ns: 5000}\n  - {at: 150000, do: munmap, region: stack}")
        #expect(yaml != base)
        let s = try ScenarioLoader.load(yaml: yaml, file: "reset.yaml")
        let o = try runScenario(s)
        #expect(o.result.violationCount == 0, "\(o.result.violations)")
        #expect(o.result.pageFaultCounter("device-resets") == 1)
        let note = try #require(o.result.log.first { $0.text.contains("function reset of acc0") })
        // "device TLB N → 0 entries": it held translations and holds none after the reset.
        let counts = note.text.components(separatedBy: "device TLB ")[1].components(separatedBy: " entries")[0]
        let parts = counts.components(separatedBy: " → ")
        #expect(Int(parts[0]) ?? 0 > 0, "\(note.text)")
        #expect(parts[1] == "0", "\(note.text)")
        let after = o.result.log.filter { $0.time > note.time }
        #expect(!after.isEmpty)
        #expect(o.result.pageFaultCounter("ats-completed") > 0)
        #expect(o.expectationFailures.isEmpty, "\(o.expectationFailures)")
    }
}
