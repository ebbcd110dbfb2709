import Platform
import Formats
import Hardware

/// Which stage an SMMUv3 paging domain translates with (Linux `enum arm_smmu_domain_stage`).
public enum ArmSMMUStage: String, Sendable, CaseIterable {
    /// Stage 1: a CD with an ASID, VMSAv8-64 stage 1 tables. Linux's choice where the unit has it.
    case s1
    /// Stage 2: the STE holds a VMID and the stage 2 tables. Nest parents.
    case s2
}

/// A paging domain of one SMMUv3 unit (Linux `arm_smmu_domain` after
/// `arm_smmu_domain_finalise`): bound to the unit it was allocated for, tagged by an ASID
/// (stage 1) or a VMID (stage 2) held for the domain's whole life and released only after the
/// TLBI by it completed, at free. The TLB maintenance of unmaps is here; the tables and the
/// entries in the subclasses.
class ArmSMMUPagingDomain: ArmSMMUDomain, @unchecked Sendable {
    unowned(unsafe) let smmu: ArmSMMUDevice
    let stage: ArmSMMUStage
    /// The ASID (stage 1) or VMID (stage 2).
    let tag: UInt16
    /// IDR3.RIL: range TLBIs (Linux `ARM_SMMU_FEAT_RANGE_INV`).
    let rangeInvalidation: Bool

    /// Most single-granule TLBIs one flush issues before it invalidates the whole ASID/VMID
    /// instead (without RIL). Linux `CMDQ_MAX_TLBI_OPS` (1 << (PAGE_SHIFT − 3)).
    static let maxTLBIOps: UInt64 = 512

    init(driver: ArmSMMUv3Driver, smmu: ArmSMMUDevice, stage: ArmSMMUStage, tag: UInt16, type: DomainType, flags: DomainFlags,
         apertureEnd: UInt64) {
        self.smmu = smmu; self.stage = stage; self.tag = tag
        rangeInvalidation = smmu.features.rangeInvalidation
        super.init(driver: driver, type: type, flags: flags, pageSizes: 1 << 12 | 1 << 21 | 1 << 30, apertureEnd: apertureEnd)
    }

    override var description: String { "domain \(id) (\(type), \(stage == .s1 ? "S1 ASID" : "S2 VMID") \(tag))" }

    /// A domain is finalised for one unit (Linux `arm_smmu_attach_dev`: `smmu_domain->smmu !=
    /// master->smmu` is EINVAL).
    override func attach(_ device: Device, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        let (u, master) = try driver.lookup(device)
        guard u === smmu else { throw .incompatible("\(self) belongs to \(smmu.name), not \(u.name)") }
        return try install(master, on: u)
    }

    // MARK: TLB maintenance (Linux `arm_smmu_tlb_inv_range_domain`, `arm_smmu_tlb_inv_context`)

    /// The flush of an unmap (Linux `arm_smmu_iotlb_sync`): the gathered range by VA
    /// (TLBI_NH_VA with the ASID) or by IPA (TLBI_S2_IPA with the VMID), then CMD_SYNC. Leaf
    /// only when no table page was freed (Linux sends a non-leaf TLBI from the io-pgtable
    /// walk flush when it frees a table; the core frees them after this returns).
    /// With ATS masters, then ATC_INV for the range to each of them with its SSID and a
    /// second CMD_SYNC (Linux `arm_smmu_tlb_inv_range_domain` → `arm_smmu_atc_inv_domain`:
    /// the ATC is invalidated only once the TLB no longer holds the range, so a device
    /// cannot refill its ATC from a stale TLB entry).
    override func iotlbSync(_ gather: inout UnmapGather) throws(IOMMUError) {
        guard gather.start < gather.end else { return }
        try invalidateRange(start: gather.start, size: gather.end - gather.start,
                            leaf: gather.freedTables.isEmpty, largestPage: gather.largestPage)
        if stage == .s2 && flags.contains(.nestParent) {
            // Linux 6.17 `arm_smmu_tlb_inv_range_domain` with `nest_parent`: "When the S2
            // domain changes all the nested S1 ASIDs have to be flushed too" — TLBI_NH_ALL
            // with the VMID (the combined entries; TLBI_S2_IPA leaves them, IHI 0070 §4.4.4).
            let nhAll = SMMUCommand.tlbiNHAll(vmid: tag)
            try smmu.platform.withHardware { () throws(IOMMUError) in try smmu.cmdq.issueAndSync(nhAll) }
        }
        if atsMasters > 0 { try smmu.atcInvalidateDomain(self, address: gather.start, size: gather.end - gather.start) }
    }

    /// Linux `arm_smmu_flush_iotlb_all` → `arm_smmu_tlb_inv_context`: TLBI_NH_ASID (stage 1)
    /// or TLBI_S12_VMALL (stage 2), SYNC, then the whole ATC of every ATS master.
    override func flushAll() throws(IOMMUError) {
        try smmu.platform.withHardware { () throws(IOMMUError) in
            try smmu.cmdq.issue(contextInvalidation)
            try smmu.cmdq.sync()
        }
        if atsMasters > 0 { try smmu.atcInvalidateDomain(self, address: 0, size: 0) }
    }

    var contextInvalidation: SMMUCommand {
        stage == .s1 ? .tlbiNHASID(vmid: 0, asid: tag) : .tlbiS12VMAll(vmid: tag)
    }

    @inline(__always)
    private func command(_ address: TLBIAddress) -> SMMUCommand {
        stage == .s1 ? .tlbiNHVA(vmid: 0, asid: tag, address) : .tlbiS2IPA(vmid: tag, address)
    }

    /// Linux `__arm_smmu_tlb_inv_range`. With RIL: commands of (NUM + 1) × 2^SCALE 4 KiB pages,
    /// SCALE the lowest set bit of the pages left, TG 4 KiB and TTL 3 for leaves when only 4 KiB
    /// pages were cleared (the core's gather may mix page sizes, so a larger page gets TTL 0,
    /// any level). Without RIL: one command per 4 KiB page, or the whole context beyond
    /// `maxTLBIOps` pages. Then CMD_SYNC.
    /// - Complexity: O(log pages) commands with RIL; allocation-free.
    func invalidateRange(start: UInt64, size: UInt64, leaf: Bool, largestPage: UInt64) throws(IOMMUError) {
        let q = smmu.cmdq
        try smmu.platform.withHardware { () throws(IOMMUError) in
            var pages = (size + 0xFFF) >> 12
            var iova = start & ~0xFFF
            if rangeInvalidation {
                let ttl: UInt8 = leaf && largestPage <= 4096 ? 3 : 0
                while pages > 0 {
                    let scale = UInt64(pages.trailingZeroBitCount)
                    let num = (pages >> scale) & 0x1F
                    try q.issue(command(TLBIAddress(address: iova, leaf: leaf, granule: .size4K, ttl: ttl,
                                                    num: UInt8(num - 1), scale: UInt8(scale))))
                    iova &+= num << (scale + 12)
                    pages -= num << scale
                }
            } else if pages > Self.maxTLBIOps {
                try q.issue(contextInvalidation)
            } else {
                for _ in 0..<pages {
                    try q.issue(command(TLBIAddress(address: iova, leaf: leaf)))
                    iova &+= 4096
                }
            }
            try q.sync()
        }
    }

    /// TLBI by the whole context and SYNC, then the ASID/VMID goes back (quarantined if the
    /// TLBI failed) and the tables are freed — or held until translation is off when the
    /// hardware may still walk them (Linux `arm_smmu_domain_free_paging`: `free_io_pgtable_ops`
    /// flushes the context, then the ASID leaves `arm_smmu_asid_xa` / the VMID the IDA).
    func releaseContext(tables: [UInt64]) {
        var invalidated = true
        // Broken order for oracle-strength runs: the tag goes back before its TLBI.
        let early = driver.bugs.contains(.releaseDIDBeforeFlush)
        if early { releaseTag(invalidated: true) }
        do { try flushAll() } catch { invalidated = false }
        if !early { releaseTag(invalidated: invalidated) }
        if invalidated {
            for t in tables { try? smmu.platform.frames.free(t) }
        } else {
            driver.core?.holdUntilTranslationOff(tables)
        }
    }

    private func releaseTag(invalidated: Bool) {
        if stage == .s1 { driver.releaseASID(tag, invalidated: invalidated) } else { smmu.releaseVMID(tag, invalidated: invalidated) }
    }
}

/// A stage 1 paging domain (Linux `ARM_SMMU_DOMAIN_S1`, `ARM_64_LPAE_S1` io-pgtable): CD 0 of
/// the master's CD table holds its ASID and tables (`arm_smmu_make_s1_cd`), and the STE points
/// at the CD table (`arm_smmu_make_cdtable_ste`, S1DSS = SSID0). Dirty-tracking domains are
/// of this kind (ArmSMMUPagingDomain+Dirty.swift).
final class ArmSMMUS1Domain: ArmSMMUPagingDomain, @unchecked Sendable {
    let pageTable: IOPageTable<ArmStage1Format>

    init(driver: ArmSMMUv3Driver, smmu: ArmSMMUDevice, asid: UInt16, pageTable: IOPageTable<ArmStage1Format>, type: DomainType,
         flags: DomainFlags) {
        self.pageTable = pageTable
        super.init(driver: driver, smmu: smmu, stage: .s1, tag: asid, type: type, flags: flags, apertureEnd: pageTable.inputLimit - 1)
    }

    public override var tableOwnerTag: UInt32 { pageTable.ownerTag }

    /// Linux `arm_smmu_make_s1_cd`: S set for a master that stalls; HA and HD when the
    /// io-pgtable has IO_PGTABLE_QUIRK_ARM_HD (the domain was allocated for dirty tracking).
    func contextDescriptor(for master: ArmSMMUMaster) -> ContextDescriptor {
        .s1(asid: tag, ttb: pageTable.root, inputBits: 48, outputBits: smmu.features.outputAddressBits, stall: master.stallEnabled,
            dirtyTracking: tracksDirty)
    }

    /// Linux `arm_smmu_attach_dev` for stage 1: prepare (ATS decided, the master listed),
    /// CD 0 first, then the CD-table STE (EATS with ATS), then commit (ATS enabled or the
    /// ATC invalidated). The CD's update matters only if the STE in force already used the
    /// CD table (S1 → S1: same STE, another CD; the CD's ASID and TTB0 words both change, so
    /// the writer goes through V = 0 as Linux's does); otherwise the STE's update is the
    /// transition.
    override func install(_ master: ArmSMMUMaster, on u: ArmSMMUDevice) throws(IOMMUError) -> UpdatePath {
        let cdInUse = master.steUsesCDTable
        _ = try u.ensureCDTable(master)
        let state = u.attachPrepare(master, ssid: 0, new: self)
        let cdPath: UpdatePath, stePath: UpdatePath
        do {
            cdPath = try u.writeCD(master, contextDescriptor(for: master))
            stePath = try u.writeSTE(master, u.cdTableSTE(master, s1DSS: .ssid0, ats: state.ats))
        } catch {
            u.attachAbort(master, state)
            throw error
        }
        master.rid = .s1
        u.attachCommit(master, state)
        guard cdInUse else { return stePath }
        if stePath == .unchanged { return cdPath }
        return stePath == .teardownSetup || cdPath == .teardownSetup ? .teardownSetup : stePath
    }

    /// Linux `arm_smmu_s1_set_dev_pasid` → `arm_smmu_set_pasid` (`ArmSMMUDevice.setPASID`).
    /// This domain's ASID tags every CD that uses it, so its TLBIs by ASID reach all of them.
    override func setDevicePASID(_ device: Device, pasid: PASID, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        let (u, master) = try driver.lookup(device)
        guard u === smmu else { throw .incompatible("\(self) belongs to \(smmu.name), not \(u.name)") }
        return try u.setPASID(master, ssid: pasid.rawValue, domain: self, contextDescriptor(for: master))
    }

    /// The core's rights are IOMMU_READ/WRITE without IOMMU_PRIV, so every leaf is
    /// unprivileged-accessible (io-pgtable-arm sets AP[1], `ARM_LPAE_PTE_AP_UNPRIV`).
    override func mapPages(iova: UInt64, physical: UInt64, pageSize: UInt64, count: UInt64,
                           permissions: PagePermissions) throws(IOMMUError) -> UInt64 {
        try pageTable.domainMap(iova: iova, physical: physical, pageSize: pageSize, count: count,
                                permissions: permissions.union(.user), domain: self)
    }

    override func unmapPages(iova: UInt64, pageSize: UInt64, count: UInt64, gather: inout UnmapGather) -> UInt64 {
        pageTable.domainUnmap(iova: iova, pageSize: pageSize, count: count, gather: &gather)
    }

    override func iovaToPhys(_ iova: UInt64) -> UInt64? { pageTable.translate(iova)?.physical }

    override func setDirtyTracking(_ enabled: Bool) throws(IOMMUError) { try setDirtyTrackingS1(enabled) }

    override func readAndClearDirty(iova: UInt64, size: UInt64, clear: Bool, _ record: ((UInt64, UInt64) -> Void)?) throws(IOMMUError) {
        try readAndClearDirtyS1(iova: iova, size: size, clear: clear, record)
    }

    override func free() {
        var gather = UnmapGather()
        pageTable.destroy(into: &gather)
        releaseContext(tables: gather.freedTables)
    }
}

/// A stage 2 paging domain (Linux `ARM_SMMU_DOMAIN_S2`, `ARM_64_LPAE_S2` io-pgtable): the STE
/// holds the VMID, VTCR and tables (`arm_smmu_make_s2_domain_ste`). Nest parents are of this
/// kind; dirty tracking never is (Linux 6.17 tracks dirty pages at stage 1 only).
final class ArmSMMUS2Domain: ArmSMMUPagingDomain, @unchecked Sendable {
    let pageTable: IOPageTable<ArmStage2Format>

    init(driver: ArmSMMUv3Driver, smmu: ArmSMMUDevice, vmid: UInt16, pageTable: IOPageTable<ArmStage2Format>, type: DomainType,
         flags: DomainFlags) {
        self.pageTable = pageTable
        super.init(driver: driver, smmu: smmu, stage: .s2, tag: vmid, type: type, flags: flags, apertureEnd: pageTable.inputLimit - 1)
    }

    public override var tableOwnerTag: UInt32 { pageTable.ownerTag }

    /// Linux `arm_smmu_make_s2_domain_ste`: EATS with ATS, S2S for a master that stalls,
    /// S2FWB for a nest parent on a unit with IDR3.FWB (`IO_PGTABLE_QUIRK_ARM_S2FWB`, set by
    /// `arm_smmu_domain_finalise` for NEST_PARENT only).
    func streamTableEntry(ats: Bool, stall: Bool) -> StreamTableEntry {
        .s2Domain(vmid: tag, translation: .granule4K(levels: pageTable.levels, outputBits: smmu.features.outputAddressBits),
                  ttb: pageTable.root, ats: ats, stall: stall,
                  forcedWriteBack: flags.contains(.nestParent) && smmu.features.s2FWB)
    }

    /// Linux `arm_smmu_attach_dev` for stage 2: the STE, then CD 0 cleared (EBUSY while
    /// PASIDs are in use).
    override func install(_ master: ArmSMMUMaster, on u: ArmSMMUDevice) throws(IOMMUError) -> UpdatePath {
        try installWithoutCD(master, on: u, rid: .s2, s1DSS: nil, tracked: self) { ats in
            streamTableEntry(ats: ats, stall: master.stallEnabled)
        }
    }

    /// Stage 2 domains take no PASIDs (Linux: only stage 1 CDs hang off SubstreamIDs; EINVAL).
    override func setDevicePASID(_ device: Device, pasid: PASID, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        throw .invalidArgument("\(self) is stage 2; PASIDs need a stage 1 domain")
    }

    override func mapPages(iova: UInt64, physical: UInt64, pageSize: UInt64, count: UInt64,
                           permissions: PagePermissions) throws(IOMMUError) -> UInt64 {
        try pageTable.domainMap(iova: iova, physical: physical, pageSize: pageSize, count: count, permissions: permissions, domain: self)
    }

    override func unmapPages(iova: UInt64, pageSize: UInt64, count: UInt64, gather: inout UnmapGather) -> UInt64 {
        pageTable.domainUnmap(iova: iova, pageSize: pageSize, count: count, gather: &gather)
    }

    override func iovaToPhys(_ iova: UInt64) -> UInt64? { pageTable.translate(iova)?.physical }

    override func free() {
        var gather = UnmapGather()
        pageTable.destroy(into: &gather)
        releaseContext(tables: gather.freedTables)
    }
}
