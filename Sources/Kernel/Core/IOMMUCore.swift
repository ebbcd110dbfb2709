import Platform
import Synchronization
import Formats

/// The IOMMU core (the counterpart of drivers/iommu/iommu.c): devices and groups, domains
/// and their lifetimes, default-domain policy, attach/detach/replace of a group's domain
/// with rollback, PASID attach/replace/detach with a global PASID allocator, map/unmap with
/// a gather and strict completion, and fault reporting.
///
/// Single-threaded: every call runs to completion except at yield points and hardware
/// waits, where only hardware events run (design §3), so no call is re-entered.
public final class IOMMUCore: @unchecked Sendable {
    public let platform: PlatformContext
    public var policy: DMAPolicy
    public private(set) var drivers: [any IOMMUDriver] = []
    public internal(set) var devices: [Device] = []
    public internal(set) var groups: [Group] = []
    /// Domains allocated and not yet freed (static domains excluded).
    public internal(set) var liveDomains: [Int: IOMMUDomain] = [:]
    /// Held strongly: a weak reference would give the observer a side table and make every
    /// retain of it slow (the oracle is called on every DMA); observers hold no core reference.
    @exclusivity(unchecked) public var observer: (any KernelObserver)?
    public let pasids = PASIDAllocator()
    var nextDomainID = 1
    /// The path the driver took in the last successful RID or PASID attach.
    public internal(set) var lastUpdatePath: UpdatePath = .fresh {
        didSet { updatePathCounts[lastUpdatePath.rawValue, default: 0] += 1 }
    }
    /// How often each update path was taken.
    public internal(set) var updatePathCounts: [String: Int] = [:]
    /// Devices that fell to the blocked domain because even a rollback failed.
    public internal(set) var blockedByRollback = 0
    /// Faults from requester IDs no probed device has.
    public internal(set) var unclaimedFaults = 0
    var nextGroupID = 0
    var nextDeviceObjectID: UInt32 = 1
    /// Simulated processes alive, and SVA binds.
    public internal(set) var processes: [Process] = []
    public internal(set) var svaHandles: [SVAHandle] = []
    var nextProcessID = 0
    /// IO page-fault counts: requests reported, groups built, requests no handler took,
    /// responses by code (success, invalid, failure), answers to groups already answered,
    /// partial requests dropped over the limit, partial lists discarded after overflows.
    public internal(set) var pageFaultsReported = 0
    public internal(set) var pageFaultGroups = 0
    public internal(set) var pageFaultsWithoutHandler = 0
    public internal(set) var pageResponses = [0, 0, 0]
    public internal(set) var lateResponses = 0
    public internal(set) var partialsDropped = 0
    public internal(set) var partialsDiscarded = 0
    /// Frames that may still be reached through a translation whose invalidation failed
    /// (an mmu-notifier flush that timed out): kept until every unit's translation is off.
    public private(set) var framesHeldForFailedInvalidations: [UInt64] = []
    /// Partial requests of torn-down PASIDs dropped by their drain.
    public internal(set) var partialsDroppedAtTeardown = 0
    /// Broken behaviour to show the oracle catching it (oracle-strength checks only).
    @exclusivity(unchecked) public var injectedBugs: InjectedBugs = []

    public init(platform: PlatformContext, policy: DMAPolicy = .strict) {
        self.platform = platform
        self.policy = policy
    }

    func holdUntilTranslationOff(_ frames: [UInt64]) { framesHeldForFailedInvalidations += frames }

    /// Frees the frames held after failed invalidations. Only once the drivers have turned
    /// translation off (shutdown): no stale cache entry can reach them then.
    public func releaseHeldFrames() {
        for f in framesHeldForFailedInvalidations { try? platform.frames.free(f) }
        framesHeldForFailedInvalidations = []
        let pending = releasedWhenTranslationOff
        releasedWhenTranslationOff = []
        for release in pending { release() }
    }

    /// Releases a layer above holds back for the same reason (pages pinned by a user API
    /// whose unmap could not be invalidated): run when translation is off.
    public func releaseWhenTranslationOff(_ release: @escaping () -> Void) { releasedWhenTranslationOff.append(release) }
    private var releasedWhenTranslationOff: [() -> Void] = []

    /// A core dropped with devices still probed (a run stopped before its teardown) leaves no
    /// cycle behind: devices and their groups, domains and driver state reference each other,
    /// and through the driver the hardware and its memory. Nothing is programmed here: the
    /// machine is going as a whole.
    deinit {
        for g in groups { g.devices = []; g.domain = nil; g.defaultDomain = nil; g.blockingDomain = nil; g.pasidDomains = [:] }
        for d in devices {
            d.faultParam?.queue.forgetAll()
            d.group = nil; d.attachedDomain = nil; d.attachedPASIDs = [:]; d.driverData = nil; d.faultParam = nil
        }
    }

    /// Adds a driver; its units can then have devices probed behind them.
    public func register(_ driver: any IOMMUDriver) {
        drivers.append(driver)
        driver.register(with: self)
    }

    var scheduler: Scheduler { platform.scheduler }

    @inline(__always)
    func yield(_ site: YieldSite) {
        guard platform.scheduler.yieldPolicy.probability > 0 else { return }
        platform.scheduler.yieldPoint(site)
    }

    /// Gives a driver-made domain its number and records it as live.
    func adopt(_ domain: IOMMUDomain) {
        domain.id = nextDomainID
        nextDomainID += 1
        liveDomains[domain.id] = domain
    }

    func checkAlive(_ domain: IOMMUDomain) throws(IOMMUError) {
        guard !domain.isDestroyed else { throw .notFound("\(domain) was freed") }
    }

    func checkProbed(_ device: Device) throws(IOMMUError) {
        guard !device.isReleased, device.group != nil else { throw .noDevice("\(device) is not probed") }
    }

    /// The core's view of the device's RID domain (what it last attached successfully).
    public func domain(of device: Device) -> IOMMUDomain? { device.attachedDomain }

    /// The domain attached to (`device`, `pasid`).
    public func domain(of device: Device, pasid: PASID) -> IOMMUDomain? { device.group?.pasidDomains[pasid.rawValue] }

    /// The device behind `unit` of `driver` with requester ID `rid`.
    public func device(driver: any IOMMUDriver, unit: Int, requesterID rid: RequesterID) -> Device? {
        devices.first { $0.driver === driver && $0.unit == unit && $0.requesterID == rid }
    }

    // MARK: Domains

    /// Allocates a paging domain for use with `device` (Linux `iommu_paging_domain_alloc`,
    /// `IOMMU_DOMAIN_UNMANAGED`): the user maps and unmaps it and attaches it explicitly.
    public func allocDomain(for device: Device, flags: DomainFlags = []) throws(IOMMUError) -> IOMMUDomain {
        try checkProbed(device)
        guard flags.isDisjoint(with: .deferredFlush) else {
            throw .invalidArgument("deferred flushing is a policy of DMA domains, not an allocation flag")
        }
        if platform.faults.shouldFail(.domainAlloc) { throw .noMemory("domain allocation (injected)") }
        let d = try device.driver.allocPagingDomain(for: device, type: .unmanaged, flags: flags)
        adopt(d)
        return d
    }

    /// A nested domain over `parent` from the user's data (Linux `domain_alloc_nested`
    /// through iommufd): the driver checks the data and the parent.
    public func allocNestedDomain(for device: Device, parent: IOMMUDomain, flags: DomainFlags, dataType: UInt32,
                                  data: [UInt8]) throws(IOMMUError) -> IOMMUDomain {
        try checkProbed(device)
        try checkAlive(parent)
        if platform.faults.shouldFail(.domainAlloc) { throw .noMemory("domain allocation (injected)") }
        let d = try device.driver.allocNestedDomain(for: device, parent: parent, flags: flags, dataType: dataType, data: data)
        adopt(d)
        return d
    }

    /// A nested domain made on a vIOMMU (Linux `viommu->ops->alloc_domain_nested`).
    public func allocNestedDomain(on viommu: IOMMUVIOMMU, for device: Device, flags: DomainFlags, dataType: UInt32,
                                  data: [UInt8]) throws(IOMMUError) -> IOMMUDomain {
        try allocNested(on: viommu, for: device) { () throws(IOMMUError) in
            try viommu.allocNestedDomain(for: device, flags: flags, dataType: dataType, data: data)
        }
    }

    /// A nested domain made on a vIOMMU that copies the user's data itself.
    public func allocNestedDomain(on viommu: IOMMUVIOMMU, for device: Device, flags: DomainFlags, dataType: UInt32,
                                  userData: IOMMUUserData) throws(IOMMUError) -> IOMMUDomain {
        try allocNested(on: viommu, for: device) { () throws(IOMMUError) in
            try viommu.allocNestedDomain(for: device, flags: flags, dataType: dataType, userData: userData)
        }
    }

    /// The checks and bookkeeping of every vIOMMU nested allocation around the driver's `make`.
    private func allocNested(on viommu: IOMMUVIOMMU, for device: Device,
                             _ make: () throws(IOMMUError) -> IOMMUDomain) throws(IOMMUError) -> IOMMUDomain {
        try checkProbed(device)
        try checkAlive(viommu.parent)
        if platform.faults.shouldFail(.domainAlloc) { throw .noMemory("domain allocation (injected)") }
        let d = try make()
        adopt(d)
        return d
    }

    /// Frees a domain nothing is attached to (Linux `iommu_domain_free`).
    public func freeDomain(_ domain: IOMMUDomain) throws(IOMMUError) {
        try checkAlive(domain)
        guard liveDomains[domain.id] === domain else { throw .invalidArgument("\(domain) is a static domain") }
        guard domain.attachments == 0 else { throw .busy("\(domain) has \(domain.attachments) attachment(s)") }
        guard !domain.isCoreOwned else { throw .busy("\(domain) is a group's default domain") }
        release(domain)
    }

    /// Frees a domain nothing is attached to: every cached translation of it was
    /// invalidated when its last attachment was torn down, so queued and quarantined table
    /// pages can go with it.
    func release(_ domain: IOMMUDomain) {
        domain.isDestroyed = true
        liveDomains[domain.id] = nil
        observer?.domainFreed(domain)
        domain.dmaCookie?.destroy()
        domain.dmaCookie = nil
        for t in domain.quarantinedTables.withLock({ q in let all = q; q = []; return all }) { try? platform.frames.free(t) }
        domain.free()
    }
}

/// The global PASID space (Linux `iommu_global_pasid_ida`): PASIDs from 1 up, each
/// allocation bounded by the device's limit.
public final class PASIDAllocator: @unchecked Sendable {
    private var words = [UInt64](repeating: 0, count: Int(PASID.limit) / 64)
    public private(set) var allocated = 0

    init() { words[0] = 1 } // PASID 0 (IOMMU_NO_PASID) is never handed out.

    /// The lowest free PASID in [1, limit), or nil.
    func allocate(below limit: UInt32) -> PASID? {
        let limit = min(limit, PASID.limit)
        var w = 0
        while w * 64 < Int(limit) {
            let free = ~words[w]
            if free != 0 {
                let bit = free.trailingZeroBitCount
                let value = UInt32(w * 64 + bit)
                guard value < limit else { return nil }
                words[w] |= 1 << UInt64(bit)
                allocated += 1
                return PASID(truncating: value)
            }
            w += 1
        }
        return nil
    }

    /// Whether `pasid` is allocated.
    public func isAllocated(_ pasid: PASID) -> Bool {
        words[Int(pasid.rawValue) / 64] & (1 << UInt64(pasid.rawValue % 64)) != 0
    }

    func free(_ pasid: PASID) -> Bool {
        guard pasid.rawValue != 0, isAllocated(pasid) else { return false }
        words[Int(pasid.rawValue) / 64] &= ~(1 << UInt64(pasid.rawValue % 64))
        allocated -= 1
        return true
    }
}
