import Platform
import Formats
import Hardware
import Kernel

/// What an IOMMU unit of a machine is built as.
public enum UnitConfiguration: Sendable {
    case vtd(VTdConfiguration)
    case smmuv3(SMMUv3Configuration)

    public var name: String {
        switch self {
        case .vtd(let c): return c.name
        case .smmuv3(let c): return c.name
        }
    }
}

/// One simulated computer: memory and scheduler, IOMMU units of one architecture (VT-d
/// units under the VT-d driver, or SMMUv3s under the Arm SMMUv3 driver), PCIe endpoints,
/// the kernel (IOMMU core) and the oracle watching every DMA. There is no global state:
/// many machines can run side by side.
public final class Machine: @unchecked Sendable {
    public let platform: PlatformContext
    /// VT-d units (none on an Arm machine) and SMMUv3 units (none on an Intel machine).
    public let units: [VTdUnit]
    public let smmuUnits: [SMMUv3Unit]
    /// The driver of the machine's units: VT-d or SMMUv3.
    public let vtdDriver: VTdDriver?
    public let smmuDriver: ArmSMMUv3Driver?
    public let core: IOMMUCore
    public let oracle: Oracle
    /// The DMA API (dma-iommu) over the core, with `cpus` CPU slots.
    public let dma: IOMMUDMA
    public private(set) var endpoints: [PCIeEndpoint] = []
    /// Frames the scenario took for DMA buffers (freed at teardown).
    public private(set) var buffers: [UInt64] = []

    /// The driver of the units (devices are probed with it).
    public let driver: any IOMMUDriver

    /// Whether the units are SMMUv3s.
    public var isArm: Bool { smmuDriver != nil }

    public convenience init(seed: UInt64, memorySize: UInt64 = 256 << 20, units configurations: [VTdConfiguration],
                            policy: DMAPolicy = .strict, cpus: Int = 2, pagingStage: VTdPagingStage? = nil, pagingLevels: Int = 4,
                            sharedMemory: Bool = false) throws {
        try self.init(seed: seed, memorySize: memorySize, unitConfigurations: configurations.map { .vtd($0) }, policy: policy,
                      cpus: cpus, pagingStage: pagingStage, pagingLevels: pagingLevels, sharedMemory: sharedMemory)
    }

    /// A machine whose units are all of one architecture (mixing VT-d and SMMUv3 units in one
    /// machine is refused: each would need its own driver, which the machine does not model).
    public init(seed: UInt64, memorySize: UInt64 = 256 << 20, unitConfigurations configurations: [UnitConfiguration],
                policy: DMAPolicy = .strict, cpus: Int = 2, pagingStage: VTdPagingStage? = nil, pagingLevels: Int = 4,
                sharedMemory: Bool = false, smmuStage: ArmSMMUStage? = nil) throws {
        let platform = try PlatformContext(memorySize: memorySize, seed: seed, sharedMemory: sharedMemory)
        self.platform = platform
        var vtd: [VTdConfiguration] = [], arm: [SMMUv3Configuration] = []
        for c in configurations {
            switch c {
            case .vtd(let v): vtd.append(v)
            case .smmuv3(let a): arm.append(a)
            }
        }
        guard vtd.isEmpty || arm.isEmpty else { throw IOMMUError.invalidArgument("a machine's units must all be VT-d or all SMMUv3") }
        units = vtd.map { VTdUnit(configuration: $0, platform: platform) }
        smmuUnits = arm.map { SMMUv3Unit(configuration: $0, platform: platform) }
        oracle = Oracle(platform: platform, units: units, smmuUnits: smmuUnits)
        oracle.policy = policy
        core = IOMMUCore(platform: platform, policy: policy)
        core.observer = oracle
        if arm.isEmpty {
            let d = try VTdDriver(platform: platform, hardware: units)
            d.preferredStage = pagingStage
            d.pagingLevels = pagingLevels
            core.register(d)
            vtdDriver = d
            smmuDriver = nil
            driver = d
            oracle.trackedDriver = ObjectIdentifier(d)
            oracle.reservedCheck = { d.units.allSatisfy { $0.domainIDs.reservedIntact } }
        } else {
            let d = try ArmSMMUv3Driver(platform: platform, hardware: smmuUnits)
            d.preferredStage = smmuStage
            core.register(d)
            smmuDriver = d
            vtdDriver = nil
            driver = d
            oracle.trackedDriver = ObjectIdentifier(d)
        }
        dma = IOMMUDMA(core: core, cpus: cpus)
        platform.frames.freeObserver = { [unowned oracle] address, purpose, owner in
            if purpose == .pageTable { oracle.frameFreed(address, owner: owner) }
        }
        platform.frames.ownedAllocationObserver = { [unowned oracle] address, purpose, owner in
            oracle.ownedFrameAllocated(address, purpose: purpose, owner: owner)
        }
        for (i, u) in units.enumerated() {
            u.onTableRead = { [unowned oracle] address in oracle.tableRead(address, unit: i) }
        }
        for (i, u) in smmuUnits.enumerated() {
            u.onTableRead = { [unowned oracle] address in oracle.tableRead(address, unit: i) }
        }
    }

    deinit {
        // Endpoints and units reference each other, and events still pending (a run that stopped
        // at a failing step, a machine never run) hold the hardware that holds the scheduler;
        // without this a machine would never be freed.
        for u in units { u.disconnectAll() }
        for u in smmuUnits { u.disconnectAll() }
        platform.scheduler.discardPending()
        // The oracle goes with the machine; what outlives it (a user API context closed later)
        // may still free frames, with nobody watching.
        detachOracle()
    }

    /// Stops the oracle watching: from here on no hook of the core, the frame allocator or
    /// the units calls it. For the system alone, as Linux runs it (benchmarks,
    /// SWIFTIOMMU_ORACLE=0), and for callers on real threads: the oracle is single-threaded,
    /// like the scheduler that normally drives every call.
    public func detachOracle() {
        for u in units { u.onTableRead = nil }
        for u in smmuUnits { u.onTableRead = nil }
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
        let arm = isArm
        return zip(devices, descriptions).enumerated().map { i, pair in
            let (d, desc) = pair
            var a = i < ats.count ? ats[i] : ATSConfiguration()
            var p = i < pri.count ? pri[i] : PRIConfiguration()
            a.enabled = desc.ats
            p.enabled = desc.pri
            let e = PCIeEndpoint(name: d.name, requesterID: d.requesterID,
                                 upstream: arm ? .smmuv3(smmuUnits[d.unit]) : .vtd(units[d.unit]), ats: a, pri: p)
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

    /// Shuts the driver down (its units disabled, its structures freed).
    public func shutdownDriver() {
        vtdDriver?.shutdown()
        smmuDriver?.shutdown()
    }
}
