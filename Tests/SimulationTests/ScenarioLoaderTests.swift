import Testing
import Foundation
@testable import Simulation

/// A small valid scenario the error tests start from.
let smallScenario = """
name: small
machine: {policy: strict, yield: {probability: 0.3, max-advance-ns: 1000}}
units:
  - {name: dmar0}
devices:
  - {name: nic0, rid: "00:02.0", unit: dmar0}
  - {name: vf0, rid: "00:03.0", unit: dmar0}
buffers:
  - {name: rx, domain: nic0, iova: 0x100000, count: 4}
  - {name: ubuf, domain: U, iova: 0x200000, count: 2}
workloads:
  - {name: rx-dma, type: dma, device: nic0, buffers: rx, interval-ns: 300, stop: 30000}
  - {name: u-dma, type: dma, device: vf0, buffers: ubuf, interval-ns: 300, start: 1000, stop: 30000}
actions:
  - {at: 0, do: map, buffers: rx}
  - {at: 0, do: claim-owner, device: vf0}
  - {at: 0, do: alloc-domain, name: U, device: vf0}
  - {at: 0, do: map, buffers: ubuf}
  - {at: 0, do: attach, domain: U, device: vf0}
  - {at: 20000, do: detach, domain: U, device: vf0}
end-ns: 40000
expect:
  violations: 0
  frames-left: 0
"""

private func loadError(_ yaml: String) -> ScenarioError? {
    do { _ = try ScenarioLoader.load(yaml: yaml, file: "bad.yaml"); return nil } catch { return error }
}

@Suite("ScenarioFiles: scenario YAML is checked before anything runs; errors name file, line and field")
struct ScenarioLoaderTests {
    @Test("every built-in scenario loads, the tour first")
    func builtinsLoad() throws {
        let names = BuiltinScenarios.names
        #expect(names.first == "tour")
        #expect(Set(names).isSuperset(of: ["tour", "did-reuse", "table-churn", "replace-storm", "pasid-detach"]))
        for n in names {
            let s = try BuiltinScenarios.load(n)
            #expect(s.name == n)
            #expect(!s.devices.isEmpty && !s.units.isEmpty)
        }
    }

    @Test("a valid file resolves names to indices and sorts actions by time")
    func validFile() throws {
        let s = try ScenarioLoader.load(yaml: smallScenario, file: "small.yaml")
        #expect(s.devices.map(\.description.name) == ["nic0", "vf0"])
        #expect(s.buffers[1].domain == "U")
        #expect(s.actions.map(\.at) == s.actions.map(\.at).sorted())
        #expect(s.endNs == 40000)
        #expect(s.machine.yield.probability == 0.3)
    }

    @Test("malformed YAML is a syntax error with its line")
    func syntax() {
        let e = loadError("name: x\nunits:\n  - {name: dmar0\ndevices: []\n")
        #expect(e != nil)
        #expect(e?.file == "bad.yaml")
        #expect((e?.line ?? 0) >= 3)
        #expect(e?.message.contains("YAML syntax") == true)
    }

    @Test("an unknown key is named with its line and the keys that are allowed")
    func unknownKey() throws {
        let yaml = smallScenario.replacingOccurrences(of: "{name: vf0, rid: \"00:03.0\", unit: dmar0}",
                                                      with: "{name: vf0, rid: \"00:03.0\", unit: dmar0, colour: blue}")
        let e = try #require(loadError(yaml))
        #expect(e.line == 7)
        #expect(e.field == "devices[1].colour")
        #expect(e.message.contains("unknown key 'colour'"))
        #expect(e.message.contains("rid"))
        #expect(e.description.hasPrefix("bad.yaml:7:"))
    }

    @Test("out-of-range values are refused with what was expected",
          arguments: [("interval-ns: 300, stop: 30000}", "interval-ns: 0, stop: 30000}", "expected a value in"),
                      ("probability: 0.3", "probability: 1.5", "expected a number in"),
                      ("rid: \"00:02.0\"", "rid: \"00:40.0\"", "requester ID"),
                      ("policy: strict", "policy: sometimes", "expected one of"),
                      ("count: 4}", "count: many}", "expected an integer")])
    func outOfRange(original: String, replacement: String, expected: String) throws {
        let yaml = smallScenario.replacingOccurrences(of: original, with: replacement)
        #expect(yaml != smallScenario)
        let e = try #require(loadError(yaml))
        #expect(e.message.contains(expected), "\(e)")
        #expect(e.line > 0)
    }

    @Test("a DMA ring buffer reaching past its 4 KiB frame is refused; one that ends at the frame's end loads",
          arguments: [("offset: 3000", true), ("size: 8192", true), ("size: 1096, offset: 3000", false)])
    func ringBufferStaysInItsFrame(fields: String, refused: Bool) throws {
        let yaml = smallScenario.replacingOccurrences(
            of: "workloads:\n",
            with: "workloads:\n  - {name: ring, type: dma-ring, device: nic0, \(fields), stop: 30000}\n")
        #expect(yaml != smallScenario)
        let e = loadError(yaml)
        if refused {
            let e = try #require(e)
            #expect(e.message.contains("one 4 KiB frame") || e.message.contains("expected a value in"), "\(e)")
        } else {
            #expect(e == nil, "\(String(describing: e))")
        }
    }

    @Test("multi-page ring buffers: pages with size or offset, and contiguous one-page buffers, are refused; scatter and contiguous multi-page rings load",
          arguments: [("pages: 4, size: 1024", "size and offset are for one-page buffers"),
                      ("pages: 4, offset: 128", "size and offset are for one-page buffers"),
                      ("contiguous: true", "contiguous is for buffers of more than one page"),
                      ("pages: 8", ""), ("pages: 512, contiguous: true, shared: true", "")])
    func multiPageRings(fields: String, error: String) throws {
        let yaml = smallScenario.replacingOccurrences(
            of: "workloads:\n",
            with: "workloads:\n  - {name: ring, type: dma-ring, device: nic0, \(fields), stop: 30000}\n")
        let e = loadError(yaml)
        if error.isEmpty {
            #expect(e == nil, "\(String(describing: e))")
        } else {
            #expect(e?.message.contains(error) == true, "\(String(describing: e))")
        }
    }

    @Test("dma-mask-bits takes 12 to 64 bits")
    func dmaMaskBits() throws {
        func with(_ bits: String) -> String {
            smallScenario.replacingOccurrences(of: "{name: nic0, rid: \"00:02.0\", unit: dmar0}", with: "{name: nic0, rid: \"00:02.0\", unit: dmar0, dma-mask-bits: \(bits)}")
        }
        #expect(with("32") != smallScenario)
        let s = try ScenarioLoader.load(yaml: with("32"), file: "m.yaml")
        #expect(s.devices[0].dmaMaskBits == 32)
        #expect(loadError(with("11")) != nil)
        #expect(loadError(with("65")) != nil)
    }

    @Test("references to devices, domains, buffers or workloads that do not exist are errors",
          arguments: [("device: nic0, buffers: rx", "device: nic9, buffers: rx", "no device named 'nic9'"),
                      ("domain: U, device: vf0}\n  - {at: 20000", "domain: V, device: vf0}\n  - {at: 20000", "no user domain named 'V'"),
                      ("buffers: ubuf, interval", "buffers: nothing, interval", "no buffer set named 'nothing'"),
                      ("unit: dmar0}\n  - {name: vf0", "unit: dmar7}\n  - {name: vf0", "no unit named 'dmar7'")])
    func badReferences(original: String, replacement: String, expected: String) throws {
        let yaml = smallScenario.replacingOccurrences(of: original, with: replacement)
        #expect(yaml != smallScenario)
        let e = try #require(loadError(yaml))
        #expect(e.message.contains(expected), "\(e)")
    }

    @Test("duplicate names and requester IDs are refused")
    func duplicates() throws {
        let dupName = smallScenario.replacingOccurrences(of: "{name: vf0, rid: \"00:03.0\"", with: "{name: nic0, rid: \"00:03.0\"")
        #expect(try #require(loadError(dupName)).message.contains("declared twice"))
        let dupRID = smallScenario.replacingOccurrences(of: "rid: \"00:03.0\"", with: "rid: \"00:02.0\"")
        #expect(try #require(loadError(dupRID)).message.contains("already nic0's"))
    }

    @Test("a missing required key and an empty file are errors")
    func missing() throws {
        #expect(try #require(loadError("units: [{name: dmar0}]\ndevices: []\n")).message.contains("missing 'name'"))
        #expect(loadError("") != nil)
        #expect(try #require(loadError("- just\n- a list\n")).message.contains("expected a mapping"))
    }

    @Test("a file path that does not exist is an error naming the built-in scenarios")
    func missingFile() {
        #expect(throws: ScenarioError.self) { try BuiltinScenarios.load("/nonexistent/scenario.yaml") }
    }
}
