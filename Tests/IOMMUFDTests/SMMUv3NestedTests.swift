import Testing
import Platform
import Formats
import Hardware
@testable import Kernel
import IOMMUFD
@testable import Simulation

/// SMMUv3 nesting through iommufd as Linux 6.17 has it (arm-smmu-v3-iommufd.c): the vIOMMU
/// over a nest parent, vDEVICEs with vSIDs, nested HWPTs from vSTEs, DMA through the guest's
/// CD table and stage 1 and the host's stage 2.
@Suite struct SMMUv3NestedTests {
    @Test func viommuAllocRules() throws {
        let vmm = try ArmNestedVMM()
        #expect(vmm.viommuAlloc(flags: 1).rc == -Errno.EOPNOTSUPP)
        #expect(vmm.viommuAlloc(type: 0).rc == -Errno.EOPNOTSUPP)
        // IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV: no implementation here.
        #expect(vmm.viommuAlloc(type: 2).rc == -Errno.EOPNOTSUPP)
        // Not a HWPT_PAGING (the IOAS): ENOENT; a paging HWPT that is no nest parent: EINVAL.
        #expect(vmm.viommuAlloc(hwpt: vmm.ioas).rc == -Errno.ENOENT)
        let plain = vmm.hwptAlloc(pt: vmm.ioas)
        try #require(plain.rc == 0)
        #expect(vmm.viommuAlloc(hwpt: plain.id).rc == -Errno.EINVAL)
        let v = vmm.viommuAlloc()
        try #require(v.rc == 0)
        let vsmmu = try #require((vmm.ctx.object(v.id) as? VIOMMUObject)?.viommu as? ArmVSMMU)
        let parentDomain = try #require((vmm.ctx.object(vmm.parent) as? HWPTPaging)?.domain)
        // The vIOMMU's VMID is the nest parent's (6.17 `arm_vsmmu_init`).
        #expect(vsmmu.vmid == vmm.driver.context(of: parentDomain)?.id)
        #expect(vmm.driver.context(of: parentDomain)?.stage == .s2)
        // The parent is held.
        #expect(vmm.destroy(vmm.parent) == -Errno.EBUSY)
        #expect(vmm.destroy(v.id) == 0)
        #expect(vmm.destroy(vmm.parent) == 0)
    }

    /// GET_HW_INFO on the SMMUv3 device: `IOMMU_HW_INFO_TYPE_ARM_SMMUV3` with the 40-byte
    /// `struct iommu_hw_info_arm_smmuv3` (the unit's IDRs: a VMM reads S1P/S2P and FWB there).
    @Test func hwInfoPayload() throws {
        let vmm = try ArmNestedVMM()
        let (rc, out) = vmm.run(.getHWInfo) { s in s.set32(8, vmm.devID); s.set32(12, 64); s.set64(16, vmm.scratch) }
        #expect(rc == 0)
        #expect(out.u32(12) == 40 && out.u32(24) == UAPI.hwInfoTypeARMSMMUv3)
        let info = StructBytes(bytes: vmm.read(va: vmm.scratch, count: 64))
        #expect(info.u32(8) & 0b11 == 0b11, "IDR0.S1P and S2P")
        #expect(info.u32(8 + 12) & (1 << 8) != 0, "IDR3.FWB")
        #expect(info.u32(36) == vmm.unit.read32(SMMUv3Register.aidr))
        #expect((40..<64).allSatisfy { info.bytes[$0] == 0 })
    }

    /// `arm_smmu_get_viommu_size`: no S2FWB (and no CANWBS device) → EOPNOTSUPP; a unit that
    /// cannot nest refuses the nest parent already.
    @Test func viommuNeedsFWBAndNesting() throws {
        var f = SMMUv3Features()
        f.s2FWB = false
        let vmm = try ArmNestedVMM(features: f)
        #expect(vmm.viommuAlloc().rc == -Errno.EOPNOTSUPP)
        var s2only = ArmNestedVMM.features
        s2only.stage1 = false
        let plain = try ArmNestedVMM(features: s2only, parentFlags: 0)
        #expect(plain.hwptAlloc(pt: plain.ioas, flags: UAPI.hwptAllocNestParent).rc == -Errno.EOPNOTSUPP)
        #expect(plain.viommuAlloc().rc == -Errno.EOPNOTSUPP)
    }

    @Test func vdeviceRules() throws {
        let vmm = try ArmNestedVMM()
        let v = vmm.viommuAlloc()
        try #require(v.rc == 0)
        #expect(vmm.vdeviceAlloc(v.id + 100).rc == -Errno.ENOENT)
        let d = vmm.vdeviceAlloc(v.id)
        try #require(d.rc == 0)
        #expect(vmm.vdeviceAlloc(v.id, virtID: 7).rc == -Errno.EEXIST)
        let vsmmu = try #require((vmm.ctx.object(v.id) as? VIOMMUObject)?.viommu as? ArmVSMMU)
        #expect(vsmmu.sid(forVSID: UInt32(ArmNestedVMM.vsid)) == vmm.driver.streamID(of: vmm.device))
        #expect(vsmmu.sid(forVSID: 1) == nil)
        #expect(vmm.destroy(v.id) == -Errno.EBUSY)
        #expect(vmm.destroy(d.id) == 0)
        #expect(vsmmu.sid(forVSID: UInt32(ArmNestedVMM.vsid)) == nil)
        #expect(vmm.destroy(v.id) == 0)
    }

    /// The guest's CD (by IPA) names its stage 1 table (by IPA); both are read through the
    /// host's stage 2, and the data lands where stage 2 puts the guest's page.
    @Test func dmaThroughBothStages() throws {
        let vmm = try ArmNestedVMM()
        let (v, _, _) = try vmm.nestedSetup()
        for page in 0..<4 { #expect(vmm.dmaReaches(page: page, value: UInt8(0x10 + page))) }
        let vsmmu = try #require((vmm.ctx.object(v) as? VIOMMUObject)?.viommu as? ArmVSMMU)
        // The physical STE: Config nested, the guest's context pointer, the parent's VMID
        // and stage 2, MEV.
        let master = try #require(vmm.device.driverData as? ArmSMMUMaster)
        let ste = StreamTableEntry(words: master.ste)
        #expect(ste.config == .nested)
        #expect(ste.s1ContextPointer == ArmNestedVMM.cdGPA)
        #expect(ste.s2VMID == vsmmu.vmid)
        #expect(ste.s2TTB == vsmmu.s2Parent.pageTable.root)
        #expect(ste.mev && ste.s2FWB && ste.s2PTW)
        #expect(ste.s1CIR == 1 && ste.s1COR == 1 && ste.s1CSH == 3)
        // The combined entries are cached under the VMID.
        #expect(vmm.unit.cachedTLBEntries(vmid: vsmmu.vmid) > 0)
        #expect(vmm.machine.oracle.violations.isEmpty)
    }

    /// A guest "bypass" vSTE is the parent's stage 2 alone; a guest "abort" (or a non-valid
    /// vSTE, whatever else it holds) is an abort STE; neither needs a vDEVICE.
    @Test func bypassAndAbortVSTEs() throws {
        let vmm = try ArmNestedVMM()
        let v = vmm.viommuAlloc()
        try #require(v.rc == 0)
        let bypass = vmm.allocNested(v.id, ste: ArmNestedVMM.vSTE(config: 0b100))
        try #require(bypass.rc == 0)
        _ = try vmm.ctx.attach(vmm.devID, to: bypass.id)
        let master = try #require(vmm.device.driverData as? ArmSMMUMaster)
        #expect(StreamTableEntry(words: master.ste).config == .s2Trans)
        // GPA = IOVA of the parent.
        let c = vmm.dmaWrite(ArmNestedVMM.dataGPA, value: 0x77)
        #expect(c?.fault == nil)
        #expect(vmm.read(va: vmm.dataVA, count: 8) == [UInt8](repeating: 0x77, count: 8))
        let abort = vmm.allocNested(v.id, ste: ArmNestedVMM.vSTE(config: 0b000))
        try #require(abort.rc == 0)
        _ = try vmm.ctx.replace(vmm.devID, with: abort.id)
        #expect(StreamTableEntry(words: master.ste) == StreamTableEntry.abort())
        #expect(vmm.dmaWrite(ArmNestedVMM.dataGPA)?.fault != nil)
        // V = 0 with junk elsewhere: accepted, zeroed, an abort.
        let invalid = vmm.allocNested(v.id, ste: [0xFFFF_FFFF_FFFF_FFFE, 0xFFFF_FFFF_FFFF_FFFF])
        try #require(invalid.rc == 0)
        _ = try vmm.ctx.replace(vmm.devID, with: invalid.id)
        #expect(StreamTableEntry(words: master.ste) == StreamTableEntry.abort())
    }

    /// `arm_vsmmu_alloc_domain_nested` / `arm_smmu_validate_vste`: flags EOPNOTSUPP, the copy
    /// EINVAL, the vSTE's content EIO.
    @Test(arguments: [
        // A bit of word 0 outside V, Config, S1Fmt, S1ContextPtr, S1CDMax (bits 52–58).
        ([UInt64(1) << 52, 0], Errno.EIO),
        // Word 1 outside S1DSS, S1CIR/COR/CSH, S1STALLD, EATS: PPAR (18), MEV (19), S2FWB (25), STRW (30).
        ([0, UInt64(1) << 18], Errno.EIO), ([0, UInt64(1) << 19], Errno.EIO), ([0, UInt64(1) << 25], Errno.EIO),
        ([0, UInt64(1) << 30], Errno.EIO),
        // Config stage 2, nested and the reserved values.
        ([UInt64(0b110) << 1 ^ UInt64(0b101) << 1, 0], Errno.EIO), ([UInt64(0b111) << 1 ^ UInt64(0b101) << 1, 0], Errno.EIO),
        ([UInt64(0b001) << 1 ^ UInt64(0b101) << 1, 0], Errno.EIO),
        // EATS split-stage (2) and reserved (3).
        ([0, UInt64(2) << 28], Errno.EIO), ([0, UInt64(3) << 28], Errno.EIO),
    ] as [([UInt64], Int32)])
    func vSTERejected(flip: [UInt64], errno: Int32) throws {
        let vmm = try ArmNestedVMM()
        let v = vmm.viommuAlloc()
        try #require(v.rc == 0)
        let base = ArmNestedVMM.vSTE()
        #expect(vmm.allocNested(v.id, ste: [base[0] ^ flip[0], base[1] ^ flip[1]]).rc == -errno)
        #expect(vmm.ctx.object(v.id) != nil)
    }

    @Test func nestedAllocCopyChecks() throws {
        let vmm = try ArmNestedVMM()
        let v = vmm.viommuAlloc()
        try #require(v.rc == 0)
        // PASID: the driver takes no flags (FAULT_ID_VALID is the core's).
        #expect(vmm.allocNested(v.id, flags: UAPI.hwptAllocPASID).rc == -Errno.EOPNOTSUPP)
        #expect(vmm.allocNested(v.id, dataType: UAPI.hwptDataVTdS1).rc == -Errno.EINVAL)
        #expect(vmm.allocNested(v.id, dataLength: 8).rc == -Errno.EINVAL)
        #expect(vmm.allocNested(v.id, dataLength: 24).rc == -Errno.EINVAL)
        // data_len 0 with type NONE: the core's EOPNOTSUPP (a nested HWPT needs data).
        #expect(vmm.allocNested(v.id, dataType: 0, dataLength: 0).rc == -Errno.EOPNOTSUPP)
        // The struct is read once the flags, type and length passed: an unreadable one is EFAULT.
        #expect(vmm.hwptAlloc(pt: v.id, dataType: ArmVSMMU.nestedDataType, data: ArmNestedVMM.bytes(ArmNestedVMM.vSTE()),
                              uptr: 0xDEAD_0000).rc == -Errno.EFAULT)
        // Allowed bits: S1Fmt, S1CDMax, S1DSS, S1STALLD and EATS translate pass.
        let ok = vmm.allocNested(v.id, ste: ArmNestedVMM.vSTE(eats: 1, extra0: 1 << 4 | 5 << 59, extra1: 2 | 1 << 27))
        #expect(ok.rc == 0)
        let nested = try #require((vmm.ctx.object(ok.id) as? HWPTNested)?.domain as? ArmSMMUNestedDomain)
        #expect(nested.enableATS)
        #expect(nested.ste.1 & ArmSMMUNestedDomain.eatsMask == 0)
        // A nested HWPT takes no invalidations of its own (the vIOMMU does).
        #expect(vmm.invalidate(ok.id, [ArmNestedVMM.tlbiNHVA(address: 0)]).rc == -Errno.EOPNOTSUPP)
        // No nested HWPT on the parent directly: the 6.17 driver has no `domain_alloc_nested`.
        #expect(vmm.hwptAlloc(pt: vmm.parent, dataType: ArmVSMMU.nestedDataType, data: ArmNestedVMM.bytes(ArmNestedVMM.vSTE())).rc == -Errno.EOPNOTSUPP)
    }

    /// A translating vSTE needs the device's vDEVICE (ENOENT at attach); PASIDs in use EBUSY.
    @Test func attachRules() throws {
        let vmm = try ArmNestedVMM()
        let v = vmm.viommuAlloc()
        try #require(v.rc == 0)
        vmm.buildGuestTables()
        let n = vmm.allocNested(v.id)
        try #require(n.rc == 0)
        #expect(errnoOf { _ = try vmm.ctx.attach(vmm.devID, to: n.id) } == Errno.ENOENT)
        try #require(vmm.vdeviceAlloc(v.id).rc == 0)
        _ = try vmm.ctx.attach(vmm.devID, to: n.id)
        #expect(vmm.dmaReaches(page: 1, value: 0x31))
        // Back to the parent directly: stage 2 only again.
        _ = try vmm.ctx.replace(vmm.devID, with: vmm.parent)
        let master = try #require(vmm.device.driverData as? ArmSMMUMaster)
        #expect(StreamTableEntry(words: master.ste).config == .s2Trans)
        #expect(master.vmaster == nil)
    }
}
