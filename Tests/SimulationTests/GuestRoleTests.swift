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

    /// Found by the scenario-yaml fuzz target: a guest-map over pages the guest had mapped
    /// rewrote present leaves without an invalidation, and the unit rightly kept using the
    /// cached composition, which the oracle then reported as `nested-composition`.
    @Test("guest-map over a page the guest already mapped is EEXIST, writes nothing, and the device keeps the old translation")
    func guestMapOverMappedPageIsEEXIST() throws {
        let yaml = """
            name: guest-remap
            units: [{name: dmar0}]
            devices: [{name: vf0, rid: "00:04.0", unit: dmar0}]
            workloads:
              - {name: rid-traffic, type: dma, device: vf0, iova: 0x10000000, pages: 8, interval-ns: 300, burst: 2,
                 direction: both, start: 3000, stop: 30000}
            actions:
              - {at: 0, do: create-process, name: qemu}
              - {at: 0, do: mmap, name: guest-ram, process: qemu, pages: 64}
              - {at: 0, do: iommufd-open, name: iommufd, process: qemu}
              - {at: 0, do: iommufd-bind, iommufd: iommufd, device: vf0}
              - {at: 0, do: ioas-alloc, name: ram, iommufd: iommufd}
              - {at: 0, do: ioas-map, ioas: ram, region: guest-ram, iova: 0}
              - {at: 0, do: hwpt-alloc, name: s2, ioas: ram, device: vf0, nest-parent: true}
              - {at: 0, do: guest-table, name: gt, region: guest-ram, gpa: 0, table-pages: 8}
              - {at: 0, do: hwpt-alloc, name: s1, parent: s2, device: vf0, guest-table: gt}
              - {at: 0, do: guest-map, table: gt, gva: 0x10000000, gpa: 0x10000, pages: 8}
              - {at: 1000, do: iommufd-attach, device: vf0, to: s1}
              - {at: 10500, do: guest-map, table: gt, gva: 0x10004000, gpa: 0x20000, pages: 8}
              - {at: 35000, do: iommufd-detach, device: vf0}
            end-ns: 40000

            """
        let scenario = try ScenarioLoader.load(yaml: yaml, file: "guest-remap.yaml")
        do {
            _ = try ScenarioRunner(scenario: scenario, options: .init(seed: 1)).run()
            Issue.record("the remap over mapped pages succeeded")
        } catch let e as ScenarioRunner.StepFailed {
            #expect(e.record.line == 19, "\(e)")
            #expect(e.record.error?.contains("0x10004000 is already mapped") == true, "\(e)")
            #expect(e.record.notRolledBack.isEmpty, "\(e)")
        }
        var options = ScenarioRunner.Options(seed: 1)
        options.tolerant = true
        let o = try ScenarioRunner(scenario: scenario, options: options).run()
        #expect(o.result.violationCount == 0, "\(o.result.violations.prefix(3))")
        #expect(o.result.devices.first { $0.name == "vf0" }.map { $0.requests > 20 } == true)
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
