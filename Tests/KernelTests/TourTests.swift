import Testing
import Platform
import Formats
import Hardware
import Kernel
@testable import Simulation

/// Runs the built-in tour scenario (the YAML resource) with `seed`.
func tour(_ seed: UInt64) throws -> RunResult {
    try ScenarioRunner(scenario: BuiltinScenarios.load("tour"), options: .init(seed: seed)).run().result
}

@Suite("TourRun: the built-in tour is deterministic per seed, violation-free and exercises what it claims")
struct TourRunTests {
    @Test("two runs of the tour with the same seed agree on everything but wall-clock time")
    func deterministic() throws {
        let r1 = try tour(7)
        let r2 = try tour(7)
        #expect(r1.seed == 7 && r2.seed == 7)
        #expect(r1.violationCount == r2.violationCount)
        #expect(r1.violations == r2.violations)
        #expect(r1.translations == r2.translations)
        #expect(r1.translationFaults == r2.translationFaults)
        #expect(r1.faultsRecorded == r2.faultsRecorded)
        #expect(r1.iotlbHits == r2.iotlbHits)
        #expect(r1.iotlbMisses == r2.iotlbMisses)
        #expect(r1.invalidations == r2.invalidations)
        #expect(r1.invalidationsByType.map(\.0) == r2.invalidationsByType.map(\.0))
        #expect(r1.invalidationsByType.map(\.1) == r2.invalidationsByType.map(\.1))
        #expect(r1.invalidationWaits == r2.invalidationWaits)
        #expect(r1.oracleChecks == r2.oracleChecks)
        #expect(r1.expectedFaults == r2.expectedFaults)
        #expect(r1.virtualTimeNs == r2.virtualTimeNs)
        #expect(r1.eventsRun == r2.eventsRun)
        #expect(r1.yieldsTaken == r2.yieldsTaken)
        #expect(r1.updatePaths.map(\.0) == r2.updatePaths.map(\.0))
        #expect(r1.updatePaths.map(\.1) == r2.updatePaths.map(\.1))
        #expect(r1.devices.map(\.requests) == r2.devices.map(\.requests))
        #expect(r1.devices.map(\.faultedRequests) == r2.devices.map(\.faultedRequests))
        #expect(r1.devices.map(\.bytesRead) == r2.devices.map(\.bytesRead))
        #expect(r1.devices.map(\.bytesWritten) == r2.devices.map(\.bytesWritten))
        #expect(r1.peakFrames == r2.peakFrames)
        #expect(r1.framesLeft == r2.framesLeft)
        #expect(r1.churnRounds == r2.churnRounds)
        #expect(r1.log.map(\.text) == r2.log.map(\.text))
        #expect(r1.log.map(\.time) == r2.log.map(\.time))
        // The comparison means something: the run did real work.
        #expect(r1.translations > 0)
        #expect(r1.eventsRun > 0)
        #expect(!r1.log.isEmpty)
    }

    @Test("the tour on second-stage domains (paging-stage: second) finds no violation and replaces with a 128-bit exchange", arguments: 1...3 as ClosedRange<UInt64>)
    func secondStage(seed: UInt64) throws {
        let text = try #require(BuiltinScenarios.text(named: "tour"))
        let yaml = text.replacingOccurrences(of: "machine:\n", with: "machine:\n  paging-stage: second\n")
        #expect(yaml != text)
        let s = try ScenarioLoader.load(yaml: yaml, file: "tour-second-stage.yaml")
        #expect(s.machine.pagingStage == .second)
        let r = try ScenarioRunner(scenario: s, options: .init(seed: seed)).run().result
        #expect(r.violationCount == 0, "\(r.violations)")
        #expect(r.framesLeft == 0)
        let cx = r.updatePaths.first { $0.0 == UpdatePath.compareExchange128.rawValue }?.1 ?? 0
        #expect(cx >= 1, "\(r.updatePaths)")
    }

    @Test("different seeds take different interleavings")
    func seedsDiffer() throws {
        let a = try tour(1)
        let b = try tour(2)
        #expect(a.eventsRun != b.eventsRun || a.translations != b.translations || a.yieldsTaken != b.yieldsTaken)
    }

    @Test("the tour finds no violation", arguments: 1...5 as ClosedRange<UInt64>)
    func noViolations(seed: UInt64) throws {
        let r = try tour(seed)
        #expect(r.violationCount == 0, "\(r.violations)")
        #expect(r.violations.isEmpty)
        #expect(r.oracleChecks > 0)
        #expect(r.framesLeft == 0)
    }

    @Test("the tour exercises a hitless multi-word update (staged around a 128-bit compare-exchange on its first-stage domains), reports tb0's faults, churns and leaks no frame")
    func exercises() throws {
        let r = try tour(7)
        let staged = r.updatePaths.first { $0.0 == UpdatePath.staged.rawValue }?.1 ?? 0
        #expect(staged >= 1, "\(r.updatePaths)")
        let tb = try #require(r.devices.first { $0.name == "tb0" })
        #expect(tb.faultsReported >= 3, "the three writes to an unmapped IOVA are reported to the core")
        #expect(tb.faultedRequests >= 3)
        #expect(r.faultsRecorded >= 3)
        #expect(r.expectedFaults >= 3, "the oracle counts tb0's faults as expected, not as violations")
        #expect(r.churnRounds >= 5, "churn every 20 µs from 30 to 190 µs")
        #expect(r.invalidations > 0)
        #expect(r.iotlbHits > 0 && r.iotlbMisses > 0)
        #expect(r.framesLeft == 0)
        #expect(r.violationCount == 0, "\(r.violations)")
        let nvme = try #require(r.devices.first { $0.name == "nvme0" })
        #expect(nvme.faultedRequests == 0, "identity-domain DMA never faults")
    }
}
