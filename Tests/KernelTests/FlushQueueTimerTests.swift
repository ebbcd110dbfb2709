import Testing
import Platform
import Formats
import Hardware
@testable import Kernel

#if canImport(Glibc)
import Glibc
#endif

@Suite("Flush-queue timer on real threads")
struct FlushQueueTimerTests {
    /// A lazy DMA device on a unit whose IOTLB invalidations, once it is set up, take
    /// `latencyNs` more of real time.
    private final class Stack {
        let unit: VTdUnit
        var core: IOMMUCore?
        var dma: IOMMUDMA?
        var device: Device?

        init(latencyNs: UInt64) throws {
            let platform = try PlatformContext(memorySize: 1 << 28, seed: 1)
            unit = VTdUnit(configuration: VTdConfiguration(name: "dmar0", latency: .uniform(0)), platform: platform)
            let core = IOMMUCore(platform: platform, policy: .lazy)
            let driver = try VTdDriver(platform: platform, hardware: [unit])
            core.register(driver)
            device = try core.probe([DeviceDescription(name: "nic", requesterID: RequesterID(bus: 1, device: 0, function: 0))],
                                    driver: driver)[0]
            self.core = core
            dma = IOMMUDMA(core: core)
            platform.realThreads = true
            // First-stage DMA domains flush with PASID-based IOTLB descriptors.
            if latencyNs > 0 { unit.descriptorFaults[InvalidationDescriptor.pasidIOTLBType] = .delay(latencyNs) }
        }

        /// Maps and unmaps one page, so an entry waits in the flush queue under an armed
        /// timer; returns the queue.
        func queueOneUnmap() throws -> FlushQueue {
            let dma = try #require(dma), device = try #require(device)
            let iova = try dma.mapPage(device, physical: 1 << 20, size: 4096, direction: .toDevice)
            try dma.unmapPage(device, address: iova, size: 4096)
            return try #require(try dma.cookie(for: device)?.queue)
        }

        /// Drops every reference to the core the stack holds (the unit stays).
        func dropCore() {
            device = nil
            dma = nil
            core = nil
        }
    }

    @Test("a timer flush that outlives every other reference to the core frees the core on the timer's thread without deadlock or crash")
    func timerOutlivesTheCore() throws {
        let stack = try Stack(latencyNs: 30_000_000)
        let unit = stack.unit
        let before = unit.counters.descriptorsByType[Int(InvalidationDescriptor.pasidIOTLBType)]
        let q = try stack.queueOneUnmap()
        weak var weakCore: IOMMUCore? = stack.core
        // The 10 ms timer fires and starts a flush that spins 30 ms in the invalidation wait.
        let start = HostClock.monotonic()
        while q.timerFlushes.load(ordering: .acquiring) == 0, HostClock.monotonic() &- start < 2_000_000_000 { usleep(100) }
        #expect(q.timerFlushes.load(ordering: .acquiring) == 1)
        // Every other reference goes while the timer is inside its flush.
        stack.dropCore()
        while weakCore != nil, HostClock.monotonic() &- start < 2_000_000_000 { usleep(1_000) }
        #expect(weakCore == nil, "the core was not freed after the timer finished")
        // The timer's flush completed before the core went.
        #expect(unit.counters.descriptorsByType[Int(InvalidationDescriptor.pasidIOTLBType)] > before)
        #expect(q.failedFlushes.load(ordering: .relaxed) == 0)
    }

    @Test("a timer that fires after the core is gone does nothing")
    func timerAfterTheCore() throws {
        let stack = try Stack(latencyNs: 0)
        let q = try stack.queueOneUnmap()
        weak var weakCore: IOMMUCore? = stack.core
        stack.dropCore()
        #expect(weakCore == nil)
        // The timer (10 ms) fires with the core gone.
        usleep(40_000)
        q.timerFired()
        #expect(q.timerFlushes.load(ordering: .relaxed) == 0)
        #expect(q.flushes.load(ordering: .relaxed) == 0)
    }
}
