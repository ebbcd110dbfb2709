import Testing
import Foundation
import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD
@testable import Simulation

/// The guest role: a guest's own first stage over the VMM's nest parent, checked by the
/// oracle against the tables in guest memory.
@Suite("GuestRole: guest page tables, guest remaps with forwarded invalidations, and the oracle's nested composition")
struct GuestRoleTests {
    /// vmm-nested with every guest unmap's invalidation skipped (a guest bug).
    static func withoutGuestInvalidations() throws -> Scenario {
        let text = try #require(BuiltinScenarios.text(named: "vmm-nested"))
        var lines = text.components(separatedBy: "\n")
        var edited = 0
        for i in lines.indices where lines[i].contains("do: guest-unmap") {
            lines[i] = lines[i].replacingOccurrences(of: "}", with: ", invalidate: false}")
            edited += 1
        }
        #expect(edited >= 2)
        return try ScenarioLoader.load(yaml: lines.joined(separator: "\n"), file: "vmm-nested-no-invalidate.yaml")
    }

    @Test("a guest that unmaps without invalidating is caught as a stale translation within seeds 1...5")
    func guestSkippingInvalidationIsStale() throws {
        let broken = Explorer(scenario: try Self.withoutGuestInvalidations()).run(seeds: 1...5, jobs: 2)
        #expect(broken.findings.contains { $0.invariant == "stale-translation" }, "\(broken.findings)")
    }

    @Test("vmm-nested forwards every guest unmap as HWPT_INVALIDATE and the unit sees the nested DID's IOTLB descriptors")
    func forwardedInvalidations() throws {
        let o = try ScenarioRunner(scenario: BuiltinScenarios.load("vmm-nested"), options: .init(seed: 1)).run()
        #expect(o.result.violationCount == 0, "\(o.result.violations)")
        #expect(o.expectationFailures.isEmpty, "\(o.expectationFailures)")
        let iotlb = o.result.invalidationsByType.first { $0.0 == "iotlb" }?.1 ?? 0
        #expect(iotlb >= 4, "type-2 descriptors for the guest's invalidations and the host's parent unmap: \(o.result.invalidationsByType)")
        #expect(o.result.devices.first { $0.name == "vf0" }.map { $0.requests > 100 } == true)
    }

    @Test("guest-table, guest-map and guest-unmap take their fields and refuse what cannot hold")
    func loaderRules() throws {
        let base = try #require(BuiltinScenarios.text(named: "vmm-nested"))
        func load(_ from: String, _ to: String) -> ScenarioError? {
            let yaml = base.replacingOccurrences(of: from, with: to)
            #expect(yaml != base, "the edit applies: \(from)")
            do { _ = try ScenarioLoader.load(yaml: yaml, file: "g.yaml"); return nil } catch { return error }
        }
        #expect(load("gpa: 0, table-pages: 16}", "gpa: 0x123, table-pages: 16}")?.message.contains("4 KiB") == true)
        #expect(load("gpa: 0, table-pages: 16}", "gpa: 0, table-pages: 16, levels: 3}") != nil)
        #expect(load("do: guest-map, table: gt, gva: 0x10000000, gpa: 0x40000", "do: guest-map, table: nope, gva: 0x10000000, gpa: 0x40000")?
            .message.contains("no guest table named 'nope'") == true)
        #expect(load("parent: s2, device: vf0, guest-table: gt, pasid: true}\n  - {at: 0, do: hwpt-alloc, name: s1-pasid",
                     "parent: s2, device: vf0, pasid: true}\n  - {at: 0, do: hwpt-alloc, name: s1-pasid")?.message.contains("guest table") == true)
    }

    @Test("paging-stage and paging-levels select the domains' stage and levels; linux is the default")
    func pagingKeys() throws {
        let text = try #require(BuiltinScenarios.text(named: "did-reuse"))
        let second = text.replacingOccurrences(of: "machine:\n", with: "machine:\n  paging-stage: second\n  paging-levels: 5\n")
        #expect(second != text)
        let s = try ScenarioLoader.load(yaml: second, file: "x.yaml")
        #expect(s.machine.pagingStage == .second && s.machine.pagingLevels == 5)
        #expect(try BuiltinScenarios.load("did-reuse").machine.pagingStage == nil)
        let linux = try ScenarioLoader.load(yaml: text.replacingOccurrences(of: "machine:\n", with: "machine:\n  paging-stage: linux\n"), file: "y.yaml")
        #expect(linux.machine.pagingStage == nil)
        #expect(throws: ScenarioError.self) {
            try ScenarioLoader.load(yaml: text.replacingOccurrences(of: "machine:\n", with: "machine:\n  paging-stage: third\n"), file: "z.yaml")
        }
        let r = try ScenarioRunner(scenario: s, options: .init(seed: 1)).run().result
        #expect(r.violationCount == 0, "\(r.violations)")
    }
}
