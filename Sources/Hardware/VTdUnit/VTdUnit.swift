import Platform
import Formats

/// The kind of a request a device makes.
public struct DMAAccess: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    // Computed, so other modules fold them to constants (a stored `static let` costs a call
    // to its addressor on every use from the oracle's per-access check).
    @inlinable public static var read: DMAAccess { DMAAccess(rawValue: 1) }
    @inlinable public static var write: DMAAccess { DMAAccess(rawValue: 2) }
    /// Execute request (PCIe ER, only with a PASID).
    @inlinable public static var execute: DMAAccess { DMAAccess(rawValue: 4) }
    /// Privileged (supervisor) request (PCIe PMR, only with a PASID).
    @inlinable public static var privileged: DMAAccess { DMAAccess(rawValue: 8) }
}

/// The outcome of translating one request.
public enum TranslationResult: Equatable, Sendable {
    case translated(physical: UInt64, pageShift: UInt8, permissions: PagePermissions)
    case fault(VTdFaultReason)
}

/// Something that receives what the unit forwards to endpoints: device-TLB invalidations and
/// page group responses (PCIe messages through the fabric).
public protocol VTdEndpointPort: AnyObject {
    var requesterID: RequesterID { get }
    /// A device-TLB invalidation request; the endpoint calls `completion` when done.
    func receiveDeviceTLBInvalidation(pasid: PASID?, address: UInt64, sizeBit: Bool, global: Bool, completion: @escaping () -> Void)
    /// A page group response.
    func receivePageGroupResponse(_ response: PageGroupResponse)
    /// The fabric between the endpoint and the unit.
    var link: PCIeLink { get }
}

/// An emulated Intel VT-d remapping hardware unit in scalable mode.
///
/// Software reaches it only through its registers (`read32/read64/write32/write64`), through
/// structures in physical memory (root, context, PASID tables, page tables, the invalidation
/// queue) and interrupts (`onFaultEvent`, `onInvalidationEvent`, delivered as scheduled
/// software events). Its context cache, PASID cache and IOTLB behave like hardware caches:
/// tagged as VT-d tags them, fixed capacity with LRU eviction, emptied only by the
/// invalidation descriptors software issues.
public final class VTdUnit: @unchecked Sendable {
    public let configuration: VTdConfiguration
    public let platform: PlatformContext
    let memory: PhysicalMemory
    /// The platform's scheduler without reference counting (the platform, which this unit
    /// holds, owns it): reading `platform.scheduler` on the invalidation path retained an
    /// object every thread shares.
    unowned(unsafe) let scheduler: Scheduler
    public let trackID: UInt32

    // Registers.
    @exclusivity(unchecked) var rootTableAddressRegister: UInt64 = 0
    /// Root table pointer latched by SRTP, and its translation-table mode.
    @exclusivity(unchecked) var activeRootTable: UInt64 = 0
    @exclusivity(unchecked) var activeTTM: UInt8 = 0
    @exclusivity(unchecked) var globalStatus: UInt32 = 0
    @exclusivity(unchecked) var translationEnabled = false
    @exclusivity(unchecked) var faultStatus: UInt32 = 0
    @exclusivity(unchecked) var faultEventControl: UInt32 = VTdEventControl.interruptMask
    @exclusivity(unchecked) var invalidationEventControl: UInt32 = VTdEventControl.interruptMask
    @exclusivity(unchecked) var invalidationCompletionStatus: UInt32 = 0
    @exclusivity(unchecked) var invalidationQueueAddress: UInt64 = 0
    @exclusivity(unchecked) var invalidationQueueHead: UInt64 = 0
    @exclusivity(unchecked) var invalidationQueueTail: UInt64 = 0
    @exclusivity(unchecked) var invalidationQueueErrorRecord: UInt64 = 0
    @exclusivity(unchecked) var faultRecords: [(UInt64, UInt64)]
    @exclusivity(unchecked) var nextFaultRecord = 0
    @exclusivity(unchecked) var queueStepScheduled = false
    // Page request queue registers (VT-d §11.4.11).
    @exclusivity(unchecked) var pageRequestQueueAddress: UInt64 = 0
    @exclusivity(unchecked) var pageRequestQueueHead: UInt64 = 0
    @exclusivity(unchecked) var pageRequestQueueTail: UInt64 = 0
    @exclusivity(unchecked) var pageRequestStatus: UInt32 = 0
    @exclusivity(unchecked) var pageRequestEventControl: UInt32 = VTdEventControl.interruptMask
    /// A page-drain wait descriptor held until the page traffic that was in the fabric when
    /// it was reached is out (§7.10): per link, the request and response counts to arrive,
    /// and first the unit's own page-request path up to the requests received by then.
    @exclusivity(unchecked) var parkedDrain: ParkedDrain?
    /// Page requests that left the link, and those the unit has handled (queued or answered)
    /// since: the difference is on the unit's internal path.
    @exclusivity(unchecked) var pageRequestsAccepted: UInt64 = 0
    @exclusivity(unchecked) var pageRequestsProcessed: UInt64 = 0
    /// When the last accepted request will be handled (the internal path is in order).
    @exclusivity(unchecked) var lastPageRequestDue: UInt64 = 0

    // Caches.
    let contextCache: TaggedCache<ContextCacheEntry>
    let pasidCache: TaggedCache<PASIDCacheEntry>
    let iotlb: TaggedCache<IOTLBEntry>
    let psc: PagingStructureCache
    /// IOTLB entries by size class (4 KiB, 2 MiB, 1 GiB), so lookups skip empty classes.
    @exclusivity(unchecked) var superpageEntries: UInt64 = 0
    /// Nested translations inserted since the IOTLB was last empty (they are tagged per PASID).
    @exclusivity(unchecked) var nestedEntries: UInt64 = 0

    let countersStorage: UnsafeMutablePointer<VTdCounters>
    let addressMask: UInt64
    /// Whether the latency model gives any descriptor a latency (then, with real threads, the
    /// queue times its inline work; see `writeQueueTail`).
    let descriptorsHaveLatency: Bool

    /// Per-type descriptor faults (test and exploration hook), keyed by descriptor type code.
    @exclusivity(unchecked) public var descriptorFaults: [UInt8: DescriptorFault] = [:]
    /// Interrupt handlers (software side), run as scheduled software events.
    public var onFaultEvent: (() -> Void)?
    public var onInvalidationEvent: (() -> Void)?
    public var onPageRequestEvent: (() -> Void)?
    /// The checker (the simulator's oracle, unretained) and observer of every access.
    @exclusivity(unchecked) public var accessWatch = DMAAccessWatch()
    /// Sees every access the unit performed or refused (after the checker).
    public var accessObserver: ((DMAAccessRecord) -> Void)? {
        get { accessWatch.observer }
        set { accessWatch.observer = newValue }
    }
    /// Called with the physical address of every page-table page the unit reads during a
    /// walk (IOTLB misses only): first-stage and second-stage tables, and for nested walks the
    /// host-physical first-stage table pages and the second-stage table pages used to reach
    /// them. Nil costs one test per table read. An inspection hook (the simulator's oracle
    /// flags a walk through a freed page-table page); software never sets it.
    @exclusivity(unchecked) public var onTableRead: ((UInt64) -> Void)?
    /// Endpoints reachable through this unit, by requester ID.
    var endpoints: [UInt16: any VTdEndpointPort] = [:]

    public init(configuration: VTdConfiguration = VTdConfiguration(), platform: PlatformContext) {
        self.configuration = configuration
        self.platform = platform
        self.memory = platform.memory
        self.scheduler = platform.scheduler
        self.trackID = platform.trace.track(named: configuration.name)
        self.addressMask = PageTableGeometry.addressMask(width: configuration.hostAddressWidth)
        self.descriptorsHaveLatency = configuration.latency.descriptorNs.contains { $0 > 0 }
        contextCache = TaggedCache(capacity: configuration.contextCacheEntries, ways: configuration.contextCacheWays, empty: .empty)
        pasidCache = TaggedCache(capacity: configuration.pasidCacheEntries, ways: configuration.pasidCacheWays, empty: .empty)
        iotlb = TaggedCache(capacity: configuration.iotlbEntries, ways: configuration.iotlbWays, empty: .empty)
        psc = PagingStructureCache(entriesPerLevel: configuration.pagingStructureCacheEntries, ways: configuration.pagingStructureCacheWays)
        faultRecords = [(UInt64, UInt64)](repeating: (0, 0), count: configuration.capability.numberOfFaultRecords)
        countersStorage = .allocate(capacity: 1)
        countersStorage.initialize(to: VTdCounters())
        ref.target = self
    }

    /// What this unit's scheduled events hold (cleared when the unit goes).
    let ref = PlatformContext.BackRef<VTdUnit>()

    deinit {
        ref.target = nil
        countersStorage.deinitialize(count: 1)
        countersStorage.deallocate()
    }

    /// Event counters so far.
    public var counters: VTdCounters { countersStorage.pointee }
    public func resetCounters() { countersStorage.pointee = VTdCounters() }

    /// Connects an endpoint so device-TLB invalidations and page responses reach it.
    public func connect(_ endpoint: any VTdEndpointPort) {
        endpoints[endpoint.requesterID.rawValue] = endpoint
        endpoint.link.onPageTrafficLeft = { [ref] in ref.target?.pageTrafficLeft() }
    }

    /// Forgets every connected endpoint (they hold the unit: the machine breaks the cycle).
    public func disconnectAll() { endpoints = [:] }

    /// Entries currently held by each cache.
    public var cacheOccupancy: (context: Int, pasid: Int, iotlb: Int) { (contextCache.count, pasidCache.count, iotlb.count) }

    /// Entries currently held by the paging-structure caches, by level (PDE, PDPE, PML4E, PML5E).
    public var pagingStructureCacheOccupancy: (pde: Int, pdpe: Int, pml4e: Int, pml5e: Int) {
        (psc.pde.count, psc.pdpe.count, psc.pml4e.count, psc.pml5e.count)
    }

    // MARK: Interrupts

    func raiseInterrupt(control: inout UInt32, handler: (() -> Void)?) {
        if control & VTdEventControl.interruptMask != 0 {
            control |= VTdEventControl.interruptPending
            return
        }
        deliver(handler)
    }

    func deliver(_ handler: (() -> Void)?) {
        countersStorage.pointee.interrupts += 1
        platform.trace.record(TraceEvent(time: scheduler.now, kind: .interrupt, track: trackID))
        guard let handler else { return }
        scheduler.schedule(after: configuration.latency.interruptNs, kind: .software, handler)
    }
}

extension VTdUnit {
    /// Makes `checker` see every access, as unit number `index`. The checker must outlive the
    /// unit's DMA (the machine owns both).
    public func attachChecker(_ checker: DMAAccessChecker, index: Int) { accessWatch.attach(checker, index: index) }

    @inline(__always)
    func reportAccess(_ record: DMAAccessRecord) { accessWatch.report(record) }
}

extension VTdUnit {
    /// How many IOTLB and PASID-cache entries are tagged with `did` right now. An inspection
    /// hook for the simulator's oracle (a DID must not be reused while entries tagged with it
    /// are cached); software never calls it.
    public func cachedEntries(taggedWith did: DomainID) -> (iotlb: Int, pasidCache: Int) {
        var tlb = 0, pc = 0
        let d = UInt64(did.rawValue)
        iotlb.forEach { _, key1, _ in if (key1 >> 20) & 0xFFFF == d { tlb += 1 } }
        pasidCache.forEach { _, _, payload in if UInt64(payload.did) == d { pc += 1 } }
        return (tlb, pc)
    }

    /// How many paging-structure-cache entries are tagged with `did` right now (like
    /// `cachedEntries(taggedWith:)`, an inspection hook for the oracle).
    public func cachedPagingStructureEntries(taggedWith did: DomainID) -> Int {
        var n = 0
        for level in 2...5 {
            psc.cache(level).forEach { _, key1, _ in if PagingStructureCache.did(key1) == did.rawValue { n += 1 } }
        }
        return n
    }
}
