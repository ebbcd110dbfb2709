import Platform
import Formats
import Hardware

/// A master's identity inside a vIOMMU while it is attached to one of its nested domains
/// with a vDEVICE (Linux `struct arm_smmu_vmaster`): stage 1 events it causes are reported
/// to the vIOMMU with the virtual StreamID.
struct ArmVMaster {
    unowned(unsafe) let vsmmu: ArmVSMMU
    let vsid: UInt64
}

/// The SMMUv3 vIOMMU, `IOMMU_VIOMMU_TYPE_ARM_SMMUV3` (Linux arm-smmu-v3-iommufd.c `struct
/// arm_vsmmu`): a slice of one unit for one guest, over a nest-parent stage 2 domain of that
/// unit. Its VMID is the parent's (6.17 `arm_vsmmu_init`: "FIXME Move VMID allocation from
/// the S2 domain allocation to here"), so every nested STE made through it, and every
/// guest TLBI it forwards, carries the parent's VMID; the VMID goes back with the parent.
public final class ArmVSMMU: IOMMUVIOMMU, @unchecked Sendable {
    unowned(unsafe) let smmu: ArmSMMUDevice
    let s2Parent: ArmSMMUS2Domain
    /// The VMID of nested STEs and of the guest's TLB invalidations (the parent's).
    public let vmid: UInt16

    /// `IOMMU_VIOMMU_TYPE_ARM_SMMUV3`.
    public static let type: UInt32 = 1
    /// `IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3`: `struct iommu_viommu_arm_smmuv3_invalidate
    /// { __aligned_le64 cmd[2]; }`.
    public static let invalidateDataType: UInt32 = 1
    /// `IOMMU_HWPT_DATA_ARM_SMMUV3`: `struct iommu_hwpt_arm_smmuv3 { __aligned_le64 ste[2]; }`.
    public static let nestedDataType: UInt32 = 2
    /// `IOMMU_VEVENTQ_TYPE_ARM_SMMUV3`: `struct iommu_vevent_arm_smmuv3 { __aligned_le64 evt[4]; }`.
    public static let eventType: UInt32 = 1

    init(smmu: ArmSMMUDevice, parent: ArmSMMUS2Domain) {
        self.smmu = smmu
        s2Parent = parent
        vmid = parent.tag
        super.init(parent: parent, type: Self.type)
    }

    override public var description: String { "vSMMU of \(smmu.name) (VMID \(vmid))" }

    // MARK: Nested domains (Linux `arm_vsmmu_alloc_domain_nested`)

    override public var copiesNestedData: Bool { true }

    /// Any flag is EOPNOTSUPP (the core already took FAULT_ID_VALID off); then
    /// `iommu_copy_struct_from_user(&arg, user_data, IOMMU_HWPT_DATA_ARM_SMMUV3, ste)`: another
    /// type EINVAL, a length other than 16 EINVAL (below the struct's end, or longer than
    /// the kernel's struct: 6.17 refuses both), EFAULT; then the vSTE is checked
    /// (`arm_smmu_validate_vste`: EIO).
    override public func allocNestedDomain(for device: Device, flags: DomainFlags, dataType: UInt32,
                                           userData: IOMMUUserData) throws(IOMMUError) -> IOMMUDomain {
        guard flags.isEmpty else { throw .notSupported("nested SMMUv3 domains take no flags (\(flags))") }
        guard dataType == Self.nestedDataType else { throw .invalidArgument("HWPT data type \(dataType) is not IOMMU_HWPT_DATA_ARM_SMMUV3") }
        guard userData.length == 16 else { throw .invalidArgument("data_len \(userData.length) is not struct iommu_hwpt_arm_smmuv3's 16") }
        let bytes = try userData.read(16)
        guard bytes.count == 16 else { throw .invalidArgument("short struct iommu_hwpt_arm_smmuv3") }
        var ste = (Self.le64(bytes, 0), Self.le64(bytes, 8))
        let enableATS = try ArmSMMUNestedDomain.validate(&ste)
        return ArmSMMUNestedDomain(vsmmu: self, ste: ste, enableATS: enableATS)
    }

    static func le64(_ b: [UInt8], _ at: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(b[at + i]) << (8 * UInt64(i)) }
        return v
    }

    // MARK: Invalidation (`ArmVSMMU+Invalidate.swift`)

    override public var userInvalidationDataType: UInt32? { Self.invalidateDataType }
    override public var userInvalidationEntrySize: Int { 16 }

    override public func cacheInvalidateUser(entries: [[UInt8]]) -> (done: Int, error: IOMMUError?) {
        invalidateUserCommands(entries)
    }

    /// One entry at a time is the array path with one entry.
    override public func cacheInvalidateUser(entry: [UInt8]) throws(IOMMUError) {
        if let e = invalidateUserCommands([entry]).error { throw e }
    }

    // MARK: vSIDs (Linux `arm_vsmmu_vsid_to_sid`)

    /// The physical StreamID of the device whose vDEVICE has virtual ID `vsid` here; nil (EIO
    /// for the caller) when there is none.
    func sid(forVSID vsid: UInt32) -> UInt32? {
        guard let device = virtualDevices[UInt64(vsid)], let master = device.driverData as? ArmSMMUMaster else { return nil }
        return master.sid
    }
}

extension ArmSMMUv3Driver {
    /// Linux `arm_smmu_get_viommu_size`: 0 (EOPNOTSUPP) unless the unit nests (stage 1 and
    /// stage 2, `ARM_SMMU_FEAT_NESTING`) and the guest cannot make DMA bypass the caches:
    /// the device is CANWBS (an IORT root-complex flag, not modelled: no device here is) or
    /// the unit has S2FWB. Only `IOMMU_VIOMMU_TYPE_ARM_SMMUV3` (no implementation types).
    public func viommuSize(for device: Device, type: UInt32) -> Int {
        guard let u = try? unit(for: device), u.features.stage1, u.features.stage2, u.features.s2FWB else { return 0 }
        return type == ArmVSMMU.type ? 64 : 0
    }

    /// Linux `arm_vsmmu_init`: the parent must be a stage 2 domain of the device's unit
    /// (EINVAL); the vIOMMU takes its VMID.
    public func allocVIOMMU(for device: Device, parent: IOMMUDomain, type: UInt32) throws(IOMMUError) -> IOMMUVIOMMU {
        let u = try unit(for: device)
        guard type == ArmVSMMU.type else { throw .notSupported("vIOMMU type \(type)") }
        guard let s2 = parent as? ArmSMMUS2Domain, s2.smmu === u else {
            throw .invalidArgument("\(parent) is not a stage 2 domain of \(u.name)")
        }
        return ArmVSMMU(smmu: u, parent: s2)
    }
}

extension ArmVSMMU {
    /// Linux `arm_vmaster_report_event`: `struct iommu_vevent_arm_smmuv3` is the record's
    /// four words (little-endian) with the StreamID field (word 0 bits 63:32) replaced by
    /// the vSID, reported as `IOMMU_VEVENTQ_TYPE_ARM_SMMUV3`. Throws when no vEVENTQ of
    /// that type exists (EOPNOTSUPP).
    func reportGuestEvent(_ raw: RawEvent, vsid: UInt64) throws(IOMMUError) {
        guard let report = reportEvent else { throw .notSupported("no vEVENTQ") }
        let words = [(raw.w0 & 0xFFFF_FFFF) | (vsid & 0xFFFF_FFFF) << 32, raw.w1, raw.w2, raw.w3]
        var payload = [UInt8](repeating: 0, count: 32)
        for (i, w) in words.enumerated() { for b in 0..<8 { payload[8 * i + b] = UInt8(truncatingIfNeeded: w >> (8 * UInt64(b))) } }
        try report(Self.eventType, payload)
    }
}
