import Platform
import Formats
import Hardware
import Kernel

/// The counters of one device, IOMMU unit or fault queue, by name (`expect.device-counters`,
/// `unit-counters` and `queue-counters` name them; `iommu-sim run --json` prints them).
public struct CounterGroup: Sendable {
    /// The device, unit or fault queue.
    public var owner: String
    /// In the order of the scope's names (`RunResult.deviceCounterNames`, ...).
    public var counters: [(name: String, value: UInt64)]

    public func value(_ name: String) -> UInt64? { counters.first { $0.name == name }?.value }
}

extension RunResult {
    /// Counters of each device: its DMA requests and what became of them, and its ATS/PRI side.
    public static let deviceCounterNames = [
        "requests", "faulted-requests", "faults-reported", "bytes-read", "bytes-written", "ats-accesses", "ats-completed",
        "ats-failed", "device-tlb-hits", "translation-requests", "translated-requests", "retries", "page-request-groups",
        "page-requests", "stop-markers", "credit-waits", "responses-received", "responses-success", "responses-invalid",
        "responses-failure", "unexpected-responses", "stale-responses", "device-tlb-invalidations",
    ]

    /// Counters of each IOMMU unit: the hardware's, then its driver's (page requests).
    public static let unitCounterNames = [
        "translations", "translation-faults", "faults-recorded", "faults-lost-to-overflow", "iotlb-hits", "iotlb-misses",
        "context-cache-hits", "context-cache-misses", "pasid-cache-hits", "pasid-cache-misses", "walks", "descriptors",
        "descriptors-dropped", "invalidation-waits", "interrupts", "ats-translations", "translated-requests",
        "translated-requests-refused", "page-requests", "prq-queued", "prq-overflows", "unit-auto-responses",
        "stop-markers-discarded", "unsolicited-completions", "stop-markers-dropped", "prq-overflows-cleared", "pasid-drains",
    ]

    /// The counters of each SMMUv3 unit, in order.
    public static let smmuUnitCounterNames = [
        "translations", "events-recorded", "events-lost", "faults-not-recorded", "tlb-hits", "tlb-misses",
        "ste-cache-hits", "ste-cache-misses", "cd-cache-hits", "cd-cache-misses", "walks", "commands", "command-errors",
        "syncs", "interrupts", "ats-translations", "translated-requests", "translated-requests-refused", "page-requests",
        "priq-queued", "priq-overflows", "unit-auto-responses", "atc-invalidations", "stalls", "stalls-resumed",
        "stalls-terminated",
    ]

    /// Counters of each fault queue: groups delivered to user space, groups the kernel
    /// answered itself (detach, replace, close), and groups the queue's handlers served or
    /// refused.
    public static let queueCounterNames = ["groups-delivered", "auto-responses", "groups-served", "groups-refused"]

    static func deviceCounters(_ endpoints: [PCIeEndpoint], faultsReported: [(String, Int)]) -> [CounterGroup] {
        endpoints.map { e in
            let c = e.counters, a = e.atsCounters
            let values: [UInt64] = [
                c.requests, c.faulted, UInt64(faultsReported.first { $0.0 == e.name }?.1 ?? 0), c.bytesRead, c.bytesWritten,
                a.accesses, a.completed, a.failed, a.deviceTLBHits, a.translationRequests, a.translatedRequests, a.retries,
                a.groups, a.pageRequests, a.stopMarkers, a.creditWaits, a.responses, a.successResponses, a.invalidResponses,
                a.failureResponses, a.unexpectedResponses, a.staleResponses, a.deviceTLBInvalidations,
            ]
            return CounterGroup(owner: e.name, counters: Array(zip(deviceCounterNames, values)).map { ($0.0, $0.1) })
        }
    }

    static func unitCounters(_ m: Machine) -> [CounterGroup] {
        zip(m.units, m.vtdDriver?.units ?? []).map { u, d in
            let c = u.counters
            let values: [UInt64] = [
                c.translations, c.faults, c.faultsRecorded, c.faultsLostToOverflow, c.iotlbHits, c.iotlbMisses,
                c.contextCacheHits, c.contextCacheMisses, c.pasidCacheHits, c.pasidCacheMisses, c.walks, c.descriptors,
                c.descriptorsDropped, c.waitsCompleted, c.interrupts, c.atsTranslations, c.translatedRequests,
                c.translatedRequestsRefused, c.pageRequests, c.pageRequestsQueued, c.pageRequestOverflows,
                c.pageRequestsAutoResponded, c.stopMarkersDiscarded, c.unsolicitedCompletions,
                UInt64(d.stopMarkersDropped), UInt64(d.pageRequestOverflowsCleared), UInt64(d.pageRequestDrains),
            ]
            return CounterGroup(owner: u.configuration.name, counters: Array(zip(unitCounterNames, values)).map { ($0.0, $0.1) })
        } + m.smmuUnits.map { u in
            let c = u.counters
            let values: [UInt64] = [
                c.translations, c.eventsRecorded, c.eventsLost, c.faultsNotRecorded, c.tlbHits, c.tlbMisses,
                c.steCacheHits, c.steCacheMisses, c.cdCacheHits, c.cdCacheMisses, c.walks, c.commands, c.commandErrors,
                c.syncsCompleted, c.interrupts, c.atsTranslations, c.translatedRequests, c.translatedRequestsRefused,
                c.pageRequests, c.pageRequestsQueued, c.priQueueOverflows, c.priAutoResponses, c.atcInvalidationsSent,
                c.stalls, c.stallsResumed, c.stallsTerminated,
            ]
            return CounterGroup(owner: u.configuration.name, counters: Array(zip(smmuUnitCounterNames, values)).map { ($0.0, $0.1) })
        }
    }
}
