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
    /// `arm_smmu_attach_dev_ste` with no SSID in use: the STE first, then
    /// `arm_smmu_clear_cd(master, IOMMU_NO_PASID)`, which no STE names any more).
    func installWithoutCD(_ master: ArmSMMUMaster, on u: ArmSMMUDevice, _ ste: StreamTableEntry) throws(IOMMUError) -> UpdatePath {
        let path = try u.writeSTE(master, ste)
        if master.cdTable != 0, master.cd0[0] & SMMUEntryWriter.Kind.cd.validBit != 0 {
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
        _ = try installWithoutCD(master, on: u, .abort())
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
        try installWithoutCD(master, on: u, .bypass())
    }

    override func iovaToPhys(_ iova: UInt64) -> UInt64? { iova }
}
