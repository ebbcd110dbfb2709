import Platform
import Formats
import Hardware
import Kernel

// The fixed teardown after the timed phase (docs/scenarios.md).
extension ScenarioRunner {
    // MARK: Teardown

    /// Stops traffic, lets it drain, gives everything back in the order a kernel does, shuts
    /// the driver down and lets the oracle check for leaks.
    func teardown(probed: Bool) {
        let s = m.scheduler
        guard probed else {
            m.shutdownDriver()
            m.core.releaseHeldFrames()
            m.freeBuffers()
            m.oracle.checkTeardown(core: m.core, driver: m.vtdDriver)
            if let arm = m.smmuDriver { m.oracle.checkTeardown(smmu: arm) }
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
                step("teardown: \(dev.name) dma_unmap", line: 0) { () throws(IOMMUError) in
                    try ringUnmap(r, k, address: a, cpu: cpu)
                }
            }
        }
        s.run(until: s.now + scenario.machine.settleNs)
        for r in rings.compactMap({ $0 }) {
            if let c = (try? m.dma.cookie(for: devices[r.spec.device])) ?? nil { r.statistics = c.statistics }
        }
        note("traffic stopped; tearing down")
        tearDownIOMMUFD()
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
        for dev in devices where !dev.isReleased {
            step("teardown: release \(dev.name)", line: 0) { () throws(IOMMUError) in try m.core.release(dev) }
        }
        s.run(until: s.now + 10_000)
        m.shutdownDriver()
        m.core.releaseHeldFrames()
        m.freeBuffers()
        m.oracle.checkTeardown(core: m.core, driver: m.vtdDriver)
        if let arm = m.smmuDriver { m.oracle.checkTeardown(smmu: arm) }
        note("teardown complete: \(m.platform.frames.inUse) frames, \(m.core.pasids.allocated) PASIDs, \(m.core.liveDomains.count) domains left")
    }
}
