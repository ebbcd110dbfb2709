import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD

/// Broken behaviour a run can inject to show the oracle catching it (oracle-strength checks).
public enum Breakage: String, CaseIterable, Sendable {
    /// The hardware completes IOTLB invalidations without applying them.
    case droppedIOTLBInvalidation = "dropped-iotlb-invalidation"
    /// The driver frees a DID before invalidating what is tagged with it.
    case didReleasedBeforeInvalidation = "did-released-before-invalidation"
    /// The core frees page-table pages before the unmap's flush.
    case tablesFreedBeforeFlush = "tables-freed-before-flush"
    /// The driver replaces through a non-present entry while claiming hitless.
    case replaceThroughNonPresent = "replace-through-non-present"
    /// PASID teardown without a PASID-cache invalidation.
    case pasidEntryClearedWithoutInvalidation = "pasid-cleared-without-cache-invalidation"
    /// PASID teardown without the page-request drain (no handler pass, no fault-work flush,
    /// no page-drain wait).
    case pageRequestDrainSkipped = "page-request-drain-skipped"
    /// Unmaps skip the device-TLB invalidation (ATS devices keep stale translations).
    case deviceTLBInvalidationSkipped = "device-tlb-invalidation-skipped"
    /// Unmaps free the table pages they unlink at once, outside the gather (before the flush).
    case tablesFreedOutsideGather = "tables-freed-outside-gather"
    /// Untrusted devices get a flush queue under the lazy policy (deferred unmaps they can use).
    case flushQueueForUntrusted = "flush-queue-for-untrusted"
    /// The DMA API frees an IOVA without unmapping it (the next map lands on a live range).
    case iovaFreedWithoutUnmap = "iova-freed-without-unmap"
    /// A failed group domain change leaves one device on the new domain (needs injected faults).
    case incompleteGroupRollback = "incomplete-group-rollback"
    /// Devices report a PASID stopped without waiting for its translation requests.
    case stopIgnoresTranslations = "stop-ignores-translations"
    /// The PASID drain's last wait lacks page drain (PD).
    case pageDrainWaitSkipped = "page-drain-wait-skipped"
    /// The DMA API ignores the device's DMA mask when it allocates IOVAs.
    case dmaMaskIgnored = "dma-mask-ignored"
    /// Deferred DMA unmaps free their unlinked table pages before the flush queue's flush.
    case deferredTablesFreedAtOnce = "deferred-tables-freed-at-once"
    /// A PASID drain keeps the PASID's partial page requests (a later group takes them in).
    case partialsKeptAtTeardown = "partials-kept-at-teardown"
    /// A clearing dirty read does not flush the IOTLB (writes through cached translations
    /// with D set are lost to the next read).
    case dirtyClearWithoutFlush = "dirty-clear-without-flush"
    /// The driver drops the guest's invalidations (HWPT_INVALIDATE on a nested HWPT does
    /// nothing): guest unmaps leave nested translations cached.
    case guestInvalidationDropped = "guest-invalidation-dropped"
    /// A nest parent's flushes skip the nested children's tags: a host unmap of guest RAM
    /// leaves nested translations of it cached.
    case parentFlushSkipsNested = "parent-flush-skips-nested"
    /// Unmap flushes set IH although they freed table pages: paging-structure caches keep
    /// pointing at them and a walk goes through a freed page.
    case hintAfterFreeingTables = "hint-after-freeing-tables"
}

/// Runs a `Scenario` on a fresh `Machine`: probes, runs timed actions and workloads in
/// virtual time, tears everything down and checks the expectations. With `tolerant` (fault
/// sweeps) a failing step is recorded and checked for rollback, and the run goes on.
public final class ScenarioRunner {
    public struct Options: Sendable {
        public var seed: UInt64
        /// Record a failing step and continue (fault sweeps) instead of stopping the run.
        public var tolerant = false
        public var trace = false
        public var faultMode: FaultInjector.Mode = .off
        public var breakage: Set<Breakage> = []
        /// Record exposure windows, flushes, DMA-API latencies and a counter timeline
        /// (`ScenarioOutcome.recording`): for `compare` and the HTML pages.
        public var record = false
        public init(seed: UInt64) { self.seed = seed }
    }

    /// A step that failed, or in which an injected fault fired.
    public struct StepRecord: Sendable {
        public var time: UInt64
        public var label: String
        public var line: Int
        /// The error the step returned (nil: it succeeded).
        public var error: String?
        /// An injected fault fired during the step.
        public var injected: Bool
        /// What the failed step changed that it should have rolled back.
        public var notRolledBack: [String]
        /// The action expected this failure (`expect-error`): the run went on.
        public var expected = false
    }

    /// A run already happened (a runner runs once: its machine holds that run's state).
    public struct AlreadyRan: Error, CustomStringConvertible {
        public var description: String { "a ScenarioRunner runs its scenario once" }
    }

    public let scenario: Scenario
    public let options: Options

    /// Builds the machine the scenario describes (it runs on `run()`).
    public init(scenario: Scenario, options: Options) throws {
        self.scenario = scenario
        self.options = options
        m = try Machine(seed: options.seed, memorySize: scenario.machine.memoryMiB << 20, unitConfigurations: scenario.units.map(\.configuration),
                        policy: scenario.machine.policy, cpus: scenario.machine.cpus,
                        pagingStage: scenario.machine.pagingStage, pagingLevels: scenario.machine.pagingLevels,
                        smmuStage: scenario.machine.pagingStage.map { $0 == .first ? .s1 : .s2 })
        if scenario.machine.singleFlushQueue {
            m.vtdDriver?.shadowOnFlush = true
            m.smmuDriver?.shadowOnFlush = true
        }
        if options.record {
            let r = RunRecorder()
            m.oracle.recorder = r
            recorder = r
        }
    }

    /// What the run records (`Options.record`), or nil.
    var recorder: RunRecorder?

    // Run state.
    let m: Machine
    var ran = false
    var devices: [Device] = []
    var endpoints: [PCIeEndpoint] = []
    var userDomains: [String: IOMMUDomain] = [:]
    var pasids: [String: PASID] = [:]
    var sets: [LiveBuffers] = []
    var streams: [DMAStreamEngine?] = []
    var churns: [ChurnState?] = []
    var rings: [RingState?] = []
    var atsStreams: [ATSStreamEngine?] = []
    var faultHandlers: [FaultHandlerState?] = []
    // SVA and user fault queues (ScenarioRunner+PageFaults.swift).
    var processes: [String: Process] = [:]
    var regions: [String: Region] = [:]
    var binds: [String: SVAHandle] = [:]
    var faultQueues: [String: FaultQueue] = [:]
    /// Pages user-space fault handlers mapped, per domain (unmapped before the domain goes).
    var userFaultPages: [ObjectIdentifier: (domain: IOMMUDomain, pages: Set<UInt64>)] = [:]
    var userAutoResponses = 0
    // The VMM role (ScenarioRunner+IOMMUFD.swift): contexts, named objects, bound devices.
    var contexts: [String: IOMMUFDContext] = [:]
    var iommufdNames: [String: (context: String, id: UInt32)] = [:]
    var boundDevices: [Int: (context: String, id: UInt32)] = [:]
    var iommufdFaults: [String: FaultObject] = [:]
    var contextProcesses: [String: Process] = [:]
    /// The guest's page tables (ScenarioRunner+Guest.swift).
    var guestTables: [String: GuestPageTable] = [:]
    /// Pages reported by the dirty reads of the run.
    var dirtyPagesReported = 0
    var log: [(time: UInt64, text: String)] = []
    var records: [StepRecord] = []
    /// Why the run stopped early (a failed step of a plain run, a budget), or nil.
    var abort: Stop?
    /// The action being performed, when it expects an error or an update path.
    var watch: ActionWatch?
    /// Actions that did not fail or update as their `expect-error` / `expect-path` said.
    var actionExpectationFailures: [String] = []
    /// DIDs named domains held, per unit index, and PASID values names got
    /// (ScenarioRunner+Observed.swift).
    var observedDIDs: [String: [Int: [UInt16]]] = [:]
    var observedPASIDs: [String: UInt32] = [:]
    var softwareTrack: UInt32 = 0
    var churnRounds = 0
    /// Timed items performed after their time (software before them ran past it).
    var lateItems: [RunResult.LateItem] = []
    /// When each workload first started (nil: never).
    var workloadStarts: [UInt64?] = []

    final class ChurnState {
        let set: Int
        let periodNs: UInt64
        var running = false
        var generation: UInt64 = 0
        var rounds = 0
        init(set: Int, periodNs: UInt64) { self.set = set; self.periodNs = periodNs }
    }

    final class RingState {
        let spec: Scenario.DMARing
        let buffers: LiveBuffers
        var cpus: [Int]
        var stream: DMAStreamEngine?
        var running = false
        var generation: UInt64 = 0
        var started = false
        var recycles = 0
        /// The scatter-list mapping of each buffer (multi-page, not contiguous).
        var scatter: [DMAScatterMapping?]
        /// The frames every buffer maps (`shared`), taken once.
        var sharedFrames: [UInt64] = []
        /// The device's DMA API figures once its ring is torn down.
        var statistics: DMAStatistics?
        init(spec: Scenario.DMARing, buffers: LiveBuffers) {
            self.spec = spec; self.buffers = buffers; self.cpus = [Int](repeating: 0, count: buffers.count)
            self.scatter = [DMAScatterMapping?](repeating: nil, count: buffers.count)
        }
    }

    /// Runs the scenario. Throws `StepFailed` when a step fails (unless `tolerant`) and
    /// `BudgetExceeded` when the run goes past `machine.max-events` or `machine.max-wall-s`;
    /// either carries what the run had done by then.
    public func run() throws -> ScenarioOutcome {
        guard !ran else { throw AlreadyRan() }
        ran = true
        let start = ContinuousClock.now
        let sc = scenario
        let s = m.scheduler
        s.yieldPolicy = sc.machine.yield
        setBudget()
        if options.trace {
            m.platform.trace.enabled = true
            softwareTrack = m.platform.trace.track(named: "software")
        }
        applyBreakage()
        m.platform.faults.mode = options.faultMode

        // Probe.
        let probed = step("probe devices", line: 0) { () throws(IOMMUError) in
            let pairs = try m.addDevices(sc.devices.map(\.description), ats: sc.devices.map(\.ats), pri: sc.devices.map(\.pri))
            devices = pairs.map(\.0)
            endpoints = pairs.map(\.1)
        }
        if probed {
            for (i, e) in endpoints.enumerated() {
                e.maxPayloadBytes = sc.devices[i].maxPayload
                e.maxReadRequestBytes = sc.devices[i].maxReadRequest
                e.misbehaviour = sc.devices[i].misbehaviour
                e.stopIgnoresTranslations = options.breakage.contains(.stopIgnoresTranslations)
            }
            for g in m.core.groups {
                note("\(g) [\(g.devices.map(\.name).joined(separator: ", "))] probed with default \(g.defaultDomain.map { "\($0)" } ?? "none")")
            }
            // Device drivers set their DMA masks at probe (Linux dma_set_mask).
            for (i, d) in sc.devices.enumerated() where d.dmaMaskBits < 64 {
                step("\(d.description.name): dma_set_mask(\(d.dmaMaskBits) bits)", line: 0) { () throws(IOMMUError) in
                    try m.dma.setMask(devices[i], bits: d.dmaMaskBits)
                }
            }
            observeDomainIDs()
            setUpWorkloads()
            timedPhase()
        }
        // A run stopped early is not torn down: its machine goes as it is.
        if abort == nil { teardown(probed: probed) }
        noteBudget()
        if let abort { throw stopped(abort, outcome: outcome(since: start, checkExpectations: false)) }
        return outcome(since: start, checkExpectations: true)
    }

    /// What the run did so far; expectations are checked only for a run that ended.
    func outcome(since start: ContinuousClock.Instant, checkExpectations check: Bool) -> ScenarioOutcome {
        let wall = ContinuousClock.now - start
        let faults = devices.map { ($0.name, $0.faultCount) }
        let dma = rings.lazy.compactMap { $0 }.first?.statistics ?? DMAStatistics()
        let result = RunResult(scenario: scenario.name, seed: options.seed, machine: m, endpoints: endpoints, faultsReported: faults,
                               dmaAPI: dma, userAutoResponses: userAutoResponses, log: log, churnRounds: churnRounds,
                               lateItems: lateItems, workloads: workloadSummaries(), queueCounters: queueCounters,
                               domainIDs: domainIDRecords, pasids: pasidRecords,
                               wallNs: UInt64(wall.components.seconds) * 1_000_000_000 + UInt64(wall.components.attoseconds / 1_000_000_000))
        return ScenarioOutcome(result: result, steps: records, expectationFailures: check ? checkExpectations(result) : [],
                               trace: options.trace ? m.platform.trace : nil, recording: recorder, injected: m.platform.faults.fired.map { ($0.point.name, $0.hit) },
                               pointHitsByName: m.platform.faults.hits.map { ($0.key.name, $0.value) }.sorted { $0.0 < $1.0 })
    }


    // MARK: Steps

    func note(_ text: String) { log.append((m.scheduler.now, text)) }

    /// Runs one software step: traces it, records failures and injected faults, checks that a
    /// failed step rolled back. A failure with an errno the action being performed expects
    /// (`expect-error`) is recorded as expected and never stops the run; any other stops a
    /// plain run. Returns whether it succeeded.
    @discardableResult
    func step(_ label: String, line: Int, rollback: (() -> Void)? = nil, _ body: () throws(IOMMUError) -> Void) -> Bool {
        noteBudget()
        guard abort == nil else { return false }
        let fired = m.platform.faults.fired.count
        let expecting = watch?.errors.isEmpty == false
        // A failure the action expects must roll back as any other: look in plain runs too.
        let before = options.tolerant || expecting ? StateSnapshot(m) : nil
        let begin = m.scheduler.now
        var failure: IOMMUError?
        do { try body() } catch { failure = error }
        // A step cut short by the budget (its waits could run no event) is not its own failure.
        noteBudget()
        if abort != nil { return false }
        let injected = m.platform.faults.fired.count > fired
        if m.platform.trace.enabled {
            let t = m.platform.trace
            t.record(TraceEvent(time: m.scheduler.now, kind: .span, track: softwareTrack, a: t.label(label), b: begin, c: m.scheduler.now))
        }
        guard let failure else {
            if injected { records.append(StepRecord(time: begin, label: label, line: line, error: nil, injected: true, notRolledBack: [])) }
            return true
        }
        rollback?()
        let expected = watch?.errors.contains(failure.errnoName) ?? false
        let wanted = expecting && !expected ? " (expected \(watch?.errors.sorted().joined(separator: " or ") ?? ""))" : ""
        var record = StepRecord(time: begin, label: label, line: line, error: "\(failure)\(wanted)", injected: injected,
                                notRolledBack: [], expected: expected)
        if let before { record.notRolledBack = StateSnapshot(m).differences(from: before) }
        records.append(record)
        if expected {
            // The file said this step fails so: the run goes on.
            watch?.expectedFailures.append(record)
            note("\(label) failed as expected: \(failure)")
            return false
        }
        watch?.otherFailures += 1
        note("\(label) failed: \(failure)\(wanted)")
        if !options.tolerant { abort = .step(record) }
        return false
    }

    func applyBreakage() {
        var bugs: InjectedBugs = []
        for b in options.breakage {
            switch b {
            case .droppedIOTLBInvalidation:
                for u in m.units {
                    u.descriptorFaults[InvalidationDescriptor.iotlbType] = .drop
                    u.descriptorFaults[InvalidationDescriptor.pasidIOTLBType] = .drop
                }
                for u in m.smmuUnits { u.dropsTLBInvalidations = true }
            case .didReleasedBeforeInvalidation: bugs.insert(.releaseDIDBeforeFlush)
            case .tablesFreedBeforeFlush: bugs.insert(.freeTablesBeforeFlush)
            case .replaceThroughNonPresent: bugs.insert(.replaceThroughNonPresent)
            case .pasidEntryClearedWithoutInvalidation: bugs.insert(.skipPASIDCacheInvalidation)
            case .pageRequestDrainSkipped: bugs.insert(.skipPageRequestDrain)
            case .deviceTLBInvalidationSkipped: bugs.insert(.skipDeviceTLBInvalidation)
            case .tablesFreedOutsideGather: bugs.insert(.freeTablesOutsideGather)
            case .flushQueueForUntrusted: bugs.insert(.flushQueueForUntrusted)
            case .iovaFreedWithoutUnmap: bugs.insert(.freeIOVAWithoutUnmap)
            case .incompleteGroupRollback: bugs.insert(.incompleteGroupRollback)
            case .stopIgnoresTranslations: break // on the endpoints, once probed
            case .pageDrainWaitSkipped: bugs.insert(.skipPageDrainWait)
            case .dmaMaskIgnored: bugs.insert(.ignoreDMAMask)
            case .deferredTablesFreedAtOnce: bugs.insert(.freeDeferredTablesAtOnce)
            case .partialsKeptAtTeardown: bugs.insert(.keepPartialsAtTeardown)
            case .dirtyClearWithoutFlush: bugs.insert(.dirtyClearWithoutFlush)
            case .guestInvalidationDropped: bugs.insert(.dropGuestInvalidation)
            case .parentFlushSkipsNested: bugs.insert(.parentFlushSkipsNested)
            case .hintAfterFreeingTables: bugs.insert(.hintAfterFreeingTables)
            }
        }
        m.core.injectedBugs = bugs
    }

    // MARK: Timed phase

    enum Item { case action(Scenario.TimedAction), start(Int), stop(Int) }

    func timedPhase() {
        // At one instant: the file's actions first (in file order), then workload starts and stops.
        var items: [(at: UInt64, order: Int, item: Item)] = []
        for a in scenario.actions { items.append((a.at, items.count, .action(a))) }
        for (i, w) in scenario.workloads.enumerated() {
            items.append((w.start, items.count, .start(i)))
            if let stop = w.stop { items.append((stop, items.count, .stop(i))) }
        }
        items.sort { ($0.at, $0.order) < ($1.at, $1.order) }
        let s = m.scheduler
        // Items due before the timeline began (probing takes virtual time) are not late.
        let begin = s.now
        if let rec = recorder {
            rec.sampleEveryNs = max(1_000, (scenario.endNs &- min(begin, scenario.endNs)) / 200)
            rec.timedPhaseBegan(m)
        }
        var previousDue: UInt64 = 0
        for it in items {
            defer { previousDue = it.at }
            s.run(until: it.at)
            noteBudget()
            guard abort == nil else { return }
            if s.now > max(it.at, begin) {
                let label: String
                switch it.item {
                case .start(let i): label = "start \(scenario.workloads[i].name)"
                case .stop(let i): label = "stop \(scenario.workloads[i].name)"
                case .action(let a): label = a.label
                }
                lateItems.append(.init(label: label, dueNs: it.at, ranNs: s.now))
                // Items at one instant wait for the ones before them: the log names the first
                // late item of each instant (a step took longer than the gap to it); the report
                // counts all.
                if it.at > previousDue {
                    note("\(label) runs late: due at \(it.at) ns, software before it ran until \(s.now) ns")
                }
            }
            switch it.item {
            case .start(let i): startWorkload(i, line: scenario.workloads[i].source.line)
            case .stop(let i): stopWorkload(i)
            case .action(let a):
                perform(a)
                observeDomainIDs()
            }
        }
        s.run(until: scenario.endNs)
        recorder?.timedPhaseEnded(m)
        noteBudget()
    }

}

/// What a scenario run produced: the counters and log, every failed step, unmet
/// expectations, and the trace when one was asked for.
public struct ScenarioOutcome: @unchecked Sendable {
    public var result: RunResult
    public var steps: [ScenarioRunner.StepRecord]
    public var expectationFailures: [String]
    public var trace: TraceBuffer?
    /// What the run recorded (`Options.record`), or nil.
    public var recording: RunRecorder?
    /// Injected faults that fired: point and global hit number.
    public var injected: [(String, Int)]
    /// Fault-point hits by point name (with the injector counting).
    public var pointHitsByName: [(String, Int)]
    /// All fault-point hits counted.
    public var pointHits: Int { pointHitsByName.reduce(0) { $0 + $1.1 } }
}
