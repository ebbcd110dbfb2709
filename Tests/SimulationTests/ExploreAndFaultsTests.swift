import Testing
import Foundation
import Platform
import Kernel
@testable import Simulation

@Suite("Explore: every seed runs, each invariant is reported once with its soonest seed, whatever the worker count")
struct ExplorerTests {
    @Test("the findings do not depend on the number of workers")
    func jobsIndependent() throws {
        let s = try BuiltinScenarios.load("did-reuse")
        let e = Explorer(scenario: s, breakage: [.didReleasedBeforeInvalidation])
        let one = e.run(seeds: 1...4, jobs: 1)
        let three = e.run(seeds: 1...4, jobs: 3)
        #expect(one.runs == 4 && three.runs == 4)
        #expect(!one.findings.isEmpty)
        #expect(one.findings == three.findings)
    }

    @Test("merging keeps one finding per invariant: the earliest in virtual time, ties to the lowest seed, counting seeds")
    func merge() {
        let r = [Explorer.SeedResult(seed: 5, firsts: [("a", "late", 900), ("b", "b5", 10)], translations: 0),
                 Explorer.SeedResult(seed: 3, firsts: [("a", "early", 100)], translations: 0),
                 Explorer.SeedResult(seed: 2, firsts: [("a", "tie", 100)], translations: 0)]
        let f = Explorer.merge(r)
        #expect(f.map(\.invariant) == ["a", "b"])
        #expect(f[0].seed == 2 && f[0].detail == "tie" && f[0].seeds == 3)
        #expect(f[1].seed == 5 && f[1].seeds == 1)
    }

    @Test("a clean scenario explores clean")
    func clean() throws {
        let s = try ScenarioLoader.load(yaml: smallScenario, file: "small.yaml")
        let r = Explorer(scenario: s).run(seeds: 1...6, jobs: 2)
        #expect(r.runs == 6)
        #expect(r.findings.isEmpty, "\(r.findings)")
    }
}

@Suite("FaultSweep: fail_nth over every injection point; errors returned, state rolled back, nothing leaked")
struct FaultSweepTests {
    @Test("a sweep of the small scenario reaches allocation and hardware points and finds no leak or inconsistency")
    func sweepSmall() throws {
        let s = try ScenarioLoader.load(yaml: smallScenario, file: "small.yaml")
        let r = try FaultSweep(scenario: s).run(jobs: 2)
        #expect(r.points > 0)
        #expect(r.runs == r.points + 1)
        let names = Set(r.pointsByName.map(\.0))
        #expect(names.isSuperset(of: ["frame.alloc", "kernel.did-alloc", "kernel.domain-alloc", "hw.invalidation-timeout"]), "\(names)")
        #expect(r.returnedError > 0, "some injected failures surface as errors of the step that hit them")
        #expect(r.leaks == 0, "\(r.failures)")
        #expect(r.inconsistencies == 0, "\(r.failures)")
        #expect(r.failures.isEmpty, "\(r.failures)")
    }

    @Test("a failed map action is rolled back: the snapshot check would name any change it left")
    func snapshotNamesChanges() throws {
        let m = try Machine(seed: 1, units: [.init(name: "dmar0")])
        let before = StateSnapshot(m)
        let dev = try m.addDevices([DeviceDescription(name: "d", requesterID: .init(bus: 0, device: 1, function: 0), unit: 0)])[0].0
        let afterProbe = StateSnapshot(m)
        #expect(!afterProbe.differences(from: before).isEmpty || afterProbe.groups.count == 1)
        _ = try m.core.allocDomain(for: dev)
        let diff = StateSnapshot(m).differences(from: afterProbe)
        #expect(diff.contains { $0.contains("live domains changed") }, "\(diff)")
        #expect(StateSnapshot(m).differences(from: StateSnapshot(m)).isEmpty)
    }
}

/// Oracle strength: each deliberately broken behaviour is injected, and the explorer must
/// catch it within the first few seeds (and the same scenario and seeds are clean without it).
@Suite("OracleStrength: every injected ordering bug is caught within a bounded number of seeds")
struct OracleStrengthTests {
    static let cases: [(Breakage, String, Set<String>, String)] = [
        // The unit completes IOTLB invalidations without applying them: after a strict unmap
        // and remap at the same IOVA, the device still reaches the old page.
        (.droppedIOTLBInvalidation, "did-reuse", ["unpermitted-access", "stale-translation", "did-released-while-cached"],
         "hardware drops IOTLB invalidations"),
        // The driver returns a DID to the allocator before invalidating what is tagged with it:
        // the unit still caches entries under a DID that can be handed out again.
        (.didReleasedBeforeInvalidation, "did-reuse", ["did-released-while-cached", "did-reuse-while-cached"],
         "DID released before its invalidation"),
        // The core frees unlinked page-table pages before the unmap's IOTLB flush: the walk
        // could still read them after they are reused.
        (.tablesFreedBeforeFlush, "table-churn", ["table-freed-before-flush"], "tables freed before the flush"),
        // The driver clears the present bit and writes the new entry while claiming a hitless
        // replace: DMA at addresses both domains map faults in the window.
        (.replaceThroughNonPresent, "replace-storm", ["replace-not-hitless"], "replace through a non-present entry"),
        // PASID teardown skips the PASID-cache invalidation: DMA on the detached PASID still
        // translates through the cached entry into the old domain.
        (.pasidEntryClearedWithoutInvalidation, "pasid-detach", ["unpermitted-access", "did-released-while-cached"],
         "PASID entry cleared without PASID-cache invalidation"),
        // SVA unbind without the page-request drain: a response the old owner's fault work
        // sends after the PASID was handed to the next process reaches the device under the
        // new owner's use of the PASID.
        (.pageRequestDrainSkipped, "pasid-teardown", ["page-response-crossed-pasid"], "PASID teardown without the PRQ drain"),
        // munmap (and unmap flushes) without the device-TLB invalidation: the ATS device keeps
        // translating the unmapped region from its device TLB.
        (.deviceTLBInvalidationSkipped, "sva-faults", ["stale-device-tlb"], "unmap without device-TLB invalidation"),
        // The page table frees the tables an unmap unlinks at once, never handing them to the
        // gather: the oracle knows every table page from its allocation.
        (.tablesFreedOutsideGather, "table-churn", ["table-freed-while-reachable"], "tables freed outside the unmap gather"),
        // The untrusted Thunderbolt device of the tour gets a flush queue: its DMA-API ring's
        // unmaps are deferred while it can still reach them.
        (.flushQueueForUntrusted, "tour", ["deferred-unmap-untrusted"], "a flush queue for an untrusted device"),
        // A DMA unmap frees its IOVA without unmapping: the ring's next map is handed an IOVA
        // whose translation is live (the page table would only say EEXIST).
        (.iovaFreedWithoutUnmap, "tour", ["map-over-live-range"], "an IOVA freed without its unmap"),
        // A device reports a PASID stopped while its translation requests are in flight; the
        // unbind clears the entry and they fault on a device that was told to quiesce.
        (.stopIgnoresTranslations, "pasid-teardown", ["fault-after-stop"], "a PASID stop that does not wait for translation requests"),
        // The PASID drain's last wait has no page drain (PD): requests still on the unit's
        // internal path are answered after the PASID went to its next owner.
        (.pageDrainWaitSkipped, "pasid-teardown", ["page-response-crossed-pasid"], "a PASID drain without the page-drain wait"),
        // The DMA API allocates below the domain's aperture, not the device's mask: once the
        // 32-bit device has filled the space below 4 GiB it is handed IOVAs it cannot emit.
        (.dmaMaskIgnored, "dma32", ["iova-beyond-dma-mask"], "IOVAs allocated beyond the device's DMA mask"),
        // Deferred unmaps of 2 MiB scatter lists unlink leaf tables; freeing them at once,
        // not after the flush queue's flush, is caught on their free.
        (.deferredTablesFreedAtOnce, "ats-churn", ["table-freed-before-flush"], "deferred unmaps freeing tables before the flush"),
        // The PASID drain leaves the stopped PASID's partial groups with the core; the next
        // owner's group that reuses a PRG index takes the old owner's requests in.
        (.partialsKeptAtTeardown, "pasid-teardown", ["stale-partial-in-group"], "partial groups kept after a PASID teardown"),
        // A clearing dirty read leaves translations cached with D set: the device's next write
        // to such a page sets no D, and the next pass misses it.
        (.dirtyClearWithoutFlush, "vmm-dirty", ["dirty-write-missed"], "a dirty read that does not flush the IOTLB"),
        // The same in a live migration whose devices write directly and through a guest's
        // first stage (dirty bits in the nest parent).
        (.dirtyClearWithoutFlush, "live-migration", ["dirty-write-missed"], "a dirty read without its flush during a migration"),
        // The driver drops the guest's forwarded invalidations: a guest remap under traffic
        // leaves the old nested translation cached, used after the guest's unmap returned.
        (.guestInvalidationDropped, "vmm-nested", ["stale-translation"], "a dropped guest invalidation"),
        // The host replaces part of the parent's mappings; the parent's flush skips the nested
        // DIDs, so nested translations through the old guest-RAM pages stay cached.
        (.parentFlushSkipsNested, "vmm-nested", ["stale-translation"], "a parent unmap that skips the nested children's tags"),
        // Unmaps that free table pages flush with IH set: the paging-structure caches keep
        // entries pointing at the freed pages, and the next miss walks through one.
        (.hintAfterFreeingTables, "table-churn", ["walk-through-freed-table"], "an IH flush after freeing table pages"),
    ]

    @Test("each broken behaviour is caught in seeds 1...3", arguments: OracleStrengthTests.cases.indices)
    func caught(index: Int) throws {
        let (breakage, scenario, invariants, what) = Self.cases[index]
        let s = try BuiltinScenarios.load(scenario)
        let broken = Explorer(scenario: s, breakage: [breakage]).run(seeds: 1...3, jobs: 2)
        let found = Set(broken.findings.map(\.invariant))
        #expect(!found.isDisjoint(with: invariants), "\(what) was not caught: \(broken.findings)")
        let clean = Explorer(scenario: s).run(seeds: 1...3, jobs: 2)
        #expect(clean.findings.isEmpty, "without the bug \(scenario) is clean: \(clean.findings)")
    }
}

@Suite("InjectFaults: explore --inject-faults fails one point per seed, chosen from the seed, and reports what it injected")
struct InjectFaultsTests {
    @Test("a failed group change that leaves one device on the new domain is caught within 30 seeds, with the injected point in the finding")
    func incompleteRollbackCaught() throws {
        let s = try BuiltinScenarios.load("replace-storm")
        let broken = Explorer(scenario: s, breakage: [.incompleteGroupRollback], injectFaults: true).run(seeds: 1...30, jobs: 2)
        let f = try #require(broken.findings.first { $0.invariant == "group-inconsistent" }, "\(broken.findings)")
        let injection = try #require(f.injection)
        #expect(f.detail.contains("[injected: \(injection)]"))
        // The same seed and injection, replayed as the CLI would, shows the same violation.
        var o = ScenarioRunner.Options(seed: f.seed)
        o.breakage = [.incompleteGroupRollback]
        o.tolerant = true
        o.faultMode = .failNth(injection.nth, only: FaultPoint(injection.point))
        let replay = try ScenarioRunner(scenario: s, options: o).run()
        #expect(replay.result.violations.contains { $0.invariant == "group-inconsistent" })
        let clean = Explorer(scenario: s, injectFaults: true).run(seeds: 1...30, jobs: 2)
        #expect(clean.findings.isEmpty, "with correct rollback the same injections are clean: \(clean.findings)")
    }

    @Test("each seed's injection is chosen from the seed among the reachable points, the same every time")
    func injectionIsDeterministic() throws {
        let points = [("frame.alloc", 10), ("hw.invalidation-timeout", 3), ("kernel.pasid-alloc", 0)]
        var seen = Set<String>()
        for seed: UInt64 in 1...200 {
            let a = Explorer.injection(for: seed, points: points), b = Explorer.injection(for: seed, points: points)
            #expect(a == b)
            let i = try #require(a)
            #expect(i.point != "kernel.pasid-alloc", "a point the run never reaches is never chosen")
            #expect(i.nth >= 1 && i.nth <= (i.point == "frame.alloc" ? 10 : 3))
            seen.insert(i.point)
        }
        #expect(seen.count == 2)
        #expect(Explorer.injection(for: 1, points: []) == nil)
    }
}
