import Platform
import Formats
import Hardware

/// An SVA domain of one SMMUv3 unit (Linux arm-smmu-v3-sva.c, 6.x): it shares a process's
/// page table through a CD per (master, SSID) built like `arm_smmu_make_sva_cd` (TTB0 = the
/// process's VMSAv8-64 table root, T0SZ for 48 bits, EPD1, S for stalling masters) under an
/// ASID of its own from the global ASID space (`arm_smmu_sva_domain_alloc`; Linux no longer
/// shares the CPU's ASID). The mmu notifier invalidates by that ASID and sends ATC_INV with
/// each master's SSID; at mm release every CD is made to fault quietly.
final class ArmSMMUSVADomain: ArmSMMUDomain, @unchecked Sendable {
    unowned(unsafe) let smmu: ArmSMMUDevice
    unowned(unsafe) let process: Process
    let asid: UInt16
    /// TTB0: the root of the process's Arm-format table.
    let ttb: UInt64
    /// Set by `addressSpaceReleased`: CDs written from then on fault (EPD0).
    private(set) var mmReleased = false

    init(driver: ArmSMMUv3Driver, smmu: ArmSMMUDevice, process: Process, asid: UInt16, ttb: UInt64) {
        self.smmu = smmu; self.process = process; self.asid = asid; self.ttb = ttb
        super.init(driver: driver, type: .sva)
    }

    override var description: String { "SVA domain \(id) (\(process), ASID \(asid))" }

    /// Linux `arm_smmu_make_sva_cd`: with the mm, TTB0 and its walk attributes; without it
    /// (after release) EPD0, and S and R cleared unless the unit forces stalls.
    func contextDescriptor(for master: ArmSMMUMaster) -> ContextDescriptor {
        .sva(asid: asid, ttb: mmReleased ? nil : ttb, inputBits: 48, outputBits: smmu.features.outputAddressBits,
             stall: master.stallEnabled, stallForced: smmu.features.stallModel == .stallForced)
    }

    override func attach(_ device: Device, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        throw .invalidArgument("\(self) attaches to PASIDs only")
    }

    /// Linux `arm_smmu_sva_set_dev_pasid` → `arm_smmu_set_pasid`.
    override func setDevicePASID(_ device: Device, pasid: PASID, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        let (u, master) = try driver.lookup(device)
        guard u === smmu else { throw .incompatible("\(self) belongs to \(smmu.name), not \(u.name)") }
        return try u.setPASID(master, ssid: pasid.rawValue, domain: self, contextDescriptor(for: master))
    }

    /// Linux `arm_smmu_mm_arch_invalidate_secondary_tlbs` for [start, end] (inclusive): the
    /// whole ASID when the range is `CMDQ_MAX_TLBI_OPS` pages or more, else TLBI_NH_VA by
    /// ASID (not leaf-only: tables may have gone; RIL range commands where the unit has
    /// them), CMD_SYNC, then ATC_INV to each ATS master with its SSID and CMD_SYNC.
    override func invalidateRange(start: UInt64, end: UInt64) throws(IOMMUError) {
        guard end >= start else { return }
        let first = start & ~0xFFF
        var size = (end | 0xFFF) &- first &+ 1
        if size == 0 || size >= ArmSMMUPagingDomain.maxTLBIOps << 12 { size = 0 }
        let q = smmu.cmdq
        let asid = asid
        let ril = smmu.features.rangeInvalidation
        try smmu.platform.withHardware { () throws(IOMMUError) in
            if size == 0 {
                try q.issue(.tlbiNHASID(vmid: 0, asid: asid))
            } else {
                var pages = size >> 12
                var va = first
                while pages > 0 {
                    if ril {
                        let scale = UInt64(pages.trailingZeroBitCount)
                        let num = (pages >> scale) & 0x1F
                        try q.issue(.tlbiNHVA(vmid: 0, asid: asid, TLBIAddress(address: va, leaf: false, granule: .size4K,
                                                                             num: UInt8(num - 1), scale: UInt8(scale))))
                        va &+= num << (scale + 12)
                        pages -= num << scale
                    } else {
                        try q.issue(.tlbiNHVA(vmid: 0, asid: asid, TLBIAddress(address: va, leaf: false)))
                        va &+= 4096
                        pages -= 1
                    }
                }
            }
            try q.sync()
        }
        try smmu.atcInvalidateDomain(self, address: first, size: size)
    }

    /// Linux `arm_smmu_mm_release`: DMA may still be running, so each CD stays valid (no
    /// C_BAD_CD events) but stops translating (EPD0; S and R cleared unless stalls are
    /// forced), then the ASID's TLB entries and every ATS master's ATC go.
    override func addressSpaceReleased() {
        guard !mmReleased else { return }
        mmReleased = true
        for md in masterDomains {
            _ = try? smmu.writeCD(md.master, ssid: md.ssid, contextDescriptor(for: md.master))
        }
        try? smmu.platform.withHardware { () throws(IOMMUError) in
            try smmu.cmdq.issueAndSync(.tlbiNHASID(vmid: 0, asid: asid))
        }
        try? smmu.atcInvalidateDomain(self, address: 0, size: 0)
    }

    override func iovaToPhys(_ iova: UInt64) -> UInt64? {
        guard !mmReleased, let page = process.residentPages[iova & ~0xFFF] else { return nil }
        return page | (iova & 0xFFF)
    }

    /// Linux `arm_smmu_sva_domain_free`: the ASID's TLB entries are invalidated before the
    /// ASID can be reused (quarantined if that fails); the process keeps its table.
    override func free() {
        var invalidated = true
        let early = driver.bugs.contains(.releaseDIDBeforeFlush)
        if early { driver.releaseASID(asid, invalidated: true) }
        defer { if !early { driver.releaseASID(asid, invalidated: invalidated) } }
        do {
            try smmu.platform.withHardware { () throws(IOMMUError) in
                try smmu.cmdq.issueAndSync(.tlbiNHASID(vmid: 0, asid: asid))
            }
        } catch { invalidated = false }
    }
}

extension ArmSMMUv3Driver {
    /// Linux `arm_smmu_sva_domain_alloc`: stage 1 and SubstreamIDs needed; the process gets
    /// its Arm-format table (`Process.armPageTableRoot`) and the domain an ASID from the
    /// global space (EBUSY when full, as a paging domain's).
    public func allocSVADomain(for device: Device, process: Process) throws(IOMMUError) -> IOMMUDomain {
        let (u, master) = try lookup(device)
        guard u.features.stage1 else { throw .notSupported("\(u.name) has no stage 1 for SVA") }
        guard master.ssidBits > 0 else { throw .notSupported("\(device) has no SubstreamIDs on \(u.name)") }
        let ttb = try process.armPageTableRoot()
        let asid = try allocateASID(on: u)
        return ArmSMMUSVADomain(driver: self, smmu: u, process: process, asid: asid, ttb: ttb)
    }
}
