import Platform
import Formats
import Hardware
import Kernel

/// The DMA policies `compare` runs a scenario under (Linux `iommu.strict=1`, the default
/// lazy mode with per-CPU flush queues, and lazy mode with one flush queue per domain, which
/// Linux picks where the driver says invalidations are expensive, `shadow_on_flush`).
public enum ComparedPolicy: String, CaseIterable, Sendable {
    case strict
    case lazy
    case singleQueue = "single-queue"
}

extension Scenario {
    /// The scenario with every DMA domain under `policy` and every unit's TLB invalidation
    /// costing `invalidationNs` (what a unit's `latency: {invalidation-ns: …}` sets: VT-d
    /// IOTLB, PASID-based IOTLB and device-TLB descriptors, each followed by its wait
    /// descriptor as before; SMMUv3 TLBI_* commands, CMD_SYNC as before).
    public func overriding(policy: ComparedPolicy, invalidationNs: UInt64) -> Scenario {
        var s = self
        s.machine.policy = policy == .strict ? .strict : .lazy
        s.machine.singleFlushQueue = policy == .singleQueue
        for i in s.units.indices {
            switch s.units[i].configuration {
            case .vtd(var c):
                for t in [InvalidationDescriptor.iotlbType, InvalidationDescriptor.pasidIOTLBType,
                          InvalidationDescriptor.deviceTLBType, InvalidationDescriptor.pasidDeviceTLBType] {
                    c.latency.descriptorNs[Int(t)] = invalidationNs
                }
                s.units[i].configuration = .vtd(c)
            case .smmuv3(var c):
                c.latency.tlbiNs = invalidationNs
                s.units[i].configuration = .smmuv3(c)
            }
        }
        return s
    }
}

/// One scenario run under one policy and invalidation latency, measured over its timed phase
/// (teardown excluded) in virtual time.
public struct PolicyRun: Sendable {
    public var policy: ComparedPolicy
    public var invalidationNs: UInt64
    /// Virtual length of the timed phase.
    public var timedNs: UInt64
    /// DMA-API buffers turned around (unmapped and mapped again by the driver) and their bytes,
    /// and what the devices moved.
    public var buffersCycled: UInt64
    public var bytesCycled: UInt64
    public var deviceBytes: UInt64
    /// DMA-API calls and the virtual CPU time they took (waits for invalidations, yields).
    public var mapLatency: LatencyHistogram
    public var unmapLatency: LatencyHistogram
    /// Invalidation descriptors (commands) and waits (CMD_SYNCs) during the timed phase.
    public var invalidations: UInt64
    public var waits: UInt64
    /// IOVA space in use over the paging domains, 4 KiB pages: mapped, or unmapped and awaiting a flush.
    public var iovaPeakPages: Int64
    public var iovaEndPages: Int64
    /// Exposure windows of unmapped pages (weighted by pages), ns.
    public var exposureP50Ns: UInt64
    public var exposureP99Ns: UInt64
    public var exposureMaxNs: UInt64
    public var exposedPages: UInt64
    public var deferredUnmaps: Int
    /// TLB flushes of the timed phase: strict unmaps' and flush queues' (capped list) and the count.
    public var flushes: [RunRecorder.FlushEvent]
    public var flushCount: UInt64
    public var violations: Int
    public var violationSummaries: [String]

    public var timedSeconds: Double { Double(timedNs) / 1e9 }
    /// Buffers turned around per virtual second, and their bytes per virtual second.
    public var buffersPerSecond: Double { timedNs == 0 ? 0 : Double(buffersCycled) / timedSeconds }
    public var bytesPerSecond: Double { timedNs == 0 ? 0 : Double(bytesCycled) / timedSeconds }
    public var deviceBytesPerSecond: Double { timedNs == 0 ? 0 : Double(deviceBytes) / timedSeconds }
    public var unmaps: UInt64 { unmapLatency.count }
    public var invalidationsPerUnmap: Double { unmaps == 0 ? 0 : Double(invalidations) / Double(unmaps) }
    public var waitsPerUnmap: Double { unmaps == 0 ? 0 : Double(waits) / Double(unmaps) }
}

/// Runs a scenario under every (policy, invalidation latency) with one seed.
public struct PolicyComparison: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public var scenario: Scenario
    public var policies: [ComparedPolicy]
    public var invalidationNs: [UInt64]
    public var seed: UInt64

    public init(scenario: Scenario, policies: [ComparedPolicy], invalidationNs: [UInt64], seed: UInt64 = 1) {
        self.scenario = scenario
        self.policies = policies
        self.invalidationNs = invalidationNs
        self.seed = seed
    }

    /// Policy-major: every latency of the first policy, then of the next.
    public func run() throws -> [PolicyRun] {
        var runs: [PolicyRun] = []
        for p in policies {
            for ns in invalidationNs { runs.append(try Self.measure(scenario, policy: p, invalidationNs: ns, seed: seed).run) }
        }
        return runs
    }

    /// One run, with its outcome (for a page of that run).
    public static func measure(_ scenario: Scenario, policy: ComparedPolicy, invalidationNs: UInt64, seed: UInt64) throws -> (run: PolicyRun, outcome: ScenarioOutcome) {
        var options = ScenarioRunner.Options(seed: seed)
        options.record = true
        let outcome: ScenarioOutcome
        do {
            outcome = try ScenarioRunner(scenario: scenario.overriding(policy: policy, invalidationNs: invalidationNs), options: options).run()
        } catch {
            throw Failure(description: "\(scenario.name) under \(policy.rawValue) at \(invalidationNs) ns: \(error)")
        }
        guard let rec = outcome.recording else { throw Failure(description: "the run recorded nothing") }
        let r = outcome.result
        let (exposure, _) = rec.exposure
        let pct = exposure.percentiles([0.5, 0.99])
        let start = rec.totalsAtStart, end = rec.totalsAtEnd
        let run = PolicyRun(
            policy: policy, invalidationNs: invalidationNs,
            timedNs: rec.timedPhaseEndNs &- rec.timedPhaseStartNs,
            buffersCycled: rec.buffersCycled, bytesCycled: rec.bytesCycled,
            deviceBytes: r.devices.reduce(0) { $0 &+ $1.bytesRead &+ $1.bytesWritten },
            mapLatency: rec.mapLatency, unmapLatency: rec.unmapLatency,
            invalidations: end.invalidations &- start.invalidations, waits: end.waits &- start.waits,
            iovaPeakPages: rec.iovaPagesPeak, iovaEndPages: rec.iovaPagesAtEnd,
            exposureP50Ns: pct[0], exposureP99Ns: pct[1], exposureMaxNs: exposure.max, exposedPages: exposure.totalWeight,
            deferredUnmaps: rec.deferredUnmaps,
            flushes: rec.flushes, flushCount: rec.flushCount,
            violations: r.violationCount, violationSummaries: r.violations.prefix(5).map { "\($0)" })
        return (run, outcome)
    }
}
