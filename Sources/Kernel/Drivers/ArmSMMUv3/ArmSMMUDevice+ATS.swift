import Platform
import Formats
import Hardware

/// One (master, SSID) a domain is attached to (Linux `struct arm_smmu_master_domain`): the
/// domain's TLB and ATC maintenance reaches every master on its list, with that SSID.
final class ArmSMMUMasterDomain {
    unowned(unsafe) let master: ArmSMMUMaster
    let ssid: UInt32
    /// The attach enabled ATS for this use (counted in the domain's `atsMasters`).
    let ats: Bool
    /// Listed on a nest parent through a nested domain whose vSTE asked for ATS (Linux
    /// `nested_ats_flush`): a change of the parent invalidates the master's whole ATC.
    let nestedATSFlush: Bool
    init(master: ArmSMMUMaster, ssid: UInt32, ats: Bool, nestedATSFlush: Bool = false) {
        self.master = master; self.ssid = ssid; self.ats = ats; self.nestedATSFlush = nestedATSFlush
    }
}

/// What an attach decided before the STE/CD change (Linux `struct arm_smmu_attach_state`).
struct ArmSMMUAttachState {
    let ssid: UInt32
    let old: ArmSMMUDomain?
    let new: ArmSMMUDomain?
    /// The STE written by this attach has EATS = translate (Linux `state->ats_enabled`).
    let ats: Bool
    /// The master's vIOMMU identity after a RID attach (Linux `state->vmaster`; nil except
    /// for a nested domain with a vDEVICE).
    var vmaster: ArmVMaster? = nil
}

extension ArmSMMUDevice {
    // MARK: Attach (Linux `arm_smmu_attach_prepare` / `arm_smmu_attach_commit`)

    /// Linux `arm_smmu_attach_prepare`. ATS only with a domain that has page tables (`new`,
    /// paging or SVA) or a CD table whose PASIDs need it (`cdNeedsATS`): with bypass or
    /// abort the unit refuses ATS (IHI 0070 §5.2, STE.EATS is ignored for those Configs).
    /// The new domain lists the master first (its invalidations may reach it from now on);
    /// if ATS goes off, the device stops using its ATC before the STE changes (PCIe ATS
    /// Enable cleared, Linux `pci_disable_ats` ahead of the STE write).
    /// A nested attach lists the master on the nest parent (`to_smmu_domain_devices`) and
    /// may refuse ATS (`disableATS`: the vSTE's EATS was not translate).
    func attachPrepare(_ master: ArmSMMUMaster, ssid: UInt32, new: ArmSMMUDomain?, cdNeedsATS: Bool = false,
                       disableATS: Bool = false, nestedATSFlush: Bool = false) -> ArmSMMUAttachState {
        let ats = !disableATS && master.atsSupported && (new != nil || cdNeedsATS)
        if let new {
            new.masterDomains.append(ArmSMMUMasterDomain(master: master, ssid: ssid, ats: ats, nestedATSFlush: nestedATSFlush))
            if ats { new.atsMasters += 1 }
        }
        if !ats && master.atsEnabled { setDeviceATS(master, false) }
        return ArmSMMUAttachState(ssid: ssid, old: master.domains[ssid], new: new, ats: ats)
    }

    /// Linux `arm_smmu_attach_commit`, once the unit translates through the new STE/CD:
    /// ATS enabled (ATC emptied first), or the ATC of this SSID invalidated when the
    /// translation changed under ATS, or the whole ATC when ATS went off. Then the master
    /// leaves the old domain's list.
    func attachCommit(_ master: ArmSMMUMaster, _ state: ArmSMMUAttachState) {
        if state.ats && !master.atsEnabled {
            enableATS(master)
        } else if state.ats && master.atsEnabled {
            try? atcInvalidateMaster(master, ssid: state.ssid)
        } else if !state.ats && master.atsEnabled {
            try? atcInvalidateMaster(master, ssid: 0)
        }
        master.atsEnabled = state.ats
        // Linux `arm_smmu_attach_commit_vmaster`: every RID attach replaces it.
        if state.ssid == 0 { master.vmaster = state.vmaster }
        if let old = state.old { removeMasterDomain(master, old, ssid: state.ssid) }
        master.domains[state.ssid] = state.new
    }

    /// Undoes `attachPrepare` after the STE/CD change failed (nothing new is in force).
    func attachAbort(_ master: ArmSMMUMaster, _ state: ArmSMMUAttachState) {
        if let new = state.new, let i = new.masterDomains.lastIndex(where: { $0.master === master && $0.ssid == state.ssid }) {
            if new.masterDomains[i].ats { new.atsMasters -= 1 }
            new.masterDomains.remove(at: i)
        }
        if master.atsEnabled && !master.deviceATSEnabled { setDeviceATS(master, true) }
    }

    /// Linux `arm_smmu_remove_master_domain`: the first entry of (master, ssid) goes.
    func removeMasterDomain(_ master: ArmSMMUMaster, _ domain: ArmSMMUDomain, ssid: UInt32) {
        guard let i = domain.masterDomains.firstIndex(where: { $0.master === master && $0.ssid == ssid }) else { return }
        if domain.masterDomains[i].ats { domain.atsMasters -= 1 }
        domain.masterDomains.remove(at: i)
    }

    /// Drops every entry of a master being released (no domain may reach it afterwards).
    func forgetMaster(_ master: ArmSMMUMaster) {
        for (ssid, d) in master.domains { removeMasterDomain(master, d, ssid: ssid) }
        master.domains = [:]
        master.vmaster = nil
    }

    // MARK: ATS (Linux `arm_smmu_enable_ats`, `arm_smmu_atc_inv_master`, `arm_smmu_atc_inv_domain`)

    /// Linux `arm_smmu_enable_ats`: the whole ATC is invalidated (ATC_INV without SSID,
    /// size 52), then the device's ATS Enable bit is set (`pci_enable_ats`, STU 4 KiB).
    func enableATS(_ master: ArmSMMUMaster) {
        try? atcInvalidateMaster(master, ssid: 0)
        setDeviceATS(master, true)
    }

    /// The device's ATS Enable bit (PCIe ATS capability control); the driver's hook sees it.
    func setDeviceATS(_ master: ArmSMMUMaster, _ on: Bool) {
        master.deviceATSEnabled = on
        driver?.onDeviceATSControl?(master.device, on)
    }

    /// Linux `arm_smmu_atc_inv_to_cmd`: ATC_INV for [address, address + size) as one
    /// naturally aligned span of 4 KiB × 2^Size (size 0: everything, Size 52); SSID 0
    /// (`IOMMU_NO_PASID`) has no SubstreamID, and invalidates the device's whole ATC.
    static func atcCommand(sid: UInt32, ssid: UInt32, address: UInt64, size: UInt64) -> SMMUCommand {
        let s: UInt32? = ssid == 0 ? nil : ssid
        guard size > 0 else { return .atcInv(sid: sid, ssid: s, global: false, address: 0, size: 52) }
        let first = address >> 12, last = (address &+ size &- 1) >> 12
        let log2Span = first == last ? 0 : 64 - (first ^ last).leadingZeroBitCount
        let aligned = log2Span >= 52 ? 0 : first & ~((UInt64(1) << UInt64(log2Span)) - 1)
        return .atcInv(sid: sid, ssid: s, global: false, address: aligned << 12, size: UInt8(min(log2Span, 52)))
    }

    /// Linux `arm_smmu_atc_inv_master`: every ATC entry of the master for `ssid` (0: all),
    /// then CMD_SYNC, which completes only when the device answered.
    func atcInvalidateMaster(_ master: ArmSMMUMaster, ssid: UInt32) throws(IOMMUError) {
        let command = Self.atcCommand(sid: master.sid, ssid: ssid, address: 0, size: 0)
        try platform.withHardware { () throws(IOMMUError) in try cmdq.issueAndSync(command) }
    }

    /// Linux `arm_smmu_atc_inv_domain`: ATC_INV for the range to every ATS master of the
    /// domain with the SSID it is attached with, then CMD_SYNC. Nothing when no master of the
    /// domain has ATS (`nr_ats_masters` == 0). Size 0 is the whole space.
    func atcInvalidateDomain(_ domain: ArmSMMUDomain, address: UInt64, size: UInt64) throws(IOMMUError) {
        guard domain.atsMasters > 0 else { return }
        // Broken for oracle-strength runs: unmaps and mm invalidations skip the ATC.
        if driver?.bugs.contains(.skipDeviceTLBInvalidation) ?? false { return }
        try platform.withHardware { () throws(IOMMUError) in
            for md in domain.masterDomains where md.master.atsEnabled {
                // A nest parent changed under a nested master: its ATC holds combined
                // translations, so all of it goes (`nested_ats_flush`).
                let whole = md.nestedATSFlush
                try cmdq.issue(Self.atcCommand(sid: md.master.sid, ssid: whole ? 0 : md.ssid, address: whole ? 0 : address, size: whole ? 0 : size))
            }
            try cmdq.sync()
        }
    }
}
