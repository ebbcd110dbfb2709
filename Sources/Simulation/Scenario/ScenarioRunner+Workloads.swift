import Platform
import Formats
import Hardware
import Kernel

// Workloads: DMA streams, churn, DMA-API rings, ATS streams and fault handlers.
extension ScenarioRunner {
    // MARK: Workloads

    func setUpWorkloads() {
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
                var targets = d.buffers.map { sets[$0] }
                if d.windowPages > 0 {
                    let window = LiveBuffers(name: "\(w.name) window", count: d.windowPages, length: 4096)
                    for i in 0..<d.windowPages { window.addresses[i] = d.windowIOVA + UInt64(i) << 12; window.live[i] = true }
                    targets = [window]
                }
                let engine = DMAStreamEngine(endpoint: e, sets: targets, pasid: nil, intervalNs: d.intervalNs,
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
                let b = LiveBuffers(name: w.name, count: r.count, length: r.length,
                                    writeOnly: r.direction == .fromDevice, readOnly: r.direction == .toDevice)
                let state = RingState(spec: r, buffers: b)
                let e = endpoints[r.device]
                let engine = DMAStreamEngine(endpoint: e, sets: [b], pasid: nil, intervalNs: r.intervalNs, burst: 1,
                                             direction: .both, minBytes: 256, maxBytes: Int(min(r.length, 4096)),
                                             walkAccessNs: scenario.units[scenario.devices[r.device].description.unit].walkAccessNs)
                attachSampler(engine)
                state.stream = engine
                ring = state
            }
            workloadStarts.append(nil)
            streams.append(stream); churns.append(churn); rings.append(ring)
            atsStreams.append(ats); faultHandlers.append(handler)
        }
    }

    /// Counters for the trace, sampled by DMA streams (no extra events: tracing does not
    /// change the run).
    func attachSampler(_ engine: DMAStreamEngine) {
        if let rec = recorder, !options.trace {
            engine.sampler = { [unowned self] in rec.maybeSample(self.m) }
            return
        }
        guard options.trace else { return }
        let rec = recorder
        let machine = m
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
            rec?.maybeSample(machine)
        }
    }

    func startWorkload(_ i: Int, line: Int) {
        let spec = scenario.workloads[i]
        defer { if workloadRunning(i), workloadStarts[i] == nil { workloadStarts[i] = m.scheduler.now } }
        if let a = atsStreams[i] {
            a.start()
            note("\(spec.name) starts")
        } else if let h = faultHandlers[i] {
            startFaultHandler(h)
            note("\(spec.name) starts")
        } else if let st = streams[i] {
            if case .dma(let d) = spec.kind, let p = d.pasid {
                guard let pasid = pasids[p] ?? (p.hasPrefix("#") ? UInt32(p.dropFirst()).map { PASID(truncating: $0) } : nil) else {
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

    func stopWorkload(_ i: Int) {
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

    func scheduleChurn(_ c: ChurnState, generation: UInt64) {
        m.scheduler.schedule(after: c.periodNs, kind: .software) { [weak self, weak c] in
            guard let self, let c, c.running, c.generation == generation, self.abort == nil else { return }
            self.churnOnce(c)
            self.scheduleChurn(c, generation: generation)
        }
    }

    /// Unmaps a random posted buffer of the set (strict: invalidated before return) and maps
    /// it again to fresh frames, as a driver recycling buffers does.
    func churnOnce(_ c: ChurnState) {
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
            c.rounds += 1
        }
    }

    func scheduleRecycle(_ r: RingState, generation: UInt64) {
        m.scheduler.schedule(after: r.spec.recycleNs, kind: .software) { [weak self, weak r] in
            guard let self, let r, r.running, r.generation == generation, self.abort == nil else { return }
            self.recycleOnce(r)
            r.recycles += 1
            self.scheduleRecycle(r, generation: generation)
        }
    }

    /// Whether workload `i` is running now (a start that found nothing to run leaves it off).
    func workloadRunning(_ i: Int) -> Bool {
        if let a = atsStreams[i] { return a.running }
        if let h = faultHandlers[i] { return h.running }
        if let st = streams[i] { return st.running }
        if let c = churns[i] { return c.running }
        if let r = rings[i] { return r.running }
        return false
    }

    /// What each workload did: the requests, rounds, recycles, accesses or groups it issued
    /// or served. A workload that started and did none of it did nothing.
    func workloadSummaries() -> [RunResult.WorkloadSummary] {
        scenario.workloads.indices.map { i in
            let w = scenario.workloads[i]
            // A run whose probe failed never set its workloads up.
            guard i < workloadStarts.count else { return .init(name: w.name, startedNs: nil, operations: 0, mayIdle: w.mayIdle) }
            var ops: UInt64 = 0
            if let st = streams[i] { ops = st.issued }
            if let c = churns[i] { ops = UInt64(c.rounds) }
            if let r = rings[i] { ops = UInt64(r.recycles) &+ (r.stream?.issued ?? 0) }
            if let a = atsStreams[i] { ops = UInt64(a.started) }
            if let h = faultHandlers[i] { ops = UInt64(h.groupsServed + h.groupsRefused) }
            return .init(name: w.name, startedNs: workloadStarts[i], operations: ops, mayIdle: w.mayIdle)
        }
    }
}
