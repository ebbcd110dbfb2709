import Platform
import Formats
import Hardware

/// What every SMMUv3 domain shares (Linux `struct arm_smmu_domain` and the attach path of
/// arm-smmu-v3.c): attaching a device writes its STE (and, for stage 1, its CD) through the
/// entry writer and returns the path the writer took.
class ArmSMMUDomain: IOMMUDomain, @unchecked Sendable {
    /// The driver outlives its domains (both belong to one machine); not counted.
    unowned(unsafe) let driver: ArmSMMUv3Driver

    init(driver: ArmSMMUv3Driver, type: DomainType, flags: DomainFlags = [], pageSizes: UInt64 = 0, apertureEnd: UInt64 = 0) {
        self.driver = driver
        super.init(type: type, flags: flags, owner: ObjectIdentifier(driver), pageSizes: pageSizes, apertureEnd: apertureEnd)
    }

    /// Makes `master`'s STE (and CD 0) translate through this domain; returns the path.
    func install(_ master: ArmSMMUMaster, on u: ArmSMMUDevice) throws(IOMMUError) -> UpdatePath {
        throw .notSupported("\(self) cannot be attached")
    }

    override func attach(_ device: Device, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        let (u, master) = try driver.lookup(device)
        return try install(master, on: u)
    }

    /// Installs a STE that does not use the CD table, then clears CD 0 (Linux
    /// `arm_smmu_attach_dev_ste`: the STE first, then `arm_smmu_clear_cd(master,
    /// IOMMU_NO_PASID)`, which no STE names any more). While PASIDs are in use the CD table
    /// stays in the STE with S1DSS `s1DSS` (bypass for identity, terminate for blocked);
    /// a stage 2 RID cannot coexist with PASIDs (EBUSY, as Linux's attach).
    func installWithoutCD(_ master: ArmSMMUMaster, on u: ArmSMMUDevice, _ ste: StreamTableEntry, rid: ArmSMMUMaster.RID,
                          s1DSS: StreamTableEntry.S1DSS?) throws(IOMMUError) -> UpdatePath {
        let target: StreamTableEntry
        if master.pasidsInUse > 0 {
            guard let s1DSS else { throw .busy("\(master.device) has PASIDs attached; a stage 2 RID domain cannot keep them") }
            target = u.cdTableSTE(master, s1DSS: s1DSS)
        } else {
            target = ste
        }
        let path = try u.writeSTE(master, target)
        master.rid = rid
        if master.cdTable != 0, master.cdValid(0) {
            _ = try? u.writeCD(master, ContextDescriptor())
        }
        return path
    }
}

/// The static blocking domain (Linux `arm_smmu_blocked_domain`): an abort STE. It is also the
/// release domain, so a released device's STE aborts.
final class ArmSMMUBlockedDomain: ArmSMMUDomain, @unchecked Sendable {
    init(driver: ArmSMMUv3Driver) {
        super.init(driver: driver, type: .blocked)
        id = -1
    }

    override var description: String { "blocked domain" }

    override func install(_ master: ArmSMMUMaster, on u: ArmSMMUDevice) throws(IOMMUError) -> UpdatePath {
        _ = try installWithoutCD(master, on: u, .abort(), rid: .blocked, s1DSS: .terminate)
        return .removed
    }

    /// Linux `arm_smmu_blocking_set_dev_pasid` → `arm_smmu_remove_dev_pasid`: CD[ssid] is
    /// cleared (V = 0 through the writer, CFGI_CD + SYNC); when no PASID remains and the RID
    /// is identity or blocked, its plain STE (bypass or abort) comes back.
    override func setDevicePASID(_ device: Device, pasid: PASID, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        let (u, master) = try driver.lookup(device)
        let ssid = pasid.rawValue
        guard ssid != 0, master.cdTable != 0, master.cdValid(ssid) else { return .unchanged }
        _ = try u.writeCD(master, ssid: ssid, ContextDescriptor())
        if master.pasidsInUse == 0 {
            switch master.rid {
            case .identity: _ = try u.writeSTE(master, .bypass())
            case .blocked: _ = try u.writeSTE(master, .abort())
            case .s1, .s2: break
            }
        }
        return .removed
    }
}

/// The static identity domain (Linux `arm_smmu_identity_domain`): a bypass STE.
final class ArmSMMUIdentityDomain: ArmSMMUDomain, @unchecked Sendable {
    init(driver: ArmSMMUv3Driver) {
        super.init(driver: driver, type: .identity)
        id = -2
    }

    override var description: String { "identity domain" }

    override func install(_ master: ArmSMMUMaster, on u: ArmSMMUDevice) throws(IOMMUError) -> UpdatePath {
        try installWithoutCD(master, on: u, .bypass(), rid: .identity, s1DSS: .bypass)
    }

    override func iovaToPhys(_ iova: UInt64) -> UInt64? { iova }
}
