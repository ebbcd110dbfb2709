import Platform
import Formats
import Hardware

/// A nested domain of an SMMUv3 vIOMMU (Linux `struct arm_smmu_nested_domain`): the guest's
/// vSTE words 0 and 1 (`struct iommu_hwpt_arm_smmuv3`), checked at allocation. Attaching it
/// writes a physical STE that is the guest's stage 1 (its CD table, by IPA) over the nest
/// parent's stage 2 (Config 0b111), or the guest's abort / bypass as an abort STE / the
/// parent's stage 2 alone (`arm_smmu_make_nested_domain_ste`). The unit fetches the guest's
/// CDs and walks its tables through stage 2 (IHI 0070 §3.3.2, §5.2 S2PTW).
final class ArmSMMUNestedDomain: ArmSMMUDomain, @unchecked Sendable {
    let vsmmu: ArmVSMMU
    /// The checked vSTE (EATS cleared; zero for a non-valid vSTE).
    let ste: (UInt64, UInt64)
    /// The vSTE asked for ATS (EATS = translate with Config = S1 translate).
    let enableATS: Bool

    init(vsmmu: ArmVSMMU, ste: (UInt64, UInt64), enableATS: Bool) {
        self.vsmmu = vsmmu; self.ste = ste; self.enableATS = enableATS
        super.init(driver: vsmmu.s2Parent.driver, type: .nested)
    }

    override var description: String { "domain \(id) (nested vSTE Config \(config), on \(vsmmu.s2Parent.id))" }

    // MARK: The vSTE (Linux `arm_smmu_validate_vste`, `STRTAB_STE_{0,1}_NESTING_ALLOWED`)

    /// V, Config, S1Fmt, S1ContextPtr, S1CDMax.
    static let allowed0: UInt64 = 1 | 0b111 << 1 | 0b11 << 4 | ((1 << 52) - 1) & ~((1 << 6) - 1) | ~((1 << 59) - 1)
    /// S1DSS, S1CIR, S1COR, S1CSH, S1STALLD, EATS.
    static let allowed1: UInt64 = 0xFF | 1 << 27 | 0b11 << 28
    static let eatsMask: UInt64 = 0b11 << 28

    /// A vSTE with V = 0 becomes all zeros (an abort); otherwise any bit outside the allowed
    /// fields, a Config other than abort (0b000), bypass (0b100) or S1 translate (0b101),
    /// or EATS other than abort/translate is EIO ("EIO is reserved for invalid STE data").
    /// EATS is cleared (the host sets it); returns whether ATS was asked for.
    static func validate(_ ste: inout (UInt64, UInt64)) throws(IOMMUError) -> Bool {
        guard ste.0 & 1 != 0 else {
            ste = (0, 0)
            return false
        }
        guard ste.0 & ~allowed0 == 0, ste.1 & ~allowed1 == 0 else {
            throw .ioError("vSTE bits outside the nesting-allowed fields (0x\(String(ste.0 & ~allowed0, radix: 16)), 0x\(String(ste.1 & ~allowed1, radix: 16)))")
        }
        let cfg = UInt8((ste.0 >> 1) & 7)
        guard cfg == 0b000 || cfg == 0b100 || cfg == 0b101 else { throw .ioError("vSTE Config 0b\(String(cfg, radix: 2))") }
        let eats = (ste.1 >> 28) & 3
        ste.1 &= ~eatsMask
        guard eats == 0 || eats == 1 else { throw .ioError("vSTE EATS \(eats)") }
        return cfg == 0b101 && eats == 1
    }

    /// The vSTE's Config (abort when not valid).
    var config: UInt8 { ste.0 & 1 == 0 ? 0 : UInt8((ste.0 >> 1) & 7) }

    /// Linux `arm_smmu_make_nested_domain_ste` / `arm_smmu_make_nested_cd_table_ste`: S1
    /// translate → the parent's stage 2 STE with word 0 = V | Config nested | the guest's
    /// word 0 (its Config dropped), word 1 ORed with the guest's and MEV; bypass → the
    /// parent's stage 2 STE; abort (or anything else) → an abort STE (the guest then gets
    /// no event, as on Linux).
    func physicalSTE(for master: ArmSMMUMaster, ats: Bool) -> StreamTableEntry {
        switch config {
        case 0b101:
            var e = vsmmu.s2Parent.streamTableEntry(ats: ats, stall: master.stallEnabled)
            e.data[0] = 1 | UInt64(StreamTableEntry.Config.nested.rawValue) << 1 | (ste.0 & ~(UInt64(0b111) << 1))
            e.data[1] |= ste.1
            e.mev = true
            return e
        case 0b100:
            return vsmmu.s2Parent.streamTableEntry(ats: ats, stall: master.stallEnabled)
        default:
            return .abort()
        }
    }

    /// For observers: the guest's CD table (S1 translate), the parent alone (bypass) or
    /// nothing (abort).
    override var nestedStage1: NestedStage1? {
        switch config {
        case 0b101:
            return NestedStage1(parent: vsmmu.s2Parent, tableAddress: ste.0 & StreamTableEntry.s1ContextPointerMask, levels: 4,
                                format: .armCDTable(twoLevel: (ste.0 >> 4) & 3 != 0))
        case 0b100: return NestedStage1(parent: vsmmu.s2Parent, tableAddress: 0, levels: 0, format: .bypass)
        default: return NestedStage1(parent: vsmmu.s2Parent, tableAddress: 0, levels: 0, format: .abort)
        }
    }

    // MARK: Attach (Linux `arm_smmu_attach_dev_nested`)

    /// Another unit's master is EINVAL; a master with PASIDs in use EBUSY. The master is
    /// listed on the nest parent (its unmaps reach it), with ATS only if the vSTE asked
    /// (`state.disable_ats`); an S1-translate vSTE needs the device's vDEVICE on the vIOMMU
    /// (ENOENT, `arm_smmu_attach_prepare_vmaster`: invalidations and events need the vSID),
    /// abort and bypass do not. The STE goes through the entry writer.
    override func attach(_ device: Device, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        let (u, master) = try driver.lookup(device)
        guard u === vsmmu.smmu else { throw .invalidArgument("\(self) belongs to \(vsmmu.smmu.name), not \(u.name)") }
        guard master.pasidsInUse == 0 else { throw .busy("\(device) has PASIDs in use") }
        var vmaster: ArmVMaster?
        if let vsid = vsmmu.virtualID(of: device) {
            vmaster = ArmVMaster(vsmmu: vsmmu, vsid: vsid)
        } else if config == 0b101 {
            throw .notFound("\(device) has no vDEVICE on \(vsmmu)")
        }
        var state = u.attachPrepare(master, ssid: 0, new: vsmmu.s2Parent, disableATS: !enableATS, nestedATSFlush: enableATS)
        state.vmaster = vmaster
        let path: UpdatePath
        do { path = try u.writeSTE(master, physicalSTE(for: master, ats: state.ats)) } catch {
            u.attachAbort(master, state)
            throw error
        }
        master.rid = .nested
        u.attachCommit(master, state)
        return path
    }

    override func setDevicePASID(_ device: Device, pasid: PASID, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        throw .notSupported("\(self) takes no PASIDs")
    }
}
