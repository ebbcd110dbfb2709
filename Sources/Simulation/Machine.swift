import Platform
import Formats
import Hardware
import Kernel

/// One simulated computer: memory and scheduler, VT-d units, PCIe endpoints, the kernel
/// (IOMMU core with the VT-d driver) and the oracle watching every DMA. There is no global
/// state: many machines can run side by side.
public final class Machine: @unchecked Sendable {
    public let platform: PlatformContext
    public let units: [VTdUnit]
    public let driver: VTdDriver
    public let core: IOMMUCore
    public let oracle: Oracle
    /// The DMA API (dma-iommu) over the core, with `cpus` CPU slots.
    public let dma: IOMMUDMA
    public private(set) var endpoints: [PCIeEndpoint] = []
    /// Frames the scenario took for DMA buffers (freed at teardown).
    public private(set) var buffers: [UInt64] = []

    public init(seed: UInt64, memorySize: UInt64 = 256 << 20, units configurations: [VTdConfiguration],
                policy: DMAPolicy = .strict, cpus: Int = 2, pagingStage: VTdPagingStage? = nil, pagingLevels: Int = 4,
                sharedMemory: Bool = false) throws {
        let platform = try PlatformContext(memorySize: memorySize, seed: seed, sharedMemory: sharedMemory)
        self.platform = platform
        units = configurations.map { VTdUnit(configuration: $0, platform: platform) }
        oracle = Oracle(platform: platform, units: units)
        oracle.policy = policy
        core = IOMMUCore(platform: platform, policy: policy)
        core.observer = oracle
        driver = try VTdDriver(platform: platform, hardware: units)
        driver.preferredStage = pagingStage
        driver.pagingLevels = pagingLevels
        core.register(driver)
        dma = IOMMUDMA(core: core, cpus: cpus)
        oracle.trackedDriver = ObjectIdentifier(driver)
        platform.frames.freeObserver = { [unowned oracle] address, purpose, owner in
            if purpose == .pageTable { oracle.frameFreed(address, owner: owner) }
        }
        platform.frames.ownedAllocationObserver = { [unowned oracle] address, purpose, owner in
            oracle.ownedFrameAllocated(address, purpose: purpose, owner: owner)
        }
        for (i, u) in units.enumerated() {
            u.onTableRead = { [unowned oracle] address in oracle.tableRead(address, unit: i) }
        }
        let d = driver
        oracle.reservedCheck = { d.units.allSatisfy { $0.domainIDs.reservedIntact } }
    }

    deinit {
        // Endpoints and units reference each other, and events still pending (a run that stopped
        // at a failing step, a machine never run) hold the hardware that holds the scheduler;
        // without this a machine would never be freed.
        for u in units { u.disconnectAll(); u.onTableRead = nil }
        platform.scheduler.discardPending()
        // The oracle goes with the machine; what outlives it (a user API context closed later)
        // may still free frames, with nobody watching.
        platform.frames.freeObserver = nil
        platform.frames.ownedAllocationObserver = nil
        if core.observer === oracle { core.observer = nil }
    }

    /// Probes devices and creates their endpoints; `ats` and `pri` give each endpoint's
    /// device-TLB and PRI settings (default sizes when absent; enabled as the description says).
    @discardableResult
    public func addDevices(_ descriptions: [DeviceDescription], ats: [ATSConfiguration] = [],
                           pri: [PRIConfiguration] = []) throws(IOMMUError) -> [(Device, PCIeEndpoint)] {
        let devices = try core.probe(descriptions, driver: driver)
        return zip(devices, descriptions).enumerated().map { i, pair in
            let (d, desc) = pair
            var a = i < ats.count ? ats[i] : ATSConfiguration()
            var p = i < pri.count ? pri[i] : PRIConfiguration()
            a.enabled = desc.ats
            p.enabled = desc.pri
            let e = PCIeEndpoint(name: d.name, requesterID: d.requesterID, unit: units[d.unit], ats: a, pri: p)
            e.maxPASIDs = desc.maxPASIDs
            endpoints.append(e)
            oracle.watch(e, unit: d.unit)
            return (d, e)
        }
    }

    /// A zeroed frame for DMA data.
    public func allocateBuffer() throws(IOMMUError) -> UInt64 {
        do {
            let f = try platform.frames.allocate(.dmaBuffer)
            try platform.memory.zero(f, count: 4096)
            buffers.append(f)
            return f
        } catch { throw .noMemory("DMA buffer") }
    }

    /// `pages` physically contiguous zeroed frames starting at a multiple of `alignment`
    /// (a power of two, in bytes), cut from a longer run; every frame of the run is a DMA
    /// buffer frame (freed at teardown).
    public func allocateContiguousBuffer(pages: Int, alignment: UInt64) throws(IOMMUError) -> UInt64 {
        let extra = Int(max(alignment, 4096) / 4096) - 1
        do {
            let start = try platform.frames.allocateContiguous(pages + extra, .dmaBuffer)
            for i in 0..<(pages + extra) { buffers.append(start + UInt64(i) * 4096) }
            let aligned = (start + alignment - 1) & ~(alignment - 1)
            try platform.memory.zero(aligned, count: UInt64(pages) * 4096)
            return aligned
        } catch { throw .noMemory("\(pages) contiguous DMA buffer frames") }
    }

    /// Returns every DMA buffer frame.
    public func freeBuffers() {
        for b in buffers { try? platform.frames.free(b) }
        buffers = []
    }

    public var scheduler: Scheduler { platform.scheduler }
}
