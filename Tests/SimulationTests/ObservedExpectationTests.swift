import Testing
import Platform
import Kernel
@testable import Simulation

/// The small scenario with `extra` added to its expect block.
private func smallExpecting(_ extra: String) throws -> Scenario {
    try ScenarioLoader.load(yaml: smallScenario + "\n" + extra, file: "small.yaml")
}

private func loadError(_ yaml: String) -> ScenarioError? {
    do { _ = try ScenarioLoader.load(yaml: yaml, file: "bad.yaml"); return nil } catch { return error }
}

@Suite("ObservedExpectations: counters per device, unit and fault queue, the DID a domain got and the PASID a name got")
struct ObservedExpectationTests {
    @Test("a run reports each device's, unit's and fault queue's counters under the names expectations use")
    func countersAreReported() throws {
        let o = try runScenario(try BuiltinScenarios.load("user-faults"))
        let r = o.result
        #expect(r.deviceCounters.map(\.owner) == ["vf0"])
        #expect(r.unitCounters.map(\.owner) == ["dmar0"])
        #expect(r.queueCounters.map(\.owner) == ["faults"])
        for g in r.deviceCounters { #expect(g.counters.map(\.name) == RunResult.deviceCounterNames) }
        for g in r.unitCounters { #expect(g.counters.map(\.name) == RunResult.unitCounterNames) }
        for g in r.queueCounters { #expect(g.counters.map(\.name) == RunResult.queueCounterNames) }
        let vf0 = try #require(r.deviceCounters.first)
        #expect(vf0.value("ats-accesses") == r.pageFaultCounter("ats-accesses"), "one device: its figures are the run's")
        #expect(vf0.value("requests") == r.devices.first?.requests)
        #expect(r.unitCounters.first?.value("translations") == r.translations)
        #expect(r.unitCounters.first?.value("prq-queued") == r.pageFaultCounter("prq-queued"))
        let q = try #require(r.queueCounters.first)
        #expect((q.value("groups-delivered") ?? 0) > 0)
        #expect(q.value("groups-served")! + q.value("groups-refused")! <= q.value("groups-delivered")!)
        #expect(q.value("auto-responses") == r.pageFaultCounter("user-auto-responses"))
    }

    @Test("per-device, per-unit and per-queue bounds that hold pass")
    func boundsThatHold() throws {
        let s = try smallExpecting("""
          device-counters:
            nic0: {requests: {at-least: 10}, faulted-requests: 0}
            vf0: {faulted-requests: {at-least: 1}, faults-reported: {at-least: 1, at-most: 1000}}
          unit-counters:
            dmar0: {translations: {at-least: 1}, iotlb-misses: {at-least: 1}}
        """)
        #expect(s.expect.scopedCounters.count == 6)
        let o = try runScenario(s)
        #expect(o.expectationFailures.isEmpty, "\(o.expectationFailures)")
    }

    @Test("a bound that does not hold names the owner, the counter and the value found")
    func boundsThatFail() throws {
        let o = try runScenario(try smallExpecting("""
          device-counters:
            nic0: {requests: {at-most: 1}}
            vf0: {faulted-requests: 0}
          unit-counters:
            dmar0: {translation-faults: {at-least: 100000}}
        """))
        let nic0 = try #require(o.result.deviceCounters.first { $0.owner == "nic0" }?.value("requests"))
        let vf0 = try #require(o.result.deviceCounters.first { $0.owner == "vf0" }?.value("faulted-requests"))
        let faults = try #require(o.result.unitCounters.first?.value("translation-faults"))
        #expect(o.expectationFailures == ["expected device nic0's requests at most 1, found \(nic0)",
                                          "expected device vf0's faulted-requests to be 0, found \(vf0)",
                                          "expected unit dmar0's translation-faults at least 100000, found \(faults)"],
                "\(o.expectationFailures)")
    }

    @Test("an unknown device, unit, queue or counter name is a load error at its line listing the known ones",
          arguments: [("  device-counters: {nic9: {requests: 1}}", "no device named 'nic9'; devices: nic0, vf0"),
                      ("  device-counters: {nic0: {request: 1}}", "no device counter named 'request'; counters: requests,"),
                      ("  unit-counters: {dmar1: {translations: 1}}", "no unit named 'dmar1'; units: dmar0"),
                      ("  unit-counters: {dmar0: {requests: 1}}", "no unit counter named 'requests'"),
                      ("  queue-counters: {q: {groups-delivered: 1}}", "no fault queue named 'q'"),
                      ("  counters: {page-faults: {at-least: 5, at-most: 2}}", "out of range")])
    func unknownNames(line: String, message: String) throws {
        let e = try #require(loadError(smallScenario + "\n" + line))
        #expect(e.line == 25, "\(e)")
        #expect(e.message.contains(message), "\(e)")
    }

    @Test("domains: the DID a domain got first is checked, a device name meaning its default domain")
    func domainIDs() throws {
        let met = try runScenario(try smallExpecting("  domains: {U: {did: 3}, nic0: {did: 2}, vf0: {did: 3, unit: dmar0}}"))
        #expect(met.expectationFailures.isEmpty, "\(met.expectationFailures)")
        #expect(met.result.domainIDs.contains(.init(domain: "U", unit: "dmar0", dids: [3])), "\(met.result.domainIDs)")
        let unmet = try runScenario(try smallExpecting("  domains: {U: {did: 7}}"))
        #expect(unmet.expectationFailures == ["expected domain U to get DID 7 on dmar0, found 3"], "\(unmet.expectationFailures)")
    }

    @Test("domains refuses an unknown domain or unit and the reserved DIDs 0 and 1",
          arguments: [("  domains: {W: {did: 3}}", "no domain named 'W'"), ("  domains: {U: {did: 1}}", "out of range"),
                      ("  domains: {U: {did: 3, unit: dmar5}}", "no unit named 'dmar5'"), ("  domains: {U: {dids: 3}}", "missing 'did'")])
    func domainIDErrors(line: String, message: String) throws {
        let e = try #require(loadError(smallScenario + "\n" + line))
        #expect(e.message.contains(message), "\(e)")
        #expect(e.line == 25)
    }

    @Test("pasids: the value an alloc-pasid or sva-bind name got is checked")
    func pasidValues() throws {
        let sva = try ScenarioLoader.load(yaml: svaScenario + "\n  pasids: {b1: 1}", file: "sva.yaml")
        let o = try runScenario(sva)
        #expect(o.result.pasids.map(\.name) == ["b1"])
        #expect(o.expectationFailures.isEmpty, "\(o.expectationFailures)")
        let wrong = try runScenario(try ScenarioLoader.load(yaml: svaScenario + "\n  pasids: {b1: 9}", file: "sva.yaml"))
        #expect(wrong.expectationFailures == ["expected b1 to get PASID 9, found 1"], "\(wrong.expectationFailures)")
        let e = try #require(loadError(svaScenario + "\n  pasids: {b2: 1}"))
        #expect(e.message.contains("no PASID or SVA bind named 'b2'") && e.message.contains("known: b1"), "\(e)")
    }
}
