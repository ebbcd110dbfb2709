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

    /// A timed action, workload start or stop performed after its time.
    public struct LateItem: Sendable, Equatable {
        public var label: String
        public var dueNs: UInt64
        public var ranNs: UInt64
    }

    /// The DIDs a named domain (a user domain, or a device's default domain under the
    /// device's name) held on one unit, in the order the run first saw each.
    public struct DomainIDs: Sendable, Equatable {
        public var domain: String
        public var unit: String
        public var dids: [UInt16]
    }

    /// What one declared workload did.
    public struct WorkloadSummary: Sendable, Equatable {
        public var name: String
        /// When it first started; nil: it never ran.
        public var startedNs: UInt64?
        /// DMA requests, churn rounds, ring recycles and requests, ATS accesses or fault
        /// groups served.
        public var operations: UInt64
        public var mayIdle: Bool
        /// Started and did nothing, without the file saying it may.
        public var idleUnexpectedly: Bool { startedNs != nil && operations == 0 && !mayIdle }
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
    /// IO page-fault figures from devices, units, driver, core and user fault queues, in
    /// `pageFaultCounterNames` order (scenario expectations name them).
    public var pageFaultCounters: [(String, UInt64)]
    public var log: [(time: UInt64, text: String)]
    public var lateItems: [LateItem] = []
    public var workloads: [WorkloadSummary] = []
    /// Per-device, per-unit and per-fault-queue counters (`deviceCounterNames`, ...).
    public var deviceCounters: [CounterGroup] = []
    public var unitCounters: [CounterGroup] = []
    public var queueCounters: [CounterGroup] = []
    /// The DIDs named domains got, and the PASID value each alloc-pasid or sva-bind name got.
    public var domainIDs: [DomainIDs] = []
    public var pasids: [(name: String, value: UInt32)] = []
    /// Host wall-clock time of the run (not deterministic).
    public var wallNs: UInt64

    init(scenario: String, seed: UInt64, machine m: Machine, endpoints: [PCIeEndpoint], faultsReported: [(String, Int)],
         dmaAPI: DMAStatistics = DMAStatistics(), userAutoResponses: Int = 0, log: [(time: UInt64, text: String)],
         churnRounds: Int, lateItems: [LateItem] = [], workloads: [WorkloadSummary] = [], queueCounters: [CounterGroup] = [],
         domainIDs: [DomainIDs] = [], pasids: [(name: String, value: UInt32)] = [], wallNs: UInt64) {
        self.scenario = scenario
        self.queueCounters = queueCounters
        self.domainIDs = domainIDs
        self.pasids = pasids
        deviceCounters = Self.deviceCounters(endpoints, faultsReported: faultsReported)
        unitCounters = Self.unitCounters(m)
        self.lateItems = lateItems
        self.workloads = workloads
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
        invalidationWaits = c.waitsCompleted
        if !m.smmuUnits.isEmpty {
            // SMMUv3: the commands by class (IHI 0070 §4.3 CFGI, §4.4 TLBI, §4.5 ATC_INV);
            // CMD_SYNCs are the waits.
            var byOpcode = [UInt64](repeating: 0, count: 0x50)
            for u in m.smmuUnits {
                let x = u.counters
                translations += x.translations
                translationFaults += x.eventsRecorded + x.eventsLost + x.faultsNotRecorded
                faultsRecorded += x.eventsRecorded
                iotlbHits += x.tlbHits; iotlbMisses += x.tlbMisses
                for (i, n) in x.commandsByOpcode.enumerated() where i < byOpcode.count { byOpcode[i] += n }
                invalidationWaits += x.syncsCompleted
            }
            func sum(_ ops: [Int]) -> UInt64 { ops.reduce(0) { $0 + byOpcode[$1] } }
            invalidationsByType = [
                ("cfgiSTE", sum([0x03, 0x04])), ("cfgiCD", sum([0x05, 0x06])), ("tlbiNH", sum([0x10, 0x11, 0x12, 0x13])),
                ("tlbiEL2", sum([0x20, 0x21, 0x22])), ("tlbiS2", sum([0x28, 0x2A])), ("tlbiNSNH", sum([0x30])),
                ("atcInv", sum([0x40])),
            ]
        }
        invalidations = invalidationsByType.reduce(0) { $0 + $1.1 }
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
        pageFaultCounters = Self.pageFaultCounters(m, endpoints: endpoints, userAutoResponses: userAutoResponses)
        self.log = log
        self.wallNs = wallNs
    }

    /// The IO page-fault counters a run reports, in order.
    public static let pageFaultCounterNames = [
        "ats-accesses", "ats-completed", "ats-failed", "device-tlb-hits", "translated-requests", "page-request-groups",
        "page-requests", "stop-markers", "credit-waits", "responses-received", "unexpected-responses", "stale-responses",
        "prq-queued", "prq-overflows", "unit-auto-responses", "stop-markers-discarded", "unsolicited-completions", "page-faults", "fault-groups",
        "faults-without-handler", "responses-success", "responses-invalid", "responses-failure", "late-responses",
        "partials-discarded", "stop-markers-dropped", "prq-overflows-cleared", "pasid-drains", "user-auto-responses",
        "device-resets", "partials-dropped-at-teardown",
    ]

    static func pageFaultCounters(_ m: Machine, endpoints: [PCIeEndpoint], userAutoResponses: Int) -> [(String, UInt64)] {
        var a = ATSCounters()
        for e in endpoints {
            let x = e.atsCounters
            a.accesses += x.accesses; a.completed += x.completed; a.failed += x.failed; a.deviceTLBHits += x.deviceTLBHits
            a.translatedRequests += x.translatedRequests; a.groups += x.groups; a.pageRequests += x.pageRequests
            a.stopMarkers += x.stopMarkers; a.creditWaits += x.creditWaits; a.responses += x.responses
            a.unexpectedResponses += x.unexpectedResponses; a.staleResponses += x.staleResponses
            a.resets += x.resets
        }
        var u = VTdCounters()
        for x in m.units.map(\.counters) {
            u.pageRequestsQueued += x.pageRequestsQueued; u.pageRequestOverflows += x.pageRequestOverflows
            u.pageRequestsAutoResponded += x.pageRequestsAutoResponded; u.stopMarkersDiscarded += x.stopMarkersDiscarded
            u.unsolicitedCompletions += x.unsolicitedCompletions
        }
        for x in m.smmuUnits.map(\.counters) {
            // The SMMUv3's PRI queue in the same places (IHI 0070 chapter 8).
            u.pageRequestsQueued += x.pageRequestsQueued; u.pageRequestOverflows += x.priQueueOverflows
            u.pageRequestsAutoResponded += x.priAutoResponses
        }
        let d = m.vtdDriver?.units ?? []
        let arm = m.smmuDriver?.units ?? []
        let c = m.core
        // In `pageFaultCounterNames` order (a test checks the two agree).
        return [
            ("ats-accesses", a.accesses), ("ats-completed", a.completed), ("ats-failed", a.failed),
            ("device-tlb-hits", a.deviceTLBHits), ("translated-requests", a.translatedRequests),
            ("page-request-groups", a.groups), ("page-requests", a.pageRequests), ("stop-markers", a.stopMarkers),
            ("credit-waits", a.creditWaits), ("responses-received", a.responses),
            ("unexpected-responses", a.unexpectedResponses), ("stale-responses", a.staleResponses),
            ("prq-queued", u.pageRequestsQueued), ("prq-overflows", u.pageRequestOverflows),
            ("unit-auto-responses", u.pageRequestsAutoResponded), ("stop-markers-discarded", u.stopMarkersDiscarded),
            ("unsolicited-completions", u.unsolicitedCompletions),
            ("page-faults", UInt64(c.pageFaultsReported)), ("fault-groups", UInt64(c.pageFaultGroups)),
            ("faults-without-handler", UInt64(c.pageFaultsWithoutHandler)),
            ("responses-success", UInt64(c.pageResponses[0])), ("responses-invalid", UInt64(c.pageResponses[1])),
            ("responses-failure", UInt64(c.pageResponses[2])), ("late-responses", UInt64(c.lateResponses)),
            ("partials-discarded", UInt64(c.partialsDiscarded)),
            ("stop-markers-dropped", UInt64(d.reduce(0) { $0 + $1.stopMarkersDropped } + arm.reduce(0) { $0 + $1.stopMarkersDropped })),
            ("prq-overflows-cleared", UInt64(d.reduce(0) { $0 + $1.pageRequestOverflowsCleared } + arm.reduce(0) { $0 + $1.priQueueOverflows })),
            ("pasid-drains", UInt64(d.reduce(0) { $0 + $1.pageRequestDrains } + arm.reduce(0) { $0 + $1.pageRequestDrains })),
            ("user-auto-responses", UInt64(userAutoResponses)), ("device-resets", a.resets),
            ("partials-dropped-at-teardown", UInt64(c.partialsDroppedAtTeardown)),
        ]
    }

    /// A page-fault counter by name (0 when unknown).
    public func pageFaultCounter(_ name: String) -> UInt64 { pageFaultCounters.first { $0.0 == name }?.1 ?? 0 }
}
