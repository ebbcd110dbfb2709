import Testing
import Platform
import Formats
import Hardware
@testable import Kernel

/// SMMUv3 SVA (Linux arm-smmu-v3-sva.c): CDs sharing the process's VMSAv8-64 table under an
/// ASID of the domain, faults resolved by demand paging, the mmu notifier's TLBI by ASID and
/// ATC_INV by SSID, mm release, unbind.
@Suite("SMMUv3 driver: SVA")
struct ArmSMMUv3SVATests {
    static func translate(_ rig: ArmSMMUv3Rig, _ d: Device, ssid: UInt32, _ va: UInt64,
                          _ access: DMAAccess = .read) -> SMMUv3TranslationResult {
        rig.unit.translate(streamID: rig.sid(d), substreamID: ssid, address: va, access: access)
    }

    static func physical(_ rig: ArmSMMUv3Rig, _ d: Device, ssid: UInt32, _ va: UInt64, _ access: DMAAccess = .read) -> UInt64? {
        if case .translated(let pa, _, _) = translate(rig, d, ssid: ssid, va, access) { return pa }
        return nil
    }

    @Test("a bind gives the process a VMSAv8-64 table; the PASID's CD is arm_smmu_make_sva_cd over it with the domain's ASID; the device reaches the process's pages")
    func bindCD() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, _) = try rig.addEndpoint("a", dev: 1, pasids: 256, canStall: true)
        let p = try rig.core.createProcess()
        let va = try p.mmap(length: 0x4000, permissions: [.read, .write])
        #expect(p.fault(at: va + 0x1000, access: .write))
        let h = try rig.core.svaBind(a, to: p)
        let domain = try #require(h.domain as? ArmSMMUSVADomain)
        let root = try #require(p.armPageTable?.root)
        #expect(root != p.pageTableRoot, "an Arm-format table, not the x86-64 one")
        let cd = ContextDescriptor(words: try ArmSMMUv3Rig.master(a).cd(h.pasid.rawValue))
        #expect(cd.valid && cd.ttb0 == root && cd.asid == domain.asid && cd.t0sz == 16 && cd.epd1 && !cd.epd0)
        #expect(cd.stall, "S for a stalling master")
        #expect(domain.asid != 0 && rig.driver.asids.isInUse(domain.asid))
        let frame = try #require(p.residentPages[va + 0x1000])
        #expect(Self.physical(rig, a, ssid: h.pasid.rawValue, va + 0x1234, .write) == frame + 0x234)
        // Pages faulted in after the bind land in both tables.
        #expect(p.fault(at: va + 0x3000, access: .read))
        #expect(Self.physical(rig, a, ssid: h.pasid.rawValue, va + 0x3000) == p.residentPages[va + 0x3000])
    }

    @Test("a page request on the SVA PASID is resolved by demand paging and answered Success; the device then translates")
    func priDemandPaging() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, ep) = try rig.addEndpoint("a", dev: 1, pasids: 256, ats: true, pri: true)
        let p = try rig.core.createProcess()
        let va = try p.mmap(length: 0x2000, permissions: [.read, .write])
        let h = try rig.core.svaBind(a, to: p)
        let ssid = h.pasid.rawValue
        guard case .terminated = Self.translate(rig, a, ssid: ssid, va, .write) else { Issue.record("translated"); return }
        rig.unit.pageRequest(PRIQEntry(sid: rig.sid(a), ssid: ssid, read: true, write: true, last: true, groupIndex: 4, address: va))
        rig.settle()
        #expect(ep.responses == [FakeSMMUEndpoint.PRIResponse(ssid: ssid, groupIndex: 4, response: .success)])
        #expect(Self.physical(rig, a, ssid: ssid, va, .write) == p.residentPages[va])
        // Outside any VMA: Invalid Request.
        rig.unit.pageRequest(PRIQEntry(sid: rig.sid(a), ssid: ssid, read: true, write: false, last: true, groupIndex: 5, address: 0x1000))
        rig.settle()
        #expect(ep.responses.last == FakeSMMUEndpoint.PRIResponse(ssid: ssid, groupIndex: 5, response: .invalidRequest))
    }

    @Test("a stalled SVA access is resolved by demand paging and resumed: the retried access reaches the new page")
    func stallDemandPaging() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, _) = try rig.addEndpoint("a", dev: 1, pasids: 256, canStall: true)
        let p = try rig.core.createProcess()
        let va = try p.mmap(length: 0x2000, permissions: [.read, .write])
        let h = try rig.core.svaBind(a, to: p)
        var resolved: [SMMUv3TranslationResult] = []
        rig.unit.onStallResolved = { _, _, r in resolved.append(r) }
        guard case .stalled = Self.translate(rig, a, ssid: h.pasid.rawValue, va + 0x1008, .write) else { Issue.record("no stall"); return }
        rig.settle()
        let frame = try #require(p.residentPages[va + 0x1000])
        guard case .translated(let pa, _, _)? = resolved.first else { Issue.record("not resumed: \(resolved)"); return }
        #expect(pa == frame + 8)
    }

    @Test("munmap: TLBI_NH_VA by the domain's ASID, then ATC_INV with the PASID's SSID to the ATS device, before the frames are freed; past 512 pages the whole ASID",
          arguments: [UInt64(2), 600])
    func munmapInvalidates(pages: UInt64) throws {
        let rig = try ArmSMMUv3Rig()
        let (a, ep) = try rig.addEndpoint("a", dev: 1, pasids: 256, ats: true, pri: true)
        let p = try rig.core.createProcess()
        let va = try p.mmap(length: pages << 12, permissions: [.read, .write])
        #expect(p.fault(at: va, access: .read) && p.fault(at: va + ((pages - 1) << 12), access: .read))
        let h = try rig.core.svaBind(a, to: p)
        let ssid = h.pasid.rawValue
        #expect(Self.physical(rig, a, ssid: ssid, va) != nil, "now in the TLB")
        ep.clear()
        var freedBeforeInvalidation = false
        let frame = try #require(p.residentPages[va])
        ep.onInvalidation = { _ in freedBeforeInvalidation = !rig.platform.frames.isAllocated(frame) }
        let va0 = rig.commands(.tlbiNHVA), asid0 = rig.commands(.tlbiNHASID)
        try p.munmap(address: va, length: pages << 12)
        let inv = try #require(ep.invalidations.first)
        #expect(ep.invalidations.count == 1 && inv.ssid == ssid)
        if pages > 512 {
            #expect(rig.commands(.tlbiNHASID) == asid0 + 1 && inv.size == 52)
        } else {
            #expect(rig.commands(.tlbiNHVA) > va0 && inv.covers(va, pages << 12) && inv.size < 52)
        }
        #expect(!freedBeforeInvalidation)
        guard case .terminated = Self.translate(rig, a, ssid: ssid, va) else { Issue.record("still translated"); return }
    }

    @Test("mm release: each CD stays valid but faults quietly (EPD0, R and S clear), then TLBI by ASID and the whole ATC of the SSID")
    func mmRelease() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, ep) = try rig.addEndpoint("a", dev: 1, pasids: 256, ats: true, canStall: true)
        let p = try rig.core.createProcess()
        let va = try p.mmap(length: 0x1000, permissions: [.read, .write])
        #expect(p.fault(at: va, access: .read))
        let h = try rig.core.svaBind(a, to: p)
        let ssid = h.pasid.rawValue
        #expect(Self.physical(rig, a, ssid: ssid, va) != nil)
        ep.clear()
        let asid0 = rig.commands(.tlbiNHASID)
        p.releaseAddressSpace()
        let cd = ContextDescriptor(words: try ArmSMMUv3Rig.master(a).cd(ssid))
        #expect(cd.valid && cd.epd0 && !cd.record && !cd.stall)
        #expect(rig.commands(.tlbiNHASID) == asid0 + 1)
        #expect(ep.invalidations.map(\.ssid) == [ssid] && ep.invalidations.first?.size == 52)
        let events = rig.unit.counters.eventsRecorded
        guard case .terminated = Self.translate(rig, a, ssid: ssid, va) else { Issue.record("still translated or stalled"); return }
        #expect(rig.unit.counters.eventsRecorded == events, "quietly: R is clear")
        try rig.core.svaUnbind(h)
    }

    @Test("unbind clears the CD and frees the ASID after its TLBI; after exit every frame is back")
    func unbindAndExit() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, _) = try rig.addEndpoint("a", dev: 1, pasids: 256, ats: true)
        let frames = rig.platform.frames.inUse
        let p = try rig.core.createProcess()
        let va = try p.mmap(length: 0x3000, permissions: [.read, .write])
        #expect(p.fault(at: va, access: .write))
        let h = try rig.core.svaBind(a, to: p)
        let domain = try #require(h.domain as? ArmSMMUSVADomain)
        try rig.core.svaUnbind(h)
        #expect(try !ArmSMMUv3Rig.master(a).cdValid(h.pasid.rawValue))
        #expect(!rig.driver.asids.isInUse(domain.asid) && rig.driver.asids.quarantined.isEmpty)
        try p.exit()
        #expect(rig.platform.frames.inUse == frames)
    }

    @Test("fail_nth over svaBind: each failure leaves no ASID, no CD, the STE as it was; after exit and release every frame is back")
    func bindFailures() throws {
        let rig = try ArmSMMUv3Rig(preferred: .s2)
        let (a, _) = try rig.addEndpoint("a", dev: 1, pasids: 1 << 20, ats: true)
        let g = try #require(a.group)
        try rig.core.claimDMAOwner(g)
        try rig.core.replace(g, with: try #require(rig.driver.identityDomain))
        // The group's default domain goes with the device at release.
        let defaultTables = try #require(g.defaultDomain as? ArmSMMUS2Domain).pageTable.tablePages
        let frames = rig.platform.frames.inUse - defaultTables
        let p = try rig.core.createProcess()
        _ = try p.mmap(length: 0x1000, permissions: [.read])
        let asids = rig.driver.asids.allocated
        var n = 1, failures = 0
        var handle: SVAHandle?
        while n < 60 {
            let ste = try ArmSMMUv3Rig.master(a).ste
            rig.platform.faults.reset()
            rig.platform.faults.mode = .failNth(n)
            handle = try? rig.core.svaBind(a, to: p)
            rig.platform.faults.mode = .off
            if handle != nil { break }
            failures += 1
            #expect(rig.driver.asids.allocated == asids, "fail_nth \(n)")
            #expect(try ArmSMMUv3Rig.master(a).ste == ste && ArmSMMUv3Rig.master(a).pasidsInUse == 0, "fail_nth \(n)")
            #expect(p.svaDomains.isEmpty, "fail_nth \(n)")
            n += 1
        }
        #expect(failures >= 2)
        let h = try #require(handle)
        try rig.core.svaUnbind(h)
        try p.exit()
        try rig.core.release(a)
        #expect(rig.platform.frames.inUse == frames, "the CD table the bind made goes at release")
    }
}
