import Formats

/// Virtual-time costs of the unit's work (ns). Defaults put a queued invalidation plus its
/// wait near the ~2 µs measured on VT-d hardware (docs/architecture.md, PERFORMANCE.md).
public struct VTdLatency: Equatable, Sendable {
    /// Time to fetch and apply one descriptor, by descriptor type (index = type code).
    public var descriptorNs: [UInt64]
    /// From a fault/completion event to the interrupt handler running.
    public var interruptNs: UInt64
    /// One way through the PCIe fabric between a device and the unit (page requests and
    /// responses, ATS translations, device-TLB invalidations and their completions).
    public var linkNs: UInt64 = 250
    /// A device TLB's time to apply an invalidation request before it completes.
    public var deviceTLBInvalidationNs: UInt64 = 500
    /// A page request's way through the unit once it has left the link: the context and
    /// PASID checks and the write into the page request queue (or the unit's own response)
    /// take this long per request, one request at a time in arrival order, so a burst
    /// builds a backlog. A page-drain wait (§7.10) covers requests still on this path; a
    /// drain that skips it lets them land after the PASID moved on.
    public var pageRequestInternalNs: UInt64 = 50

    public init(descriptorNs: [UInt64]? = nil, interruptNs: UInt64 = 500) {
        var d = descriptorNs ?? [UInt64](repeating: 400, count: 16)
        if d.count < 16 { d += [UInt64](repeating: 400, count: 16 - d.count) }
        if descriptorNs == nil {
            d[Int(InvalidationDescriptor.iotlbType)] = 1_500
            d[Int(InvalidationDescriptor.pasidIOTLBType)] = 1_500
            d[Int(InvalidationDescriptor.deviceTLBType)] = 1_500
            d[Int(InvalidationDescriptor.pasidDeviceTLBType)] = 1_500
            d[Int(InvalidationDescriptor.waitType)] = 300
        }
        self.descriptorNs = d
        self.interruptNs = interruptNs
    }

    /// The cost of a descriptor of `type` (the default 400 ns for types beyond the table).
    public func descriptorLatency(_ type: UInt8) -> UInt64 {
        Int(type) < descriptorNs.count ? descriptorNs[Int(type)] : 400
    }

    /// Every descriptor and interrupt costs `ns`.
    public static func uniform(_ ns: UInt64) -> VTdLatency {
        VTdLatency(descriptorNs: [UInt64](repeating: ns, count: 16), interruptNs: ns)
    }
}

/// What a VT-d unit is built with: its capability registers, cache geometry and latencies.
public struct VTdConfiguration: Sendable {
    public var name: String
    public var capability: VTdCapability
    public var extendedCapability: VTdExtendedCapability
    /// Host address width: output addresses (and table pointers) use bits below it.
    public var hostAddressWidth: Int
    public var iotlbEntries: Int
    public var iotlbWays: Int
    public var contextCacheEntries: Int
    public var contextCacheWays: Int
    public var pasidCacheEntries: Int
    public var pasidCacheWays: Int
    /// Paging-structure cache entries per non-leaf level (PDE, PDPE, PML4E, PML5E; VT-d
    /// §6.2.4), shared by first-stage, second-stage and nested walks; 0 disables the caches.
    public var pagingStructureCacheEntries: Int
    public var pagingStructureCacheWays: Int
    public var latency: VTdLatency

    public init(name: String = "dmar0", capability: VTdCapability = .make(), extendedCapability: VTdExtendedCapability = .make(),
                hostAddressWidth: Int = 46, iotlbEntries: Int = 1024, iotlbWays: Int = 4,
                contextCacheEntries: Int = 64, contextCacheWays: Int = 4,
                pasidCacheEntries: Int = 256, pasidCacheWays: Int = 4,
                pagingStructureCacheEntries: Int = 32, pagingStructureCacheWays: Int = 4, latency: VTdLatency = VTdLatency()) {
        self.name = name; self.capability = capability; self.extendedCapability = extendedCapability
        self.hostAddressWidth = hostAddressWidth
        self.iotlbEntries = iotlbEntries; self.iotlbWays = iotlbWays
        self.contextCacheEntries = contextCacheEntries; self.contextCacheWays = contextCacheWays
        self.pasidCacheEntries = pasidCacheEntries; self.pasidCacheWays = pasidCacheWays
        self.pagingStructureCacheEntries = pagingStructureCacheEntries; self.pagingStructureCacheWays = pagingStructureCacheWays
        self.latency = latency
    }
}

/// How the unit mistreats invalidation descriptors of one type (a test and exploration
/// device: a missing flush must show up as a stale translation the oracle catches).
public enum DescriptorFault: Equatable, Sendable {
    /// Complete the descriptor without applying it.
    case drop
    /// Apply it this many ns later than normal.
    case delay(UInt64)
}

/// Event counters of a unit.
public struct VTdCounters: Equatable, Sendable {
    public var translations: UInt64 = 0
    public var iotlbHits: UInt64 = 0
    public var iotlbMisses: UInt64 = 0
    public var contextCacheHits: UInt64 = 0
    public var contextCacheMisses: UInt64 = 0
    public var pasidCacheHits: UInt64 = 0
    public var pasidCacheMisses: UInt64 = 0
    public var walks: UInt64 = 0
    public var walkMemoryAccesses: UInt64 = 0
    /// Walks (second-stage walks inside a nested walk count too) that started below a cached
    /// paging-structure entry, and those that found none (only with the caches enabled).
    public var pagingStructureCacheHits: UInt64 = 0
    public var pagingStructureCacheMisses: UInt64 = 0
    public var pagingStructureEntriesInvalidated: UInt64 = 0
    public var faults: UInt64 = 0
    public var faultsRecorded: UInt64 = 0
    public var faultsSuppressedByFPD: UInt64 = 0
    public var faultsLostToOverflow: UInt64 = 0
    public var descriptors: UInt64 = 0
    /// Completed descriptors by type code (index 0…15).
    public var descriptorsByType = [UInt64](repeating: 0, count: 16)
    public var descriptorsDropped: UInt64 = 0
    public var invalidationQueueErrors: UInt64 = 0
    public var waitsCompleted: UInt64 = 0
    public var iotlbEntriesInvalidated: UInt64 = 0
    public var contextEntriesInvalidated: UInt64 = 0
    public var pasidEntriesInvalidated: UInt64 = 0
    public var interrupts: UInt64 = 0
    public var dmaBytes: UInt64 = 0
    /// Page requests that reached the unit, were written to the queue, were answered by the
    /// unit itself (PASID not present, PRE clear, queue full), and queue overflows.
    public var pageRequests: UInt64 = 0
    public var pageRequestsQueued: UInt64 = 0
    public var pageRequestsAutoResponded: UInt64 = 0
    public var pageRequestOverflows: UInt64 = 0
    /// Stop markers the unit did not queue (no PASID entry, queue full): they need no answer.
    public var stopMarkersDiscarded: UInt64 = 0
    public var pageResponsesSent: UInt64 = 0
    /// ATS translation requests answered; translated requests let through or refused.
    public var atsTranslations: UInt64 = 0
    public var translatedRequests: UInt64 = 0
    public var translatedRequestsRefused: UInt64 = 0
    /// Page-drain waits that had to wait for the fabric.
    public var drainsHeld: UInt64 = 0
    /// Invalidation completions from devices that answer no request (ignored).
    public var unsolicitedCompletions: UInt64 = 0
    public init() {}
}
