import Platform
import Formats
import Hardware
import Kernel

/// What a scenario run did: counters from the hardware, the kernel and the oracle, and the
/// plain-words log. Everything except `wallNs` is a function of the seed.
public struct RunResult: Sendable {
    public struct DeviceSummary: Sendable {
        public var name: String
        public var requests: UInt64
        public var faultedRequests: UInt64
        public var faultsReported: Int
        public var bytesRead: UInt64
        public var bytesWritten: UInt64
    }

    public var scenario: String
    public var seed: UInt64
    public var virtualTimeNs: UInt64
    public var eventsRun: UInt64
    public var yieldsTaken: UInt64
    public var translations: UInt64
    public var translationFaults: UInt64
    public var faultsRecorded: UInt64
    public var iotlbHits: UInt64
    public var iotlbMisses: UInt64
    public var invalidations: UInt64
    public var invalidationsByType: [(String, UInt64)]
    public var invalidationWaits: UInt64
    public var oracleChecks: UInt64
    public var violations: [Violation]
    public var violationCount: Int
    public var expectedFaults: UInt64
    public var updatePaths: [(String, Int)]
    public var devices: [DeviceSummary]
    public var peakFrames: Int
    public var framesLeft: Int
    public var churnRounds: Int
    /// What the DMA API did for the lazy device (flush-queue figures).
    public var dmaAPI: DMAStatistics
    public var log: [(time: UInt64, text: String)]
    /// Host wall-clock time of the run (not deterministic).
    public var wallNs: UInt64

    init(scenario: String, seed: UInt64, machine m: Machine, endpoints: [PCIeEndpoint], faultsReported: [(String, Int)],
         dmaAPI: DMAStatistics = DMAStatistics(), log: [(time: UInt64, text: String)], churnRounds: Int, wallNs: UInt64) {
        self.scenario = scenario
        self.seed = seed
        virtualTimeNs = m.scheduler.now
        eventsRun = m.scheduler.eventsRun
        yieldsTaken = m.scheduler.yieldsTaken
        var c = VTdCounters()
        for u in m.units {
            let x = u.counters
            c.translations += x.translations; c.faults += x.faults; c.faultsRecorded += x.faultsRecorded
            c.iotlbHits += x.iotlbHits; c.iotlbMisses += x.iotlbMisses
            for i in 0..<16 { c.descriptorsByType[i] += x.descriptorsByType[i] }
            c.waitsCompleted += x.waitsCompleted
        }
        translations = c.translations
        translationFaults = c.faults
        faultsRecorded = c.faultsRecorded
        iotlbHits = c.iotlbHits
        iotlbMisses = c.iotlbMisses
        let names: [(UInt8, String)] = [
            (InvalidationDescriptor.contextCacheType, "contextCache"), (InvalidationDescriptor.iotlbType, "iotlb"),
            (InvalidationDescriptor.deviceTLBType, "deviceTLB"), (InvalidationDescriptor.pasidIOTLBType, "pasidIOTLB"),
            (InvalidationDescriptor.pasidCacheType, "pasidCache"), (InvalidationDescriptor.pasidDeviceTLBType, "pasidDeviceTLB"),
        ]
        invalidationsByType = names.map { ($0.1, c.descriptorsByType[Int($0.0)]) }
        invalidations = invalidationsByType.reduce(0) { $0 + $1.1 }
        invalidationWaits = c.waitsCompleted
        oracleChecks = m.oracle.checks
        violations = m.oracle.violations
        violationCount = m.oracle.violationCount
        expectedFaults = m.oracle.expectedFaults
        updatePaths = m.core.updatePathCounts.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        devices = endpoints.map { e in
            DeviceSummary(name: e.name, requests: e.counters.requests, faultedRequests: e.counters.faulted,
                          faultsReported: faultsReported.first { $0.0 == e.name }?.1 ?? 0,
                          bytesRead: e.counters.bytesRead, bytesWritten: e.counters.bytesWritten)
        }
        peakFrames = m.platform.frames.peak
        framesLeft = m.platform.frames.inUse
        self.churnRounds = churnRounds
        self.dmaAPI = dmaAPI
        self.log = log
        self.wallNs = wallNs
    }
}
