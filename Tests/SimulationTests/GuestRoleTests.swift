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

    /// A guest with one nested HWPT over its table `gt` (GPA 0, 8 table pages), GVAs
    /// 0x10000000-0x10007FFF mapped to GPA 0x10000 and used by vf0 from 3 µs to 30 µs, and
    /// `extra` action lines from line 20 on. With `parentWrites`, vf1 is attached to the nest
    /// parent and writes its first `parentWrites` pages (IOVA = GPA 0 on) from 8 µs.
    static func guestRig(_ extra: String, parentWrites: Int? = nil) -> String {
        let vf1 = parentWrites.map { pages in (
            device: "\n  - {name: vf1, rid: \"00:05.0\", unit: dmar0}",
            workload: "\n  - {name: parent-writes, type: dma, device: vf1, iova: 0, pages: \(pages), interval-ns: 400, burst: 1, direction: write, start: 8000, stop: 30000}",
            bind: "\n  - {at: 0, do: iommufd-bind, iommufd: iommufd, device: vf1}",
            attach: "\n  - {at: 1000, do: iommufd-attach, device: vf1, to: s2}",
            detach: "\n  - {at: 35000, do: iommufd-detach, device: vf1}") }
        return """
            name: guest-rig
            units: [{name: dmar0}]
            devices:
              - {name: vf0, rid: "00:04.0", unit: dmar0}\(vf1?.device ?? "")
            workloads:
              - {name: rid-traffic, type: dma, device: vf0, iova: 0x10000000, pages: 8, interval-ns: 300, burst: 2,
                 direction: both, start: 3000, stop: 30000}\(vf1?.workload ?? "")
            actions:
              - {at: 0, do: create-process, name: qemu}
              - {at: 0, do: mmap, name: guest-ram, process: qemu, pages: 64}
              - {at: 0, do: iommufd-open, name: iommufd, process: qemu}
              - {at: 0, do: iommufd-bind, iommufd: iommufd, device: vf0}\(vf1?.bind ?? "")
              - {at: 0, do: ioas-alloc, name: ram, iommufd: iommufd}
              - {at: 0, do: ioas-map, ioas: ram, region: guest-ram, iova: 0}
              - {at: 0, do: hwpt-alloc, name: s2, ioas: ram, device: vf0, nest-parent: true}
              - {at: 0, do: guest-table, name: gt, region: guest-ram, gpa: 0, table-pages: 8}
              - {at: 0, do: hwpt-alloc, name: s1, parent: s2, device: vf0, guest-table: gt}
              - {at: 0, do: guest-map, table: gt, gva: 0x10000000, gpa: 0x10000, pages: 8}
              - {at: 1000, do: iommufd-attach, device: vf0, to: s1}\(vf1?.attach ?? "")
            \(extra)
              - {at: 35000, do: iommufd-detach, device: vf0}\(vf1?.detach ?? "")
            end-ns: 40000

            """
    }

    /// Runs `guestRig(extra)`: its step at `line` must be refused with `error` and roll back,
    /// and the tolerant run must stay quiet while vf0 keeps translating through the table.
    func expectGuestStepRefused(_ extra: String, line: Int, error: String,
                                sourceLocation: SourceLocation = #_sourceLocation) throws {
        let scenario = try ScenarioLoader.load(yaml: Self.guestRig(extra), file: "guest-rig.yaml")
        let o = try expectStepRefused(scenario, line: line, error: error, sourceLocation: sourceLocation)
        #expect(o.result.devices.first { $0.name == "vf0" }.map { $0.requests > 20 } == true, sourceLocation: sourceLocation)
    }

    /// Found by the scenario-yaml fuzz target: a guest-map over pages the guest had mapped
    /// rewrote present leaves without an invalidation, and the unit rightly kept using the
    /// cached composition, which the oracle then reported as `nested-composition`.
    @Test("guest-map over a page the guest already mapped is EEXIST, writes nothing, and the device keeps the old translation")
    func guestMapOverMappedPageIsEEXIST() throws {
        try expectGuestStepRefused("  - {at: 10500, do: guest-map, table: gt, gva: 0x10004000, gpa: 0x20000, pages: 8}",
                                   line: 20, error: "0x10004000 is already mapped")
    }

    /// Found by the scenario-yaml fuzz target: the guest mapped GVAs onto its own table pages
    /// and its device's writes rewrote the tables behind the unit's cached translations, which
    /// the oracle (walking the tables in memory) reported as `nested-composition`.
    @Test("guest-map onto the guest table's own pages is EINVAL and writes nothing; the tables stay the device's to use, not to write")
    func guestMapOfTablePagesIsEINVAL() throws {
        try expectGuestStepRefused("""
              - {at: 10000, do: guest-unmap, table: gt, gva: 0x10000000, pages: 4}
              - {at: 11000, do: guest-map, table: gt, gva: 0x10000000, gpa: 0, pages: 4}
            """, line: 21, error: "reaches the guest table's own pages")
    }

    @Test("a second guest-table on a region that holds one is EBUSY and zeroes nothing under the first one's translations")
    func secondGuestTableOnRegionIsEBUSY() throws {
        try expectGuestStepRefused("  - {at: 10000, do: guest-table, name: gt2, region: guest-ram, gpa: 0, table-pages: 4}",
                                   line: 20, error: "region guest-ram already holds guest table gt")
    }

    /// vf1, attached to the nest parent, writes GPA 0 on (IOVA = GPA): the guest table's
    /// pages, under vf0's nested translations.
    @Test("a device writing the guest's table through the nest parent is reported once as guest-table-overwritten, not as the unit's composition")
    func deviceWritingGuestTableThroughParentIsTheGuestsBug() throws {
        let yaml = Self.guestRig("", parentWrites: 4)
        let o = try ScenarioRunner(scenario: ScenarioLoader.load(yaml: yaml, file: "guest-table-dma.yaml"), options: .init(seed: 1)).run()
        let kinds = o.result.violations.map(\.invariant)
        #expect(kinds == ["guest-table-overwritten"], "\(o.result.violations.prefix(3))")
        #expect(o.result.devices.first { $0.name == "vf1" }.map { $0.requests > 20 } == true)
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
