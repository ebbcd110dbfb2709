import Testing
import Platform
import Formats
import Hardware
@testable import Kernel

/// SMMUv3 paging domains through the core: translation by the unit, TLB maintenance, replace
/// paths, ASID/VMID lifetimes, events as core faults, allocation failures.
@Suite("SMMUv3 driver: domains, TLB maintenance, events")
struct ArmSMMUv3DomainTests {
    @Test("map through the core translates on the unit; unmap + iotlbSync makes the unit fault", arguments: ArmSMMUStage.allCases)
    func mapUnmap(stage: ArmSMMUStage) throws {
        let rig = try ArmSMMUv3Rig(preferred: stage)
        let a = try rig.add("a", dev: 1)
        let d = try rig.ownedDomain(for: a)
        #expect(rig.driver.context(of: d)?.stage == stage)
        let pa = try rig.buffer(), pa2 = try rig.buffer()
        try rig.core.map(d, iova: 0x10000, physical: pa, size: 4096, permissions: .readWrite)
        try rig.core.map(d, iova: 0x11000, physical: pa2, size: 4096, permissions: .read)
        #expect(rig.physical(a, 0x10123, .write) == pa + 0x123)
        #expect(rig.physical(a, 0x11000) == pa2)
        #expect(rig.fault(a, 0x11000, .write) == .fPermission)
        // The translation is in the TLB now; the unmap's TLBI must drop it.
        let hits = rig.unit.counters.tlbHits
        #expect(rig.physical(a, 0x10000) == pa)
        #expect(rig.unit.counters.tlbHits == hits + 1)
        let tlbi = stage == .s1 ? rig.commands(.tlbiNHVA) : rig.commands(.tlbiS2IPA)
        #expect(try rig.core.unmap(d, iova: 0x10000, size: 4096) == 4096)
        #expect((stage == .s1 ? rig.commands(.tlbiNHVA) : rig.commands(.tlbiS2IPA)) == tlbi + 1)
        #expect(rig.fault(a, 0x10000) == .fTranslation)
        #expect(rig.physical(a, 0x11000) == pa2)
    }

    @Test("range invalidation: a 2 MiB + 12 KiB unmap is few RIL commands; without RIL past 512 pages the whole ASID")
    func rangeInvalidation() throws {
        for ril in [true, false] {
            var f = SMMUv3Features()
            f.rangeInvalidation = ril
            let rig = try ArmSMMUv3Rig(features: f)
            let a = try rig.add("a", dev: 1)
            let d = try rig.ownedDomain(for: a)
            let size: UInt64 = (2 << 20) + 3 * 4096
            let base = try rig.platform.frames.allocateContiguous(Int(size / 4096), .dmaBuffer)
            for p in stride(from: UInt64(0), to: size, by: 4096) {
                try rig.core.map(d, iova: 0x20_0000 + p, physical: base + p, size: 4096, permissions: .readWrite)
                #expect(rig.physical(a, 0x20_0000 + p) == base + p)
            }
            let va = rig.commands(.tlbiNHVA), asid = rig.commands(.tlbiNHASID)
            #expect(try rig.core.unmap(d, iova: 0x20_0000, size: size) == size)
            if ril {
                #expect(rig.commands(.tlbiNHVA) - va <= 3 && rig.commands(.tlbiNHASID) == asid)
            } else {
                #expect(rig.commands(.tlbiNHVA) == va && rig.commands(.tlbiNHASID) == asid + 1)
            }
            for p in stride(from: UInt64(0), to: size, by: 4096) { #expect(rig.fault(a, 0x20_0000 + p) == .fTranslation) }
        }
    }

    @Test("a cleared PTE without its TLBI keeps translating on the unit (stale), and the TLBI ends it")
    func staleWithoutTLBI() throws {
        let rig = try ArmSMMUv3Rig()
        let a = try rig.add("a", dev: 1)
        let d = try #require(try rig.ownedDomain(for: a) as? ArmSMMUS1Domain)
        let pa = try rig.buffer()
        try rig.core.map(d, iova: 0x5000, physical: pa, size: 4096, permissions: .readWrite)
        #expect(rig.physical(a, 0x5000) == pa)
        var gather = UnmapGather()
        #expect(d.unmapPages(iova: 0x5000, pageSize: 4096, count: 1, gather: &gather) == 4096)
        #expect(d.iovaToPhys(0x5000) == nil)
        #expect(rig.physical(a, 0x5000) == pa, "the unit's TLB still holds the translation")
        try d.iotlbSync(&gather)
        #expect(rig.fault(a, 0x5000) == .fTranslation)
    }

    @Test("replace: S1 → S2 and S2 → S1 go through an aborting STE; abort/bypass ↔ S1 are one word; S1 → S1 changes only CD 0")
    func replacePaths() throws {
        let rig = try ArmSMMUv3Rig()
        let a = try rig.add("a", dev: 1)
        let g = try #require(a.group)
        try rig.core.claimDMAOwner(g)
        let s1a = try rig.core.allocDomain(for: a), s1b = try rig.core.allocDomain(for: a)
        rig.driver.preferredStage = .s2
        let s2 = try rig.core.allocDomain(for: a)
        let pa = try rig.buffer(), pb = try rig.buffer(), pc = try rig.buffer()
        try rig.core.map(s1a, iova: 0x1000, physical: pa, size: 4096, permissions: .readWrite)
        try rig.core.map(s1b, iova: 0x1000, physical: pb, size: 4096, permissions: .readWrite)
        try rig.core.map(s2, iova: 0x1000, physical: pc, size: 4096, permissions: .readWrite)
        // The owned group is in the blocked domain (abort STE): abort → S1 is hitless.
        try rig.core.attach(s1a, to: g)
        #expect(rig.core.lastUpdatePath == .singleWord)
        #expect(rig.physical(a, 0x1000) == pa)
        // S1 → S1: the STE stays (no CFGI_STE), CD 0 changes ASID and TTB0: two words, so
        // the CD goes through V = 0 as Linux's writer does.
        let cfgiSTE = rig.commands(.cfgiSTE), cfgiCD = rig.commands(.cfgiCD)
        try rig.core.replace(g, with: s1b)
        #expect(rig.core.lastUpdatePath == .teardownSetup)
        #expect(rig.commands(.cfgiSTE) == cfgiSTE && rig.commands(.cfgiCD) == cfgiCD + 3)
        #expect(rig.physical(a, 0x1000) == pb)
        // S1 → S2 and back: Config and the stage words change together.
        try rig.core.replace(g, with: s2)
        #expect(rig.core.lastUpdatePath == .teardownSetup)
        #expect(rig.physical(a, 0x1000) == pc)
        try rig.core.replace(g, with: s1a)
        #expect(rig.core.lastUpdatePath == .teardownSetup)
        #expect(rig.physical(a, 0x1000) == pa)
        // S1 → identity (bypass) and back are one word each.
        let identity = try #require(rig.driver.identityDomain)
        try rig.core.replace(g, with: identity)
        #expect(rig.core.lastUpdatePath == .singleWord)
        #expect(rig.physical(a, 0x1000) == 0x1000)
        try rig.core.replace(g, with: s1b)
        #expect(rig.core.lastUpdatePath == .singleWord)
        #expect(rig.physical(a, 0x1000) == pb)
        // Only the ASID of CD 0 changing is one word (Linux's s1_change_asid case).
        let cd = ContextDescriptor.s1(asid: 7, ttb: 0x10_0000).words, cd2 = ContextDescriptor.s1(asid: 8, ttb: 0x10_0000).words
        #expect(SMMUEntryWriter.plan(current: cd, target: cd2, kind: .cd).path == .singleWord)
    }

    @Test("an ASID is reused only after the TLBI by it completed; a failed TLBI quarantines it")
    func asidLifetime() throws {
        let rig = try ArmSMMUv3Rig()
        let a = try rig.add("a", dev: 1)
        let g = try #require(a.group)
        try rig.core.claimDMAOwner(g)
        let d1 = try rig.core.allocDomain(for: a)
        let asid = try #require(rig.driver.context(of: d1)?.id)
        try rig.core.attach(d1, to: g)
        let pa = try rig.buffer()
        try rig.core.map(d1, iova: 0x7000, physical: pa, size: 4096, permissions: .readWrite)
        #expect(rig.physical(a, 0x7000) == pa)
        try rig.core.detach(d1, from: g)
        // Unmapping nothing and freeing: the PTE is gone with the tables, but the TLB still
        // holds (ASID, 0x7000) until the free's TLBI_NH_ASID.
        let byASID = rig.commands(.tlbiNHASID)
        try rig.core.freeDomain(d1)
        #expect(rig.commands(.tlbiNHASID) == byASID + 1)
        #expect(!rig.driver.asids.isInUse(asid))
        let d2 = try rig.core.allocDomain(for: a)
        #expect(rig.driver.context(of: d2)?.id == asid, "lowest free: the ASID is reused at once")
        try rig.core.attach(d2, to: g)
        #expect(rig.fault(a, 0x7000) == .fTranslation, "no stale translation under the reused ASID")
        // A TLBI that does not complete keeps the ASID out of use for good.
        try rig.core.detach(d2, from: g)
        rig.smmu.cmdq.timeoutNs = 10
        try rig.core.freeDomain(d2)
        rig.smmu.cmdq.timeoutNs = 1_000_000
        #expect(rig.driver.asids.quarantined == [asid])
        let d3 = try rig.core.allocDomain(for: a)
        #expect(rig.driver.context(of: d3)?.id != asid)
    }

    @Test("VMIDs come from 1 and are released after TLBI_S12_VMALL")
    func vmidLifetime() throws {
        let rig = try ArmSMMUv3Rig(preferred: .s2)
        let a = try rig.add("a", dev: 1)
        let dflt = try #require(a.group?.domain)
        #expect(rig.driver.context(of: dflt)! == (.s2, 1))
        let d = try rig.core.allocDomain(for: a, flags: .nestParent)
        #expect(rig.driver.context(of: d)! == (.s2, 2))
        let vmall = rig.commands(.tlbiS12VMAll)
        try rig.core.freeDomain(d)
        #expect(rig.commands(.tlbiS12VMAll) == vmall + 1 && !rig.smmu.vmids.isInUse(2))
        // Dirty tracking is stage 1 (Linux 6.17), whatever the preferred stage.
        let dt = try rig.core.allocDomain(for: a, flags: .dirtyTracking)
        #expect(rig.driver.context(of: dt)?.stage == .s1)
    }

    @Test("events of unmapped accesses arrive as core faults of the right device")
    func eventsAsFaults() throws {
        let rig = try ArmSMMUv3Rig()
        let a = try rig.add("a", dev: 1), b = try rig.add("b", dev: 2)
        let da = try rig.ownedDomain(for: a)
        _ = try rig.ownedDomain(for: b)
        try rig.core.map(da, iova: 0x1000, physical: try rig.buffer(), size: 4096, permissions: .readWrite)
        #expect(rig.fault(b, 0x1000, .write) == .fTranslation)
        #expect(rig.fault(b, 0x3000) == .fTranslation)
        #expect(rig.fault(a, 0x9000) == .fTranslation)
        rig.settle()
        #expect(a.faults.count == 1 && b.faults.count == 2)
        let f = try #require(b.faults.first)
        #expect(f.event?.kind == .fTranslation && f.event?.sid == rig.sid(b) && f.event?.inputAddress == 0x1000)
        #expect(f.record.source == b.requesterID && !f.record.isRead && f.record.address == 0x1000)
        #expect(a.faults.first?.event?.inputAddress == 0x9000)
        #expect(rig.smmu.eventsHandled == 3 && rig.core.unclaimedFaults == 0)
    }

    @Test("event queue overflow is acknowledged and handling continues")
    func eventOverflow() throws {
        let rig = try ArmSMMUv3Rig()
        let a = try rig.add("a", dev: 1)
        _ = try rig.ownedDomain(for: a)
        // 128 slots (the wrap bit tells full from empty): 200 faults overflow the queue
        // before the handler runs.
        for i in 0..<200 { _ = rig.fault(a, UInt64(0x10_0000 + i * 4096)) }
        rig.settle()
        #expect(rig.smmu.eventOverflows == 1)
        #expect(a.faults.count == 128)
        _ = rig.fault(a, 0x1000)
        rig.settle()
        #expect(a.faults.count == 129)
    }

    @Test("fail_nth over domain allocation (domain, page table, ASID/VMID): each failure leaves nothing behind", arguments: ArmSMMUStage.allCases)
    func allocationFailures(stage: ArmSMMUStage) throws {
        let rig = try ArmSMMUv3Rig(preferred: stage)
        let a = try rig.add("a", dev: 1)
        var n = 1
        var failures = 0
        while true {
            let frames = rig.platform.frames.inUse
            let ids = stage == .s1 ? rig.driver.asids.allocated : rig.smmu.vmids.allocated
            rig.platform.faults.reset()
            rig.platform.faults.mode = .failNth(n)
            let d = try? rig.core.allocDomain(for: a)
            rig.platform.faults.mode = .off
            if let d {
                try rig.core.freeDomain(d)
                #expect(rig.platform.frames.inUse == frames)
                break
            }
            failures += 1
            #expect(rig.platform.frames.inUse == frames, "fail_nth \(n)")
            #expect((stage == .s1 ? rig.driver.asids.allocated : rig.smmu.vmids.allocated) == ids, "fail_nth \(n)")
            n += 1
        }
        #expect(failures == 3, "domain allocation, the root table page, the ASID/VMID")
    }
}
