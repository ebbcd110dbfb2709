import Testing
import Platform
import Formats
import Hardware
@testable import Kernel

/// The SMMUv3 driver's nesting below the user API (Linux 6.17 arm-smmu-v3-iommufd.c):
/// `arm_smmu_validate_vste`, `arm_smmu_make_nested_domain_ste`, ATS from the vSTE, and the
/// nest parent's unmap (`arm_smmu_tlb_inv_range_domain` with `nest_parent`).
@Suite struct ArmSMMUv3NestedTests {
    static var features: SMMUv3Features {
        var f = SMMUv3Features()
        f.s2FWB = true
        return f
    }

    /// A nest parent, its vIOMMU, and `device` given vSID `vsid` there (what VDEVICE_ALLOC does).
    static func vsmmu(_ rig: ArmSMMUv3Rig, _ device: Device, vsid: UInt64 = 5) throws -> ArmVSMMU {
        let g = try #require(device.group)
        if !g.dmaOwned { try rig.core.claimDMAOwner(g) }
        let parent = try rig.core.allocDomain(for: device, flags: .nestParent)
        let v = try #require(try rig.driver.allocVIOMMU(for: device, parent: parent, type: ArmVSMMU.type) as? ArmVSMMU)
        v.virtualDevices[vsid] = device
        return v
    }

    static func nested(_ rig: ArmSMMUv3Rig, _ v: ArmVSMMU, _ device: Device, ste: [UInt64]) throws -> IOMMUDomain {
        let bytes = ste.flatMap { w in (0..<8).map { UInt8(truncatingIfNeeded: w >> (8 * UInt64($0))) } }
        let data = IOMMUUserData(length: 16, read: { n in Array(bytes.prefix(n)) }, write: { _ in })
        return try rig.core.allocNestedDomain(on: v, for: device, flags: [], dataType: ArmVSMMU.nestedDataType, userData: data)
    }

    @Test func validateVSTE() throws {
        // V = 0: zeroed whatever else it holds.
        var ste: (UInt64, UInt64) = (0xFFFF_FFFF_FFFF_FFFE, 0xFFFF)
        #expect(try ArmSMMUNestedDomain.validate(&ste) == false)
        #expect(ste == (0, 0))
        // Every allowed field at once: accepted; EATS cleared; ATS asked.
        ste = (1 | 0b101 << 1 | 0b01 << 4 | 0x1234_5678_9AC0 | 7 << 59, 0b10 | 0xFC | 1 << 27 | 1 << 28)
        let before = ste
        #expect(try ArmSMMUNestedDomain.validate(&ste) == true)
        #expect(ste.0 == before.0 && ste.1 == before.1 & ~(UInt64(3) << 28))
        // EATS translate with bypass or abort: no ATS.
        for cfg: UInt64 in [0b000, 0b100] {
            ste = (1 | cfg << 1, 1 << 28)
            #expect(try ArmSMMUNestedDomain.validate(&ste) == false)
        }
        // Every bit outside the allowed fields, one at a time: EIO.
        for bit in 0..<64 where ArmSMMUNestedDomain.allowed0 & (1 << UInt64(bit)) == 0 {
            ste = (1 | 0b101 << 1 | 1 << UInt64(bit), 0)
            #expect(throws: IOMMUError.self) { _ = try ArmSMMUNestedDomain.validate(&ste) }
        }
        for bit in 0..<64 where ArmSMMUNestedDomain.allowed1 & (1 << UInt64(bit)) == 0 {
            ste = (1 | 0b101 << 1, 1 << UInt64(bit))
            #expect(throws: IOMMUError.self) { _ = try ArmSMMUNestedDomain.validate(&ste) }
        }
        for cfg: UInt64 in [1, 2, 3, 6, 7] {
            ste = (1 | cfg << 1, 0)
            do { _ = try ArmSMMUNestedDomain.validate(&ste); Issue.record("Config \(cfg) accepted") } catch { #expect(error.errno == 5) }
        }
    }

    @Test func physicalSTEs() throws {
        let rig = try ArmSMMUv3Rig(features: Self.features)
        let a = try rig.add("a", dev: 1)
        let v = try Self.vsmmu(rig, a)
        let cdTable: UInt64 = 0x4000_0000
        let s1 = try Self.nested(rig, v, a, ste: [1 | 0b101 << 1 | cdTable | 3 << 59, 1 << 2 | 1 << 27])
        try rig.core.attach(s1, to: try #require(a.group))
        let ste = try ArmSMMUv3Rig.ste(a)
        #expect(ste.config == .nested && ste.s1ContextPointer == cdTable && ste.s1CDMax == 3)
        #expect(ste.s1CIR == 1 && ste.s1StallDisable && ste.mev && ste.s2FWB && ste.eats == .abort)
        #expect(ste.s2VMID == v.vmid && ste.s2TTB == v.s2Parent.pageTable.root)
        #expect(try ArmSMMUv3Rig.master(a).vmaster?.vsid == 5)
        let bypass = try Self.nested(rig, v, a, ste: [1 | 0b100 << 1, 0])
        try rig.core.replace(try #require(a.group), with: bypass)
        #expect(try ArmSMMUv3Rig.ste(a) == v.s2Parent.streamTableEntry(ats: false, stall: false))
        let abort = try Self.nested(rig, v, a, ste: [1, 0])
        try rig.core.replace(try #require(a.group), with: abort)
        #expect(try ArmSMMUv3Rig.ste(a) == .abort())
        // Another unit's vIOMMU, or a parent of another unit: EINVAL (single-unit rig: a
        // stage 1 domain is no stage 2 parent).
        let s1Domain = try rig.core.allocDomain(for: a)
        #expect(throws: IOMMUError.self) { _ = try rig.driver.allocVIOMMU(for: a, parent: s1Domain, type: ArmVSMMU.type) }
        #expect(rig.driver.viommuSize(for: a, type: ArmVSMMU.type) > 0)
        #expect(rig.driver.viommuSize(for: a, type: 2) == 0)
    }

    /// `arm_smmu_attach_dev_nested`: PASIDs in use are EBUSY; a nested RID takes no PASID
    /// (the guest's SubstreamIDs are its CD table's, S1CDMax); the guest's CD table serves
    /// SubstreamIDs through the nested STE.
    @Test func pasidsAndNesting() throws {
        let rig = try ArmSMMUv3Rig(features: Self.features)
        let (a, _) = try rig.addEndpoint("a", dev: 1, pasids: 16)
        let v = try Self.vsmmu(rig, a)
        let s1 = try rig.core.allocDomain(for: a, flags: .pasid)
        _ = try rig.core.attachPASID(s1, to: a, pasid: PASID(truncating: 1))
        let n = try Self.nested(rig, v, a, ste: [1 | 0b101 << 1 | 0x4000_0000 | 1 << 59, 0])
        do {
            try rig.core.attach(n, to: try #require(a.group))
            Issue.record("a nested attach with PASIDs in use")
        } catch let e as IOMMUError { #expect(e.errno == 16, "\(e)") }
        #expect(try ArmSMMUv3Rig.ste(a).config != .nested)
        try rig.core.detachPASID(s1, from: a, pasid: PASID(truncating: 1))
        try rig.core.attach(n, to: try #require(a.group))
        let ste = try ArmSMMUv3Rig.ste(a)
        #expect(ste.config == .nested && ste.s1CDMax == 1)
        do {
            _ = try rig.core.attachPASID(s1, to: a, pasid: PASID(truncating: 2))
            Issue.record("a PASID attached under a nested RID")
        } catch { #expect(error.errno == 22, "arm_smmu_set_pasid: the CD table is not in the STE: EINVAL") }
        #expect(try ArmSMMUv3Rig.ste(a) == ste)
    }

    /// EATS = translate in the vSTE turns ATS on (and lists the master for a whole-ATC flush
    /// of the parent); without it ATS stays off even on an ATS device.
    @Test func atsFollowsTheVSTE() throws {
        let rig = try ArmSMMUv3Rig(features: Self.features)
        let (a, ep) = try rig.addEndpoint("a", dev: 1, ats: true)
        let v = try Self.vsmmu(rig, a)
        let off = try Self.nested(rig, v, a, ste: [1 | 0b101 << 1 | 0x4000_0000, 0])
        try rig.core.attach(off, to: try #require(a.group))
        #expect(try ArmSMMUv3Rig.ste(a).eats == .abort)
        #expect(try !ArmSMMUv3Rig.master(a).atsEnabled)
        let on = try Self.nested(rig, v, a, ste: [1 | 0b101 << 1 | 0x4000_0000, 1 << 28])
        try rig.core.replace(try #require(a.group), with: on)
        #expect(try ArmSMMUv3Rig.ste(a).eats == .translate)
        #expect(try ArmSMMUv3Rig.master(a).atsEnabled)
        // A parent unmap: TLBI_S2_IPA, TLBI_NH_ALL of the VMID, then the whole ATC.
        try rig.core.map(v.s2Parent, iova: 0x10000, physical: try rig.buffer(), size: 4096, permissions: .readWrite)
        ep.clear()
        let nh = rig.commands(.tlbiNHAll)
        #expect(try rig.core.unmap(v.s2Parent, iova: 0x10000, size: 4096) == 4096)
        #expect(rig.commands(.tlbiNHAll) == nh + 1)
        let inv = try #require(ep.invalidations.last)
        #expect(inv.ssid == nil && inv.size == 52)
    }

    /// A plain stage 2 domain's unmap sends no TLBI_NH_ALL; the nest parent's does, after its
    /// TLBI_S2_IPA. The VMID is the parent's and goes back with it.
    @Test func nestParentUnmapAndVMID() throws {
        let rig = try ArmSMMUv3Rig(features: Self.features, preferred: .s2)
        let a = try rig.add("a", dev: 1)
        let plain = try rig.ownedDomain(for: a)
        try rig.core.map(plain, iova: 0x10000, physical: try rig.buffer(), size: 4096, permissions: .readWrite)
        let nh = rig.commands(.tlbiNHAll)
        _ = try rig.core.unmap(plain, iova: 0x10000, size: 4096)
        #expect(rig.commands(.tlbiNHAll) == nh)
        let vmids = rig.smmu.vmids.allocated
        let v = try Self.vsmmu(rig, a)
        #expect(rig.smmu.vmids.allocated == vmids + 1)
        #expect(rig.smmu.vmids.isInUse(v.vmid))
        try rig.core.map(v.s2Parent, iova: 0x10000, physical: try rig.buffer(), size: 4096, permissions: .readWrite)
        let ipa = rig.commands(.tlbiS2IPA)
        _ = try rig.core.unmap(v.s2Parent, iova: 0x10000, size: 4096)
        #expect(rig.commands(.tlbiS2IPA) > ipa)
        #expect(rig.commands(.tlbiNHAll) == nh + 1)
        v.destroy()
        try rig.core.freeDomain(v.s2Parent)
        #expect(rig.smmu.vmids.allocated == vmids)
    }
}
