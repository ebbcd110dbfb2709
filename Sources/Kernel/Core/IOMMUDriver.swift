import Platform
import Formats

/// The operations of an IOMMU driver the core uses (Linux `struct iommu_ops`). Domain
/// operations live on the driver's `IOMMUDomain` subclasses.
public protocol IOMMUDriver: AnyObject, Sendable {
    var name: String { get }
    /// Number of hardware units the driver manages.
    var unitCount: Int { get }
    /// Checks the device can be handled and sets up per-device state (`probe_device`).
    /// Returns the PASID limit the unit supports for it.
    func probeDevice(_ device: Device) throws(IOMMUError) -> UInt32
    /// Frees per-device state; the device is already attached to the blocked domain.
    func releaseDevice(_ device: Device)
    /// A per-device capability (`capable`).
    func capable(_ device: Device, _ capability: DriverCapability) -> Bool
    /// The static blocking domain (`blocked_domain`); its PASID op removes a PASID.
    var blockedDomain: IOMMUDomain { get }
    /// The static identity domain, or nil if the hardware has no pass-through.
    var identityDomain: IOMMUDomain? { get }
    /// A static domain every group of the driver starts in instead of one the policy picks
    /// (Linux `ops->default_domain`, e.g. the selftest mock's blocking domain); nil: none.
    var defaultDomain: IOMMUDomain? { get }
    /// The PASID table is the guest's (Linux `ops->user_pasid_table`): a page request for a
    /// PASID with no attachment goes to the RID's domain when that is a nested one.
    var usesUserPASIDTable: Bool { get }
    /// A new paging domain suitable for `device` (`domain_alloc_paging_flags`).
    func allocPagingDomain(for device: Device, type: DomainType, flags: DomainFlags) throws(IOMMUError) -> IOMMUDomain
    /// Called once when the driver is registered with a core, to report faults to it.
    func register(with core: IOMMUCore)
    /// Whether invalidations for the device are expensive enough that a single large flush
    /// queue pays off (Linux `dev->iommu->shadow_on_flush`). Default: no.
    func invalidationsAreExpensive(_ device: Device) -> Bool
    /// Whether `pageResponse` reaches devices (Linux: `ops->page_response` is set).
    var supportsPageResponse: Bool { get }
    /// Sends the response of the group `fault` ends to the device (`page_response`).
    func pageResponse(_ device: Device, to fault: PageFault, code: PageResponseCode)
    /// The device is about to be reset (function reset, or a platform device's reset line):
    /// transactions the IOMMU holds for it must not complete into the reset device.
    func deviceReset(_ device: Device)
    /// A domain sharing `process`'s address space with `device` (`domain_alloc_sva`).
    func allocSVADomain(for device: Device, process: Process) throws(IOMMUError) -> IOMMUDomain
    /// IOVA ranges the device must not use for DMA (`get_resv_regions`).
    func reservedRegions(for device: Device) -> [ReservedRegion]
    /// The unit's description for user space (`hw_info`): the uAPI type number and its
    /// payload bytes (e.g. `struct iommu_hw_info_vtd`); nil when the driver has none.
    func hardwareInfo(_ device: Device) -> (type: UInt32, payload: [UInt8])?
    /// The size of the driver's vIOMMU state for uAPI type `type` (`get_viommu_size`): 0 when
    /// the driver has no vIOMMU of that type (the user API answers EOPNOTSUPP).
    func viommuSize(for device: Device, type: UInt32) -> Int
    /// A vIOMMU of `type` over the nesting parent `parent`, not yet initialised: the user
    /// API connects it to its file, then calls its `initialize` (`viommu_init`).
    func allocVIOMMU(for device: Device, parent: IOMMUDomain, type: UInt32) throws(IOMMUError) -> IOMMUVIOMMU
    /// The size of the driver's nested-domain data of uAPI type `dataType` (the struct
    /// `domain_alloc_nested` copies); 0 when it takes none of that type (EOPNOTSUPP).
    func nestedDataSize(for device: Device, dataType: UInt32) -> Int
    /// A nested domain over `parent` from user data of `dataType` (`domain_alloc_nested`).
    func allocNestedDomain(for device: Device, parent: IOMMUDomain, flags: DomainFlags, dataType: UInt32,
                           data: [UInt8]) throws(IOMMUError) -> IOMMUDomain
}

/// An IOVA range a device cannot use for ordinary DMA (Linux `struct iommu_resv_region`).
public struct ReservedRegion: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        /// Memory the firmware keeps mapped 1:1 (`IOMMU_RESV_DIRECT`, RMRR).
        case direct
        /// As `direct`, but the mapping may be dropped when a user takes the device over
        /// (`IOMMU_RESV_DIRECT_RELAXABLE`).
        case directRelaxable
        /// Never mappable (`IOMMU_RESV_RESERVED`).
        case reserved
        /// A hardware MSI window (`IOMMU_RESV_MSI`; the VT-d interrupt range).
        case msi
        /// Where software maps MSI doorbells (`IOMMU_RESV_SW_MSI`).
        case softwareMSI
    }
    public var start: UInt64
    /// Inclusive.
    public var last: UInt64
    public var kind: Kind
    public init(start: UInt64, last: UInt64, kind: Kind) { self.start = start; self.last = last; self.kind = kind }
}

extension IOMMUDriver {
    public var defaultDomain: IOMMUDomain? { nil }
    public var usesUserPASIDTable: Bool { false }
    public func invalidationsAreExpensive(_ device: Device) -> Bool { false }
    public var supportsPageResponse: Bool { false }
    public func pageResponse(_ device: Device, to fault: PageFault, code: PageResponseCode) {}
    public func deviceReset(_ device: Device) {}
    public func allocSVADomain(for device: Device, process: Process) throws(IOMMUError) -> IOMMUDomain {
        throw .notSupported("\(name) has no SVA")
    }
    public func reservedRegions(for device: Device) -> [ReservedRegion] { [] }
    public func hardwareInfo(_ device: Device) -> (type: UInt32, payload: [UInt8])? { nil }
    public func viommuSize(for device: Device, type: UInt32) -> Int { 0 }
    public func allocVIOMMU(for device: Device, parent: IOMMUDomain, type: UInt32) throws(IOMMUError) -> IOMMUVIOMMU {
        throw .notSupported("\(name) has no vIOMMU")
    }
    public func nestedDataSize(for device: Device, dataType: UInt32) -> Int { 0 }
    public func allocNestedDomain(for device: Device, parent: IOMMUDomain, flags: DomainFlags, dataType: UInt32,
                                  data: [UInt8]) throws(IOMMUError) -> IOMMUDomain {
        throw .notSupported("\(name) has no nested domains")
    }
}

/// A TLB tag of an address space (SMMUv3: ASID for stage 1, VMID for stage 2).
public enum TLBTag: Hashable, Sendable, CustomStringConvertible {
    case asid(UInt16)
    case vmid(UInt16)
    public var description: String {
        switch self {
        case .asid(let a): return "ASID \(a)"
        case .vmid(let v): return "VMID \(v)"
        }
    }
}

/// Where simulation and tests watch the core: every change of what a device may reach is
/// announced before it can take effect and again when it is complete. The oracle builds its
/// intent model from these calls. All methods have empty defaults.
public protocol KernelObserver: AnyObject {
    func mapBegan(_ domain: IOMMUDomain, iova: UInt64, physical: UInt64, size: UInt64, permissions: PagePermissions)
    func mapEnded(_ domain: IOMMUDomain, iova: UInt64, size: UInt64, mapped: Bool)
    func unmapBegan(_ domain: IOMMUDomain, iova: UInt64, size: UInt64)
    /// `unmapped` bytes from `iova` are no longer mapped and their invalidation completed;
    /// the rest of the `requested` range is as before.
    func unmapEnded(_ domain: IOMMUDomain, iova: UInt64, requested: UInt64, unmapped: UInt64)
    /// (device, pasid) is about to move from `from` to `to` (nil PASID: RID traffic).
    /// The PTEs of `unmapped` bytes were cleared but their invalidation failed: devices may
    /// keep using the old translations indefinitely.
    func unmapFailed(_ domain: IOMMUDomain, iova: UInt64, requested: UInt64, unmapped: UInt64)
    /// The PTEs of `unmapped` bytes were cleared and their invalidation deferred to a flush
    /// queue: devices may use them until a flush that begins later completes. `tables` were
    /// unlinked and wait for that flush too.
    func unmapDeferred(_ domain: IOMMUDomain, iova: UInt64, requested: UInt64, unmapped: UInt64, tables: [UInt64])
    /// Table pages were unlinked by an unmap; they must not be freed before its invalidation.
    func tablesDetached(_ domain: IOMMUDomain, _ tables: [UInt64])
    /// A flush of everything the domain may have cached starts (flush queue).
    func deferredFlushBegan(_ domain: IOMMUDomain)
    /// That flush ended; if `completed`, deferred unmaps made before it began are done.
    func deferredFlushEnded(_ domain: IOMMUDomain, completed: Bool)
    func transitionBegan(_ device: Device, pasid: PASID?, from: IOMMUDomain?, to: IOMMUDomain?)
    /// The move ended with `current` in place (the new domain, or the old one after a
    /// rollback, or the blocked domain) and the driver took `path`.
    func transitionEnded(_ device: Device, pasid: PASID?, current: IOMMUDomain?, path: UpdatePath)
    /// A change of `group`'s domain (attach, replace, detach, ownership) ended, successfully
    /// or rolled back: every device of the group should now translate through `group.domain`.
    func groupDomainChangeEnded(_ group: Group)
    /// The DMA API handed `device` the IOVA range [iova, iova + size) (granule-widened).
    func dmaMapped(_ device: Device, iova: UInt64, size: UInt64)
    /// The core built a complete page request group and hands it to its domain's handler.
    func pageFaultGroupBuilt(_ group: IOPFGroup)
    func domainFreed(_ domain: IOMMUDomain)
    /// A driver frees the page table of a domain it failed to finish (Linux
    /// `arm_smmu_domain_finalise` freeing the io-pgtable when no ASID/VMID is left): no unit
    /// could reach it, the domain never existed for the core.
    func unfinishedDomainTablesFreed(ownerTag: UInt32)
    /// A driver handed out `did` on `unit`.
    func domainIDAllocated(driver: any IOMMUDriver, unit: Int, did: DomainID)
    /// A driver gave `did` on `unit` back (after its invalidation).
    func domainIDReleased(driver: any IOMMUDriver, unit: Int, did: DomainID)
    /// A TLB tag other than a VT-d DID was handed out or given back (SMMUv3: an ASID, one
    /// space for every unit, `unit` nil; a VMID, per unit). Given back only once no TLB may
    /// hold entries tagged with it.
    func tlbTagAllocated(driver: any IOMMUDriver, unit: Int?, tag: TLBTag)
    func tlbTagReleased(driver: any IOMMUDriver, unit: Int?, tag: TLBTag)
    func faultReported(_ device: Device?, _ fault: ReportedFault)
    /// Dirty tracking of `domain` was turned on or off.
    func dirtyTrackingChanged(_ domain: IOMMUDomain, enabled: Bool)
    /// A read of `domain`'s dirty bits starts.
    func dirtyReadBegan(_ domain: IOMMUDomain)
    /// That read over [iova, iova + size) ended, reporting `reported` leaves as (IOVA, size),
    /// clearing them if `cleared`.
    func dirtyReadEnded(_ domain: IOMMUDomain, iova: UInt64, size: UInt64, cleared: Bool, reported: [(UInt64, UInt64)])
    /// A dirty read failed (its IOTLB flush did not complete): D bits it cleared may not be
    /// set again by writes through translations still cached, and the caller was told.
    func dirtyReadFailed(_ domain: IOMMUDomain, cleared: Bool)
    /// A driver reported a page request of `device` to the core.
    func pageFaultReported(_ device: Device, _ fault: PageFault)
    /// The core sent the response for the group `fault` ends.
    func pageResponseSent(_ device: Device, _ fault: PageFault, _ code: PageResponseCode)
}

extension KernelObserver {
    public func mapBegan(_ domain: IOMMUDomain, iova: UInt64, physical: UInt64, size: UInt64, permissions: PagePermissions) {}
    public func mapEnded(_ domain: IOMMUDomain, iova: UInt64, size: UInt64, mapped: Bool) {}
    public func unmapBegan(_ domain: IOMMUDomain, iova: UInt64, size: UInt64) {}
    public func unmapEnded(_ domain: IOMMUDomain, iova: UInt64, requested: UInt64, unmapped: UInt64) {}
    public func unmapFailed(_ domain: IOMMUDomain, iova: UInt64, requested: UInt64, unmapped: UInt64) {}
    public func unmapDeferred(_ domain: IOMMUDomain, iova: UInt64, requested: UInt64, unmapped: UInt64, tables: [UInt64]) {}
    public func tablesDetached(_ domain: IOMMUDomain, _ tables: [UInt64]) {}
    public func deferredFlushBegan(_ domain: IOMMUDomain) {}
    public func deferredFlushEnded(_ domain: IOMMUDomain, completed: Bool) {}
    public func transitionBegan(_ device: Device, pasid: PASID?, from: IOMMUDomain?, to: IOMMUDomain?) {}
    public func transitionEnded(_ device: Device, pasid: PASID?, current: IOMMUDomain?, path: UpdatePath) {}
    public func groupDomainChangeEnded(_ group: Group) {}
    public func dmaMapped(_ device: Device, iova: UInt64, size: UInt64) {}
    public func pageFaultGroupBuilt(_ group: IOPFGroup) {}
    public func domainFreed(_ domain: IOMMUDomain) {}
    public func unfinishedDomainTablesFreed(ownerTag: UInt32) {}
    public func domainIDAllocated(driver: any IOMMUDriver, unit: Int, did: DomainID) {}
    public func domainIDReleased(driver: any IOMMUDriver, unit: Int, did: DomainID) {}
    public func tlbTagAllocated(driver: any IOMMUDriver, unit: Int?, tag: TLBTag) {}
    public func tlbTagReleased(driver: any IOMMUDriver, unit: Int?, tag: TLBTag) {}
    public func faultReported(_ device: Device?, _ fault: ReportedFault) {}
    public func pageFaultReported(_ device: Device, _ fault: PageFault) {}
    public func dirtyTrackingChanged(_ domain: IOMMUDomain, enabled: Bool) {}
    public func dirtyReadBegan(_ domain: IOMMUDomain) {}
    public func dirtyReadEnded(_ domain: IOMMUDomain, iova: UInt64, size: UInt64, cleared: Bool, reported: [(UInt64, UInt64)]) {}
    public func dirtyReadFailed(_ domain: IOMMUDomain, cleared: Bool) {}
    public func pageResponseSent(_ device: Device, _ fault: PageFault, _ code: PageResponseCode) {}
}

/// Places in software where hardware may overtake the CPU; the simulator's scheduler may
/// run due hardware events there (design §3).
public enum KernelYield {
    public static let afterPTEClear = YieldSite("unmap.after-pte-clear")
    public static let afterMap = YieldSite("map.after-pte-write")
    public static let afterPASIDEntryWrite = YieldSite("pasid.after-entry-write")
    public static let afterPresentClear = YieldSite("pasid.after-present-clear")
    public static let insideReplace = YieldSite("replace.between-devices")
    public static let beforeDIDRelease = YieldSite("did.before-release")
    /// Between two 64-bit stores of one SMMUv3 STE/CD update step: the unit may fetch the
    /// entry half written (IHI 0070: STEs and CDs are read with 64-bit single-copy atomicity).
    public static let betweenEntryWords = YieldSite("smmu.between-entry-words")
}
