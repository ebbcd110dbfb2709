/// Deliberately broken kernel behaviour, for checking that the simulator's oracle catches the
/// ordering bugs real drivers have had. Never set outside oracle-strength runs.
public struct InjectedBugs: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The driver gives a DID back to the allocator before the invalidation of the entry
    /// that used it (entries tagged with it may still be cached when it is handed out again).
    public static let releaseDIDBeforeFlush = InjectedBugs(rawValue: 1 << 0)
    /// The core frees unlinked page-table pages before the IOTLB flush of the unmap.
    public static let freeTablesBeforeFlush = InjectedBugs(rawValue: 1 << 1)
    /// The driver replaces a present PASID entry by clearing it and writing the new one
    /// (a window with no translation) while telling the core the update was hitless.
    public static let replaceThroughNonPresent = InjectedBugs(rawValue: 1 << 2)
    /// PASID entry teardown clears the entry without invalidating the PASID cache.
    public static let skipPASIDCacheInvalidation = InjectedBugs(rawValue: 1 << 3)
}

extension InjectedBugs {
    /// PASID teardown skips the page request drain (no handler pass, no fault-work flush, no
    /// VT-d §7.10 drain): responses for the old owner may reach the PASID's next owner.
    public static let skipPageRequestDrain = InjectedBugs(rawValue: 1 << 4)
    /// Unmap flushes (paging domains and the SVA mmu notifier) skip the device-TLB invalidation.
    public static let skipDeviceTLBInvalidation = InjectedBugs(rawValue: 1 << 5)
    /// Unmaps free the page-table pages they unlink at once, outside the gather, before the
    /// IOTLB flush (the walk, or a paging-structure cache, may still reach them).
    public static let freeTablesOutsideGather = InjectedBugs(rawValue: 1 << 6)
    /// The default-domain choice forgets that untrusted devices stay strict: their DMA domain
    /// gets a flush queue under the lazy policy (Linux `iommu_dma_init_fq` never runs for them).
    public static let flushQueueForUntrusted = InjectedBugs(rawValue: 1 << 7)
    /// A DMA unmap gives the IOVA back without unmapping it (an error path that returns
    /// early): the next map is handed an IOVA whose translation is still live.
    public static let freeIOVAWithoutUnmap = InjectedBugs(rawValue: 1 << 8)
    /// A group domain change that fails part-way puts back all the switched devices but the
    /// first: that device stays on the new domain while the group keeps the old one.
    public static let incompleteGroupRollback = InjectedBugs(rawValue: 1 << 9)
    /// The PASID drain's last wait descriptor omits page drain (PD): requests still on the
    /// unit's internal path, and the unit's answers to them, may land after it completed.
    public static let skipPageDrainWait = InjectedBugs(rawValue: 1 << 10)
    /// IOVAs are allocated below the domain's aperture, whatever the device's DMA mask.
    public static let ignoreDMAMask = InjectedBugs(rawValue: 1 << 11)
    /// A deferred DMA unmap frees the table pages it unlinked at once instead of handing
    /// them to the flush queue (they go before the flush that covers the unmap).
    public static let freeDeferredTablesAtOnce = InjectedBugs(rawValue: 1 << 12)
    /// A PASID drain leaves the PASID's partial page requests with the core: a group of its
    /// next owner that reuses their PRG index takes them in.
    public static let keepPartialsAtTeardown = InjectedBugs(rawValue: 1 << 13)
    /// A clearing dirty read does not flush the IOTLB: a translation cached with D set lets
    /// later writes through without setting D again (the oracle: `dirty-write-missed`).
    public static let dirtyClearWithoutFlush = InjectedBugs(rawValue: 1 << 14)
    /// Unmap flushes set the invalidation hint (IH, "only leaves changed") even when they
    /// freed table pages: the unit keeps paging-structure cache entries pointing at them.
    public static let hintAfterFreeingTables = InjectedBugs(rawValue: 1 << 15)
    /// The driver drops the guest's invalidations (HWPT_INVALIDATE on a nested domain does
    /// nothing): the guest's unmapped or remapped pages stay cached.
    public static let dropGuestInvalidation = InjectedBugs(rawValue: 1 << 16)
    /// A nest parent's flush skips its nested children's tags: nested translations built on
    /// an unmapped second-stage page stay cached.
    public static let parentFlushSkipsNested = InjectedBugs(rawValue: 1 << 17)
}
