import Testing
import Platform
import Formats
import Hardware
@testable import Kernel

/// SMMUv3 stalls as IO page faults (Linux `stall_enabled` masters, `arm_smmu_handle_event`,
/// `arm_smmu_page_response` with CMD_RESUME; IHI 0070 §3.12.2).
@Suite("SMMUv3 driver: IO page faults from stalls")
struct ArmSMMUv3StallTests {
    static func translate(_ rig: ArmSMMUv3Rig, _ d: Device, ssid: UInt32? = nil, _ address: UInt64,
                          _ access: DMAAccess = .read) -> SMMUv3TranslationResult {
        rig.unit.translate(streamID: rig.sid(d), substreamID: ssid, address: address, access: access)
    }

    @Test("a stall-enabled master's CDs set S and its STE clears S1STALLD; other masters get S1STALLD; a terminate-only unit stalls nobody",
          arguments: [SMMUv3Features.StallModel.stallOrTerminate, .terminateOnly])
    func entries(model: SMMUv3Features.StallModel) throws {
        var f = SMMUv3Features()
        f.stallModel = model
        let rig = try ArmSMMUv3Rig(features: f)
        let (a, _) = try rig.addEndpoint("a", dev: 1, canStall: true)
        let (b, _) = try rig.addEndpoint("b", dev: 2, canStall: false)
        let stalls = model == .stallOrTerminate
        #expect(try ArmSMMUv3Rig.master(a).stallEnabled == stalls)
        #expect(a.reportsPageFaults == stalls && !b.reportsPageFaults)
        #expect(try ArmSMMUv3Rig.ste(a).s1StallDisable == false)
        #expect(try ArmSMMUv3Rig.ste(b).s1StallDisable == stalls, "S1STALLD only where the unit has stalls")
        #expect(try ContextDescriptor(words: ArmSMMUv3Rig.master(a).cd0).stall == stalls)
        #expect(try !ContextDescriptor(words: ArmSMMUv3Rig.master(b).cd0).stall)
    }

    @Test("a stalled fault reaches the handler as one LAST page fault carrying the STAG; Success resumes with retry and the access completes; otherwise it is aborted",
          arguments: [PageResponseCode.success, .invalidRequest, .responseFailure])
    func resume(code: PageResponseCode) throws {
        let rig = try ArmSMMUv3Rig()
        let (a, _) = try rig.addEndpoint("a", dev: 1, canStall: true)
        let h = RecordingIOPFHandler(core: rig.core)
        let d = try rig.faultingDomain(for: a, handler: h)
        var resolved: [(UInt32, UInt16, SMMUv3TranslationResult)] = []
        rig.unit.onStallResolved = { resolved.append(($0, $1, $2)) }
        guard case .stalled(let stag) = Self.translate(rig, a, 0x5000, .write) else {
            Issue.record("the fault did not stall")
            return
        }
        rig.settle()
        let g = try #require(h.groups.first)
        #expect(g.faults.count == 1 && g.last.isLast && g.last.groupIndex == stag && g.last.address == 0x5000)
        #expect(g.last.permissions == [.write] && g.pasid == nil)
        #expect(a.faultCount == 0, "a stall is a page fault, not a reported fault")
        let pa = try rig.buffer()
        try rig.core.map(d, iova: 0x5000, physical: pa, size: 4096, permissions: .readWrite)
        #expect(resolved.isEmpty)
        rig.core.respond(g, code)
        rig.settle()
        #expect(rig.commands(.resume) == 1)
        let r = try #require(resolved.first)
        #expect(r.0 == rig.sid(a) && r.1 == stag)
        if code == .success {
            guard case .translated(let got, _, _) = r.2 else { Issue.record("not retried: \(r.2)"); return }
            #expect(got == pa)
        } else {
            guard case .terminated = r.2 else { Issue.record("not aborted: \(r.2)"); return }
        }
        #expect(rig.unit.stalledTransactions.isEmpty)
    }

    @Test("a stall on a PASID carries it; the PASID domain's handler gets it")
    func pasidStall() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, _) = try rig.addEndpoint("a", dev: 1, pasids: 256, canStall: true)
        _ = try rig.faultingDomain(for: a, handler: RecordingIOPFHandler(core: rig.core, answer: .invalidRequest))
        let ph = RecordingIOPFHandler(core: rig.core, answer: .invalidRequest)
        let pd = try rig.core.allocDomain(for: a, flags: .pasid)
        try rig.core.setFaultHandler(ph, for: pd)
        try rig.core.attachPASID(pd, to: a, pasid: PASID(truncating: 12))
        #expect(try ContextDescriptor(words: ArmSMMUv3Rig.master(a).cd(12)).stall)
        guard case .stalled = Self.translate(rig, a, ssid: 12, 0x7000) else { Issue.record("no stall"); return }
        rig.settle()
        #expect(ph.groups.first?.pasid == PASID(truncating: 12))
        #expect(rig.unit.stalledTransactions.isEmpty, "answered Invalid Request: aborted")
    }

    @Test("a bogus STAG in a response changes nothing: the held transaction stays until its own answer")
    func bogusSTAG() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, _) = try rig.addEndpoint("a", dev: 1, canStall: true)
        let h = RecordingIOPFHandler(core: rig.core)
        _ = try rig.faultingDomain(for: a, handler: h)
        guard case .stalled(let stag) = Self.translate(rig, a, 0x9000) else { Issue.record("no stall"); return }
        rig.settle()
        rig.driver.pageResponse(a, to: PageFault(flags: .lastPage, pasid: .noPASID, groupIndex: stag &+ 77, permissions: .read, address: 0),
                                code: .success)
        rig.settle()
        #expect(rig.unit.stalledTransactions.count == 1)
        rig.core.respond(try #require(h.groups.first), .invalidRequest)
        rig.settle()
        #expect(rig.unit.stalledTransactions.isEmpty)
    }

    @Test("without stalls, faults stay reported faults; a master without a handler gets its stall aborted")
    func nonStall() throws {
        let rig = try ArmSMMUv3Rig()
        let (b, _) = try rig.addEndpoint("b", dev: 2)
        _ = try rig.faultingDomain(for: b, handler: RecordingIOPFHandler(core: rig.core))
        guard case .terminated = Self.translate(rig, b, 0x5000) else { Issue.record("stalled"); return }
        rig.settle()
        #expect(b.faultCount == 1 && rig.core.pageFaultsReported == 0)
        let (a, _) = try rig.addEndpoint("a", dev: 1, canStall: true)
        _ = try rig.ownedDomain(for: a)
        guard case .stalled = Self.translate(rig, a, 0x5000) else { Issue.record("no stall"); return }
        rig.settle()
        #expect(rig.unit.stalledTransactions.isEmpty && rig.commands(.resume) == 1)
    }

    /// Found by the smmuv3-tables fuzz target (fuzz/regressions/smmuv3-tables/
    /// stray-stall-answered-as-pri-resp): garbage clears a PRI master's S1STALLD and sets CD.S,
    /// so the unit stalls a transaction of a master the driver never enabled stalls for. Its
    /// answer must be CMD_RESUME (abort), not a CMD_PRI_RESP naming the STAG as a PRG index.
    @Test("a stall of a master without stalls enabled (garbage STE/CD) is aborted with CMD_RESUME, never answered by PRI_RESP")
    func strayStall() throws {
        let rig = try ArmSMMUv3Rig()
        let (b, _) = try rig.addEndpoint("b", dev: 2, ats: true, pri: true)
        let h = RecordingIOPFHandler(core: rig.core)
        _ = try rig.faultingDomain(for: b, handler: h)
        let m = try ArmSMMUv3Rig.master(b)
        #expect(!m.stallEnabled && m.priEnabled)
        let memory = rig.platform.memory
        let w1 = try memory.load64(m.steAddress + 8), cd = try memory.load64(m.cdTable)
        try memory.store64(m.steAddress + 8, w1 & ~(1 << 27))       // STE.S1STALLD = 0
        try memory.store64(m.cdTable, cd | 1 << 44)                 // CD.S = 1
        try rig.driver.flushAllCaches()
        guard case .stalled = Self.translate(rig, b, 0x5000) else { Issue.record("no stall"); return }
        rig.settle()
        #expect(rig.unit.stalledTransactions.isEmpty)
        #expect(rig.commands(.resume) == 1 && rig.commands(.priResp) == 0)
        #expect(rig.smmu.strayStallsTerminated == 1 && h.groups.isEmpty && rig.core.pageFaultsReported == 0)
    }

    @Test("release with stalls pending (answered or not yet seen by the handler) leaves no transaction held", arguments: [false, true])
    func releasePending(settleFirst: Bool) throws {
        let rig = try ArmSMMUv3Rig()
        let (a, _) = try rig.addEndpoint("a", dev: 1, canStall: true)
        _ = try rig.faultingDomain(for: a, handler: RecordingIOPFHandler(core: rig.core))
        guard case .stalled = Self.translate(rig, a, 0x5000) else { Issue.record("no stall"); return }
        guard case .stalled = Self.translate(rig, a, 0x6000) else { Issue.record("no stall"); return }
        if settleFirst { rig.settle() }
        try rig.core.release(a)
        rig.settle()
        #expect(rig.unit.stalledTransactions.isEmpty)
        #expect(rig.commands(.resume) == 2)
    }
}
