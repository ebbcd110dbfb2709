import Testing
import Platform
import Formats
import Hardware
@testable import Kernel
@testable import Simulation

/// The errno name of the `IOMMUError` `body` throws, nil if it does not throw.
private func errName(_ body: () throws -> Void) -> String? {
    do { try body() } catch let e as IOMMUError { return e.errnoName } catch { return "not an IOMMUError" }
    return nil
}

@Suite("DMA API: page and scatter-list mappings, strict and deferred unmap, flush queues, typed errors")
struct DMAAPITests {
    let gib4: UInt64 = 1 << 32

    /// A rig with one NIC behind unit 0 in the given policy.
    func nic(_ policy: DMAPolicy = .strict, seed: UInt64 = 1, stage: VTdPagingStage? = nil) throws -> (KernelRig, Device, PCIeEndpoint) {
        let rig = try KernelRig(seed: seed, policy: policy, stage: stage)
        let (d, ep) = try rig.add("nic", dev: 3)
        return (rig, d, ep)
    }

    // MARK: Mapping

    @Test("map_page keeps the page offset, places the IOVA below 4 GiB first, and the device reaches the buffer through it")
    func mapPageReachesBuffer() throws {
        let (rig, nic, ep) = try nic()
        let pa = try rig.machine.allocateBuffer()
        let addr = try rig.machine.dma.mapPage(nic, physical: pa + 0x100, size: 512, direction: .fromDevice)
        #expect(addr & 0xFFF == 0x100)
        #expect(addr < gib4)
        let c = rig.dmaWrite(ep, addr, bytes: 64, value: 0x5A)
        #expect(c?.fault == nil)
        #expect(try rig.platform.memory.load8(pa + 0x100) == 0x5A)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("the direction sets the rights: a to-device mapping refuses device writes; a from-device one refuses reads on second-stage tables and allows them on first-stage ones (x86-64 entries cannot refuse reads)",
          arguments: VTdPagingStage.allCases)
    func directionPermissions(stage: VTdPagingStage) throws {
        let (rig, nic, ep) = try nic(stage: stage)
        let pa = try rig.machine.allocateBuffer()
        let tx = try rig.machine.dma.mapPage(nic, physical: pa, size: 4096, direction: .toDevice)
        #expect(rig.dmaRead(ep, tx)?.fault == nil)
        #expect(rig.dmaWrite(ep, tx)?.fault != nil)
        let rx = try rig.machine.dma.mapPage(nic, physical: pa, size: 4096, direction: .fromDevice)
        #expect(rig.dmaWrite(ep, rx)?.fault == nil)
        #expect((rig.dmaRead(ep, rx)?.fault != nil) == (stage == .second))
        rig.settle()
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("sizes are widened to whole granules: 2 bytes across a page boundary map two pages")
    func granuleRounding() throws {
        let (rig, nic, _) = try nic()
        let pa = try rig.machine.allocateBuffer()
        _ = try rig.machine.allocateBuffer()
        let addr = try rig.machine.dma.mapPage(nic, physical: pa + 0xFFF, size: 2, direction: .bidirectional)
        let domain = try #require(nic.attachedDomain)
        #expect(rig.core.iovaToPhys(domain, addr & ~0xFFF) == pa)
        #expect(rig.core.iovaToPhys(domain, (addr & ~0xFFF) + 0x1000) == pa + 0x1000)
        try rig.machine.dma.unmapPage(nic, address: addr, size: 2)
        #expect(rig.core.iovaToPhys(domain, addr & ~0xFFF) == nil)
    }

    // MARK: Strict

    @Test("strict unmap leaves nothing stale: the address faults at once and the IOVA is handed out again")
    func strictNothingStale() throws {
        let (rig, nic, ep) = try nic(.strict)
        let pa = try rig.machine.allocateBuffer()
        let addr = try rig.machine.dma.mapPage(nic, physical: pa, size: 4096, direction: .bidirectional)
        #expect(rig.dmaWrite(ep, addr)?.fault == nil) // fills the IOTLB
        try rig.machine.dma.unmapPage(nic, address: addr, size: 4096)
        #expect(rig.dmaWrite(ep, addr)?.fault != nil)
        let again = try rig.machine.dma.mapPage(nic, physical: pa, size: 4096, direction: .bidirectional)
        #expect(again == addr, "the range comes back from the CPU's magazine")
        let stats = try #require(try rig.machine.dma.cookie(for: nic)).statistics
        #expect(stats.strictInvalidations == 1)
        #expect(stats.invalidationsPerUnmap == 1)
        rig.settle()
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    // MARK: Deferred

    @Test("lazy policy gives a trusted device a per-CPU flush queue; an untrusted device stays strict")
    func queueSelection() throws {
        let rig = try KernelRig(policy: .lazy)
        let (nic, _) = try rig.add("nic", dev: 3)
        let (tb, _) = try rig.add("thunderbolt", dev: 4, untrusted: true)
        #expect(try rig.machine.dma.cookie(for: nic)?.queueOptions == .perCPU)
        #expect(try rig.machine.dma.cookie(for: tb)?.isDeferred == false)
        rig.driver.shadowOnFlush = true
        let (gpu, _) = try rig.add("gpu", dev: 5)
        #expect(try rig.machine.dma.cookie(for: gpu)?.queueOptions == .single)
    }

    @Test("deferred unmap keeps the IOVA out of use and the old translation permitted until a flush completes")
    func noReuseBeforeFlush() throws {
        let (rig, nic, ep) = try nic(.lazy)
        let dma = rig.machine.dma
        let pa = try rig.machine.allocateBuffer()
        let a = try dma.mapPage(nic, physical: pa, size: 4096, direction: .bidirectional)
        #expect(rig.dmaWrite(ep, a)?.fault == nil)
        try dma.unmapPage(nic, address: a, size: 4096)
        // The IOTLB still holds the translation: a stale use is permitted, not a violation.
        #expect(rig.dmaWrite(ep, a)?.fault == nil)
        var seen: Set<UInt64> = []
        for _ in 0..<200 {
            let b = try dma.mapPage(nic, physical: pa, size: 4096, direction: .bidirectional)
            #expect(b != a)
            seen.insert(b)
            try dma.unmapPage(nic, address: b, size: 4096)
        }
        #expect(!seen.contains(a))
        let cookie = try #require(try dma.cookie(for: nic))
        #expect(cookie.statistics.flushes == 0)
        #expect(cookie.statistics.entriesPending == 201)
        cookie.queue?.flushAndFreeAll(cpu: 0)
        #expect(rig.dmaWrite(ep, a)?.fault != nil, "after the flush the old translation is gone")
        #expect(try dma.mapPage(nic, physical: pa, size: 4096, direction: .bidirectional) != 0)
        rig.settle()
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("a full per-CPU queue (256 entries) flushes at once in the unmapping thread and frees everything it held")
    func fullQueueFlush() throws {
        let (rig, nic, _) = try nic(.lazy)
        let dma = rig.machine.dma
        let pa = try rig.machine.allocateBuffer()
        for i in 0..<256 {
            let a = try dma.mapPage(nic, physical: pa, size: 4096, direction: .toDevice, cpu: 0)
            try dma.unmapPage(nic, address: a, size: 4096, cpu: 0)
            #expect(try dma.cookie(for: nic)?.statistics.entriesPending == i + 1)
        }
        let cookie = try #require(try dma.cookie(for: nic))
        #expect(cookie.statistics.flushes == 0)
        let a = try dma.mapPage(nic, physical: pa, size: 4096, direction: .toDevice, cpu: 0)
        try dma.unmapPage(nic, address: a, size: 4096, cpu: 0)
        let s = cookie.statistics
        #expect(s.flushes == 1)
        #expect(s.fullQueueFlushes == 1)
        #expect(s.entriesFreed == 256)
        #expect(s.entriesPending == 1)
        #expect(s.invalidationsPerUnmap == 1.0 / 257.0)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("CPUs have their own queues, and one CPU's flush lets another CPU's queue free its entries")
    func perCPUQueues() throws {
        let (rig, nic, _) = try nic(.lazy)
        let dma = rig.machine.dma
        let pa = try rig.machine.allocateBuffer()
        let a0 = try dma.mapPage(nic, physical: pa, size: 4096, direction: .toDevice, cpu: 1)
        try dma.unmapPage(nic, address: a0, size: 4096, cpu: 1)
        for _ in 0..<257 {
            let a = try dma.mapPage(nic, physical: pa, size: 4096, direction: .toDevice, cpu: 0)
            try dma.unmapPage(nic, address: a, size: 4096, cpu: 0)
        }
        let cookie = try #require(try dma.cookie(for: nic))
        #expect(cookie.statistics.flushes == 1)
        #expect(cookie.statistics.entriesPending == 2, "CPU 1's entry waits until CPU 1 queues again")
        let a1 = try dma.mapPage(nic, physical: pa, size: 4096, direction: .toDevice, cpu: 1)
        try dma.unmapPage(nic, address: a1, size: 4096, cpu: 1)
        #expect(cookie.statistics.entriesPending == 2, "CPU 1 freed its covered entry and queued a new one")
        #expect(cookie.statistics.flushes == 1)
    }

    @Test("a mapping made on one CPU is unmapped from another; from there too a wrong size is EINVAL and a second unmap ENOENT", arguments: [DMAPolicy.strict, .lazy])
    func unmapFromAnotherCPU(policy: DMAPolicy) throws {
        let (rig, nic, _) = try nic(policy)
        let dma = rig.machine.dma
        let pa = try rig.machine.allocateBuffer()
        let cookie = try #require(try dma.cookie(for: nic))
        let a = try dma.mapPage(nic, physical: pa, size: 4096 * 3, direction: .toDevice, cpu: 0)
        let b = try dma.mapPage(nic, physical: pa, size: 4096, direction: .toDevice, cpu: 1)
        #expect(cookie.statistics.liveMappings == 2)
        #expect(errName { try dma.unmapPage(nic, address: a, size: 4096, cpu: 1) } == "EINVAL")
        #expect(cookie.statistics.liveMappings == 2)
        try dma.unmapPage(nic, address: a, size: 4096 * 3, cpu: 1)
        try dma.unmapPage(nic, address: b, size: 4096, cpu: 0)
        #expect(cookie.statistics.liveMappings == 0)
        #expect(errName { try dma.unmapPage(nic, address: a, size: 4096 * 3, cpu: 0) } == "ENOENT")
        #expect(errName { try dma.unmapPage(nic, address: b, size: 4096, cpu: 1) } == "ENOENT")
        #expect(cookie.statistics.unmaps == 2)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("the queue timer flushes 10 ms of virtual time after the oldest uncovered unmap, not before")
    func timerFlush() throws {
        let (rig, nic, ep) = try nic(.lazy)
        let dma = rig.machine.dma
        let pa = try rig.machine.allocateBuffer()
        let a = try dma.mapPage(nic, physical: pa, size: 4096, direction: .bidirectional)
        #expect(rig.dmaWrite(ep, a)?.fault == nil)
        let start = rig.scheduler.now
        try dma.unmapPage(nic, address: a, size: 4096)
        let cookie = try #require(try dma.cookie(for: nic))
        rig.scheduler.run(until: start + 9_000_000)
        #expect(cookie.statistics.flushes == 0)
        #expect(rig.dmaWrite(ep, a)?.fault == nil, "still stale (permitted) before the timeout")
        rig.scheduler.run(until: start + 10_500_000)
        let s = cookie.statistics
        #expect(s.timerFlushes == 1)
        #expect(s.entriesFreed == 1)
        #expect(s.entriesPending == 0)
        #expect(rig.dmaWrite(ep, a)?.fault != nil)
        rig.settle()
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("when the IOVA space is exhausted by queued ranges, allocation flushes the queues and retries (rollover)")
    func rolloverFlush() throws {
        let (rig, nic, _) = try nic(.lazy)
        let dma = rig.machine.dma
        try dma.setMask(nic, bits: 20) // frames 1…255: fewer than a queue holds
        let pa = try rig.machine.allocateBuffer()
        for _ in 0..<255 {
            let a = try dma.mapPage(nic, physical: pa, size: 4096, direction: .toDevice)
            try dma.unmapPage(nic, address: a, size: 4096)
        }
        let cookie = try #require(try dma.cookie(for: nic))
        #expect(cookie.statistics.flushes == 0)
        #expect(cookie.statistics.entriesPending == 255)
        let a = try dma.mapPage(nic, physical: pa, size: 4096, direction: .toDevice)
        #expect(a < 1 << 20)
        let s = cookie.statistics
        #expect(s.rolloverFlushes == 1)
        #expect(s.flushes == 1)
        #expect(s.entriesFreed == 255)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("a device whose 4 GiB window is full moves to its full mask once and for all")
    func thirtyTwoBitFirstFallback() throws {
        let (rig, nic, _) = try nic()
        let dma = rig.machine.dma
        let cookie = try #require(try dma.cookie(for: nic))
        #expect(cookie.iova.reserve(lo: 1, hi: cookie.iova.dma32PFN - 2))
        let pa = try rig.machine.allocateBuffer()
        let low = try dma.mapPage(nic, physical: pa, size: 4096, direction: .toDevice)
        #expect(low < gib4, "one frame is still free below 4 GiB")
        let high = try dma.mapPage(nic, physical: pa, size: 4096, direction: .toDevice)
        #expect(high >= gib4)
        #expect(cookie.statistics.fallbacksTo64Bit == 1)
        let tries32 = nic.dmaTry32BitFirst.load(ordering: .relaxed)
        #expect(!tries32)
        try dma.unmapPage(nic, address: low, size: 4096)
        cookie.iova.flushCaches()
        let next = try dma.mapPage(nic, physical: pa, size: 4096, direction: .toDevice)
        #expect(next >= gib4, "the device no longer tries below 4 GiB first")
        #expect(cookie.statistics.fallbacksTo64Bit == 1)
    }

    // MARK: Scatter lists

    @Test("a scatter list maps into one contiguous IOVA range, each segment keeping its offset, and unmaps as one")
    func scatterList() throws {
        let (rig, nic, ep) = try nic()
        let dma = rig.machine.dma
        let p1 = try rig.machine.allocateBuffer(), p2 = try rig.machine.allocateBuffer(), p3 = try rig.machine.allocateBuffer()
        let segs = [ScatterSegment(physical: p1 + 0x800, length: 0x800),
                    ScatterSegment(physical: p2, length: 0x1000),
                    ScatterSegment(physical: p3 + 0x10, length: 0x20)]
        let m = try dma.mapSG(nic, segs, direction: .fromDevice)
        #expect(m.size == 3 * 4096)
        #expect(m.addresses == [m.iova + 0x800, m.iova + 0x1000, m.iova + 0x2010])
        let domain = try #require(nic.attachedDomain)
        for (addr, s) in zip(m.addresses, segs) { #expect(rig.core.iovaToPhys(domain, addr) == s.physical) }
        #expect(rig.dmaWrite(ep, m.addresses[2], bytes: 16, value: 7)?.fault == nil)
        #expect(try rig.platform.memory.load8(p3 + 0x10) == 7)
        try dma.unmapSG(nic, m)
        for addr in m.addresses { #expect(rig.core.iovaToPhys(domain, addr) == nil) }
        #expect(throws: IOMMUError.self) { try dma.unmapSG(nic, m) }
        rig.settle()
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("a scatter list with a bad segment fails before anything is mapped; a failure midway undoes the mapped part")
    func scatterListBadSegments() throws {
        let (rig, nic, _) = try nic()
        let dma = rig.machine.dma
        let cookie = try #require(try dma.cookie(for: nic))
        let p = try rig.machine.allocateBuffer()
        #expect(errName { _ = try dma.mapSG(nic, [], direction: .toDevice) } == "EINVAL")
        #expect(errName { _ = try dma.mapSG(nic, [ScatterSegment(physical: p, length: 4096), ScatterSegment(physical: p, length: 0)], direction: .toDevice) } == "EINVAL")
        #expect(errName { _ = try dma.mapSG(nic, [ScatterSegment(physical: .max - 10, length: 100)], direction: .toDevice) } == "EINVAL")
        // The second segment lies beyond the unit's 46-bit host address width.
        #expect(errName { _ = try dma.mapSG(nic, [ScatterSegment(physical: p, length: 4096), ScatterSegment(physical: 1 << 50, length: 4096)], direction: .toDevice) } == "ERANGE")
        #expect(cookie.statistics.liveMappings == 0)
        #expect(cookie.statistics.mapFailures == 1)
        // The failed call's miss also cached the rest of its page-table line (`refill`).
        let allocated = cookie.iova.allocatedRanges
        #expect(allocated > 0 && cookie.iova.cachedRanges == allocated, "the IOVA went back to the CPU's cache")
        let domain = try #require(nic.attachedDomain)
        let m = try dma.mapSG(nic, [ScatterSegment(physical: p, length: 4096), ScatterSegment(physical: p, length: 4096)], direction: .toDevice)
        #expect(cookie.iova.allocatedRanges == allocated && cookie.iova.cachedRanges == allocated - 1,
                "a cached range is used again; the tree is not asked")
        #expect(rig.core.iovaToPhys(domain, m.addresses[0]) == p)
        #expect(rig.core.iovaToPhys(domain, m.addresses[1]) == p)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    // MARK: Bad input

    @Test("unmap of a never-mapped address, a double unmap, a zero size, a wrong size or a too-small mask is a typed error that changes nothing",
          arguments: [DMAPolicy.strict, .lazy])
    func typedErrors(policy: DMAPolicy) throws {
        let (rig, nic, ep) = try nic(policy)
        let dma = rig.machine.dma
        let pa = try rig.machine.allocateBuffer()
        let a = try dma.mapPage(nic, physical: pa, size: 8192, direction: .bidirectional)
        let cookie = try #require(try dma.cookie(for: nic))
        let before = cookie.statistics
        #expect(errName { try dma.unmapPage(nic, address: 0x7700_0000, size: 4096) } == "ENOENT")
        #expect(errName { try dma.unmapPage(nic, address: a, size: 0) } == "EINVAL")
        #expect(errName { try dma.unmapPage(nic, address: a, size: 4096) } == "EINVAL", "mapped with 2 pages")
        #expect(errName { _ = try dma.mapPage(nic, physical: pa, size: 0, direction: .toDevice) } == "EINVAL")
        #expect(errName { _ = try dma.mapPage(nic, physical: .max - 5, size: 4096, direction: .toDevice) } == "EINVAL")
        #expect(errName { try dma.setMask(nic, bits: 8) } == "EINVAL")
        try dma.setMask(nic, bits: 16)
        #expect(errName { _ = try dma.mapPage(nic, physical: pa, size: 1 << 20, direction: .toDevice) } == "ERANGE")
        #expect(cookie.statistics == before, "no error changed anything")
        #expect(rig.dmaWrite(ep, a)?.fault == nil, "the mapping is intact")
        #expect(try dma.isMapped(nic, address: a), "still live after the failed unmaps")
        try dma.unmapPage(nic, address: a, size: 8192)
        #expect(try !dma.isMapped(nic, address: a))
        #expect(errName { try dma.unmapPage(nic, address: a, size: 8192) } == "ENOENT")
        #expect(cookie.statistics.unmaps == before.unmaps + 1)
        rig.settle()
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("a CPU slot out of range, sizes that overflow, and a rounded size beyond a small mask are typed errors, never traps")
    func overflowAndCPUErrors() throws {
        let (rig, nic, _) = try nic()
        let dma = rig.machine.dma
        #expect(errName { _ = try dma.mapPage(nic, physical: 0x10_0000, size: 4096, direction: .toDevice, cpu: -1) } == "EINVAL")
        #expect(errName { _ = try dma.mapPage(nic, physical: 0x10_0000, size: 4096, direction: .toDevice, cpu: 2) } == "EINVAL")
        #expect(errName { try dma.unmapPage(nic, address: 0x1000, size: 4096, cpu: -5) } == "EINVAL")
        #expect(errName { try dma.unmapPage(nic, address: 1, size: .max) } == "EINVAL")
        #expect(errName { _ = try dma.mapPage(nic, physical: 1, size: .max, direction: .toDevice) } == "EINVAL")
        #expect(errName { _ = try dma.mapSG(nic, [ScatterSegment(physical: 1, length: .max)], direction: .toDevice) } == "EINVAL")
        try dma.setMask(nic, bits: 16) // frames 1…15: 9 pages round up to 16, which cannot fit
        #expect(errName { _ = try dma.mapPage(nic, physical: 0x10_0000, size: 0x9000, direction: .toDevice) } == "ENOMEM")
        #expect(try dma.cookie(for: nic)?.statistics.liveMappings == 0)
    }

    @Test("after a failed flush, one successful flush frees every entry queued before it (before or after the failure), and the timer stays armed")
    func failedFlushThenSuccess() throws {
        let (rig, nic, _) = try nic(.lazy)
        let dma = rig.machine.dma
        let pa = try rig.machine.allocateBuffer()
        let a = try dma.mapPage(nic, physical: pa, size: 4096, direction: .toDevice)
        try dma.unmapPage(nic, address: a, size: 4096)
        let cookie = try #require(try dma.cookie(for: nic))
        let queue = try #require(cookie.queue)
        // The unit never completes wait descriptors: the flush times out.
        rig.machine.units[0].descriptorFaults[InvalidationDescriptor.waitType] = .drop
        #expect(!queue.flush())
        #expect(cookie.statistics.failedFlushes == 1)
        let since = queue.uncoveredSince.load(ordering: .relaxed), timerOn = queue.timerOn.load(ordering: .relaxed)
        #expect(since != 0, "the entry still counts for the timer")
        #expect(timerOn)
        rig.machine.units[0].descriptorFaults = [:]
        // An unmap after the failed flush: the next flush started later covers it too.
        let b = try dma.mapPage(nic, physical: pa, size: 4096, direction: .toDevice)
        try dma.unmapPage(nic, address: b, size: 4096)
        #expect(cookie.statistics.entriesPending == 2)
        #expect(queue.flush())
        queue.freeAllCompleted(cpu: 0)
        #expect(cookie.statistics.entriesPending == 0, "one successful flush that started later is enough")
    }

    @Test("a failed map whose undo cannot be invalidated fails with EIO and its IOVA is never handed out again")
    func failedUndoLosesIOVA() throws {
        let (rig, nic, _) = try nic()
        let dma = rig.machine.dma
        let cookie = try #require(try dma.cookie(for: nic))
        rig.machine.units[0].descriptorFaults[InvalidationDescriptor.waitType] = .drop
        // Beyond the unit's 46-bit host address width: the map fails, and so does the flush undoing it.
        #expect(errName { _ = try dma.mapPage(nic, physical: 1 << 50, size: 4096, direction: .toDevice) } == "EIO")
        let s = cookie.statistics
        #expect(s.mapFailures == 1 && s.pagesLostToFailedFlush == 1)
        // The miss also cached the rest of its page-table line (`refill`); the lost range is
        // the one allocated range no cache holds.
        #expect(cookie.iova.allocatedRanges == cookie.iova.cachedRanges + 1,
                "the range did not go back to a cache, and stays allocated for good")
        cookie.iova.flushCaches()
        #expect(cookie.iova.allocatedRanges == 1 && cookie.iova.cachedRanges == 0)
    }

    @Test("unmapping 4 KiB of a superpage when no frame is left for the split is ENOMEM, not ENOENT, and the mapping stays")
    func splitOutOfMemory() throws {
        let rig = try KernelRig()
        let (nic, _) = try rig.add("nic", dev: 3)
        let d = try rig.core.allocDomain(for: nic)
        try rig.core.map(d, iova: 0x4000_0000, physical: 0x20_0000, size: 0x20_0000, permissions: .readWrite)
        rig.platform.faults.mode = .probability(1, only: [.frameAlloc])
        #expect(errName { try rig.core.unmap(d, iova: 0x4000_0000, size: 4096) } == "ENOMEM")
        rig.platform.faults.mode = .off
        #expect(rig.core.iovaToPhys(d, 0x4000_0000) == 0x20_0000)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("the DMA API refuses a device whose group a user owns")
    func ownedGroupRefused() throws {
        let (rig, nic, _) = try nic()
        let user = try rig.core.allocDomain(for: nic)
        let group = try #require(nic.group)
        try rig.core.claimDMAOwner(group)
        try rig.core.attach(user, to: group)
        #expect(errName { _ = try rig.machine.dma.mapPage(nic, physical: 0x10_0000, size: 4096, direction: .toDevice) } == "EBUSY")
    }

    @Test("random DMA API calls with random, often invalid, arguments never trap and leave the live mappings consistent",
          arguments: [DMAPolicy.strict, .lazy])
    func randomCalls(policy: DMAPolicy) throws {
        let (rig, nic, _) = try nic(policy, seed: 7)
        let dma = rig.machine.dma
        var rng = SeededRNG(seed: 99)
        var live: [(UInt64, UInt64)] = []
        var maps: [DMAScatterMapping] = []
        func pick(_ values: [UInt64]) -> UInt64 { values[Int(rng.next(below: UInt64(values.count)))] }
        let sizes: [UInt64] = [0, 1, 2, 4095, 4096, 4097, 0x9000, 1 << 20, .max, .max - 1]
        let addresses: [UInt64] = [0, 1, 0x1000, 0x10_0000 + 0x123, 1 << 50, .max, .max - 4095]
        for _ in 0..<3000 {
            let cpu = Int(rng.next(below: 4)) - 1 // -1…2: some invalid
            switch rng.next(below: 6) {
            case 0:
                if let a = try? dma.mapPage(nic, physical: pick(addresses), size: pick(sizes), direction: .bidirectional, cpu: cpu) {
                    live.append((a, 0))
                }
            case 1:
                let size = 1 + rng.next(below: 3 * 4096)
                if let a = try? dma.mapPage(nic, physical: 0x10_0000 + rng.next(below: 4096), size: size, direction: .toDevice, cpu: max(cpu, 0)) {
                    live.append((a, size))
                }
            case 2 where !live.isEmpty:
                let i = Int(rng.next(below: UInt64(live.count)))
                let (a, size) = live[i]
                // Sometimes the wrong size: must be refused without change.
                let asked = rng.next(below: 4) == 0 ? size + 4096 : size
                if size > 0, (try? dma.unmapPage(nic, address: a, size: asked, cpu: max(cpu, 0))) != nil { live.remove(at: i) }
            case 3:
                _ = try? dma.unmapPage(nic, address: pick(addresses), size: pick(sizes), cpu: cpu)
            case 4:
                let segs = (0..<Int(1 + rng.next(below: 3))).map { _ in ScatterSegment(physical: pick(addresses), length: pick(sizes)) }
                if let m = try? dma.mapSG(nic, segs, direction: .fromDevice, cpu: cpu) { maps.append(m) }
            default:
                if let m = maps.popLast() { #expect((try? dma.unmapSG(nic, m, cpu: 0)) != nil) }
            }
        }
        let cookie = try #require(try dma.cookie(for: nic))
        let sized = live.filter { $0.1 > 0 }.count + live.filter { $0.1 == 0 }.count
        #expect(cookie.statistics.liveMappings == sized + maps.count)
        for m in maps { try dma.unmapSG(nic, m) }
        for (a, size) in live where size > 0 { try dma.unmapPage(nic, address: a, size: size) }
        rig.settle()
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    // MARK: Oracle rules

    @Test("the oracle flags an IOVA mapped again before the flush covering its deferred unmap")
    func oracleCatchesReuseBeforeFlush() throws {
        let rig = try KernelRig(policy: .lazy)
        let (nic, _) = try rig.add("nic", dev: 3)
        let d = try rig.core.allocDomain(for: nic)
        let pa = try rig.machine.allocateBuffer()
        try rig.core.map(d, iova: 0x10_0000, physical: pa, size: 4096, permissions: .readWrite)
        var g = UnmapGather()
        _ = try rig.core.unmapDeferred(d, iova: 0x10_0000, size: 4096, gather: &g)
        // A broken DMA layer hands the IOVA out again without flushing.
        try rig.core.map(d, iova: 0x10_0000, physical: pa, size: 4096, permissions: .readWrite)
        #expect(rig.violations.map(\.invariant) == ["iova-reused-before-flush"])
    }

    @Test("the oracle flags a table page freed before the flush of the deferred unmap that unlinked it, and not one freed after")
    func oracleCatchesEarlyTableFree() throws {
        let rig = try KernelRig(policy: .lazy)
        let (nic, _) = try rig.add("nic", dev: 3)
        let d = try rig.core.allocDomain(for: nic)
        // 512 4 KiB pages filling one leaf table (the physical side is not 2 MiB aligned):
        // unmapping the table's whole span unlinks it.
        let pa: UInt64 = 0x10_1000
        try rig.core.map(d, iova: 0x40_0000, physical: pa, size: 0x20_0000, permissions: .readWrite)
        var g = UnmapGather()
        _ = try rig.core.unmapDeferred(d, iova: 0x40_0000, size: 0x20_0000, gather: &g)
        #expect(g.freedTables.count == 1)
        try rig.platform.frames.free(g.freedTables[0]) // broken: before any flush
        #expect(rig.violations.map(\.invariant) == ["table-freed-before-flush"])

        // The correct order (flush, then free) is not flagged.
        try rig.core.map(d, iova: 0x80_0000, physical: pa, size: 0x20_0000, permissions: .readWrite)
        var g2 = UnmapGather()
        _ = try rig.core.unmapDeferred(d, iova: 0x80_0000, size: 0x20_0000, gather: &g2)
        try rig.core.flushDeferred(d)
        rig.core.putPages(d, g2.freedTables, flushed: true)
        #expect(rig.violations.count == 1)
        try rig.core.freeDomain(d)
    }

    // MARK: Teardown and threads

    @Test("releasing a lazy device with queued unmaps frees the queued tables and leaves nothing behind")
    func teardownWithQueuedEntries() throws {
        let (rig, nic, _) = try nic(.lazy)
        let dma = rig.machine.dma
        let pa = try rig.machine.allocateBuffer()
        var addrs: [UInt64] = []
        for _ in 0..<40 { addrs.append(try dma.mapPage(nic, physical: pa, size: 4096 * 600, direction: .toDevice)) }
        for a in addrs { try dma.unmapPage(nic, address: a, size: 4096 * 600) }
        #expect(try dma.cookie(for: nic)?.statistics.entriesPending == 40)
        try rig.core.release(nic)
        rig.machine.freeBuffers()
        rig.driver.shutdown()
        rig.settle()
        rig.oracle.checkTeardown(core: rig.core, driver: rig.driver)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("two real threads mapping and unmapping, strict or deferred, lose no mapping and leak no IOVA", arguments: [DMAPolicy.strict, .lazy])
    func realThreads(policy: DMAPolicy) async throws {
        let (rig, nic, _) = try nic(policy)
        // Two real threads: the oracle (single-threaded, as the scheduler drives it) must not
        // be called from both, by any of its hooks.
        rig.machine.detachOracle()
        rig.platform.realThreads = true
        let dma = rig.machine.dma
        let cookie = try #require(try dma.cookie(for: nic))
        let pa = try rig.machine.allocateBuffer()
        let errors = await withTaskGroup(of: Int.self) { group in
            for cpu in 0..<2 {
                group.addTask {
                    var bad = 0
                    for i in 0..<3000 {
                        do {
                            let a = try dma.mapPage(nic, physical: pa, size: 4096 * UInt64(1 + i % 3), direction: .bidirectional, cpu: cpu)
                            try dma.unmapPage(nic, address: a, size: 4096 * UInt64(1 + i % 3), cpu: cpu)
                        } catch { bad += 1 }
                    }
                    return bad
                }
            }
            return await group.reduce(0, +)
        }
        #expect(errors == 0)
        let s = cookie.statistics
        #expect(s.maps == 6000 && s.unmaps == 6000)
        #expect(s.liveMappings == 0)
        cookie.queue?.flushAndFreeAll(cpu: 0)
        #expect(cookie.statistics.entriesPending == 0)
        cookie.iova.flushCaches()
        #expect(cookie.iova.allocatedRanges == 0)
    }
}

