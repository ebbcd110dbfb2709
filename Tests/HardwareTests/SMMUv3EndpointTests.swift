import Testing
import Platform
import Formats
@testable import Hardware

/// Records every access the unit reports.
final class RecordingChecker: DMAAccessChecker {
    var records: [DMAAccessRecord] = []
    override func check(unit: Int, _ record: DMAAccessRecord) { records.append(record) }
}

@Suite("SMMUv3 endpoints: PCIe DMA, stalls, ATS and PRI through the unit")
struct SMMUv3EndpointTests {
    static let rid = RequesterID(rawValue: 0x10)
    /// Unprivileged read-write (AP[1] set), as the Linux driver maps.
    static let urw: PagePermissions = [.read, .write, .user]

    /// A rig with a stage 1 stream for the endpoint (StreamID = its RID 0x10), page 0x1000 →
    /// `frame`, and an endpoint with ATS/PRI as asked.
    struct Setup {
        let rig: SMMUv3Rig
        let table: IOPageTable<ArmStage1Format>
        let endpoint: PCIeEndpoint
        let checker = RecordingChecker()
        let frame: UInt64

        init(stall: Bool = false, ats: Bool = false, pri: Bool = false, eats: Bool = true) throws {
            rig = try SMMUv3Rig()
            table = try rig.bench.stage1Table()
            frame = try rig.platform.frames.allocate(.dmaBuffer)
            try table.map(iova: 0x1000, physical: frame, size: 4096, permissions: SMMUv3EndpointTests.urw)
            let cdt = try rig.bench.makeCDTable()
            try rig.bench.setCD(cdt, .s1(asid: 1, ttb: table.root, stall: stall))
            var ste = rig.bench.stage1STE(cdt)
            if eats { ste.rawEATS = StreamTableEntry.EATS.translate.rawValue }
            try rig.bench.setSTE(rig.sid, ste)
            endpoint = PCIeEndpoint(name: "dev", requesterID: SMMUv3EndpointTests.rid, smmu: rig.unit,
                                    ats: ATSConfiguration(enabled: ats), pri: PRIConfiguration(enabled: pri))
            rig.unit.attachChecker(checker, index: 0)
        }

        func run() { _ = rig.platform.scheduler.runUntilIdle() }
    }

    @Test("a submitted write reaches memory through stage 1 and the checker sees it with its physical page")
    func dmaThroughStage1() throws {
        let s = try Setup()
        var done: PCIeEndpoint.Completion?
        s.endpoint.submit(.write(0x1010, [1, 2, 3, 4])) { done = $0 }
        s.run()
        #expect(done?.fault == nil && done?.transferred == 4, "\(String(describing: done?.fault)) \(s.rig.unit.counters.translations) \(String(describing: try? s.rig.events()))")
        var bytes = [UInt8](repeating: 0, count: 4)
        try bytes.withUnsafeMutableBytes { try s.rig.memory.read(s.frame + 0x10, into: $0) }
        #expect(bytes == [1, 2, 3, 4])
        #expect(s.checker.records.last?.physical == s.frame + 0x10)
        #expect(s.checker.records.last?.source == Self.rid)
    }

    @Test("a transfer to an unmapped page ends with F_TRANSLATION, recorded, and the checker sees the refusal")
    func faultEndsTransfer() throws {
        let s = try Setup()
        var done: PCIeEndpoint.Completion?
        s.endpoint.submit(.read(0x5000, length: 64)) { done = $0 }
        s.run()
        #expect(done?.fault?.event == .fTranslation)
        #expect(s.checker.records.last?.physical == nil && s.checker.records.last?.event == .fTranslation)
        #expect(try s.rig.events().map(\.kind) == [.fTranslation])
    }

    @Test("a stalled write is held, then completes into memory once the page is mapped and CMD_RESUME retries it")
    func stallResumed() throws {
        let s = try Setup(stall: true)
        var done: PCIeEndpoint.Completion?
        s.endpoint.submit(.write(0x7008, [9, 9])) { done = $0 }
        s.run()
        #expect(done == nil, "the transfer waits for the stall")
        #expect(s.endpoint.stalledTransactions == 1)
        let events = try s.rig.events()
        let stall = try #require(events.first)
        #expect(stall.stall && stall.kind == .fTranslation)
        let page = try s.rig.platform.frames.allocate(.dmaBuffer)
        try s.table.map(iova: 0x7000, physical: page, size: 4096, permissions: SMMUv3EndpointTests.urw)
        try s.rig.bench.sync([.resume(sid: s.rig.sid, stag: stall.stag, action: .retry)])
        s.run()
        #expect(done?.fault == nil && done?.transferred == 2)
        #expect(s.endpoint.stalledTransactions == 0 && s.endpoint.counters.stallsCompleted == 1)
        var bytes = [UInt8](repeating: 0, count: 2)
        try bytes.withUnsafeMutableBytes { try s.rig.memory.read(page + 8, into: $0) }
        #expect(bytes == [9, 9])
        #expect(s.checker.records.last?.physical == page + 8)
    }

    @Test("CMD_STALL_TERM ends a held transfer with its fault, and nothing reaches memory")
    func stallTerminated() throws {
        let s = try Setup(stall: true)
        var done: PCIeEndpoint.Completion?
        s.endpoint.submit(.write(0x9000, [1])) { done = $0 }
        s.run()
        #expect(done == nil)
        try s.rig.bench.sync([.stallTerm(sid: s.rig.sid)])
        s.run()
        #expect(done?.fault?.event == .fTranslation && done?.transferred == 0)
        #expect(s.endpoint.stalledTransactions == 0)
    }

    @Test("a streamed TLP that stalls completes from the device's staging buffer when resumed")
    func streamedStallResumed() throws {
        let s = try Setup(stall: true)
        let r = s.endpoint.transferNow(write: true, address: 0xA000, length: 64)
        #expect(r.transferred == 0 && r.fault?.stallTag != nil)
        #expect(s.endpoint.counters.faulted == 0, "a stall is not a fault yet")
        let page = try s.rig.platform.frames.allocate(.dmaBuffer)
        try s.table.map(iova: 0xA000, physical: page, size: 4096, permissions: SMMUv3EndpointTests.urw)
        let stag = try #require(r.fault?.stallTag)
        try s.rig.bench.sync([.resume(sid: s.rig.sid, stag: stag, action: .retry)])
        #expect(s.endpoint.counters.stallsCompleted == 1 && s.endpoint.counters.bytesWritten == 64)
        #expect(s.checker.records.last?.physical == page)
    }

    @Test("ATS: the translation fills the device TLB, translated requests reach memory, and ATC_INV drops the entry")
    func atsAndATCInvalidation() throws {
        let s = try Setup(ats: true)
        var result: ATSAccessResult?
        s.endpoint.atsAccess(pasid: nil, address: 0x1000, length: 128, write: true) { result = $0 }
        s.run()
        #expect(result?.outcome == .completed)
        #expect(s.rig.unit.counters.atsTranslations == 1 && s.rig.unit.counters.translatedRequests >= 1)
        #expect(s.endpoint.deviceTLBEntries(pasid: nil, start: 0, end: .max).map(\.physical) == [s.frame])
        #expect(s.checker.records.last?.translated == true && s.checker.records.last?.physical == s.frame)
        try s.rig.bench.sync([.atcInv(sid: s.rig.sid, ssid: nil, global: false, address: 0x1000, size: 0)])
        s.run()
        #expect(s.endpoint.deviceTLBEntries(pasid: nil, start: 0, end: .max).isEmpty)
        #expect(s.rig.unit.counters.atcInvalidationsCompleted == 1)
    }

    @Test("ATS on a stream whose STE has EATS = 0: F_BAD_ATS_TREQ recorded and the access ends Unsupported Request")
    func atsForbiddenByEATS() throws {
        let s = try Setup(ats: true, eats: false)
        var result: ATSAccessResult?
        s.endpoint.atsAccess(pasid: nil, address: 0x1000, length: 8, write: false) { result = $0 }
        s.run()
        #expect(result?.outcome == .unsupportedRequest)
        #expect(try s.rig.events().map(\.kind) == [.fBadATSTReq])
    }

    @Test("with ATSCHK a translated request on an EATS = 0 stream is F_TRANSL_FORBIDDEN and touches nothing")
    func translatedRequestForbidden() throws {
        let s = try Setup(eats: false)
        var buffer = [UInt8](repeating: 7, count: 8)
        let f = buffer.withUnsafeMutableBytes {
            s.rig.unit.translatedAccess(streamID: s.rig.sid, substreamID: nil, address: 0x1000, physical: s.frame, buffer: $0, write: true)
        }
        #expect(f?.event == .fTranslForbidden)
        #expect(try s.rig.events().map(\.kind) == [.fTranslForbidden])
        var bytes = [UInt8](repeating: 1, count: 8)
        try bytes.withUnsafeMutableBytes { try s.rig.memory.read(s.frame, into: $0) }
        #expect(bytes == [UInt8](repeating: 0, count: 8))
    }

    @Test("ATS translation faults are not recorded: the completion has no rights and the device asks with PRI, answered by PRI_RESP")
    func priRoundTrip() throws {
        let s = try Setup(ats: true, pri: true)
        var result: ATSAccessResult?
        s.endpoint.atsAccess(pasid: nil, address: 0x3000, length: 16, write: true) { result = $0 }
        s.run()
        #expect(result == nil, "waiting for the page response")
        #expect(try s.rig.events().isEmpty, "no event for an ATS translation fault")
        let requests = try s.rig.bench.drainPRI().entries
        let last = try #require(requests.last)
        #expect(last.sid == s.rig.sid && last.last && last.write && last.address == 0x3000)
        try s.table.map(iova: 0x3000, physical: s.frame, size: 4096, permissions: SMMUv3EndpointTests.urw)
        try s.rig.bench.sync([.priResp(sid: s.rig.sid, ssid: nil, groupIndex: last.groupIndex, response: .success)])
        s.run()
        #expect(result?.outcome == .completed && result?.groups == 1)
    }
}
