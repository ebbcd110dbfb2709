import Platform
import Formats
import Hardware

/// The Intel VT-d driver (the counterpart of drivers/iommu/intel/iommu.c): one instance
/// manages a set of remapping units, as Linux's `intel_iommu_ops` covers every DMAR unit.
/// It programs the emulated units only through their registers and through structures in
/// physical memory.
public final class VTdDriver: IOMMUDriver, @unchecked Sendable {
    public let name: String
    public let platform: PlatformContext
    public let units: [IntelIOMMU]
    /// `units` as uncounted references in raw storage, for the invalidation path: reaching a
    /// unit through the array from a domain (which holds the driver uncounted) costs a
    /// retain and release of the array and of the unit, atomics on every strict unmap. The
    /// array keeps the units alive for the driver's life.
    let unitRefs: UnsafeMutablePointer<Unmanaged<IntelIOMMU>>
    /// The core this driver is registered with (it owns the driver; not counted).
    public private(set) unowned(unsafe) var core: IOMMUCore?
    /// Report invalidations as expensive so DMA domains use one large flush queue (what
    /// Linux's s390 driver does with `shadow_on_flush`; a knob here, for experiments).
    public var shadowOnFlush = false
    /// The stage DMA and unmanaged paging domains translate with where both could serve:
    /// nil follows Linux (first stage where the unit has it; `intel_iommu_domain_alloc_paging_flags`
    /// "prefers first stage if possible"), `.second` forces second-stage tables (as booting
    /// Linux on hardware without FLTS does). Nest parents and dirty tracking are second stage.
    public var preferredStage: VTdPagingStage?
    /// Table levels of new paging domains: 4, or 5 where the unit can walk them.
    public var pagingLevels = 4
    private lazy var blocked = VTdBlockedDomain(driver: self)
    private lazy var identity: VTdIdentityDomain? =
        units.allSatisfy { $0.extendedCapability.passThrough } ? VTdIdentityDomain(driver: self) : nil

    /// Brings up `hardware` (root tables, invalidation queues, translation enabled).
    public init(name: String = "intel-iommu", platform: PlatformContext, hardware: [VTdUnit]) throws(IOMMUError) {
        self.name = name
        self.platform = platform
        var made: [IntelIOMMU] = []
        for (i, u) in hardware.enumerated() {
            do { made.append(try IntelIOMMU(index: i, unit: u, platform: platform)) } catch {
                for m in made { m.shutdown() }
                throw error
            }
        }
        units = made
        unitRefs = .allocate(capacity: max(1, made.count))
        for (i, u) in made.enumerated() { (unitRefs + i).initialize(to: .passUnretained(u)) }
        for u in units {
            u.driver = self
            do { try u.enable() } catch {
                for m in units { m.shutdown() }
                throw error
            }
        }
    }

    deinit { unitRefs.deallocate() }

    /// Turns every unit off and frees their frames (after all devices are released).
    public func shutdown() {
        for u in units { u.shutdown() }
    }

    public var unitCount: Int { units.count }

    /// Invalidates every context, PASID and IOTLB/paging-structure cache entry of every unit
    /// (Linux `iommu_flush_all`, as after resume, plus the PASID cache of scalable mode).
    public func flushAllCaches() throws(IOMMUError) {
        for u in units { try u.queue.submitAndWait([.contextCache(.global), .pasidCache(.global), .iotlb(.global)]) }
    }

    /// Submits raw descriptors to unit `index`'s invalidation queue, each batch followed by a
    /// wait (Linux `qi_submit_sync` with caller-built `qi_desc`s). A descriptor the hardware
    /// refuses gives `EIO` after the queue is recovered as `qi_check_fault` does.
    public func submitRawInvalidations(_ descriptors: [RawDescriptor], unit index: Int) throws(IOMMUError) {
        guard units.indices.contains(index) else { throw .invalidArgument("no unit \(index)") }
        guard !descriptors.isEmpty else { return }
        try units[index].queue.submitRawAndWait(descriptors)
    }
    /// The DID `domain` holds on unit `index`: a paging domain's own, while something on that
    /// unit uses it; nil otherwise (SVA and identity domains use the fixed shared DIDs).
    public func domainID(of domain: IOMMUDomain, onUnit index: Int) -> DomainID? {
        (domain as? VTdDMARDomain)?.did(on: index)
    }
    public var blockedDomain: IOMMUDomain { blocked }
    public var identityDomain: IOMMUDomain? { identity }

    public func register(with core: IOMMUCore) {
        self.core = core
        for u in units where u.iopfQueue == nil { u.iopfQueue = core.allocIOPFQueue(name: "iopf-\(u.name)") }
    }

    public var supportsPageResponse: Bool { true }

    /// Linux `intel_iommu_page_response`: a page group response descriptor carrying the
    /// requester ID, the PASID when the request needs it, the code and the group index.
    public func pageResponse(_ device: Device, to fault: PageFault, code: PageResponseCode) {
        guard let u = try? iommu(for: device) else { return }
        u.sendResponse(device.requesterID, pasid: fault.flags.contains(.needsPASID) ? fault.pasid : nil,
                       groupIndex: fault.groupIndex, code)
    }

    /// Linux `intel_svm_domain_alloc`: needs first-stage translation and PASIDs on the unit.
    public func allocSVADomain(for device: Device, process: Process) throws(IOMMUError) -> IOMMUDomain {
        let u = try iommu(for: device)
        guard u.extendedCapability.firstStage, u.extendedCapability.pasid else { throw .notSupported("\(u.name) cannot do SVA") }
        return VTdSVADomain(driver: self, process: process)
    }

    func iommu(for device: Device) throws(IOMMUError) -> IntelIOMMU {
        guard device.driver === self, device.unit >= 0, device.unit < units.count else {
            throw .incompatible("\(device) is not behind \(name)")
        }
        return units[device.unit]
    }

    public func probeDevice(_ device: Device) throws(IOMMUError) -> UInt32 {
        try iommu(for: device).probe(device)
    }

    public func releaseDevice(_ device: Device) {
        guard let u = try? iommu(for: device) else { return }
        u.release(device)
    }

    /// VT-d defers unmap invalidation happily (Linux `intel_iommu_capable` returns true for
    /// `IOMMU_CAP_DEFERRED_FLUSH`), is coherent, and tracks dirty pages where the unit has
    /// SSADS (`ssads_supported`).
    public func capable(_ device: Device, _ capability: DriverCapability) -> Bool {
        guard let u = try? iommu(for: device) else { return false }
        switch capability {
        case .cacheCoherency, .deferredFlush: return true
        case .dirtyTracking: return u.extendedCapability.secondStageAD
        }
    }

    public func invalidationsAreExpensive(_ device: Device) -> Bool { shadowOnFlush }

    /// A paging domain shaped by the device's unit (Linux
    /// `intel_iommu_domain_alloc_paging_flags`): first stage when the flags allow it (none
    /// but PASID) and the unit has FLTS, second stage otherwise; the levels asked for where
    /// the unit walks them, and the superpage sizes it offers.
    public func allocPagingDomain(for device: Device, type: DomainType, flags: DomainFlags) throws(IOMMUError) -> IOMMUDomain {
        let u = try iommu(for: device)
        guard type.isPaging else { throw .invalidArgument("\(type) is not a paging type") }
        if preferredStage != .second, flags.isSubset(of: [.pasid, .deferredFlush]),
           u.extendedCapability.scalableMode, u.extendedCapability.firstStage {
            // Linux `intel_iommu_domain_alloc_first_stage`: 5 levels need FS5LP, 1 GiB pages FS1GP.
            let levels = pagingLevels == 5 && u.capability.firstStage5Level ? 5 : 4
            return try VTdFirstStageDomain(driver: self, type: type, flags: flags, levels: levels,
                                           oneGiBPages: u.capability.firstStage1GPages,
                                           addressWidth: u.unit.configuration.hostAddressWidth)
        }
        // Linux `intel_iommu_domain_alloc_second_stage`.
        guard u.extendedCapability.secondStage else { throw .notSupported("\(u.name) has no second-stage translation") }
        let levels: Int
        if u.capability.supportsSecondStage(levels: pagingLevels) { levels = pagingLevels } else if u.capability.supportsSecondStage(levels: 4) {
            levels = 4
        } else if u.capability.supportsSecondStage(levels: 5) { levels = 5 } else {
            throw .notSupported("\(u.name) supports neither 4- nor 5-level tables")
        }
        let large = u.capability.secondStageLargePages
        let maxLeaf = large & 2 != 0 ? 3 : large & 1 != 0 ? 2 : 1
        if flags.contains(.nestParent) && !u.extendedCapability.nested { throw .notSupported("\(u.name) cannot nest") }
        if flags.contains(.dirtyTracking) && !u.extendedCapability.secondStageAD {
            throw .notSupported("\(u.name) cannot track dirty pages (no SSADS)")
        }
        return try VTdSecondStageDomain(driver: self, type: type, flags: flags, levels: levels, maxLeafLevel: maxLeaf,
                                        addressWidth: u.unit.configuration.hostAddressWidth)
    }

    /// `IOMMU_HWPT_DATA_VTD_S1` (1) takes `struct iommu_hwpt_vtd_s1`.
    public func nestedDataSize(for device: Device, dataType: UInt32) -> Int {
        dataType == 1 ? VTdStage1Configuration.size : 0
    }

    /// Linux `intel_iommu_domain_alloc_nested`: the unit must nest and only the PASID flag is
    /// taken (EOPNOTSUPP), the data must be VTD_S1 (EOPNOTSUPP), the parent a second-stage
    /// domain allocated as a nest parent (EINVAL), the data at least its struct (EINVAL).
    /// The stage-1 configuration itself is checked at attach, as Linux does.
    public func allocNestedDomain(for device: Device, parent: IOMMUDomain, flags: DomainFlags, dataType: UInt32,
                                  data: [UInt8]) throws(IOMMUError) -> IOMMUDomain {
        let u = try iommu(for: device)
        guard u.extendedCapability.scalableMode, u.extendedCapability.nested, flags.isSubset(of: .pasid) else {
            throw .notSupported("\(u.name) cannot nest with flags \(flags)")
        }
        guard dataType == 1 else { throw .notSupported("nested data type \(dataType)") }
        guard let s2 = parent as? VTdSecondStageDomain, s2.flags.contains(.nestParent) else {
            throw .invalidArgument("\(parent) is not a second-stage nest parent")
        }
        guard data.count >= VTdStage1Configuration.size else { throw .invalidArgument("iommu_hwpt_vtd_s1 of \(data.count) bytes") }
        return VTdNestedDomain(driver: self, parent: s2, stage1: VTdStage1Configuration(bytes: data), flags: flags)
    }

    /// The interrupt address range every device has reserved (Linux
    /// `intel_iommu_get_resv_regions`: IOAPIC_RANGE_START..END as `IOMMU_RESV_MSI`; the
    /// emulated platform has no RMRRs).
    public func reservedRegions(for device: Device) -> [ReservedRegion] {
        [ReservedRegion(start: 0xFEE0_0000, last: 0xFEEF_FFFF, kind: .msi)]
    }

    /// `struct iommu_hw_info_vtd` (include/uapi/linux/iommufd.h, 24 bytes): flags (no
    /// errata here), a reserved word, then CAP_REG and ECAP_REG as the unit reports them;
    /// type `IOMMU_HW_INFO_TYPE_INTEL_VTD` (1). Linux `intel_iommu_hw_info`.
    public func hardwareInfo(_ device: Device) -> (type: UInt32, payload: [UInt8])? {
        guard let u = try? iommu(for: device) else { return nil }
        var bytes = [UInt8](repeating: 0, count: 24)
        for i in 0..<8 {
            bytes[8 + i] = UInt8(truncatingIfNeeded: u.capability.raw >> (8 * UInt64(i)))
            bytes[16 + i] = UInt8(truncatingIfNeeded: u.extendedCapability.raw >> (8 * UInt64(i)))
        }
        return (1, bytes)
    }
}
