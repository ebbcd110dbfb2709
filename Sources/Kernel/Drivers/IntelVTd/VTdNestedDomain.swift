import Platform
import Formats
import Hardware

/// `struct iommu_hwpt_vtd_s1` (include/uapi/linux/iommufd.h, 24 bytes): flags @0 (u64:
/// SRE 1, EAFE 2, WPE 4), pgtbl_addr @8 (u64, a guest-physical address: an IOVA of the
/// parent), addr_width @16 (u32: 48 or 57), __reserved @20.
public struct VTdStage1Configuration: Equatable, Sendable {
    public static let size = 24
    public static let supervisorRequests: UInt64 = 1, extendedAccessed: UInt64 = 2, writeProtect: UInt64 = 4
    public var flags: UInt64
    public var tableAddress: UInt64
    public var addressWidth: UInt32

    public init(flags: UInt64 = 0, tableAddress: UInt64, addressWidth: UInt32 = 48) {
        self.flags = flags; self.tableAddress = tableAddress; self.addressWidth = addressWidth
    }

    /// Decodes the user's bytes (at least 24; the caller checked the length).
    public init(bytes: [UInt8]) {
        func u64(_ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(at + $1 < bytes.count ? bytes[at + $1] : 0) << (8 * UInt64($1)) } }
        flags = u64(0)
        tableAddress = u64(8)
        addressWidth = UInt32(truncatingIfNeeded: u64(16))
    }

    public var bytes: [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.size)
        for i in 0..<8 {
            b[i] = UInt8(truncatingIfNeeded: flags >> (8 * UInt64(i)))
            b[8 + i] = UInt8(truncatingIfNeeded: tableAddress >> (8 * UInt64(i)))
        }
        for i in 0..<4 { b[16 + i] = UInt8(truncatingIfNeeded: addressWidth >> (8 * UInt32(i))) }
        return b
    }
}

/// A nested domain (drivers/iommu/intel/nested.c): a first stage the guest owns, in guest
/// memory at `stage1.tableAddress` (translated by the parent, like every address it
/// holds), over a nest parent's second stage. Entries are PGTT=011 under the nested
/// domain's own DID; IOTLB entries of nested translations are tagged by that DID, so the
/// guest's invalidations (HWPT_INVALIDATE) become type-2 IOTLB descriptors with it, and
/// the parent carries nesting tags so that its own unmaps reach every child.
final class VTdNestedDomain: VTdDMARDomain, @unchecked Sendable {
    let parent: VTdSecondStageDomain
    let stage1: VTdStage1Configuration

    init(driver: VTdDriver, parent: VTdSecondStageDomain, stage1: VTdStage1Configuration, flags: DomainFlags) {
        self.parent = parent
        self.stage1 = stage1
        super.init(driver: driver, type: .nested, flags: flags, pageSizes: 0, apertureEnd: 0, taggedByPASID: false)
        parent.nestedChildren.append(.passUnretained(self))
    }

    override var nestedStage1: NestedStage1? {
        NestedStage1(parent: parent, tableAddress: stage1.tableAddress, levels: stage1.addressWidth == 57 ? 5 : 4)
    }

    override var description: String { "domain \(id) (nested on \(parent.id))" }

    /// Linux `intel_pasid_setup_nested`'s checks (EINVAL), then the parent's compatibility
    /// (`paging_domain_compatible`).
    override func checkCompatible(_ u: IntelIOMMU, device: Device) throws(IOMMUError) {
        let known = VTdStage1Configuration.supervisorRequests | VTdStage1Configuration.extendedAccessed | VTdStage1Configuration.writeProtect
        guard stage1.flags & ~known == 0 else { throw .invalidArgument("unsupported stage-1 flags 0x\(String(stage1.flags, radix: 16))") }
        guard u.extendedCapability.scalableMode, u.extendedCapability.nested else { throw .invalidArgument("\(u.name) cannot nest") }
        if stage1.flags & VTdStage1Configuration.supervisorRequests != 0 && !u.extendedCapability.supervisorRequests {
            throw .invalidArgument("\(u.name) has no supervisor requests (SRS)")
        }
        if stage1.flags & VTdStage1Configuration.extendedAccessed != 0 && !u.extendedCapability.extendedAccessed {
            throw .invalidArgument("\(u.name) has no extended accessed flag (EAFS)")
        }
        guard stage1.addressWidth == 48 || stage1.addressWidth == 57 else {
            throw .invalidArgument("stage-1 address width \(stage1.addressWidth) is neither 48 nor 57")
        }
        if stage1.addressWidth == 57 && !u.capability.firstStage5Level { throw .invalidArgument("\(u.name) has no 5-level first stage") }
        try parent.checkCompatible(u, device: device)
    }

    /// Linux `pasid_pte_config_nestd`: first stage from the guest's configuration (WPE only
    /// with SRE), second stage and SSADE from the parent.
    override func makeEntry(did: DomainID, unit u: IntelIOMMU) -> PASIDEntry {
        let sre = stage1.flags & VTdStage1Configuration.supervisorRequests != 0
        return PASIDEntry.make(pgtt: .nested, did: did, secondStageTable: parent.pageTable.root, secondStageLevels: parent.levels,
                               firstStageTable: stage1.tableAddress, firstStageLevels: stage1.addressWidth == 57 ? 5 : 4,
                               supervisorRequests: sre, secondStageAD: parent.dirtyTrackingEnabled, pageWalkSnoop: true,
                               writeProtect: sre && stage1.flags & VTdStage1Configuration.writeProtect != 0,
                               extendedAccessedFlag: stage1.flags & VTdStage1Configuration.extendedAccessed != 0)
    }

    /// The parent's nesting tags follow this domain's own (Linux `cache_tag_assign_domain`
    /// with `__cache_tag_assign_parent_domain`).
    override func tagsAssigned(unit: Int, did: DomainID, pasid: UInt32, device: Device) {
        parent.addTag(.nestingIOTLB, unit: unit, did: did, pasid: pasid, device: device.requesterID)
        if device.ats && driver.units[unit].extendedCapability.deviceTLB {
            parent.addTag(.nestingDeviceTLB, unit: unit, did: did, pasid: pasid, device: device.requesterID)
        }
    }

    override func tagsUnassigned(unit: Int, did: DomainID, pasid: UInt32, device: Device) {
        parent.removeTag(.nestingIOTLB, unit: unit, did: did, pasid: pasid, device: device.requesterID)
        parent.removeTag(.nestingDeviceTLB, unit: unit, did: did, pasid: pasid, device: device.requesterID)
    }

    /// One `struct iommu_hwpt_vtd_s1_invalidate` entry (24 bytes: addr @0, npages @8,
    /// flags @16 with LEAF = 1, __reserved @20), as Linux `intel_nested_cache_invalidate_user`
    /// takes it: unknown flags or a non-zero reserved word EOPNOTSUPP; an unaligned address,
    /// or npages = U64_MAX with a non-zero address, EINVAL; otherwise the range is flushed
    /// wherever this domain's tags say (IH = LEAF).
    override func cacheInvalidateUser(entry: [UInt8]) throws(IOMMUError) {
        guard entry.count >= Self.userInvalidationEntrySize else { throw .invalidArgument("short invalidation entry") }
        func u64(_ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(entry[at + $1]) << (8 * UInt64($1)) } }
        let address = u64(0), pages = u64(8), flags = UInt32(truncatingIfNeeded: u64(16)), reserved = UInt32(truncatingIfNeeded: u64(16) >> 32)
        guard flags & ~1 == 0, reserved == 0 else { throw .notSupported("invalidation flags 0x\(String(flags, radix: 16)) or __reserved") }
        guard address & 0xFFF == 0, !(pages == .max && address != 0) else {
            throw .invalidArgument("invalidation of \(pages) pages at 0x\(String(address, radix: 16))")
        }
        // Linux flushes [addr, addr + (npages << 12) - 1]: npages = U64_MAX (address 0) and
        // npages = 0 at address 0 are the whole space; npages = 0 elsewhere comes out as one
        // page; a range that wraps is flushed whole (more than asked is always allowed).
        let end: UInt64
        if pages == .max || (pages == 0 && address == 0) { end = .max } else if pages == 0 { end = address + 0xFFF } else {
            let e = address &+ (pages << 12) &- 1
            end = e < address || pages >> 52 != 0 ? .max : e
        }
        let start = end == .max && (pages == .max || address == 0) ? 0 : address
        if driver.core?.injectedBugs.contains(.dropGuestInvalidation) == true { return }
        try flushRange(start: start, end: end, hint: flags & 1 != 0)
    }

    static let userInvalidationEntrySize = 24
    override var userInvalidationDataType: UInt32? { 0 } // IOMMU_HWPT_INVALIDATE_DATA_VTD_S1
    override var userInvalidationEntrySize: Int { Self.userInvalidationEntrySize }

    override func free() {
        parent.nestedChildren.removeAll { $0.takeUnretainedValue() === self }
    }
}
