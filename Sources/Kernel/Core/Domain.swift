import Platform
import Formats
import Synchronization

/// How a driver changed a translation entry, so the simulator knows whether DMA could see
/// a gap (no translation) while it happened.
public enum UpdatePath: String, Equatable, Sendable, CaseIterable {
    /// There was no translation before.
    case fresh
    /// Hitless: one 64-bit store changed the entry (the DID stayed the same).
    case singleWord
    /// Hitless: a 128-bit compare-exchange switched the words carrying DID and table pointer.
    case compareExchange128
    /// Hitless in steps: the first-stage pointer word was written where the entry in force
    /// ignores it (or uses it as the new one will), around a 128-bit compare-exchange of
    /// the words carrying type, second-stage pointer and DID.
    case staged
    /// Not hitless: the old entry was torn down (DMA blocked) before the new one was set up.
    case teardownSetup
    /// The translation was removed (blocked).
    case removed
    /// Nothing changed (same domain).
    case unchanged

    /// Whether every translation during the update used the old or the new entry.
    public var isHitless: Bool { self != .teardownSetup }
}

/// A translation domain (Linux `struct iommu_domain`). Drivers subclass it and override the
/// operations they support, as they fill `struct iommu_domain_ops`; the base class refuses
/// each with `EOPNOTSUPP`. Overriding is class dispatch (one indirect call), not an
/// existential, so the map/unmap paths stay cheap.
open class IOMMUDomain: @unchecked Sendable, CustomStringConvertible {
    /// A number unique within one core, for reports.
    public internal(set) var id: Int = 0
    public let type: DomainType
    public internal(set) var flags: DomainFlags
    /// The driver instance that made it; a domain attaches only to devices of that driver.
    public let owner: ObjectIdentifier
    /// Supported page sizes, one bit per size (Linux `pgsize_bitmap`).
    public let pageSizes: UInt64
    /// The smallest supported page size (the granule), 0 if none.
    @inlinable public var smallestPageSize: UInt64 { pageSizes & (~pageSizes &+ 1) }
    /// Last IOVA the domain can map (Linux `geometry.aperture_end`).
    public let apertureEnd: UInt64
    /// First IOVA the domain can map (Linux `geometry.aperture_start`).
    public let apertureStart: UInt64
    /// Set when the domain has been freed; every operation then fails with `ENOENT`.
    @exclusivity(unchecked) public internal(set) var isDestroyed = false
    /// Attachments through the core (RIDs and PASIDs); a domain in use cannot be freed.
    public internal(set) var attachments = 0
    /// A domain the core made (default/blocking) rather than a user.
    public internal(set) var isCoreOwned = false
    /// The DMA API's state for a DMA domain (Linux `iova_cookie`): IOVA space, flush queue.
    @exclusivity(unchecked) public internal(set) var dmaCookie: DMACookie?
    /// Who takes recoverable faults of devices attached to it (Linux `iopf_handler`); nil:
    /// page requests are answered Invalid Request.
    public internal(set) var iopfHandler: (any IOPFHandler)?
    /// Table pages whose invalidation failed; freed with the domain.
    let quarantinedTables = Mutex<[UInt64]>([])
    /// The frame allocator's owner tag of this domain's I/O page-table pages (0: it has none
    /// of its own), so the simulator knows every frame its translations can walk.
    open var tableOwnerTag: UInt32 { 0 }

    public init(type: DomainType, flags: DomainFlags = [], owner: ObjectIdentifier, pageSizes: UInt64 = 0, apertureEnd: UInt64 = 0,
                apertureStart: UInt64 = 0) {
        self.type = type; self.flags = flags; self.owner = owner
        self.pageSizes = pageSizes; self.apertureEnd = apertureEnd; self.apertureStart = apertureStart
    }

    deinit {
        // A cookie or queue someone still holds (a pending timer) must not act for a dead
        // domain. Freeing nothing here: the machine's memory goes with it.
        dmaCookie?.markDead()
    }

    open var description: String { "domain \(id) (\(type)\(flags.contains(.deferredFlush) ? ", deferred flush" : ""))" }

    // MARK: Operations (Linux iommu_domain_ops)

    /// Makes this domain the RID translation of `device`, replacing `old` (nil: none yet).
    /// On failure the device keeps its old translation.
    open func attach(_ device: Device, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        throw .notSupported("\(self) cannot be attached")
    }

    /// Makes this domain the translation of (`device`, `pasid`), replacing `old`. The
    /// blocked domain's version removes the PASID's translation. On failure the PASID keeps
    /// its old configuration.
    open func setDevicePASID(_ device: Device, pasid: PASID, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        throw .notSupported("\(self) cannot be attached to a PASID")
    }

    /// Maps `count` pages of `pageSize` at `iova` to `physical`. Returns the bytes mapped
    /// before a failure (then it throws) or all of them.
    open func mapPages(iova: UInt64, physical: UInt64, pageSize: UInt64, count: UInt64,
                       permissions: PagePermissions) throws(IOMMUError) -> UInt64 {
        throw .notSupported("\(self) has no page table")
    }

    /// Clears up to `count` pages of `pageSize` at `iova`, stopping at a hole; adds the range
    /// and freed table pages to `gather`. Returns the bytes unmapped.
    open func unmapPages(iova: UInt64, pageSize: UInt64, count: UInt64, gather: inout UnmapGather) -> UInt64 { 0 }

    /// Invalidates the gathered range in every cache that may hold it and waits (Linux
    /// `iotlb_sync`). The core frees the gathered table pages once this returns (Linux frees
    /// them at the end of the driver's `iotlb_sync`: the same point in time).
    open func iotlbSync(_ gather: inout UnmapGather) throws(IOMMUError) {}

    /// Starts or stops dirty tracking (Linux `dirty_ops->set_dirty_tracking`).
    open func setDirtyTracking(_ enabled: Bool) throws(IOMMUError) {
        throw .notSupported("\(self) cannot track dirty pages")
    }

    /// Reports the pages written in [iova, iova + size) since their last clearing, as
    /// (IOVA, size) of each leaf (Linux `dirty_ops->read_and_clear_dirty`), clearing them
    /// unless `clear` is false. A clearing read flushes the IOTLB before it returns, so that
    /// every later write sets D again. With no `record` it only clears (Linux: a NULL
    /// bitmap), which is allowed while tracking is off; reporting is not (EINVAL).
    open func readAndClearDirty(iova: UInt64, size: UInt64, clear: Bool, _ record: ((UInt64, UInt64) -> Void)?) throws(IOMMUError) {
        throw .notSupported("\(self) cannot track dirty pages")
    }

    /// Makes new mappings visible where the hardware caches non-present entries.
    open func syncMap(iova: UInt64, size: UInt64) throws(IOMMUError) {}

    /// Invalidates everything the domain may have cached (Linux `flush_iotlb_all`).
    open func flushAll() throws(IOMMUError) {}

    /// Invalidates [start, end] wherever this domain's translations may be cached, and waits
    /// (SVA: the mmu-notifier's `arch_invalidate_secondary_tlbs`).
    open func invalidateRange(start: UInt64, end: UInt64) throws(IOMMUError) {}
    /// SVA domains: the process's address space is being torn down while still bound (Linux
    /// `mmu_notifier_ops.release`); the device must no longer reach it.
    open func addressSpaceReleased() {}

    /// The rights a mapping asked with `permissions` gives a device: what the table format
    /// can express (x86-64 first-stage entries cannot refuse reads of a present page, so a
    /// write-only mapping is readable there, as on real hardware).
    open func grantedPermissions(_ permissions: PagePermissions) -> PagePermissions { permissions }

    /// A nested domain's first stage: the parent whose second stage translates every
    /// address it holds, and where its (x86-64 format) tables start in the parent's space.
    open var nestedStage1: NestedStage1? { nil }

    /// The uAPI data type of the invalidation entries the user may send for this domain
    /// (`cache_invalidate_user`), and the size of one entry's struct; nil when it takes none.
    open var userInvalidationDataType: UInt32? { nil }
    open var userInvalidationEntrySize: Int { 0 }

    /// Acts on one user invalidation entry (the first `userInvalidationEntrySize` bytes;
    /// Linux `cache_invalidate_user`, one entry of the array).
    open func cacheInvalidateUser(entry: [UInt8]) throws(IOMMUError) {
        throw .notSupported("\(self) takes no user invalidations")
    }

    /// The physical address `iova` maps to, or nil.
    open func iovaToPhys(_ iova: UInt64) -> UInt64? { nil }

    /// Releases the driver's resources (page tables). Called once, when nothing is attached.
    open func free() {}
}

/// What a nested domain's first stage is (for observers that check nested translations).
public struct NestedStage1: @unchecked Sendable {
    /// How the guest's first stage is found and read.
    public enum Format: Equatable, Sendable {
        /// x86-64 first-stage tables from `tableAddress` (VT-d).
        case x86FirstStage
        /// An SMMUv3 guest CD table at `tableAddress` (linear, or 2-level when `twoLevel`):
        /// CD 0's TTB0 and T0SZ give a VMSAv8-64 stage 1, all read through the parent.
        case armCDTable(twoLevel: Bool)
        /// The guest's first stage translates nothing: GVA = GPA (an SMMUv3 bypass vSTE).
        case bypass
        /// The guest's first stage refuses everything (an SMMUv3 abort vSTE).
        case abort
    }
    public let parent: IOMMUDomain
    /// Guest-physical address (an IOVA of the parent) of the top-level table (or CD table).
    public let tableAddress: UInt64
    public let levels: Int
    public let format: Format
    public init(parent: IOMMUDomain, tableAddress: UInt64, levels: Int, format: Format = .x86FirstStage) {
        self.parent = parent; self.tableAddress = tableAddress; self.levels = levels; self.format = format
    }
}
