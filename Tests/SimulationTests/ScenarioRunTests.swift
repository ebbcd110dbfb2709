import Testing
import Foundation
import Platform
import Kernel
@testable import Simulation

func runScenario(_ s: Scenario, seed: UInt64 = 1, configure: (inout ScenarioRunner.Options) -> Void = { _ in }) throws -> ScenarioOutcome {
    var o = ScenarioRunner.Options(seed: seed)
    configure(&o)
    return try ScenarioRunner(scenario: s, options: o).run()
}

@Suite("ScenarioRuns: scenarios run their actions and workloads, tear down cleanly and check expectations")
struct ScenarioRunTests {
    @Test("every built-in scenario runs without violations, meets its expectations and leaves nothing", arguments: ["did-reuse", "replace-storm", "pasid-detach", "table-churn", "dma32", "ats-churn", "vmm-replace", "vmm-faults", "vmm-dirty", "vmm-nested", "live-migration"])
    func builtinClean(name: String) throws {
        let s = try BuiltinScenarios.load(name)
        for seed: UInt64 in 1...2 {
            let o = try runScenario(s, seed: seed)
            #expect(o.result.violationCount == 0, "\(o.result.violations)")
            #expect(o.expectationFailures.isEmpty, "\(o.expectationFailures)")
            #expect(o.result.framesLeft == 0)
            #expect(o.result.translations > 0, "the scenario's devices really did DMA")
        }
    }

    @Test("dma32 fills the 32-bit IOVA space: recycles need rollover flushes, and no IOVA lies beyond the mask (the oracle checks each)")
    func dma32Rollover() throws {
        let o = try runScenario(try BuiltinScenarios.load("dma32"))
        #expect(o.result.violationCount == 0, "\(o.result.violations)")
        #expect(o.result.dmaAPI.rolloverFlushes > 0, "the space was full enough that allocation had to flush the queue")
        #expect(o.expectationFailures.isEmpty, "\(o.expectationFailures)")
    }

    @Test("the small scenario maps, attaches, streams DMA and detaches: the user device faults only after detach")
    func smallRun() throws {
        let s = try ScenarioLoader.load(yaml: smallScenario, file: "small.yaml")
        let o = try runScenario(s)
        #expect(o.result.violationCount == 0, "\(o.result.violations)")
        let vf = try #require(o.result.devices.first { $0.name == "vf0" })
        #expect(vf.requests > 0)
        #expect(vf.faultedRequests > 0, "DMA after the detach at 20 µs is blocked")
        #expect(o.result.expectedFaults > 0, "and the oracle expected those faults")
        #expect(o.steps.isEmpty)
    }

    @Test("an unmet expectation is reported, not silently passed")
    func expectationReported() throws {
        let yaml = smallScenario.replacingOccurrences(of: "  frames-left: 0", with: "  frames-left: 0\n  faults:\n    - {device: nic0, at-least: 5}")
        let o = try runScenario(try ScenarioLoader.load(yaml: yaml, file: "x.yaml"))
        #expect(o.expectationFailures.contains { $0.contains("at least 5 fault(s) reported for nic0") }, "\(o.expectationFailures)")
    }

    @Test("a failing step stops the run with an error naming the step and its line")
    func stepFailure() throws {
        let yaml = smallScenario.replacingOccurrences(of: "  - {at: 20000, do: detach, domain: U, device: vf0}",
                                                      with: "  - {at: 20000, do: detach, domain: U, device: vf0}\n  - {at: 25000, do: detach, domain: U, device: vf0}")
        let s = try ScenarioLoader.load(yaml: yaml, file: "x.yaml")
        do {
            _ = try runScenario(s)
            Issue.record("a second detach must fail")
        } catch let f as ScenarioRunner.StepFailed {
            #expect(f.record.line == 21, "the second detach is on line 21 of the file")
            #expect(f.record.label.contains("detach U"))
            #expect(f.record.error?.contains("ENOENT") == true, "\(f)")
        }
    }

    @Test("a descriptor-fault action in the file makes the unit drop PASID-based IOTLB invalidations (the tour's domains are first stage), and the oracle sees the stale translation")
    func descriptorFaultAction() throws {
        let tour = try #require(BuiltinScenarios.text(named: "tour"))
        let yaml = tour.replacingOccurrences(of: "actions:\n", with: "actions:\n  - {at: 0, do: descriptor-fault, unit: dmar0, type: pasid-iotlb, drop: true}\n")
        let o = try runScenario(try ScenarioLoader.load(yaml: yaml, file: "tour-drop.yaml"))
        #expect(o.result.violationCount > 0)
        #expect(o.expectationFailures.contains { $0.contains("violation") })
    }

    @Test("a device reset blocks its DMA for the reset (faults the oracle expects) and puts the domain back")
    func reset() throws {
        let yaml = """
        name: reset
        machine: {policy: strict, yield: {probability: 0.3, max-advance-ns: 1000}}
        units: [{name: dmar0}]
        devices: [{name: nic0, rid: "00:02.0", unit: dmar0}]
        buffers: [{name: rx, domain: nic0, iova: 0x100000, count: 4}]
        workloads:
          - {name: rx-dma, type: dma, device: nic0, buffers: rx, interval-ns: 100, burst: 2, pattern: sequential, stop: 30000}
        actions:
          - {at: 0, do: map, buffers: rx}
          - {at: 10000, do: reset, device: nic0, duration-ns: 3000}
        end-ns: 40000
        """
        let o = try runScenario(try ScenarioLoader.load(yaml: yaml, file: "reset.yaml"))
        #expect(o.result.violationCount == 0, "\(o.result.violations)")
        let nic = try #require(o.result.devices.first)
        #expect(nic.faultedRequests > 0, "DMA during the reset window is blocked")
        #expect(nic.faultedRequests < nic.requests / 2, "and only then")
        #expect(o.result.log.contains { $0.text.contains("reset nic0: blocked for 3000 ns, back in domain") })
    }

    @Test("the same seed gives the same run; a trace does not change it")
    func deterministicWithTrace() throws {
        let s = try ScenarioLoader.load(yaml: smallScenario, file: "small.yaml")
        let a = try runScenario(s, seed: 9)
        let b = try runScenario(s, seed: 9) { $0.trace = true }
        #expect(a.result.translations == b.result.translations)
        #expect(a.result.eventsRun == b.result.eventsRun)
        #expect(a.result.virtualTimeNs == b.result.virtualTimeNs)
        #expect(a.result.log.map(\.text) == b.result.log.map(\.text))
        #expect(a.trace == nil)
        #expect((b.trace?.events.count ?? 0) > 0)
    }
}

/// Found by the scenario-yaml fuzz target: a second buffer set at the IOVAs of a mapped one
/// reached `iommu_map` over live translations, which the oracle reports as the caller's bug.
@Suite("BufferMaps: a buffer set mapped over IOVAs its domain already maps is EEXIST before anything is mapped")
struct BufferMapOverlapTests {
    @Test("map of a buffer set over a live IOVA range fails with EEXIST at its line, maps nothing, and the run has no violation")
    func mapOverLiveRangeIsEEXIST() throws {
        let yaml = """
            name: overlap
            units: [{name: smmu0, type: smmuv3}]
            devices: [{name: gpu0, rid: "00:03.0", unit: smmu0}]
            buffers:
              - {name: a, domain: A, iova: 0x10000000, count: 4}
              - {name: b, domain: A, iova: 0x10002000, count: 4}
            workloads:
              - {name: gpu-dma, type: dma, device: gpu0, buffers: a, interval-ns: 200, burst: 2, start: 1000, stop: 20000}
            actions:
              - {at: 0, do: claim-owner, device: gpu0}
              - {at: 0, do: alloc-domain, name: A, device: gpu0}
              - {at: 0, do: map, buffers: a}
              - {at: 0, do: attach, domain: A, device: gpu0}
              - {at: 5000, do: map, buffers: b}
            end-ns: 30000

            """
        let scenario = try ScenarioLoader.load(yaml: yaml, file: "overlap.yaml")
        try expectStepRefused(scenario, line: 14, error: "0x10002000 of domain A is already mapped")
    }
}

@Suite("ChromeTrace: --trace writes trace-event JSON with device, unit and software tracks on virtual time")
struct ChromeTraceTests {
    @Test("the trace parses as JSON with named tracks, DMA instants, software spans and counters")
    func validJSON() throws {
        let s = try ScenarioLoader.load(yaml: smallScenario, file: "small.yaml")
        let o = try runScenario(s) { $0.trace = true }
        let buffer = try #require(o.trace)
        let data = ChromeTrace.render(buffer, scenario: s.name, seed: 1, unitNames: ["dmar0"])
        let root = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let events = try #require(root["traceEvents"] as? [[String: Any]])
        let phases = Set(events.compactMap { $0["ph"] as? String })
        #expect(phases.isSuperset(of: ["M", "i", "X", "C"]), "\(phases)")
        let threadNames = events.filter { $0["name"] as? String == "thread_name" }.compactMap { ($0["args"] as? [String: Any])?["name"] as? String }
        #expect(Set(threadNames).isSuperset(of: ["nic0", "vf0", "dmar0", "software"]))
        let spans = events.filter { $0["ph"] as? String == "X" }.compactMap { $0["name"] as? String }
        #expect(spans.contains("attach U to vf0's group"))
        #expect(events.contains { $0["name"] as? String == "DMA fault" }, "vf0's DMA after detach faults")
        for e in events where e["ph"] as? String != "M" {
            let ts = try #require(e["ts"] as? Double)
            #expect(ts >= 0 && ts <= Double(o.result.virtualTimeNs) / 1000 + 1)
        }
    }
}
