import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD

// Timed actions: what each `do:` of a scenario performs.
extension ScenarioRunner {
    private func domain(named name: String) throws(IOMMUError) -> IOMMUDomain {
        if let d = userDomains[name] { return d }
        if let i = scenario.devices.firstIndex(where: { $0.description.name == name }) {
            guard let d = devices[i].attachedDomain, let g = devices[i].group else { throw .notFound("\(name) has no domain") }
            return g.defaultDomain ?? d
        }
        throw .notFound("domain \(name) is not allocated (its allocation failed or has not happened yet)")
    }

    func group(_ device: Int) throws(IOMMUError) -> Group {
        guard let g = devices[device].group else { throw .noDevice("\(devices[device].name) has no group") }
        return g
    }

    func pasid(_ name: String) throws(IOMMUError) -> PASID {
        guard let p = pasids[name] else { throw .notFound("PASID \(name) is not allocated") }
        return p
    }

    func performAction(_ a: Scenario.TimedAction) {
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
            step(label, line: line) { () throws(IOMMUError) in
                let p = try m.core.allocGlobalPASID(for: devices[d])
                pasids[name] = p
                observePASID(name, p)
            }
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
        case .removeDevice(let d):
            for i in scenario.workloads.indices where workloadDevice(i) == d { stopWorkload(i) }
            let held = endpoints[d].stalledTransactions
            if step(label, line: line, { () throws(IOMMUError) in try m.core.release(devices[d]) }) {
                note("\(label) with \(held) transaction(s) held by the IOMMU; \(endpoints[d].stalledTransactions) left after its release")
            }
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
                    let mapBegan = m.scheduler.now
                    let a = try m.dma.mapPage(dev, physical: scratch, size: 4096, direction: .toDevice, cpu: cpu)
                    if let rec = recorder { rec.mapped(ns: m.scheduler.now &- mapBegan) }
                    let began = m.scheduler.now
                    defer { if let rec = recorder { rec.unmapReturned(ns: m.scheduler.now &- began, now: m.scheduler.now) } }
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
            if options.faultMode == .off { m.platform.faults.mode = Self.countingFromNow(mode, m.platform.faults) }
            note(label)
        case .descriptorFault(let u, let type, let fault):
            m.units[u].descriptorFaults[type] = fault
            note(label)
        case .createProcess, .mmap, .munmap, .exitProcess, .svaBind, .svaUnbind, .allocFaultQueue, .closeFaultQueue:
            performPageFaultAction(a)
        case .iommufd(let action):
            performIOMMUFD(action, label: label, line: line)
        }
    }

    /// A file's `nth` counts from its inject action: the Nth hit after it (of its point, or of
    /// any point), whatever hits earlier windows counted. The injector counts from its first
    /// activation, so the window starts at the hits counted so far.
    static func countingFromNow(_ mode: FaultInjector.Mode, _ faults: FaultInjector) -> FaultInjector.Mode {
        guard case .failNth(let n, let only) = mode else { return mode }
        let before = only.map { faults.hits[$0] ?? 0 } ?? faults.totalHits
        return .failNth(before + n, only: only)
    }

    /// Maps every buffer of a set (fresh frames, or those of the set it is `like`). A failure
    /// part-way unmaps what this action mapped, as a driver's error path does.
    func mapSet(_ b: Int, label: String, line: Int) {
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
            // The caller picks the IOVAs, so the caller checks them, as VFIO (`vfio_find_dma`)
            // and iommufd (the IOVA tree) do: mapping over a live translation is EEXIST
            // before anything is mapped, never a page-table WARN ("PTE already set").
            if !identity {
                for k in 0..<spec.count {
                    let iova = spec.iova + UInt64(k) * spec.stride
                    for p in 0..<UInt64(spec.pages) where m.core.iovaToPhys(d, iova + p * 4096) != nil {
                        throw .exists("IOVA 0x\(String(iova + p * 4096, radix: 16)) of domain \(spec.domain) is already mapped")
                    }
                }
            }
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

    func unmapSet(_ b: Int, label: String, line: Int) {
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
    /// The device a workload drives (nil for churn and fault handlers).
    func workloadDevice(_ i: Int) -> Int? {
        switch scenario.workloads[i].kind {
        case .dma(let w): return w.device
        case .dmaRing(let w): return w.device
        case .ats(let w): return w.device
        case .churn, .faultHandler: return nil
        }
    }

    func reset(_ d: Int, ns: UInt64, label: String, line: Int) {
        guard let g = devices[d].group, let previous = g.domain else { return }
        let blocked = devices[d].driver.blockedDomain
        guard step("\(label): block", line: line, { () throws(IOMMUError) in try m.core.replace(g, with: blocked) }) else { return }
        // The driver quiesces the function first: its outstanding page request groups are
        // answered (bounded, as a stop without marker), so no response arrives after the reset
        // for an index the device hands out again.
        let e = endpoints[d]
        let s = m.scheduler
        let deadline = s.now + 50_000_000
        while e.priState.outstandingGroups > 0 && s.runNext(notAfter: deadline) {}
        if e.priState.outstandingGroups > 0 { note("\(label): \(e.name) still had \(e.priState.outstandingGroups) page request group(s) outstanding at its reset") }
        // The driver lets go of what the IOMMU holds for the device (stalled transactions).
        m.core.prepareDeviceReset(devices[d])
        // The function reset itself: the device's ATS and PRI state goes as hardware's does.
        let cached = e.deviceTLBOccupancy, failed = e.priState.failed
        e.resetATS()
        note("\(label): function reset of \(e.name) (device TLB \(cached) → \(e.deviceTLBOccupancy) entries\(failed ? ", PRI re-enabled after a Response Failure" : ""))")
        m.scheduler.advance(by: ns)
        if step("\(label): restore", line: line, { () throws(IOMMUError) in try m.core.replace(g, with: previous) }) {
            note("\(label): blocked for \(ns) ns, back in \(previous)")
        }
    }
}
