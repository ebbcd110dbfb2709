import Testing
import Platform
import Formats
@testable import Hardware

@Suite("SMMUv3 PRI queue and stall model")
struct SMMUv3PRIAndStallTests {
    let urw: PagePermissions = [.read, .write, .user]

    @Test("page requests are written to the PRI queue; CMD_PRI_RESP reaches the endpoint")
    func priQueueAndResponse() throws {
        let rig = try SMMUv3Rig()
        let ep = RecordingEndpoint(streamID: rig.sid, scheduler: rig.platform.scheduler)
        rig.unit.connect(ep)
        var interrupts = 0
        rig.unit.onPRIQueueInterrupt = { interrupts += 1 }
        rig.unit.pageRequest(PRIQEntry(sid: rig.sid, ssid: 4, read: true, write: false, last: false, groupIndex: 7, address: 0x1000))
        rig.unit.pageRequest(PRIQEntry(sid: rig.sid, ssid: 4, read: true, write: true, last: true, groupIndex: 7, address: 0x2000))
        rig.platform.scheduler.runUntilIdle()
        #expect(interrupts == 1)
        let (entries, overflow) = try rig.bench.drainPRI()
        #expect(!overflow && entries.count == 2)
        #expect(entries[1] == PRIQEntry(sid: rig.sid, ssid: 4, read: true, write: true, last: true, groupIndex: 7, address: 0x2000))
        try rig.bench.sync([.priResp(sid: rig.sid, ssid: 4, groupIndex: 7, response: .success)])
        rig.platform.scheduler.runUntilIdle()
        #expect(ep.responses.count == 1 && ep.responses[0].group == 7 && ep.responses[0].code == .success)
    }

    @Test("a full PRI queue drops requests, toggles PROD.OVFLG, and answers a dropped last request itself")
    func priOverflow() throws {
        let rig = try SMMUv3Rig(priQueueLog2: 1)                          // 2 entries
        let ep = RecordingEndpoint(streamID: rig.sid, scheduler: rig.platform.scheduler)
        rig.unit.connect(ep)
        for g in UInt16(0)..<4 {
            rig.unit.pageRequest(PRIQEntry(sid: rig.sid, ssid: nil, read: true, write: false, last: true, groupIndex: g, address: 0x1000))
        }
        // A stop marker dropped needs no answer.
        rig.unit.pageRequest(PRIQEntry(sid: rig.sid, ssid: 2, read: false, write: false, last: true, groupIndex: 9, address: 0))
        rig.platform.scheduler.runUntilIdle()
        #expect(rig.unit.counters.pageRequestsQueued == 2 && rig.unit.counters.pageRequestsLost == 3)
        #expect(rig.unit.counters.priQueueOverflows == 1)
        #expect(ep.responses.map(\.group) == [2, 3] && ep.responses.allSatisfy { $0.code == .success })
        let (entries, overflow) = try rig.bench.drainPRI()
        #expect(overflow && entries.map(\.groupIndex) == [0, 1])
    }

    @Test("a stage 1 fault with CD.S stalls: event with Stall and STAG; RESUME retry translates with the fixed table")
    func stallAndResumeRetry() throws {
        let rig = try SMMUv3Rig()
        var resolved: [(UInt32, UInt16, SMMUv3TranslationResult)] = []
        rig.unit.onStallResolved = { resolved.append(($0, $1, $2)) }
        let t = try rig.bench.stage1Table()
        try rig.attachStage1(t, asid: 2, stall: true)
        guard case .stalled(let stag) = rig.translate(0x8000, .write) else { Issue.record("no stall"); return }
        let ev = try rig.events()
        #expect(ev.count == 1 && ev[0].kind == .fTranslation && ev[0].stall && ev[0].stag == stag)
        #expect(rig.unit.stalledTransactions.count == 1)
        // The handler maps the page and resumes.
        try t.map(iova: 0x8000, physical: 0xF000, size: 0x1000, permissions: urw)
        try rig.bench.sync([.resume(sid: rig.sid, stag: stag &+ 1, action: .retry)])      // wrong STAG: nothing
        #expect(resolved.isEmpty)
        try rig.bench.sync([.resume(sid: rig.sid, stag: stag, action: .retry)])
        #expect(resolved.count == 1 && resolved[0].1 == stag)
        #expect(resolved[0].2 == .translated(physical: 0xF000, pageShift: 12, permissions: [.read, .write, .user]))
        #expect(rig.unit.stalledTransactions.isEmpty)
    }

    @Test("RESUME abort and STALL_TERM terminate held transactions; stage 2 stalls with S2S")
    func stallTerminate() throws {
        let rig = try SMMUv3Rig()
        var resolved: [(UInt32, UInt16, SMMUv3TranslationResult)] = []
        rig.unit.onStallResolved = { resolved.append(($0, $1, $2)) }
        let t = try rig.bench.stage1Table()
        try rig.attachStage1(t, asid: 2, stall: true)
        let s2 = try rig.bench.stage2Table()
        try rig.attachStage2(s2, vmid: 9, stall: true, sid: 7)
        var stags: [UInt16] = []
        for a in [UInt64(0x1000), 0x2000, 0x3000] {
            if case .stalled(let s) = rig.translate(a) { stags.append(s) }
        }
        guard case .stalled(let s2tag) = rig.translate(0x5000, sid: 7) else { Issue.record("no S2 stall"); return }
        #expect(stags.count == 3 && Set(stags).count == 3)
        try rig.bench.sync([.resume(sid: rig.sid, stag: stags[0], action: .terminate(abort: true))])
        #expect(resolved.count == 1 && resolved[0].2 == .terminated(.fTranslation))
        try rig.bench.sync([.stallTerm(sid: rig.sid)])
        #expect(resolved.count == 3)
        #expect(rig.unit.stalledTransactions.map(\.sid) == [7])
        let ev = try rig.events()
        #expect(ev.last?.s2 == true && ev.last?.stall == true && ev.last?.stag == s2tag)
    }

    @Test("a stall whose event cannot be recorded is terminated instead")
    func stallNeedsEvent() throws {
        let rig = try SMMUv3Rig(eventQueueLog2: 1)
        let t = try rig.bench.stage1Table()
        try rig.attachStage1(t, asid: 2, stall: true)
        _ = rig.translate(0x1000); _ = rig.translate(0x2000)
        #expect(rig.translate(0x3000) == .terminated(.fTranslation))
        #expect(rig.unit.stalledTransactions.count == 2)
    }
}
