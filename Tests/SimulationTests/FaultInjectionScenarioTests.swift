import Testing
import Platform
import Kernel
@testable import Simulation

/// Two inject windows on one point: each `nth` is the Nth hit after its own action.
private let twoWindows = """
name: windows
units: [{name: dmar0}]
devices: [{name: nic0, rid: "00:02.0", unit: dmar0}]
actions:
  - {at: 0, do: alloc-domain, name: A, device: nic0}
  - {at: 1000, do: inject, point: kernel.domain-alloc, nth: 1}
  - {at: 2000, do: alloc-domain, name: B, device: nic0}
  - {at: 3000, do: alloc-domain, name: C, device: nic0}
  - {at: 4000, do: inject, point: kernel.domain-alloc, nth: 2}
  - {at: 5000, do: alloc-domain, name: D, device: nic0}
  - {at: 6000, do: alloc-domain, name: E, device: nic0}
end-ns: 10000
"""

private func loadError(_ yaml: String) -> ScenarioError? {
    do { _ = try ScenarioLoader.load(yaml: yaml, file: "bad.yaml"); return nil } catch { return error }
}

@Suite("FaultInjectionScenarios: inject actions name real points and count their nth from the action")
struct FaultInjectionScenarioTests {
    @Test("an inject action naming a point the code does not have is a load error at the point, listing the known points")
    func unknownPointIsALoadError() throws {
        let yaml = twoWindows.replacingOccurrences(of: "point: kernel.domain-alloc, nth: 1", with: "point: kernel.domain-aloc, nth: 1")
        #expect(yaml != twoWindows)
        let e = try #require(loadError(yaml))
        #expect(e.line == 6 && e.column > 1, "\(e)")
        #expect(e.field == "actions[1].point")
        #expect(e.message.contains("no fault point named 'kernel.domain-aloc'"), "\(e)")
        for p in FaultPoint.all { #expect(e.message.contains(p.name), "the error lists \(p.name)") }
    }

    @Test("every point FaultPoint.all lists loads in an inject action")
    func everyKnownPointLoads() throws {
        for p in FaultPoint.all {
            let yaml = twoWindows.replacingOccurrences(of: "point: kernel.domain-alloc, nth: 1", with: "point: \(p.name), nth: 1")
            #expect(loadError(yaml) == nil, "\(p.name)")
        }
    }

    @Test("inject takes exactly one of nth, probability and off: true",
          arguments: ["nth: 1, probability: 0.5", "nth: 1, off: true", "off: false", "point: frame.alloc"])
    func injectTakesOneMode(fields: String) throws {
        let yaml = twoWindows.replacingOccurrences(of: "{at: 1000, do: inject, point: kernel.domain-alloc, nth: 1}",
                                                   with: "{at: 1000, do: inject, \(fields)}")
        let e = try #require(loadError(yaml))
        #expect(e.line == 6, "\(e)")
        #expect(e.message.contains("inject takes one of") || e.message.contains("off: true"), "\(e)")
    }

    @Test("a second nth window fires: nth counts the hits after its own inject action, not since the first")
    func secondWindowFires() throws {
        let s = try ScenarioLoader.load(yaml: twoWindows, file: "windows.yaml")
        let o = try runScenario(s) { $0.tolerant = true }
        let failed = o.steps.filter { $0.error != nil }
        #expect(failed.map(\.label) == ["alloc domain B", "alloc domain E"], "\(o.steps)")
        #expect(failed.allSatisfy { $0.injected && $0.error?.hasPrefix("ENOMEM") == true }, "\(failed)")
        #expect(o.injected.map(\.0) == ["kernel.domain-alloc", "kernel.domain-alloc"])
    }
}
