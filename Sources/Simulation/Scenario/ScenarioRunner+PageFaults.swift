import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD

/// A mapping in a simulated process (from an `mmap` action).
struct Region {
    var process: String
    var address: UInt64
    var pages: Int
    var mapped: Bool
}

/// A user-space fault handler serving one fault queue (a `fault-handler` workload).
final class FaultHandlerState {
    let spec: Scenario.FaultHandler
    var running = false
    /// A wake-up is scheduled.
    var scheduled = false
    var groupsServed = 0
    var groupsRefused = 0
    init(spec: Scenario.FaultHandler) { self.spec = spec }
}

/// SVA processes and binds, ATS streams and user-space fault handling in scenario runs.
extension ScenarioRunner {
    func performPageFaultAction(_ a: Scenario.TimedAction) {
        let line = a.source.line, label = a.label
        switch a.action {
        case .createProcess(let name):
            step(label, line: line) { () throws(IOMMUError) in
                let p = try m.core.createProcess()
                processes[name] = p
                note("\(label): \(p)")
            }
        case .mmap(let pname, let region, let pages, let perms):
            step(label, line: line) { () throws(IOMMUError) in
                guard let p = processes[pname] else { throw .notFound("process \(pname) does not exist") }
                let va = try p.mmap(length: UInt64(pages) << 12, permissions: perms)
                regions[region] = Region(process: pname, address: va, pages: pages, mapped: true)
                note("\(label) at 0x\(String(va, radix: 16))")
            }
        case .munmap(let region):
            step(label, line: line) { () throws(IOMMUError) in
                guard let r = regions[region], r.mapped else { throw .notFound("region \(region) is not mapped") }
                guard let p = processes[r.process] else { throw .notFound("process \(r.process) does not exist") }
                try p.munmap(address: r.address, length: UInt64(r.pages) << 12)
                regions[region]?.mapped = false
                note(label)
            }
        case .exitProcess(let name):
            step(label, line: line) { () throws(IOMMUError) in
                guard let p = processes[name] else { throw .notFound("process \(name) does not exist") }
                try p.exit()
                processes[name] = nil
                for (k, r) in regions where r.process == name { regions[k]?.mapped = false }
                note(label)
            }
        case .svaBind(let name, let d, let pname):
            step(label, line: line) { () throws(IOMMUError) in
                guard let p = processes[pname] else { throw .notFound("process \(pname) does not exist") }
                let h = try m.core.svaBind(devices[d], to: p)
                binds[name] = h
                observePASID(name, h.pasid)
                // The device driver programs the PASID into the device: a new use of it.
                endpoints[d].startPASID(h.pasid)
                note("\(label): \(h.pasid)")
            }
        case .svaUnbind(let name, let marker):
            step(label, line: line) { () throws(IOMMUError) in
                guard let h = binds[name] else { throw .notFound("SVA bind \(name) does not exist") }
                // From here the device driver gives the device no more work for the PASID.
                binds[name] = nil
                do throws(IOMMUError) { try stopAndUnbind(h, stopMarker: marker) } catch { binds[name] = h; throw error }
                note(label)
            }
        case .allocFaultQueue(let name):
            let q = m.core.allocFaultQueue()
            faultQueues[name] = q
            q.onReadable = { [weak self] in self?.faultQueueReadable(name) }
            note(label)
        case .closeFaultQueue(let name):
            if let q = faultQueues[name], !q.isClosed {
                q.close()
                note("\(label): \(q.autoResponses) group(s) answered INVALID by the kernel so far")
            }
        default:
            break
        }
    }

    /// Stops the device's use of the bind's PASID, then unbinds (Linux drivers quiesce the
    /// device before `iommu_sva_unbind_device`). Without a stop marker the device finishes
    /// its outstanding page requests first; the runner lets hardware and the fault work run
    /// until it has (at most 50 ms of virtual time).
    func stopAndUnbind(_ h: SVAHandle, stopMarker: Bool) throws(IOMMUError) {
        guard let i = devices.firstIndex(where: { $0 === h.device }) else { throw .noDevice("\(h.device) is gone") }
        var stopped = false
        endpoints[i].stopPASID(h.pasid, stopMarker: stopMarker) { stopped = true }
        let s = m.scheduler
        let deadline = s.now + 50_000_000
        while !stopped && s.runNext(notAfter: deadline) {}
        guard stopped else { throw .timedOut("\(h.device) did not stop using \(h.pasid) within 50 ms") }
        try m.core.svaUnbind(h)
    }

    // MARK: ATS streams

    func makeATSStream(_ spec: Scenario.ATSStream) -> ATSStreamEngine {
        let e = ATSStreamEngine(spec: spec, endpoint: endpoints[spec.device], scheduler: m.scheduler)
        var lastPASID: PASID?
        let misbehaves = scenario.devices[spec.device].misbehaviour.contains(.requestsAfterStop)
        e.target = { [unowned self] in
            guard let bind = spec.bind else { return (nil, spec.iova, spec.windowPages) }
            guard let region = spec.region.flatMap({ self.regions[$0] }) else { return nil }
            if let h = self.binds[bind] {
                lastPASID = h.pasid
                return (h.pasid, region.address, region.pages)
            }
            // Unbound: a well-behaved device stops; a misbehaving one goes on with the PASID.
            guard misbehaves, let p = lastPASID else { return nil }
            return (p, region.address, region.pages)
        }
        if let rec = recorder {
            e.onPageFaultAccess = { [unowned self] start, r in
                rec.pageFault(latencyNs: r.time &- start)
                rec.maybeSample(self.m)
            }
        }
        return e
    }

    // MARK: User-space fault handlers

    func startFaultHandler(_ h: FaultHandlerState) {
        h.running = true
        if let q = faultQueues[h.spec.queue] ?? iommufdFaults[h.spec.queue]?.queue, q.undelivered > 0 { wakeHandler(h) }
    }

    /// The records of one read, group by group (a group's records share its cookie).
    static func forEachGroup(_ records: [FaultQueue.Record], _ body: ([FaultQueue.Record]) -> Void) {
        var i = 0
        while i < records.count {
            var j = i
            while j < records.count && records[j].cookie == records[i].cookie { j += 1 }
            body(Array(records[i..<j]))
            i = j
        }
    }

    func faultQueueReadable(_ name: String) {
        for case let h? in faultHandlers where h.running && h.spec.queue == name { wakeHandler(h) }
    }

    func wakeHandler(_ h: FaultHandlerState) {
        guard !h.scheduled else { return }
        h.scheduled = true
        m.scheduler.schedule(after: h.spec.latencyNs, kind: .software) { [weak self, weak h] in
            guard let self, let h else { return }
            h.scheduled = false
            guard h.running, self.abort == nil else { return }
            self.serve(h)
        }
    }

    /// Reads whole groups and answers each: SUCCESS after mapping its pages into the domain
    /// the device (PASID) is attached to, INVALID when a page lies outside the window or
    /// cannot be mapped.
    private func serve(_ h: FaultHandlerState) {
        if let f = iommufdFaults[h.spec.queue] { serveIOMMUFD(h, f); return }
        guard let q = faultQueues[h.spec.queue], !q.isClosed else { return }
        let records = q.read(maxRecords: h.spec.batch)
        Self.forEachGroup(records) { answer($0, queue: q, handler: h) }
        if q.undelivered > 0 && !records.isEmpty { wakeHandler(h) }
    }

    private func answer(_ group: [FaultQueue.Record], queue q: FaultQueue, handler h: FaultHandlerState) {
        guard let first = group.first else { return }
        let lo = h.spec.iova, hi = h.spec.iova &+ UInt64(h.spec.windowPages) << 12
        var code = FaultQueue.responseSuccess
        if group.contains(where: { $0.address < lo || $0.address >= hi }) {
            code = FaultQueue.responseInvalid
        } else if let d = attachedDomain(devID: first.devID, pasid: first.flags & 1 != 0 ? first.pasid : nil) {
            let ok = step("user fault handler: map \(group.count) page(s) at 0x\(String(first.address, radix: 16))", line: 0) { () throws(IOMMUError) in
                try mapUserFaultPages(group.map { $0.address & ~0xFFF }, into: d)
            }
            if !ok { code = FaultQueue.responseInvalid }
        } else {
            code = FaultQueue.responseInvalid
        }
        if code == FaultQueue.responseSuccess { h.groupsServed += 1 } else { h.groupsRefused += 1 }
        // The kernel may have answered the group meanwhile (detach, replace): EINVAL then.
        do { try q.respond(cookie: first.cookie, code: code) } catch { note("user fault handler: cookie \(first.cookie): \(error)") }
    }

    private func attachedDomain(devID: UInt32, pasid: UInt32?) -> IOMMUDomain? {
        guard let dev = devices.first(where: { $0.objectID == devID }), let g = dev.group else { return nil }
        let d = pasid.map { g.pasidDomains[$0] } ?? g.domain
        guard let d, d.type.isPaging, !d.isDestroyed else { return nil }
        return d
    }

    private func mapUserFaultPages(_ pages: [UInt64], into d: IOMMUDomain) throws(IOMMUError) {
        let key = ObjectIdentifier(d)
        var mine = userFaultPages[key]?.pages ?? []
        defer { if !mine.isEmpty { userFaultPages[key] = (d, mine) } }
        for p in pages where !mine.contains(p) {
            let frame = try m.allocateBuffer()
            try m.core.map(d, iova: p, physical: frame, size: 4096, permissions: .readWrite)
            mine.insert(p)
        }
    }

    /// Unmaps what user-space fault handlers mapped in `d` (before the domain is freed).
    /// What an error leaves mapped stays recorded.
    func unmapUserFaultPages(of d: IOMMUDomain) throws(IOMMUError) {
        let key = ObjectIdentifier(d)
        guard let entry = userFaultPages.removeValue(forKey: key), !d.isDestroyed else { return }
        var left = entry.pages
        defer { if !left.isEmpty { userFaultPages[key] = (d, left) } }
        for p in entry.pages.sorted() {
            _ = try m.core.unmap(d, iova: p, size: 4096)
            left.remove(p)
        }
    }

    // MARK: Teardown

    /// Binds are stopped (stop marker) and dropped, processes exit, fault queues close and
    /// the pages user space mapped on faults are unmapped.
    func tearDownPageFaultUsers() {
        for (name, h) in binds.sorted(by: { $0.key < $1.key }) {
            step("teardown: unbind \(name)", line: 0) { () throws(IOMMUError) in try stopAndUnbind(h, stopMarker: true) }
        }
        binds = [:]
        for (name, p) in processes.sorted(by: { $0.key < $1.key }) {
            step("teardown: \(name) exits", line: 0) { () throws(IOMMUError) in try p.exit() }
        }
        processes = [:]
        for (name, q) in faultQueues.sorted(by: { $0.key < $1.key }) {
            if !q.isClosed { q.close() }
            userAutoResponses += q.autoResponses
            if q.autoResponses > 0 { note("fault queue \(name): \(q.autoResponses) group(s) answered INVALID by the kernel") }
        }
        for (_, entry) in userFaultPages.sorted(by: { $0.value.domain.id < $1.value.domain.id }) {
            step("teardown: unmap user-fault pages of \(entry.domain)", line: 0) { () throws(IOMMUError) in
                try unmapUserFaultPages(of: entry.domain)
            }
        }
        for case let h? in faultHandlers where h.groupsServed + h.groupsRefused > 0 {
            note("user fault handler on \(h.spec.queue): \(h.groupsServed) group(s) served, \(h.groupsRefused) refused")
        }
    }
}
