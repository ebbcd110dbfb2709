import Platform
import Formats
import Hardware
import Kernel

/// The built-in default scenario: a tour of everything implemented. Two VT-d units; a NIC
/// with map/unmap churn under traffic; a two-function GPU in one group that a user takes
/// over, attaches to domain A and replaces with B under traffic (hitless); a PASID attached
/// to domain C, replaced with D under PASID traffic, then detached; an NVMe drive in an
/// identity domain; an untrusted Thunderbolt device that DMAs to an unmapped IOVA (the fault
/// is reported and no memory is touched); a second NIC under the lazy policy that uses the
/// DMA API on two CPUs, its unmaps deferred to per-CPU flush queues (a burst fills one and
/// flushes it; the timer flushes the rest); then a clean teardown checked for leaks.
/// The policy is lazy: trusted DMA devices get flush queues, the untrusted one stays strict.
public struct Tour {
    public struct StepFailed: Error, CustomStringConvertible {
        public var step: String
        public var error: IOMMUError
        public var description: String { "tour step '\(step)' failed: \(error)" }
    }

    public let seed: UInt64
    public init(seed: UInt64) { self.seed = seed }

    public static let name = "tour"

    /// Runs the tour and returns what happened.
    public func run() throws -> RunResult {
        let start = ContinuousClock.now
        let m = try Machine(seed: seed, memorySize: 256 << 20, units: [
            VTdConfiguration(name: "dmar0"),
            VTdConfiguration(name: "dmar1", iotlbEntries: 256),
        ], policy: .lazy, cpus: 2)
        var log = RunLog(scheduler: m.scheduler)
        let s = m.scheduler
        s.yieldPolicy = YieldPolicy(probability: 0.25, maxAdvanceNs: 3_000)
        func step<T>(_ name: String, _ body: () throws -> T) throws -> T {
            do { return try body() } catch let error as IOMMUError { throw StepFailed(step: name, error: error) }
        }

        // Probe.
        let probed = try step("probe devices") {
            try m.addDevices([
                DeviceDescription(name: "nic0", requesterID: RequesterID(bus: 0, device: 2, function: 0), unit: 0),
                DeviceDescription(name: "gpu0", requesterID: RequesterID(bus: 0, device: 3, function: 0), unit: 0,
                                  groupKey: "gpu", maxPASIDs: 64),
                DeviceDescription(name: "gpu1", requesterID: RequesterID(bus: 0, device: 3, function: 1), unit: 0,
                                  groupKey: "gpu", maxPASIDs: 64),
                DeviceDescription(name: "nvme0", requesterID: RequesterID(bus: 1, device: 0, function: 0), unit: 1,
                                  preferredDomain: .identity),
                DeviceDescription(name: "tb0", requesterID: RequesterID(bus: 2, device: 0, function: 0), unit: 1, untrusted: true),
                DeviceDescription(name: "nic1", requesterID: RequesterID(bus: 0, device: 4, function: 0), unit: 1),
            ])
        }
        let (nic, nicEP) = probed[0], (gpu0, gpu0EP) = probed[1], (gpu1, gpu1EP) = probed[2]
        let (nvme, nvmeEP) = probed[3], (tb, tbEP) = probed[4], (nic1, nic1EP) = probed[5]
        for g in m.core.groups {
            log.note("\(g) [\(g.devices.map(\.name).joined(separator: ", "))] probed with default \(g.defaultDomain.map { "\($0)" } ?? "none")")
        }

        // NIC: 16 two-page buffers in its default DMA domain, traffic, churn.
        guard let nicDomain = nic.attachedDomain else { throw StepFailed(step: "nic0 default domain", error: .noDevice("none")) }
        let nicTraffic = TrafficStream(endpoint: nicEP, intervalNs: 400, scheduler: s)
        func nicIOVA(_ i: Int) -> UInt64 { 0x10_0000 + UInt64(i) * 0x1_0000 }
        for i in 0..<16 {
            try step("nic0 map buffer \(i)") {
                for p in 0..<2 {
                    try m.core.map(nicDomain, iova: nicIOVA(i) + UInt64(p) * 4096, physical: try m.allocateBuffer(), size: 4096, permissions: .readWrite)
                }
            }
            nicTraffic.targets.append(.init(address: nicIOVA(i), length: 8192))
        }
        log.note("nic0 mapped 16 buffers in \(nicDomain); traffic starts")
        nicTraffic.start()

        // NVMe in the identity domain: DMA addresses are physical.
        let nvmeTraffic = TrafficStream(endpoint: nvmeEP, intervalNs: 500, scheduler: s)
        for _ in 0..<8 { nvmeTraffic.targets.append(.init(address: try step("nvme0 buffer") { try m.allocateBuffer() }, length: 4096)) }
        nvmeTraffic.start()
        log.note("nvme0 in \(nvme.attachedDomain.map { "\($0)" } ?? "none") does DMA to physical addresses")

        // Untrusted device: strict DMA domain, one buffer.
        guard let tbDomain = tb.attachedDomain else { throw StepFailed(step: "tb0 default domain", error: .noDevice("none")) }
        try step("tb0 map") { try m.core.map(tbDomain, iova: 0x1_0000, physical: try m.allocateBuffer(), size: 4096, permissions: .readWrite) }
        let tbTraffic = TrafficStream(endpoint: tbEP, intervalNs: 2_000, scheduler: s)
        tbTraffic.targets = [.init(address: 0x1_0000, length: 4096)]
        tbTraffic.start()

        // nic1: the DMA API with deferred unmap, buffers mapped from two CPUs.
        var rxRing: [(address: UInt64, cpu: Int)] = []
        let nic1Traffic = TrafficStream(endpoint: nic1EP, intervalNs: 450, scheduler: s)
        for i in 0..<8 {
            let address = try step("nic1 dma_map_page \(i)") {
                try m.dma.mapPage(nic1, physical: try m.allocateBuffer() + 0x80, size: 2048, direction: .fromDevice, cpu: i % 2)
            }
            rxRing.append((address, i % 2))
            nic1Traffic.targets.append(.init(address: address, length: 2048, write: true))
        }
        let nic1Cookie = try step("nic1 DMA state") { try m.dma.cookie(for: nic1) }
        log.note("nic1 mapped 8 receive buffers with the DMA API (IOVAs below 4 GiB, \(nic1Cookie?.queueOptions.map { "\($0.kind.rawValue) flush queues of \($0.size)" } ?? "strict"))")
        nic1Traffic.start()

        s.run(until: 20_000)

        // GPU group: a user takes it over and attaches domain A.
        guard let gpuGroup = gpu0.group else { throw StepFailed(step: "gpu group", error: .noDevice("gpu0 has no group")) }
        try step("gpu claim DMA owner") { try m.core.claimDMAOwner(gpuGroup) }
        let a = try step("alloc domain A") { try m.core.allocDomain(for: gpu0, flags: .pasid) }
        let b = try step("alloc domain B") { try m.core.allocDomain(for: gpu0, flags: .pasid) }
        var shared: [TrafficStream.Target] = []
        for i in 0..<8 {
            let iova = 0x4000_0000 + UInt64(i) * 0x1000
            let pa = try step("gpu buffer") { try m.allocateBuffer() }
            try step("map shared buffer \(i) in A and B") {
                try m.core.map(a, iova: iova, physical: pa, size: 4096, permissions: .readWrite)
                try m.core.map(b, iova: iova, physical: pa, size: 4096, permissions: .readWrite)
            }
            shared.append(.init(address: iova, length: 4096))
        }
        try step("map A-only buffer") { try m.core.map(a, iova: 0x5000_0000, physical: try m.allocateBuffer(), size: 4096, permissions: .readWrite) }
        try step("map B-only buffer") { try m.core.map(b, iova: 0x6000_0000, physical: try m.allocateBuffer(), size: 4096, permissions: .readWrite) }
        try step("attach A to the gpu group") { try m.core.attach(a, to: gpuGroup) }
        log.note("gpu group claimed by a user; A = \(a) and B = \(b) map 8 buffers alike; A attached, traffic starts")
        let gpuTraffic = [TrafficStream(endpoint: gpu0EP, intervalNs: 300, scheduler: s),
                          TrafficStream(endpoint: gpu1EP, intervalNs: 300, scheduler: s)]
        for t in gpuTraffic { t.targets = shared; t.start() }

        // Churn on the NIC, interleaved with the rest.
        var churnRound = 0
        func churn() throws {
            let k = Int(s.random(below: 16))
            nicTraffic.targets.removeAll { $0.address == nicIOVA(k) }
            let unmapped = try step("nic0 unmap buffer \(k)") { try m.core.unmap(nicDomain, iova: nicIOVA(k), size: 8192) }
            guard unmapped == 8192 else { throw StepFailed(step: "nic0 unmap buffer \(k)", error: .ioError("unmapped only \(unmapped) bytes")) }
            try step("nic0 remap buffer \(k)") {
                for p in 0..<2 {
                    try m.core.map(nicDomain, iova: nicIOVA(k) + UInt64(p) * 4096, physical: try m.allocateBuffer(), size: 4096, permissions: .readWrite)
                }
            }
            nicTraffic.targets.append(.init(address: nicIOVA(k), length: 8192))
            // nic1 recycles a receive buffer through the DMA API: the unmap is queued.
            let r = Int(s.random(below: UInt64(rxRing.count)))
            let old = rxRing[r]
            nic1Traffic.targets.removeAll { $0.address == old.address }
            try step("nic1 dma_unmap_page") { try m.dma.unmapPage(nic1, address: old.address, size: 2048, cpu: old.cpu) }
            let fresh = try step("nic1 dma_map_page") {
                try m.dma.mapPage(nic1, physical: try m.allocateBuffer() + 0x80, size: 2048, direction: .fromDevice, cpu: 1 - old.cpu)
            }
            rxRing[r] = (fresh, 1 - old.cpu)
            nic1Traffic.targets.append(.init(address: fresh, length: 2048, write: true))
            churnRound += 1
            log.note("nic0 unmapped buffer \(k) (strict: invalidated before return) and mapped it to new pages; nic1 recycled a buffer (unmap deferred)")
        }
        for t in stride(from: 30_000 as UInt64, through: 110_000, by: 20_000) { s.run(until: t); try churn() }

        // Hitless replace of the group's domain under traffic.
        s.run(until: 120_000)
        try step("replace A with B") { try m.core.replace(gpuGroup, with: b) }
        log.note("gpu group replaced \(a) with \(b) under traffic: \(m.core.lastUpdatePath.rawValue) path")
        for t in gpuTraffic { t.targets = shared + [.init(address: 0x6000_0000, length: 4096)] }

        // Untrusted device DMAs to an IOVA nobody mapped.
        s.run(until: 130_000)
        for i in 0..<3 { tbEP.submit(.write(0xDEAD_0000 + UInt64(i) * 0x1000, [UInt8](repeating: 0xEE, count: 64))) }
        log.note("tb0 wrote to unmapped IOVA 0xdead0000 (three times)")

        // PASID attach, replace under PASID traffic, detach.
        s.run(until: 150_000)
        log.note("tb0: \(tb.faultCount) fault(s) read from \(m.units[tb.unit].configuration.name)'s fault registers and reported; \(tbEP.counters.faulted) request(s) stopped before touching memory")
        let pasid = try step("alloc PASID") { try m.core.allocGlobalPASID(for: gpu0) }
        let c = try step("alloc domain C") { try m.core.allocDomain(for: gpu0, flags: .pasid) }
        let d = try step("alloc domain D") { try m.core.allocDomain(for: gpu0, flags: .pasid) }
        var pasidTargets: [TrafficStream.Target] = []
        for i in 0..<4 {
            let iova = 0x7000_0000 + UInt64(i) * 0x1000
            let pa = try step("pasid buffer") { try m.allocateBuffer() }
            try step("map PASID buffer \(i) in C and D") {
                try m.core.map(c, iova: iova, physical: pa, size: 4096, permissions: .readWrite)
                try m.core.map(d, iova: iova, physical: pa, size: 4096, permissions: .readWrite)
            }
            pasidTargets.append(.init(address: iova, length: 4096))
        }
        let attachPath = try step("attach C to \(pasid)") { try m.core.attachPASID(c, to: gpu0, pasid: pasid) }
        log.note("\(pasid) of the gpu group attached to \(c) (\(attachPath.rawValue))")
        let pasidTraffic = TrafficStream(endpoint: gpu0EP, pasid: pasid, intervalNs: 350, scheduler: s)
        pasidTraffic.targets = pasidTargets
        pasidTraffic.start()
        for t in stride(from: 170_000 as UInt64, through: 190_000, by: 20_000) { s.run(until: t); try churn() }
        s.run(until: 200_000)
        let replacePath = try step("replace C with D on \(pasid)") { try m.core.replacePASID(d, on: gpu0, pasid: pasid) }
        log.note("\(pasid) replaced \(c) with \(d) under PASID traffic: \(replacePath.rawValue) path")
        s.run(until: 260_000)
        pasidTraffic.stop()
        s.run(until: 265_000)
        try step("detach \(pasid)") { try m.core.detachPASID(d, from: gpu0, pasid: pasid) }
        try step("free \(pasid)") { try m.core.freeGlobalPASID(pasid) }
        log.note("\(pasid) detached and freed")

        // A burst of short-lived nic1 mappings on CPU 0 fills its flush queue: it flushes at once.
        let scratch = try step("nic1 scratch buffer") { try m.allocateBuffer() }
        for _ in 0..<300 {
            try step("nic1 burst") {
                let a = try m.dma.mapPage(nic1, physical: scratch, size: 4096, direction: .toDevice, cpu: 0)
                try m.dma.unmapPage(nic1, address: a, size: 4096, cpu: 0)
            }
        }
        if let st = nic1Cookie?.statistics {
            log.note("nic1 burst of 300 map/unmap pairs on CPU 0: \(st.fullQueueFlushes) full-queue flush(es), \(st.entriesFreed) entries freed, \(st.entriesPending) pending")
        }

        // Stop traffic and let in-flight DMA drain.
        s.run(until: 300_000)
        for t in [nicTraffic, nvmeTraffic, tbTraffic, nic1Traffic] + gpuTraffic { t.stop() }
        s.run(until: 320_000)
        for rx in rxRing { try step("nic1 dma_unmap_page") { try m.dma.unmapPage(nic1, address: rx.address, size: 2048, cpu: rx.cpu) } }
        let pendingBefore = nic1Cookie?.statistics.entriesPending ?? 0
        // Idle: the flush-queue timer (10 ms) covers what the queues still hold.
        s.run(until: s.now + 10_500_000)
        if let st = nic1Cookie?.statistics {
            log.note("nic1 unmapped its ring; \(pendingBefore) deferred unmap(s) waited for the timer: \(st.timerFlushes) timer flush(es), \(st.entriesPending) left; \(st.flushes) flushes for \(st.unmaps) unmaps in all")
        }
        log.note("traffic stopped; tearing down")

        // Teardown.
        try step("detach B") { try m.core.detach(b, from: gpuGroup) }
        try step("release gpu DMA owner") { try m.core.releaseDMAOwner(gpuGroup) }
        for dom in [a, b, c, d] { try step("free \(dom)") { try m.core.freeDomain(dom) } }
        for i in 0..<16 { _ = try step("nic0 unmap \(i)") { try m.core.unmap(nicDomain, iova: nicIOVA(i), size: 8192) } }
        _ = try step("tb0 unmap") { try m.core.unmap(tbDomain, iova: 0x1_0000, size: 4096) }
        let faultsByDevice = [nic, gpu0, gpu1, nvme, tb, nic1].map { ($0.name, $0.faultCount) }
        let dmaStatistics = nic1Cookie?.statistics ?? DMAStatistics()
        for dev in [nic, gpu0, gpu1, nvme, tb, nic1] { try step("release \(dev.name)") { try m.core.release(dev) } }
        s.run(until: s.now + 10_000)
        m.driver.shutdown()
        m.freeBuffers()
        m.oracle.checkTeardown(core: m.core, driver: m.driver)
        log.note("teardown complete: \(m.platform.frames.inUse) frames, \(m.core.pasids.allocated) PASIDs, \(m.core.liveDomains.count) domains left")

        let wall = ContinuousClock.now - start
        return RunResult(scenario: Self.name, seed: seed, machine: m, endpoints: [nicEP, gpu0EP, gpu1EP, nvmeEP, tbEP, nic1EP],
                         faultsReported: faultsByDevice, dmaAPI: dmaStatistics, log: log.lines, churnRounds: churnRound,
                         wallNs: UInt64(wall.components.seconds) * 1_000_000_000 + UInt64(wall.components.attoseconds / 1_000_000_000))
    }
}

/// Timestamped plain-words notes of what a run did.
struct RunLog {
    let scheduler: Scheduler
    var lines: [(time: UInt64, text: String)] = []
    init(scheduler: Scheduler) { self.scheduler = scheduler }
    mutating func note(_ text: String) { lines.append((scheduler.now, text)) }
}
