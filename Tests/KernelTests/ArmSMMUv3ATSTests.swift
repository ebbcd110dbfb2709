import Testing
import Platform
import Formats
import Hardware
@testable import Kernel

/// SMMUv3 ATS (Linux `arm_smmu_attach_prepare`/`commit`, `arm_smmu_enable_ats`,
/// `arm_smmu_atc_inv_domain`): EATS in the STE, the device's ATS Enable set after the STE
/// and cleared before it, ATC invalidations at every domain change and after every unmap's TLBI.
@Suite("SMMUv3 driver: ATS")
struct ArmSMMUv3ATSTests {
    @Test("an ATS device on a paging domain gets EATS = translate; its ATC is emptied, then ATS enabled, after the STE was written")
    func enableOrder() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, ep) = try rig.addEndpoint("a", dev: 1, ats: true)
        #expect(try ArmSMMUv3Rig.ste(a).eats == .translate)
        #expect(try ArmSMMUv3Rig.master(a).atsEnabled)
        #expect(ep.log == ["atc-inv", "ats-on"])
        let inv = try #require(ep.invalidations.first)
        #expect(inv.ssid == nil && inv.size == 52, "the whole ATC (IOMMU_NO_PASID)")
        let (_, on, ste) = try #require(rig.atsControlSTEs.last)
        #expect(on && ste.eats == .translate, "ATS goes on only once the STE allows translation requests")
    }

    @Test("without an ATS capability, or on a unit without IDR0.ATS, the STE has no EATS and no ATC invalidation is sent")
    func noATS() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, ep) = try rig.addEndpoint("a", dev: 1, ats: false)
        var f = SMMUv3Features()
        f.ats = false
        let rig2 = try ArmSMMUv3Rig(features: f)
        let (b, ep2) = try rig2.addEndpoint("b", dev: 1, ats: true)
        for (r, d, e) in [(rig, a, ep), (rig2, b, ep2)] {
            #expect(try ArmSMMUv3Rig.ste(d).eats == .abort)
            let dom = try r.ownedDomain(for: d)
            try r.core.map(dom, iova: 0x10000, physical: try r.buffer(), size: 4096, permissions: .readWrite)
            #expect(try r.core.unmap(dom, iova: 0x10000, size: 4096) == 4096)
            #expect(e.invalidations.isEmpty && e.log.isEmpty)
            #expect(r.commands(.atcInv) == 0)
        }
    }

    @Test("every unmap's iotlbSync sends ATC_INV for the range after the TLBI, and returns only when the device completed it",
          arguments: [(UInt64(0x41000), UInt64(0x1000)), (0x41000, 0x2000), (0x7F000, 0x3000), (0x20_0000, 0x20_0000)])
    func unmapReachesDevice(iova: UInt64, size: UInt64) throws {
        let rig = try ArmSMMUv3Rig()
        let (a, ep) = try rig.addEndpoint("a", dev: 1, ats: true)
        let d = try rig.ownedDomain(for: a)
        let base = try rig.platform.frames.allocateContiguous(512, .dmaBuffer, alignment: 512)
        try rig.core.map(d, iova: iova, physical: base, size: size, permissions: .readWrite)
        #expect(rig.physical(a, iova + size - 0x1000) != nil)
        ep.clear()
        ep.completionDelayNs = 20_000
        var tlbClearedFirst: [Bool] = []
        ep.onInvalidation = { _ in tlbClearedFirst.append(rig.physical(a, iova) == nil && rig.physical(a, iova + size - 0x1000) == nil) }
        #expect(try rig.core.unmap(d, iova: iova, size: size) == size)
        #expect(ep.invalidations.count == 1)
        let inv = try #require(ep.invalidations.first)
        #expect(inv.ssid == nil && !inv.global)
        #expect(inv.covers(iova, size), "ATC_INV \(inv) covers [\(iova), +\(size))")
        let half = inv.bytes / 2
        #expect(inv.size < 52 && !(inv.address <= iova && iova + size <= inv.address + half)
                && !(inv.address + half <= iova && iova + size <= inv.address + inv.bytes),
                "the smallest naturally aligned span (`arm_smmu_atc_inv_to_cmd`), not the whole space")
        #expect(tlbClearedFirst == [true], "the TLB no longer held the range when the device was asked")
        #expect(ep.completedAt.count == 1 && rig.platform.scheduler.now >= ep.completedAt[0],
                "the unmap returned after the device's completion (CMD_SYNC waited for it)")
    }

    @Test("PASIDs: the ATC_INV of a domain carries the SSID it is attached with; a domain on the RID and a PASID gets both")
    func pasidSSIDs() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, ep) = try rig.addEndpoint("a", dev: 1, pasids: 256, ats: true)
        let g = try #require(a.group)
        try rig.core.claimDMAOwner(g)
        let rid = try rig.core.allocDomain(for: a, flags: .pasid)
        try rig.core.attach(rid, to: g)
        let pd = try rig.core.allocDomain(for: a, flags: .pasid)
        ep.clear()
        try rig.core.attachPASID(pd, to: a, pasid: PASID(truncating: 5))
        #expect(ep.invalidations.map(\.ssid) == [5], "the translation of SSID 5 changed under ATS")
        #expect(try ArmSMMUv3Rig.ste(a).eats == .translate)
        try rig.core.map(pd, iova: 0x30000, physical: try rig.buffer(), size: 4096, permissions: .readWrite)
        ep.clear()
        #expect(try rig.core.unmap(pd, iova: 0x30000, size: 4096) == 4096)
        #expect(ep.invalidations.map(\.ssid) == [5])
        #expect(ep.invalidations.first?.covers(0x30000, 4096) == true)
        // The RID's domain also on PASID 7: one unmap reaches both uses.
        try rig.core.attachPASID(rid, to: a, pasid: PASID(truncating: 7))
        try rig.core.map(rid, iova: 0x50000, physical: try rig.buffer(), size: 4096, permissions: .readWrite)
        ep.clear()
        #expect(try rig.core.unmap(rid, iova: 0x50000, size: 4096) == 4096)
        #expect(Set(ep.invalidations.map { $0.ssid ?? 0 }) == [0, 7] && ep.invalidations.count == 2)
        // Removing a PASID invalidates its ATC entries (`arm_smmu_remove_dev_pasid`).
        ep.clear()
        try rig.core.detachPASID(pd, from: a, pasid: PASID(truncating: 5))
        #expect(ep.invalidations.map(\.ssid) == [5])
        #expect(try ArmSMMUv3Rig.master(a).atsEnabled, "the RID and PASID 7 still use ATS")
    }

    @Test("detach: ATS Enable is cleared while the old STE is in force, then the STE loses EATS, then the whole ATC is invalidated",
          arguments: ["blocked", "identity"])
    func detachOrder(to: String) throws {
        let rig = try ArmSMMUv3Rig()
        let (a, ep) = try rig.addEndpoint("a", dev: 1, ats: true)
        let d = try rig.ownedDomain(for: a)
        let g = try #require(a.group)
        ep.clear()
        rig.atsControlSTEs = []
        if to == "blocked" {
            try rig.core.detach(d, from: g)
            #expect(try ArmSMMUv3Rig.ste(a).config == .abort)
        } else {
            try rig.core.replace(g, with: try #require(rig.driver.identityDomain))
            #expect(try ArmSMMUv3Rig.ste(a).config == .bypass)
        }
        #expect(ep.log == ["ats-off", "atc-inv"])
        #expect(rig.atsControlSTEs.first?.2.eats == .translate, "ATS went off before the STE changed")
        #expect(ep.invalidations.first?.ssid == nil && ep.invalidations.first?.size == 52)
        #expect(try ArmSMMUv3Rig.ste(a).eats == .abort)
        #expect(try !ArmSMMUv3Rig.master(a).atsEnabled)
        // Back on a paging domain: ATC emptied, ATS on again.
        ep.clear()
        try rig.core.replace(g, with: try rig.core.allocDomain(for: a))
        #expect(ep.log == ["atc-inv", "ats-on"])
    }

    @Test("identity RID with PASIDs in use keeps the CD-table STE with EATS; the last PASID's removal turns ATS off")
    func identityWithPASIDs() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, ep) = try rig.addEndpoint("a", dev: 1, pasids: 256, ats: true)
        let g = try #require(a.group)
        try rig.core.claimDMAOwner(g)
        try rig.core.replace(g, with: try #require(rig.driver.identityDomain))
        #expect(try !ArmSMMUv3Rig.master(a).atsEnabled)
        let pd = try rig.core.allocDomain(for: a, flags: .pasid)
        ep.clear()
        try rig.core.attachPASID(pd, to: a, pasid: PASID(truncating: 3))
        #expect(ep.log == ["atc-inv", "ats-on"])
        let ste = try ArmSMMUv3Rig.ste(a)
        #expect(ste.s1DSS == .bypass && ste.eats == .translate)
        ep.clear()
        try rig.core.detachPASID(pd, from: a, pasid: PASID(truncating: 3))
        #expect(try ArmSMMUv3Rig.ste(a).config == .bypass)
        #expect(ep.log == ["atc-inv", "ats-off", "atc-inv"], "SSID 3's entries, then ATS off before the bypass STE, then the whole ATC")
    }

    @Test("fail_nth over a PASID attach with ATS: each failure leaves frames, the domain's ATS masters and the device's ATS as they were")
    func attachFailures() throws {
        let rig = try ArmSMMUv3Rig(preferred: .s2)
        let (a, ep) = try rig.addEndpoint("a", dev: 1, pasids: 1 << 20, ats: true)
        let g = try #require(a.group)
        try rig.core.claimDMAOwner(g)
        try rig.core.replace(g, with: try #require(rig.driver.identityDomain))
        rig.driver.preferredStage = nil
        let d = try rig.core.allocDomain(for: a, flags: .pasid)
        let domain = try #require(d as? ArmSMMUDomain)
        var n = 1, failures = 0
        while n < 50 {
            let frames = rig.platform.frames.inUse
            ep.clear()
            rig.platform.faults.reset()
            rig.platform.faults.mode = .failNth(n)
            let ok = (try? rig.core.attachPASID(d, to: a, pasid: PASID(truncating: 3000))) != nil
            rig.platform.faults.mode = .off
            if ok { break }
            failures += 1
            #expect(rig.platform.frames.inUse == frames, "fail_nth \(n)")
            #expect(domain.masterDomains.isEmpty && domain.atsMasters == 0, "fail_nth \(n)")
            #expect(try !ArmSMMUv3Rig.master(a).atsEnabled && !ArmSMMUv3Rig.master(a).deviceATSEnabled, "fail_nth \(n)")
            #expect(!ep.log.contains("ats-on"), "fail_nth \(n)")
            n += 1
        }
        #expect(failures == 2, "the CD table and its leaf")
        #expect(domain.atsMasters == 1 && ep.log.contains("ats-on"))
    }
}
