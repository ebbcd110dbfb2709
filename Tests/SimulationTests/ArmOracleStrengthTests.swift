import Testing
import Hardware
import Kernel
@testable import Simulation

/// Oracle strength on SMMUv3: the Arm counterparts of the injected ordering bugs, each caught
/// within the first seeds of an SMMUv3 built-in (and the same seeds clean without it).
@Suite("ArmOracleStrength: the SMMUv3 counterparts of the injected bugs are caught within three seeds")
struct ArmOracleStrengthTests {
    static let cases: [(Breakage, String, Set<String>, String)] = [
        // The unit consumes TLBI commands without invalidating: after an unmap the device
        // still reaches the old page through its TLB entry.
        (.droppedIOTLBInvalidation, "smmuv3-tour", ["unpermitted-access", "stale-translation", "tlb-tag-released-while-cached"],
         "an SMMUv3 that drops TLBIs"),
        // The driver gives an ASID back before its TLBI (Linux frees it from arm_smmu_asid_xa
        // only after): entries tagged with it are still cached when it can be handed out.
        (.didReleasedBeforeInvalidation, "smmuv3-tour", ["tlb-tag-released-while-cached", "tlb-tag-reuse-while-cached"],
         "an ASID released before its TLBI"),
        // The driver takes a CD through V = 0 while telling the core the update was hitless:
        // DMA at addresses both domains map faults (C_BAD_CD) in the window.
        (.replaceThroughNonPresent, "smmuv3-replace", ["replace-not-hitless"], "a non-hitless CD/STE update reported hitless"),
        // A PASID's CD is cleared without CFGI_CD: DMA on the detached SubstreamID still
        // translates through the cached CD into the old domain.
        (.pasidEntryClearedWithoutInvalidation, "smmuv3-replace", ["unpermitted-access"], "a CD cleared without CFGI_CD"),
        // munmap's mmu-notifier invalidation skips ATC_INV: the device keeps translating the
        // unmapped ring from its ATC.
        (.deviceTLBInvalidationSkipped, "smmuv3-pri", ["stale-device-tlb"], "an unmap without ATC_INV"),
        // SVA unbind without the PRI queue drain: the old owner's partial groups are merged
        // into the next owner's.
        (.pageRequestDrainSkipped, "smmuv3-pri", ["stale-partial-in-group", "page-response-crossed-pasid"],
         "an SSID teardown without the PRI queue drain"),
        (.partialsKeptAtTeardown, "smmuv3-pri", ["stale-partial-in-group"], "partial groups kept after an SSID teardown"),
        (.stopIgnoresTranslations, "smmuv3-pri", ["fault-after-stop"], "a PASID stop that does not wait for translation requests"),
        (.flushQueueForUntrusted, "smmuv3-tour", ["deferred-unmap-untrusted"], "a flush queue for an untrusted device behind an SMMUv3"),
        (.iovaFreedWithoutUnmap, "smmuv3-tour", ["map-over-live-range"], "an IOVA freed without its unmap behind an SMMUv3"),
    ]

    @Test("each broken behaviour is caught in seeds 1...3", arguments: ArmOracleStrengthTests.cases.indices)
    func caught(index: Int) throws {
        let (breakage, scenario, invariants, what) = Self.cases[index]
        let s = try BuiltinScenarios.load(scenario)
        #expect(s.isArm)
        let broken = Explorer(scenario: s, breakage: [breakage]).run(seeds: 1...3, jobs: 2)
        let found = Set(broken.findings.map(\.invariant))
        #expect(!found.isDisjoint(with: invariants), "\(what) was not caught: \(broken.findings)")
        let clean = Explorer(scenario: s).run(seeds: 1...3, jobs: 2)
        #expect(clean.findings.isEmpty, "without the bug \(scenario) is clean: \(clean.findings)")
    }

    /// A VT-d built-in with every unit made an SMMUv3 (and, with `stage`, domains of that stage).
    static func onSMMUv3(_ name: String, stage: VTdPagingStage? = nil) throws -> Scenario {
        var s = try BuiltinScenarios.load(name)
        s.units = s.units.map { u in
            var a = u
            a.configuration = .smmuv3(SMMUv3Configuration(name: u.name))
            return a
        }
        if let stage { s.machine.pagingStage = stage }
        return s
    }

    @Test("replace-storm on an SMMUv3 with stage 2 domains: an STE rewritten through V = 0 but reported hitless is caught (C_BAD_STE at addresses both domains map)")
    func nonHitlessSTEUpdateReportedHitless() throws {
        let s = try Self.onSMMUv3("replace-storm", stage: .second)
        let broken = Explorer(scenario: s, breakage: [.replaceThroughNonPresent]).run(seeds: 1...3, jobs: 2)
        #expect(broken.findings.contains { $0.invariant == "replace-not-hitless" }, "\(broken.findings)")
        #expect(Explorer(scenario: s).run(seeds: 1...3, jobs: 2).findings.isEmpty)
    }

    @Test("the VT-d table-churn scenario moved onto an SMMUv3 catches tables freed before the unmap's TLBI")
    func tablesFreedBeforeFlushOnArm() throws {
        let s = try Self.onSMMUv3("table-churn")
        let broken = Explorer(scenario: s, breakage: [.tablesFreedBeforeFlush]).run(seeds: 1...3, jobs: 2)
        #expect(broken.findings.contains { $0.invariant == "table-freed-before-flush" }, "\(broken.findings)")
        #expect(Explorer(scenario: s).run(seeds: 1...3, jobs: 2).findings.isEmpty)
    }

    @Test("the VT-d vmm-dirty scenario moved onto an SMMUv3 (stage 1 HTTU) is clean and catches a clear without its IOTLB sync")
    func dirtyClearWithoutFlushOnArm() throws {
        let s = try Self.onSMMUv3("vmm-dirty")
        let clean = Explorer(scenario: s).run(seeds: 1...3, jobs: 2)
        #expect(clean.findings.isEmpty, "\(clean.findings)")
        let broken = Explorer(scenario: s, breakage: [.dirtyClearWithoutFlush]).run(seeds: 1...3, jobs: 2)
        #expect(broken.findings.contains { $0.invariant == "dirty-write-missed" }, "\(broken.findings)")
    }
}
