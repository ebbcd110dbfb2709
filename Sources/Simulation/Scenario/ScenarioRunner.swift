import Platform
import Formats
import Hardware
import Kernel

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
    }

    public struct StepFailed: Error, CustomStringConvertible {
        public var scenario: String
        public var record: StepRecord
        public var description: String {
            "\(record.line > 0 ? "line \(record.line): " : "")step '\(record.label)' of \(scenario) failed at \(record.time) ns: \(record.error ?? "?")"
        }
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
        m = try Machine(seed: options.seed, memorySize: scenario.machine.memoryMiB << 20, units: scenario.units.map(\.configuration),
                        policy: scenario.machine.policy, cpus: scenario.machine.cpus)
    }

    // Run state.
    let m: Machine
    private var ran = false
    var devices: [Device] = []
    var endpoints: [PCIeEndpoint] = []
    var userDomains: [String: IOMMUDomain] = [:]
    private var pasids: [String: PASID] = [:]
    private var sets: [LiveBuffers] = []
    private var streams: [DMAStreamEngine?] = []
    private var churns: [ChurnState?] = []
    private var rings: [RingState?] = []
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
    private var log: [(time: UInt64, text: String)] = []
    private(set) var records: [StepRecord] = []
    var abort: StepFailed?
    private var softwareTrack: UInt32 = 0
    private var churnRounds = 0

    final class ChurnState {
        let set: Int
        let periodNs: UInt64
        var running = false
        var generation: UInt64 = 0
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
        /// The device's DMA API figures once its ring is torn down.
        var statistics: DMAStatistics?
        init(spec: Scenario.DMARing, buffers: LiveBuffers) {
            self.spec = spec; self.buffers = buffers; self.cpus = [Int](repeating: 0, count: buffers.count)
        }
    }

    /// Runs the scenario. Throws `StepFailed` when a step fails (unless `tolerant`).
    public func run() throws -> ScenarioOutcome {
        guard !ran else { throw AlreadyRan() }
        ran = true
        let start = ContinuousClock.now
        let sc = scenario
        let s = m.scheduler
        s.yieldPolicy = sc.machine.yield
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
            }
            for g in m.core.groups {
                note("\(g) [\(g.devices.map(\.name).joined(separator: ", "))] probed with default \(g.defaultDomain.map { "\($0)" } ?? "none")")
            }
            setUpWorkloads()
            timedPhase()
        }
        if let abort { throw abort }
        teardown(probed: probed)
        if let abort { throw abort }

        let wall = ContinuousClock.now - start
        let faults = devices.map { ($0.name, $0.faultCount) }
        let dma = rings.lazy.compactMap { $0 }.first?.statistics ?? DMAStatistics()
        let result = RunResult(scenario: sc.name, seed: options.seed, machine: m, endpoints: endpoints, faultsReported: faults,
                               dmaAPI: dma, userAutoResponses: userAutoResponses, log: log, churnRounds: churnRounds,
                               wallNs: UInt64(wall.components.seconds) * 1_000_000_000 + UInt64(wall.components.attoseconds / 1_000_000_000))
        return ScenarioOutcome(result: result, steps: records, expectationFailures: checkExpectations(result),
                               trace: options.trace ? m.platform.trace : nil, injected: m.platform.faults.fired.map { ($0.point.name, $0.hit) },
                               pointHitsByName: m.platform.faults.hits.map { ($0.key.name, $0.value) }.sorted { $0.0 < $1.0 })
    }


    // MARK: Steps

    func note(_ text: String) { log.append((m.scheduler.now, text)) }

    /// Runs one software step: traces it, records failures and injected faults, checks that a
    /// failed step rolled back. Returns whether it succeeded.
    @discardableResult
    func step(_ label: String, line: Int, rollback: (() -> Void)? = nil, _ body: () throws(IOMMUError) -> Void) -> Bool {
        guard abort == nil else { return false }
        let fired = m.platform.faults.fired.count
        let before = options.tolerant ? StateSnapshot(m) : nil
        let begin = m.scheduler.now
        var failure: IOMMUError?
        do { try body() } catch { failure = error }
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
        var record = StepRecord(time: begin, label: label, line: line, error: "\(failure)", injected: injected, notRolledBack: [])
        if let before { record.notRolledBack = StateSnapshot(m).differences(from: before) }
        records.append(record)
        note("\(label) failed: \(failure)")
        if !options.tolerant { abort = StepFailed(scenario: scenario.name, record: record) }
        return false
    }

    private func applyBreakage() {
        var bugs: InjectedBugs = []
        for b in options.breakage {
            switch b {
            case .droppedIOTLBInvalidation:
                for u in m.units {
                    u.descriptorFaults[InvalidationDescriptor.iotlbType] = .drop
                    u.descriptorFaults[InvalidationDescriptor.pasidIOTLBType] = .drop
                }
            case .didReleasedBeforeInvalidation: bugs.insert(.releaseDIDBeforeFlush)
            case .tablesFreedBeforeFlush: bugs.insert(.freeTablesBeforeFlush)
            case .replaceThroughNonPresent: bugs.insert(.replaceThroughNonPresent)
            case .pasidEntryClearedWithoutInvalidation: bugs.insert(.skipPASIDCacheInvalidation)
            case .pageRequestDrainSkipped: bugs.insert(.skipPageRequestDrain)
            case .deviceTLBInvalidationSkipped: bugs.insert(.skipDeviceTLBInvalidation)
            }
        }
        m.core.injectedBugs = bugs
    }

    // MARK: Workloads

    private func setUpWorkloads() {
        sets = scenario.buffers.map { b in
            LiveBuffers(name: b.name, count: b.count, length: UInt64(b.pages) * 4096,
                        writeOnly: b.permissions == .write, readOnly: b.permissions == .read)
        }
        // One slot per workload in each table; the workload's kind fills one of them.
        for w in scenario.workloads {
            var stream: DMAStreamEngine?, churn: ChurnState?, ring: RingState?
            var ats: ATSStreamEngine?, handler: FaultHandlerState?
            switch w.kind {
            case .dma(let d):
                let e = endpoints[d.device]
                let engine = DMAStreamEngine(endpoint: e, sets: d.buffers.map { sets[$0] }, pasid: nil, intervalNs: d.intervalNs,
                                             burst: d.burst, direction: d.direction, minBytes: d.minBytes, maxBytes: d.maxBytes,
                                             walkAccessNs: scenario.units[scenario.devices[d.device].description.unit].walkAccessNs,
                                             sequential: d.sequential)
                attachSampler(engine)
                stream = engine
            case .churn(let c):
                churn = ChurnState(set: c.buffers, periodNs: c.periodNs)
            case .ats(let a):
                ats = makeATSStream(a)
            case .faultHandler(let h):
                handler = FaultHandlerState(spec: h)
            case .dmaRing(let r):
                let b = LiveBuffers(name: w.name, count: r.count, length: r.size,
                                    writeOnly: r.direction == .fromDevice, readOnly: r.direction == .toDevice)
                let state = RingState(spec: r, buffers: b)
                let e = endpoints[r.device]
                let engine = DMAStreamEngine(endpoint: e, sets: [b], pasid: nil, intervalNs: r.intervalNs, burst: 1,
                                             direction: .both, minBytes: 256, maxBytes: Int(min(r.size, 4096)),
                                             walkAccessNs: scenario.units[scenario.devices[r.device].description.unit].walkAccessNs)
                attachSampler(engine)
                state.stream = engine
                ring = state
            }
            streams.append(stream); churns.append(churn); rings.append(ring)
            atsStreams.append(ats); faultHandlers.append(handler)
        }
    }

    /// Counters for the trace, sampled by DMA streams (no extra events: tracing does not
    /// change the run).
    private func attachSampler(_ engine: DMAStreamEngine) {
        guard options.trace else { return }
        let t = m.platform.trace
        let units = m.units
        let unitTracks = units.map(\.trackID)
        let hitRate = t.label("IOTLB hit rate %"), depth = t.label("invalidation queue depth")
        engine.sampler = { [unowned t] in
            let now = units.first?.platform.scheduler.now ?? 0
            for (i, u) in units.enumerated() {
                let c = u.counters
                let total = c.iotlbHits &+ c.iotlbMisses
                let rate = total == 0 ? 0 : c.iotlbHits &* 100_000 / total
                t.record(TraceEvent(time: now, kind: .counter, track: unitTracks[i], a: hitRate, b: rate))
                t.record(TraceEvent(time: now, kind: .counter, track: unitTracks[i], a: depth, b: UInt64(u.invalidationQueueDepth) * 1000))
            }
        }
    }

    private func startWorkload(_ i: Int, line: Int) {
        let spec = scenario.workloads[i]
        if let a = atsStreams[i] {
            a.start()
            note("\(spec.name) starts")
        } else if let h = faultHandlers[i] {
            startFaultHandler(h)
            note("\(spec.name) starts")
        } else if let st = streams[i] {
            if case .dma(let d) = spec.kind, let p = d.pasid {
                guard let pasid = pasids[p] else {
                    // The PASID was never allocated (its allocation failed in a sweep): nothing to run.
                    note("\(spec.name) not started: PASID \(p) is not allocated")
                    return
                }
                st.pasid = pasid
            }
            st.start()
            note("\(spec.name) starts")
        } else if let c = churns[i] {
            guard !c.running else { return }
            c.running = true
            c.generation &+= 1
            scheduleChurn(c, generation: c.generation)
        } else if let r = rings[i] {
            guard !r.running else { return }
            if !r.started {
                r.started = true
                mapRing(r, label: spec.name, line: line)
            }
            r.running = true
            r.generation &+= 1
            r.stream?.start()
            scheduleRecycle(r, generation: r.generation)
        }
    }

    private func stopWorkload(_ i: Int) {
        if let a = atsStreams[i], a.running {
            a.stop()
            note("\(scenario.workloads[i].name) stops: \(a.summary)")
        }
        if let h = faultHandlers[i], h.running {
            h.running = false
            note("\(scenario.workloads[i].name) stops")
        }
        streams[i]?.stop()
        churns[i]?.running = false
        if let r = rings[i] { r.running = false; r.stream?.stop() }
    }

    private func scheduleChurn(_ c: ChurnState, generation: UInt64) {
        m.scheduler.schedule(after: c.periodNs, kind: .software) { [weak self, weak c] in
            guard let self, let c, c.running, c.generation == generation, self.abort == nil else { return }
            self.churnOnce(c)
            self.scheduleChurn(c, generation: generation)
        }
    }

    /// Unmaps a random posted buffer of the set (strict: invalidated before return) and maps
    /// it again to fresh frames, as a driver recycling buffers does.
    private func churnOnce(_ c: ChurnState) {
        let set = sets[c.set]
        let spec = scenario.buffers[c.set]
        guard set.mapped, let domain = set.domain else { return }
        let k = Int(m.scheduler.random(below: UInt64(set.count)))
        guard set.live[k] else { return }
        set.live[k] = false
        let iova = set.addresses[k]
        let size = set.length
        let ok = step("churn \(spec.name)[\(k)]: unmap", line: spec.source.line) { () throws(IOMMUError) in
            let n = try m.core.unmap(domain, iova: iova, size: size)
            guard n == size else { throw .ioError("unmapped only \(n) of \(size) bytes") }
        }
        guard ok else { return }
        var fresh: [UInt64] = []
        let mapped = step("churn \(spec.name)[\(k)]: map", line: spec.source.line, rollback: { [self] in
            if !fresh.isEmpty { _ = try? m.core.unmap(domain, iova: iova, size: UInt64(fresh.count) * 4096) }
        }) { () throws(IOMMUError) in
            for p in 0..<spec.pages {
                let f = try m.allocateBuffer()
                try m.core.map(domain, iova: iova + UInt64(p) * 4096, physical: f, size: 4096, permissions: spec.permissions)
                fresh.append(f)
            }
        }
        if mapped {
            set.frames[k] = fresh
            set.live[k] = true
            churnRounds += 1
        }
    }

    private func mapRing(_ r: RingState, label: String, line: Int) {
        let dev = devices[r.spec.device]
        let cpus = scenario.machine.cpus
        for i in 0..<r.buffers.count {
            let cpu = i % cpus
            step("\(label): dma_map_page \(i)", line: line) { () throws(IOMMUError) in
                let a = try m.dma.mapPage(dev, physical: try m.allocateBuffer() + r.spec.offset, size: r.spec.size,
                                          direction: r.spec.direction, cpu: cpu)
                r.buffers.addresses[i] = a
                r.buffers.live[i] = true
                r.cpus[i] = cpu
            }
        }
        note("\(label): \(dev.name) mapped \(r.buffers.count) buffers with the DMA API")
    }

    private func scheduleRecycle(_ r: RingState, generation: UInt64) {
        m.scheduler.schedule(after: r.spec.recycleNs, kind: .software) { [weak self, weak r] in
            guard let self, let r, r.running, r.generation == generation, self.abort == nil else { return }
            self.recycleOnce(r)
            self.scheduleRecycle(r, generation: generation)
        }
    }

    /// Unmaps a random ring buffer through the DMA API (deferred under the lazy policy) and
    /// maps a fresh one from the other CPU.
    private func recycleOnce(_ r: RingState) {
        let dev = devices[r.spec.device]
        let k = Int(m.scheduler.random(below: UInt64(r.buffers.count)))
        guard r.buffers.live[k] else { return }
        r.buffers.live[k] = false
        let old = r.buffers.addresses[k], cpu = r.cpus[k]
        guard step("\(dev.name) dma_unmap_page", line: 0, { () throws(IOMMUError) in
            do throws(IOMMUError) { try m.dma.unmapPage(dev, address: old, size: r.spec.size, cpu: cpu) } catch {
                // The DMA layer decides whether a failed unmap kept the mapping (teardown then
                // unmaps it) or retired it (a strict unmap whose invalidation failed).
                if (try? m.dma.isMapped(dev, address: old)) == true { r.buffers.live[k] = true }
                throw error
            }
        }) else { return }
        let next = (cpu + 1) % scenario.machine.cpus
        step("\(dev.name) dma_map_page", line: 0) { () throws(IOMMUError) in
            let a = try m.dma.mapPage(dev, physical: try m.allocateBuffer() + r.spec.offset, size: r.spec.size,
                                      direction: r.spec.direction, cpu: next)
            r.buffers.addresses[k] = a
            r.buffers.live[k] = true
            r.cpus[k] = next
        }
    }

    // MARK: Timed phase

    private enum Item { case action(Scenario.TimedAction), start(Int), stop(Int) }

    private func timedPhase() {
        // At one instant: the file's actions first (in file order), then workload starts and stops.
        var items: [(at: UInt64, order: Int, item: Item)] = []
        for a in scenario.actions { items.append((a.at, items.count, .action(a))) }
        for (i, w) in scenario.workloads.enumerated() {
            items.append((w.start, items.count, .start(i)))
            if let stop = w.stop { items.append((stop, items.count, .stop(i))) }
        }
        items.sort { ($0.at, $0.order) < ($1.at, $1.order) }
        let s = m.scheduler
        for it in items {
            s.run(until: it.at)
            guard abort == nil else { return }
            switch it.item {
            case .start(let i): startWorkload(i, line: scenario.workloads[i].source.line)
            case .stop(let i): stopWorkload(i)
            case .action(let a): perform(a)
            }
        }
        s.run(until: scenario.endNs)
    }

    private func domain(named name: String) throws(IOMMUError) -> IOMMUDomain {
        if let d = userDomains[name] { return d }
        if let i = scenario.devices.firstIndex(where: { $0.description.name == name }) {
            guard let d = devices[i].attachedDomain, let g = devices[i].group else { throw .notFound("\(name) has no domain") }
            return g.defaultDomain ?? d
        }
        throw .notFound("domain \(name) is not allocated (its allocation failed or has not happened yet)")
    }

    private func group(_ device: Int) throws(IOMMUError) -> Group {
        guard let g = devices[device].group else { throw .noDevice("\(devices[device].name) has no group") }
        return g
    }

    private func pasid(_ name: String) throws(IOMMUError) -> PASID {
        guard let p = pasids[name] else { throw .notFound("PASID \(name) is not allocated") }
        return p
    }

    private func perform(_ a: Scenario.TimedAction) {
        let line = a.source.line
        let label = a.label
        switch a.action {
        case .allocDomain(let name, let device, let flags, let queue):
            step(label, line: line) { () throws(IOMMUError) in
                let d = try m.core.allocDomain(for: devices[device], flags: flags)
                if let queue {
                    do throws(IOMMUError) {
                        guard let q = faultQueues[queue] else { throw .notFound("fault queue \(queue) is not allocated") }
                        try m.core.setFaultQueue(q, for: d)
                    } catch { try? m.core.freeDomain(d); throw error }
                }
                userDomains[name] = d
            }
            if let d = userDomains[name] { note("\(name) = \(d) allocated") }
        case .freeDomain(let name):
            step(label, line: line) { () throws(IOMMUError) in
                let d = try domain(named: name)
                try unmapUserFaultPages(of: d)
                try m.core.freeDomain(d)
                userDomains[name] = nil
            }
        case .map(let b): mapSet(b, label: label, line: line)
        case .unmap(let b): unmapSet(b, label: label, line: line)
        case .claimOwner(let d): step(label, line: line) { () throws(IOMMUError) in try m.core.claimDMAOwner(try group(d)) }
        case .releaseOwner(let d): step(label, line: line) { () throws(IOMMUError) in try m.core.releaseDMAOwner(try group(d)) }
        case .attach(let name, let d):
            step(label, line: line) { () throws(IOMMUError) in try m.core.attach(try domain(named: name), to: try group(d)) }
        case .replace(let name, let d):
            if step(label, line: line, { () throws(IOMMUError) in try m.core.replace(try group(d), with: try domain(named: name)) }) {
                note("\(label): \(m.core.lastUpdatePath.rawValue) path")
            }
        case .detach(let name, let d):
            step(label, line: line) { () throws(IOMMUError) in try m.core.detach(try domain(named: name), from: try group(d)) }
        case .allocPASID(let name, let d):
            step(label, line: line) { () throws(IOMMUError) in pasids[name] = try m.core.allocGlobalPASID(for: devices[d]) }
        case .freePASID(let name):
            step(label, line: line) { () throws(IOMMUError) in
                try m.core.freeGlobalPASID(try pasid(name))
                pasids[name] = nil
            }
        case .attachPASID(let p, let d, let name):
            step(label, line: line) { () throws(IOMMUError) in
                let path = try m.core.attachPASID(try domain(named: name), to: devices[d], pasid: try pasid(p))
                note("\(label): \(path.rawValue)")
            }
        case .replacePASID(let p, let d, let name):
            step(label, line: line) { () throws(IOMMUError) in
                let path = try m.core.replacePASID(try domain(named: name), on: devices[d], pasid: try pasid(p))
                note("\(label): \(path.rawValue) path")
            }
        case .detachPASID(let p, let d, let name):
            step(label, line: line) { () throws(IOMMUError) in try m.core.detachPASID(try domain(named: name), from: devices[d], pasid: try pasid(p)) }
        case .reset(let d, let ns): reset(d, ns: ns, label: label, line: line)
        case .dma(let d, let address, let length, let count, let stride, let write, let p):
            let e = endpoints[d]
            let pa = p.flatMap { pasids[$0] }
            if let p, pa == nil { note("\(label) skipped: PASID \(p) is not allocated"); return }
            for i in 0..<count {
                let (addr, o) = address.addingReportingOverflow(UInt64(i) &* stride)
                if o { break }
                e.submit(write ? .write(addr, [UInt8](repeating: 0xEE, count: length), pasid: pa) : .read(addr, length: length, pasid: pa))
            }
            note(label)
        case .dmaBurst(let d, let pairs, let cpu):
            let dev = devices[d]
            var scratch: UInt64 = 0
            guard step("\(label): buffer", line: line, { () throws(IOMMUError) in scratch = try m.allocateBuffer() }) else { return }
            for _ in 0..<pairs {
                guard step(label, line: line, { () throws(IOMMUError) in
                    let a = try m.dma.mapPage(dev, physical: scratch, size: 4096, direction: .toDevice, cpu: cpu)
                    try m.dma.unmapPage(dev, address: a, size: 4096, cpu: cpu)
                }) else { break }
            }
            if let st = (try? m.dma.cookie(for: dev))??.statistics {
                note("\(label): \(st.fullQueueFlushes) full-queue flush(es), \(st.entriesFreed) entries freed, \(st.entriesPending) pending")
            }
        case .start(let w): startWorkload(w, line: line)
        case .stop(let w): stopWorkload(w)
        case .retarget(let w, let b):
            streams[w]?.sets = b.map { sets[$0] }
            note(label)
        case .inject(let mode):
            // A sweep's own mode wins: the file's injections apply only to plain runs.
            if options.faultMode == .off { m.platform.faults.mode = mode }
            note(label)
        case .descriptorFault(let u, let type, let fault):
            m.units[u].descriptorFaults[type] = fault
            note(label)
        case .createProcess, .mmap, .munmap, .exitProcess, .svaBind, .svaUnbind, .allocFaultQueue, .closeFaultQueue:
            performPageFaultAction(a)
        }
    }

    /// Maps every buffer of a set (fresh frames, or those of the set it is `like`). A failure
    /// part-way unmaps what this action mapped, as a driver's error path does.
    private func mapSet(_ b: Int, label: String, line: Int) {
        let spec = scenario.buffers[b]
        let set = sets[b]
        guard !set.mapped else { note("\(label): already mapped"); return }
        var done: [(UInt64, UInt64)] = []
        var target: IOMMUDomain?
        let ok = step(label, line: line, rollback: { [self] in
            if let target { for (iova, size) in done { _ = try? m.core.unmap(target, iova: iova, size: size) } }
        }) { () throws(IOMMUError) in
            let d = try domain(named: spec.domain)
            let identity = d.type == .identity
            for k in 0..<spec.count {
                var frames: [UInt64] = []
                if let like = spec.like {
                    frames = sets[like].frames[k]
                    guard frames.count == spec.pages else { throw .invalidArgument("\(sets[like].name) is not mapped") }
                } else {
                    for _ in 0..<spec.pages { frames.append(try m.allocateBuffer()) }
                }
                set.frames[k] = frames
                if identity {
                    set.addresses[k] = frames[0]
                    continue
                }
                target = d
                let iova = spec.iova + UInt64(k) * spec.stride
                for (p, f) in frames.enumerated() {
                    try m.core.map(d, iova: iova + UInt64(p) * 4096, physical: f, size: 4096, permissions: spec.permissions)
                    done.append((iova + UInt64(p) * 4096, 4096))
                }
                set.addresses[k] = iova
            }
            set.domain = identity ? nil : d
        }
        guard ok else { return }
        set.mapped = true
        for k in 0..<set.count { set.live[k] = true }
        note("\(label) (\(spec.count) × \(spec.pages) page(s))")
    }

    private func unmapSet(_ b: Int, label: String, line: Int) {
        let set = sets[b]
        guard set.mapped else { return }
        for k in 0..<set.count { set.live[k] = false }
        set.mapped = false
        guard let d = set.domain else { return }
        for k in 0..<set.count {
            let iova = set.addresses[k]
            step("\(label)[\(k)]", line: line) { () throws(IOMMUError) in _ = try m.core.unmap(d, iova: iova, size: set.length) }
        }
        set.domain = nil
    }

    /// Device reset (Linux pci_dev_reset_iommu_prepare/done): the group goes to the blocked
    /// domain for the reset and back to the domain it had.
    private func reset(_ d: Int, ns: UInt64, label: String, line: Int) {
        guard let g = devices[d].group, let previous = g.domain else { return }
        let blocked = devices[d].driver.blockedDomain
        guard step("\(label): block", line: line, { () throws(IOMMUError) in try m.core.replace(g, with: blocked) }) else { return }
        m.scheduler.advance(by: ns)
        if step("\(label): restore", line: line, { () throws(IOMMUError) in try m.core.replace(g, with: previous) }) {
            note("\(label): blocked for \(ns) ns, back in \(previous)")
        }
    }

    // MARK: Teardown

    /// Stops traffic, lets it drain, gives everything back in the order a kernel does, shuts
    /// the driver down and lets the oracle check for leaks.
    private func teardown(probed: Bool) {
        let s = m.scheduler
        guard probed else {
            m.driver.shutdown()
            m.freeBuffers()
            m.oracle.checkTeardown(core: m.core, driver: m.driver)
            return
        }
        // Devices stop starting accesses; user-space fault handlers keep serving until the
        // accesses in flight have ended (as a VMM quiesces a device before tearing it down).
        for i in scenario.workloads.indices where faultHandlers[i] == nil { stopWorkload(i) }
        s.run(until: s.now + 20_000)
        let deadline = s.now + 20_000_000
        while atsStreams.contains(where: { ($0?.inFlight ?? 0) > 0 }) && s.runNext(notAfter: deadline) {}
        for i in scenario.workloads.indices { stopWorkload(i) }
        // DMA rings: unmap what is still posted; the flush-queue timer covers the rest.
        for r in rings.compactMap({ $0 }) {
            let dev = devices[r.spec.device]
            for k in 0..<r.buffers.count where r.buffers.live[k] {
                r.buffers.live[k] = false
                let a = r.buffers.addresses[k], cpu = r.cpus[k]
                step("teardown: \(dev.name) dma_unmap_page", line: 0) { () throws(IOMMUError) in
                    try m.dma.unmapPage(dev, address: a, size: r.spec.size, cpu: cpu)
                }
            }
        }
        s.run(until: s.now + scenario.machine.settleNs)
        for r in rings.compactMap({ $0 }) {
            if let c = (try? m.dma.cookie(for: devices[r.spec.device])) ?? nil { r.statistics = c.statistics }
        }
        note("traffic stopped; tearing down")
        tearDownPageFaultUsers()
        // PASIDs: detach and free.
        for (name, p) in pasids.sorted(by: { $0.key < $1.key }) {
            for g in m.core.groups {
                if let d = g.pasidDomains[p.rawValue], let dev = g.devices.first {
                    step("teardown: detach \(name)", line: 0) { () throws(IOMMUError) in try m.core.detachPASID(d, from: dev, pasid: p) }
                }
            }
            step("teardown: free \(name)", line: 0) { () throws(IOMMUError) in try m.core.freeGlobalPASID(p) }
        }
        pasids = [:]
        // Groups in user domains go back; owners release.
        for g in m.core.groups {
            if let d = g.domain, d !== g.defaultDomain, d !== g.blockingDomain, d.type.isPaging {
                step("teardown: detach \(d)", line: 0) { () throws(IOMMUError) in try m.core.detach(d, from: g) }
            }
            if g.dmaOwned { step("teardown: release \(g) DMA owner", line: 0) { () throws(IOMMUError) in try m.core.releaseDMAOwner(g) } }
        }
        for (name, d) in userDomains.sorted(by: { $0.key < $1.key }) {
            step("teardown: free domain \(name)", line: 0) { () throws(IOMMUError) in try m.core.freeDomain(d) }
        }
        userDomains = [:]
        // Buffer sets still mapped in default domains: a driver unmaps before remove.
        for (b, set) in sets.enumerated() where set.mapped {
            if let d = set.domain, !d.isDestroyed { unmapSet(b, label: "teardown: unmap \(set.name)", line: 0) }
            set.mapped = false
        }
        for dev in devices {
            step("teardown: release \(dev.name)", line: 0) { () throws(IOMMUError) in try m.core.release(dev) }
        }
        s.run(until: s.now + 10_000)
        m.driver.shutdown()
        m.freeBuffers()
        m.oracle.checkTeardown(core: m.core, driver: m.driver)
        note("teardown complete: \(m.platform.frames.inUse) frames, \(m.core.pasids.allocated) PASIDs, \(m.core.liveDomains.count) domains left")
    }

    // MARK: Expectations

    private func checkExpectations(_ r: RunResult) -> [String] {
        var out: [String] = []
        let e = scenario.expect
        if let v = e.violations, r.violationCount != v { out.append("expected \(v) violation(s), found \(r.violationCount)") }
        if let f = e.framesLeft, r.framesLeft != f { out.append("expected \(f) frame(s) left after teardown, found \(r.framesLeft)") }
        if let t = e.minTranslations, r.translations < t { out.append("expected at least \(t) translations, found \(r.translations)") }
        for c in e.counters {
            let v = r.pageFaultCounter(c.name)
            if v < c.atLeast { out.append("expected \(c.name) at least \(c.atLeast), found \(v)") }
            if let hi = c.atMost, v > hi { out.append("expected \(c.name) at most \(hi), found \(v)") }
        }
        for f in e.faults {
            let name = scenario.devices[f.device].description.name
            let n = r.devices.first { $0.name == name }?.faultsReported ?? 0
            if n < f.atLeast { out.append("expected at least \(f.atLeast) fault(s) reported for \(name), found \(n)") }
            if let hi = f.atMost, n > hi { out.append("expected at most \(hi) fault(s) reported for \(name), found \(n)") }
        }
        return out
    }
}

/// What a scenario run produced: the counters and log, every failed step, unmet
/// expectations, and the trace when one was asked for.
public struct ScenarioOutcome: @unchecked Sendable {
    public var result: RunResult
    public var steps: [ScenarioRunner.StepRecord]
    public var expectationFailures: [String]
    public var trace: TraceBuffer?
    /// Injected faults that fired: point and global hit number.
    public var injected: [(String, Int)]
    /// Fault-point hits by point name (with the injector counting).
    public var pointHitsByName: [(String, Int)]
    /// All fault-point hits counted.
    public var pointHits: Int { pointHitsByName.reduce(0) { $0 + $1.1 } }
}
