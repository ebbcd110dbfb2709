import Platform
import Formats
import Hardware

/// What every SMMUv3 domain shares (Linux `struct arm_smmu_domain` and the attach path of
/// arm-smmu-v3.c): attaching a device writes its STE (and, for stage 1, its CD) through the
/// entry writer and returns the path the writer took.
class ArmSMMUDomain: IOMMUDomain, @unchecked Sendable {
    /// The driver outlives its domains (both belong to one machine); not counted.
    unowned(unsafe) let driver: ArmSMMUv3Driver
    /// Where it is attached (Linux `smmu_domain->devices`; paging and SVA domains only).
    var masterDomains: [ArmSMMUMasterDomain] = []
    /// Entries of `masterDomains` with ATS (Linux `nr_ats_masters`): ATC invalidations are
    /// sent only while it is not 0.
    var atsMasters = 0

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
    /// `arm_smmu_attach_dev_ste`: prepare, the STE, commit, then `arm_smmu_clear_cd(master,
    /// IOMMU_NO_PASID)`, which no STE names any more). While PASIDs are in use the CD table
    /// stays in the STE with S1DSS `s1DSS` (bypass for identity, terminate for blocked) and
    /// keeps ATS for them (`cd_needs_ats`); a stage 2 RID cannot coexist with PASIDs (EBUSY,
    /// as Linux's attach). `tracked` is the domain when it has page tables (stage 2).
    func installWithoutCD(_ master: ArmSMMUMaster, on u: ArmSMMUDevice, rid: ArmSMMUMaster.RID, s1DSS: StreamTableEntry.S1DSS?,
                          tracked: ArmSMMUDomain? = nil, _ ste: (_ ats: Bool) -> StreamTableEntry) throws(IOMMUError) -> UpdatePath {
        let keepCDTable = master.pasidsInUse > 0
        var dss = StreamTableEntry.S1DSS.terminate
        if keepCDTable {
            guard let s1DSS else { throw .busy("\(master.device) has PASIDs attached; a stage 2 RID domain cannot keep them") }
            dss = s1DSS
        }
        let state = u.attachPrepare(master, ssid: 0, new: tracked, cdNeedsATS: keepCDTable)
        let target = keepCDTable ? u.cdTableSTE(master, s1DSS: dss, ats: state.ats) : ste(state.ats)
        let path: UpdatePath
        do { path = try u.writeSTE(master, target) } catch {
            u.attachAbort(master, state)
            throw error
        }
        master.rid = rid
        u.attachCommit(master, state)
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
        _ = try installWithoutCD(master, on: u, rid: .blocked, s1DSS: .terminate) { _ in .abort() }
        return .removed
    }

    /// Linux `arm_smmu_blocking_set_dev_pasid` → `arm_smmu_remove_dev_pasid`: CD[ssid] is
    /// cleared (V = 0 through the writer, CFGI_CD + SYNC), the ATC of that SSID invalidated
    /// under ATS, the master leaves the old domain; when no PASID remains and the RID is
    /// identity or blocked, its plain STE (bypass or abort) comes back, with ATS turned off
    /// first (no EATS without a CD table).
    override func setDevicePASID(_ device: Device, pasid: PASID, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        let (u, master) = try driver.lookup(device)
        let ssid = pasid.rawValue
        guard ssid != 0, master.cdTable != 0, master.cdValid(ssid) else { return .unchanged }
        _ = try u.writeCD(master, ssid: ssid, ContextDescriptor())
        if master.priEnabled && !driver.bugs.contains(.skipPageRequestDrain) {
            // The drain's ATC_INV is the SSID's ATC invalidation too.
            u.drainPageRequests(master, ssid: ssid)
        } else if master.atsEnabled {
            try? u.atcInvalidateMaster(master, ssid: ssid)
        }
        if let old = master.domains[ssid] {
            u.removeMasterDomain(master, old, ssid: ssid)
            master.domains[ssid] = nil
        }
        if master.pasidsInUse == 0 {
            // The RID's plain STE through `arm_smmu_attach_dev_ste` (no CD table: no ATS).
            let plain: StreamTableEntry
            switch master.rid {
            case .identity: plain = .bypass()
            case .blocked: plain = .abort()
            case .s1, .s2, .nested: return .removed
            }
            let state = u.attachPrepare(master, ssid: 0, new: nil)
            do { _ = try u.writeSTE(master, plain) } catch {
                u.attachAbort(master, state)
                throw error
            }
            u.attachCommit(master, state)
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
        try installWithoutCD(master, on: u, rid: .identity, s1DSS: .bypass) { _ in .bypass() }
    }

    override func iovaToPhys(_ iova: UInt64) -> UInt64? { iova }
}
