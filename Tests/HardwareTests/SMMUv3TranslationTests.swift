import Testing
import Platform
import Formats
@testable import Hardware

@Suite("SMMUv3 translation and caches")
struct SMMUv3TranslationTests {
    let urw: PagePermissions = [.read, .write, .user]

    @Test("stage 1 through a linear stream table and a single CD translates pages and blocks")
    func stage1() throws {
        let rig = try SMMUv3Rig()
        let t = try rig.bench.stage1Table()
        try t.map(iova: 0x1234_5000, physical: 0x0200_0000, size: 0x2000, permissions: urw)
        try t.map(iova: 0x4000_0000, physical: 0x0060_0000, size: 0x20_0000, permissions: [.read, .user])
        try rig.attachStage1(t)
        #expect(rig.physical(0x1234_5678) == 0x0200_0678)
        #expect(rig.physical(0x1234_6FF8, .write) == 0x0200_1FF8)
        #expect(rig.physical(0x4001_2345) == 0x0061_2345)
        if case .translated(_, let shift, _) = rig.translate(0x4001_2345) { #expect(shift == 21) }
        #expect(rig.fault(0x4001_2345, .write) == .fPermission)
        #expect(rig.fault(0x9000_0000) == .fTranslation)
        #expect(rig.unit.counters.tlbHits == 2)
    }

    @Test("stage 2 only, with a 3-level table, and 2-level stream tables")
    func stage2() throws {
        let rig = try SMMUv3Rig(twoLevel: true)
        let t = try rig.bench.stage2Table(levels: 3)
        try t.map(iova: 0x10_0000, physical: 0x30_0000, size: 0x1000, permissions: .read)
        try rig.attachStage2(t, sid: 0x1234)
        #expect(rig.physical(0x10_0010, sid: 0x1234) == 0x30_0010)
        #expect(rig.fault(0x10_0010, .write, sid: 0x1234) == .fPermission)
        #expect(rig.fault(1 << 39, sid: 0x1234) == .fTranslation)          // beyond S2T0SZ
        #expect(rig.fault(0x10_0010, sid: 0x1300) == .cBadStreamID)        // L1STD with Span 0
        #expect(rig.fault(0x10_0010, sid: 0x1235) == .cBadSTE)             // L2 array present, V == 0
        let ev = try rig.events()
        #expect(ev.map(\.kind) == [.fPermission, .fTranslation, .cBadStreamID, .cBadSTE])
        #expect(ev.first?.s2 == true && ev.first?.ipa == 0x10_0000 && ev.first?.read == false)
    }

    @Test("nested: CD and stage 1 tables are IPAs translated by stage 2; the output goes through stage 2 too")
    func nested() throws {
        let rig = try SMMUv3Rig()
        let s2 = try rig.bench.stage2Table()
        let s1 = try rig.bench.stage1Table()
        // Identity-map the first 64 MiB of IPA space at stage 2 (tables and CDs live there),
        // then 0x8000_0000 (IPA) → 0x0300_0000.
        try s2.map(iova: 0, physical: 0, size: 64 << 20, permissions: .readWrite)
        try s2.map(iova: 0x8000_0000, physical: 0x0300_0000, size: 0x1000, permissions: .read)
        try s1.map(iova: 0x7000, physical: 0x8000_0000, size: 0x1000, permissions: urw)
        let cdt = try rig.bench.makeCDTable()
        try rig.bench.setCD(cdt, .s1(asid: 9, ttb: s1.root))
        let s2ste = StreamTableEntry.s2Domain(vmid: 4, translation: .granule4K(levels: 4, outputBits: 48), ttb: s2.root)
        let cdSTE = rig.bench.stage1STE(cdt)
        try rig.bench.setSTE(rig.sid, .nested(stage2: s2ste, vste0: cdSTE.data[0], vste1: cdSTE.data[1]))
        #expect(rig.physical(0x7123) == 0x0300_0123)
        // Stage 1 allows write, stage 2 does not: a stage 2 permission fault.
        #expect(rig.fault(0x7123, .write) == .fPermission)
        #expect(try rig.events().last?.s2 == true)
    }

    @Test("2-level CD tables: SubstreamIDs select CDs; out-of-range and invalid L1CD give C_BAD_SUBSTREAMID")
    func substreams() throws {
        let rig = try SMMUv3Rig()
        let a = try rig.bench.stage1Table(), b = try rig.bench.stage1Table()
        try a.map(iova: 0x1000, physical: 0xA000, size: 0x1000, permissions: urw)
        try b.map(iova: 0x1000, physical: 0xB000, size: 0x1000, permissions: urw)
        let cdt = try rig.bench.makeCDTable(ssidBits: 10, twoLevel: true)
        try rig.bench.setCD(cdt, ssid: 1, .s1(asid: 1, ttb: a.root))
        try rig.bench.setCD(cdt, ssid: 700, .s1(asid: 2, ttb: b.root))
        try rig.bench.setSTE(rig.sid, rig.bench.stage1STE(cdt, s1DSS: .terminate))
        #expect(rig.physical(0x1000, ssid: 1) == 0xA000)
        #expect(rig.physical(0x1000, ssid: 700) == 0xB000)
        #expect(rig.fault(0x1000, ssid: 1024) == .cBadSubstreamID)
        #expect(rig.fault(0x1000, ssid: 200) == .cBadSubstreamID)       // L1CD 3 not valid
        #expect(rig.fault(0x1000, ssid: 2) == .cBadCD)                  // L2 present, CD V == 0
        #expect(rig.fault(0x1000) == .fStreamDisabled)                  // no SSID, S1DSS terminate
        let ev = try rig.events()
        #expect(ev.map(\.kind) == [.cBadSubstreamID, .cBadSubstreamID, .cBadCD, .fStreamDisabled])
        #expect(ev[0].ssid == UInt32(1024))
    }

    @Test("a changed page table keeps translating the old way until TLBI_NH_VA; then the new way")
    func tlbStaleUntilTLBI() throws {
        let rig = try SMMUv3Rig()
        let t = try rig.bench.stage1Table()
        try t.map(iova: 0x5000, physical: 0xA000, size: 0x1000, permissions: urw)
        try rig.attachStage1(t, asid: 7)
        #expect(rig.physical(0x5000) == 0xA000)
        var gather = UnmapGather()
        _ = try t.unmap(iova: 0x5000, size: 0x1000, gather: &gather, freeTables: false)
        try t.map(iova: 0x5000, physical: 0xC000, size: 0x1000, permissions: urw)
        #expect(rig.physical(0x5000) == 0xA000)                           // stale, as hardware
        try rig.bench.sync([.tlbiNHVA(vmid: 0, asid: 8, TLBIAddress(address: 0x5000, leaf: true))])
        #expect(rig.physical(0x5000) == 0xA000)                           // other ASID: no effect
        try rig.bench.sync([.tlbiNHVA(vmid: 0, asid: 7, TLBIAddress(address: 0x6000, leaf: true))])
        #expect(rig.physical(0x5000) == 0xA000)                           // other page: no effect
        try rig.bench.sync([.tlbiNHVA(vmid: 0, asid: 7, TLBIAddress(address: 0x5000, leaf: true))])
        #expect(rig.physical(0x5000) == 0xC000)
        // A range invalidation covering it works too.
        _ = try t.unmap(iova: 0x5000, size: 0x1000, gather: &gather, freeTables: false)
        try t.map(iova: 0x5000, physical: 0xD000, size: 0x1000, permissions: urw)
        try rig.bench.sync([.tlbiNHVA(vmid: 0, asid: 7, TLBIAddress(address: 0x4000, leaf: true, granule: .size4K, num: 3))])
        #expect(rig.physical(0x5000) == 0xD000)
    }

    @Test("STE and CD stay cached until CFGI_STE / CFGI_CD; TLBI_S2_IPA and S12_VMALL drop stage 2 entries")
    func configCacheStaleUntilCFGI() throws {
        let rig = try SMMUv3Rig()
        let t = try rig.bench.stage1Table(), u = try rig.bench.stage1Table()
        try t.map(iova: 0x1000, physical: 0xA000, size: 0x1000, permissions: urw)
        try u.map(iova: 0x1000, physical: 0xB000, size: 0x1000, permissions: urw)
        let cdt = try rig.attachStage1(t, asid: 1)
        #expect(rig.physical(0x1000) == 0xA000)
        // New CD (new ASID and table) without CFGI_CD: the old CD (and its TLB entry) are used.
        try rig.bench.setCD(cdt, .s1(asid: 2, ttb: u.root))
        #expect(rig.physical(0x1000) == 0xA000)
        try rig.bench.sync([.cfgiCD(sid: rig.sid, ssid: 0, leaf: true)])
        #expect(rig.physical(0x1000) == 0xB000)
        // STE to abort without CFGI_STE: still translating.
        try rig.bench.setSTE(rig.sid, .abort())
        #expect(rig.physical(0x1000) == 0xB000)
        try rig.bench.sync([.cfgiSTE(sid: rig.sid + 1, leaf: true)])
        #expect(rig.physical(0x1000) == 0xB000)
        try rig.bench.sync([.cfgiSTE(sid: rig.sid, leaf: true)])
        #expect(rig.translate(0x1000) == .terminated(nil))
        // Stage 2 entries.
        let s2 = try rig.bench.stage2Table()
        try s2.map(iova: 0x2000, physical: 0xE000, size: 0x1000, permissions: .readWrite)
        try rig.attachStage2(s2, vmid: 6)
        try rig.bench.sync([.cfgiAll])
        #expect(rig.physical(0x2000) == 0xE000)
        var gather = UnmapGather()
        _ = try s2.unmap(iova: 0x2000, size: 0x1000, gather: &gather, freeTables: false)
        #expect(rig.physical(0x2000) == 0xE000)
        try rig.bench.sync([.tlbiNHAll(vmid: 6)])                        // stage 1 only: no effect
        #expect(rig.physical(0x2000) == 0xE000)
        try rig.bench.sync([.tlbiS2IPA(vmid: 6, TLBIAddress(address: 0x2000, leaf: true))])
        #expect(rig.fault(0x2000) == .fTranslation)
    }

    @Test("HTTU: HA sets AF, HD turns a writable-clean leaf dirty on write; without HA, AF == 0 is F_ACCESS")
    func httu() throws {
        let rig = try SMMUv3Rig()
        let t = try rig.bench.stage1Table()
        try t.map(iova: 0x3000, physical: 0x9000, size: 0x1000, permissions: urw)
        try t.map(iova: 0x4000, physical: 0xA000, size: 0x1000, permissions: urw)
        // Clear AF on 0x3000 and make 0x4000 writable-clean.
        func leafAddress(_ va: UInt64) throws -> UInt64 {
            var table = t.root
            for level in stride(from: 4, to: 1, by: -1) {
                let e = try rig.memory.load64(table + PageTableGeometry.index(va, level: level) * 8)
                table = e & ArmStage1Format.outputAddressMask
            }
            return table + PageTableGeometry.index(va, level: 1) * 8
        }
        let l3 = try leafAddress(0x3000), l4 = try leafAddress(0x4000)
        try rig.memory.store64(l3, try rig.memory.load64(l3) & ~ArmStage1Format.accessedBit)
        try rig.memory.store64(l4, ArmStage1Format.cleaned(try rig.memory.load64(l4)))
        let cdt = try rig.attachStage1(t, asid: 3)
        #expect(rig.fault(0x3000) == .fAccess)
        #expect(rig.fault(0x4000, .write) == .fPermission)
        try rig.bench.setCD(cdt, .s1(asid: 3, ttb: t.root, dirtyTracking: true))
        try rig.bench.sync([.cfgiCD(sid: rig.sid, ssid: 0, leaf: true), .tlbiNHASID(vmid: 0, asid: 3)])
        #expect(rig.physical(0x3000) == 0x9000)
        #expect(try rig.memory.load64(l3) & ArmStage1Format.accessedBit != 0)
        #expect(rig.physical(0x4000) == 0xA000)                          // read: stays clean
        #expect(!ArmStage1Format.isDirty(try rig.memory.load64(l4)))
        #expect(rig.physical(0x4000, .write) == 0xA000)                  // TLB hit, walks to dirty it
        #expect(ArmStage1Format.isDirty(try rig.memory.load64(l4)))
    }

    @Test("STE bypass passes addresses through; an abort STE terminates silently: no events")
    func bypassAndAbort() throws {
        let rig = try SMMUv3Rig()
        try rig.bench.setSTE(1, .bypass())
        try rig.bench.setSTE(2, .abort())
        #expect(rig.physical(0xDEAD_0000, sid: 1) == 0xDEAD_0000)
        #expect(rig.translate(0x1000, sid: 2) == .terminated(nil))
        #expect(try rig.events().isEmpty)
    }
}
