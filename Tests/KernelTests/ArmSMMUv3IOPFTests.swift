import Testing
import Platform
import Formats
import Hardware
@testable import Kernel

/// A fault handler that keeps every group and answers it with `answer` (nil: later, by the test).
final class RecordingIOPFHandler: IOPFHandler {
    unowned let core: IOMMUCore
    var answer: PageResponseCode?
    private(set) var groups: [IOPFGroup] = []
    init(core: IOMMUCore, answer: PageResponseCode? = nil) { self.core = core; self.answer = answer }
    func handle(_ group: IOPFGroup) throws(IOMMUError) {
        groups.append(group)
        if let answer { core.respond(group, answer) }
    }
}

extension ArmSMMUv3Rig {
    /// An unmanaged domain with `handler` for recoverable faults, attached to `device`'s group.
    func faultingDomain(for device: Device, handler: RecordingIOPFHandler, flags: DomainFlags = []) throws -> IOMMUDomain {
        let g = try #require(device.group)
        if !g.dmaOwned { try core.claimDMAOwner(g) }
        let d = try core.allocDomain(for: device, flags: flags)
        try core.setFaultHandler(handler, for: d)
        try core.attach(d, to: g)
        return d
    }
}

/// SMMUv3 page requests through the PRI queue into the core's IOPF pipeline (Linux
/// `arm_smmu_priq_thread`, `arm_smmu_handle_ppr` of the PRI series, `arm_smmu_page_response`).
@Suite("SMMUv3 driver: IO page faults from the PRI queue")
struct ArmSMMUv3IOPFTests {
    static func request(_ sid: UInt32, ssid: UInt32? = nil, read: Bool = true, write: Bool = false, exec: Bool = false,
                        priv: Bool = false, last: Bool, group: UInt16, _ address: UInt64) -> PRIQEntry {
        PRIQEntry(sid: sid, ssid: ssid, privileged: priv, execute: exec, read: read, write: write, last: last,
                  groupIndex: group, address: address)
    }

    @Test("a PRI device is on the unit's fault queue; a device without PRI, or a unit without it, is not")
    func faultQueueMembership() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, _) = try rig.addEndpoint("a", dev: 1, ats: true, pri: true)
        let (b, _) = try rig.addEndpoint("b", dev: 2, ats: true, pri: false)
        #expect(a.reportsPageFaults && !b.reportsPageFaults)
        var f = SMMUv3Features()
        f.pri = false
        let rig2 = try ArmSMMUv3Rig(features: f)
        let (c, _) = try rig2.addEndpoint("c", dev: 1, ats: true, pri: true)
        #expect(!c.reportsPageFaults)
    }

    @Test("a group of page requests reaches the domain's handler as PageFaults (rights, LAST, PRG index, PASID); the answer is CMD_PRI_RESP with the same PCIe code",
          arguments: [PageResponseCode.success, .invalidRequest, .responseFailure])
    func groupAndResponse(code: PageResponseCode) throws {
        let rig = try ArmSMMUv3Rig()
        let (a, ep) = try rig.addEndpoint("a", dev: 1, pasids: 256, ats: true, pri: true)
        let h = RecordingIOPFHandler(core: rig.core)
        _ = try rig.faultingDomain(for: a, handler: h)
        let ph = RecordingIOPFHandler(core: rig.core)
        let pd = try rig.core.allocDomain(for: a, flags: .pasid)
        try rig.core.setFaultHandler(ph, for: pd)
        try rig.core.attachPASID(pd, to: a, pasid: PASID(truncating: 9))
        let sid = rig.sid(a)
        rig.unit.pageRequest(Self.request(sid, ssid: 9, read: true, write: true, last: false, group: 7, 0x1234_5000))
        rig.unit.pageRequest(Self.request(sid, ssid: 9, read: false, write: true, exec: false, last: true, group: 7, 0x1234_6000))
        rig.unit.pageRequest(Self.request(sid, read: true, exec: false, last: true, group: 3, 0x8000))
        rig.settle()
        #expect(ep.responses.isEmpty, "nothing answered before the handlers do")
        let g = try #require(ph.groups.first)
        #expect(g.faults.count == 2 && g.pasid == PASID(truncating: 9) && g.last.groupIndex == 7)
        #expect(g.faults[0].permissions == [.read, .write] && !g.faults[0].isLast && g.faults[0].address == 0x1234_5000)
        #expect(g.faults[1].permissions == [.write] && g.faults[1].isLast)
        let r = try #require(h.groups.first)
        #expect(r.pasid == nil && r.faults.count == 1 && r.last.groupIndex == 3 && r.last.permissions == [.read])
        rig.core.respond(g, code)
        rig.core.respond(r, .success)
        rig.settle()
        #expect(ep.responses == [FakeSMMUEndpoint.PRIResponse(ssid: 9, groupIndex: 7, response: code),
                                 FakeSMMUEndpoint.PRIResponse(ssid: nil, groupIndex: 3, response: .success)])
        #expect(rig.commands(.priResp) == 2)
        #expect(a.faultCount == 0, "page requests are not reported as faults")
    }

    @Test("stop markers are dropped: never reported to the core, never answered")
    func stopMarkers() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, ep) = try rig.addEndpoint("a", dev: 1, pasids: 256, ats: true, pri: true)
        let h = RecordingIOPFHandler(core: rig.core, answer: .success)
        _ = try rig.faultingDomain(for: a, handler: h)
        let reported = rig.core.pageFaultsReported
        rig.unit.pageRequest(Self.request(rig.sid(a), ssid: 4, read: false, write: false, last: true, group: 2, 0))
        rig.settle()
        #expect(rig.smmu.stopMarkersDropped == 1 && rig.core.pageFaultsReported == reported)
        #expect(ep.responses.isEmpty && h.groups.isEmpty)
    }

    @Test("an unknown StreamID or a device without PRI gets Response Failure (PRI_RESP_DENY) for a group's last request, nothing for the others")
    func badRequests() throws {
        let rig = try ArmSMMUv3Rig()
        let (b, epb) = try rig.addEndpoint("b", dev: 2, ats: true, pri: false)
        let stranger = FakeSMMUEndpoint(streamID: 0x777, scheduler: rig.platform.scheduler)
        rig.unit.connect(stranger)
        for ep in [epb, stranger] {
            rig.unit.pageRequest(Self.request(ep.streamID, last: false, group: 1, 0x1000))
            rig.unit.pageRequest(Self.request(ep.streamID, last: true, group: 1, 0x2000))
        }
        rig.settle()
        for ep in [epb, stranger] {
            #expect(ep.responses == [FakeSMMUEndpoint.PRIResponse(ssid: nil, groupIndex: 1, response: .responseFailure)])
        }
        #expect(rig.smmu.badPageRequests == 4 && rig.core.pageFaultsReported == 0)
        #expect(b.faultCount == 0)
    }

    @Test("garbage PRI queue entries never trap: each is handled once, and only groups' last requests are answered")
    func garbage() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, _) = try rig.addEndpoint("a", dev: 1, pasids: 256, ats: true, pri: true)
        _ = try rig.faultingDomain(for: a, handler: RecordingIOPFHandler(core: rig.core, answer: .invalidRequest))
        var rng = SeededRNG(seed: 23)
        let sid = rig.sid(a)
        for i in 0..<200 {
            var e = PRIQEntry.decode(RawCommand(rng.next(), rng.next()))
            if i % 2 == 0 { e.sid = sid }
            rig.unit.pageRequest(e)
            if i % 50 == 0 { rig.settle() }
        }
        rig.settle()
        #expect(rig.smmu.pageRequestsHandled + Int(rig.unit.counters.pageRequestsLost) == 200)
    }

    @Test("a request for a domain without a handler is answered Invalid Request by the core")
    func noHandler() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, ep) = try rig.addEndpoint("a", dev: 1, ats: true, pri: true)
        _ = try rig.ownedDomain(for: a)
        rig.unit.pageRequest(Self.request(rig.sid(a), last: true, group: 5, 0x3000))
        rig.settle()
        #expect(ep.responses == [FakeSMMUEndpoint.PRIResponse(ssid: nil, groupIndex: 5, response: .invalidRequest)])
    }

    @Test("a PRI queue overflow is acknowledged (OVACKFLG = OVFLG) once drained, partial groups are dropped, and requests flow again")
    func overflow() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, ep) = try rig.addEndpoint("a", dev: 1, ats: true, pri: true)
        let h = RecordingIOPFHandler(core: rig.core, answer: .success)
        _ = try rig.faultingDomain(for: a, handler: h)
        let sid = rig.sid(a)
        let discarded = rig.core.partialsDiscarded
        for i in 0..<300 { rig.unit.pageRequest(Self.request(sid, last: false, group: UInt16(i % 8), UInt64(i) << 12)) }
        #expect(rig.unit.counters.pageRequestsLost > 0)
        rig.settle()
        #expect(rig.smmu.priQueueOverflows == 1)
        let prod = rig.unit.read32(SMMUv3Register.priqProd), cons = rig.unit.read32(SMMUv3Register.priqCons)
        #expect(prod == cons, "drained, and the overflow acknowledged")
        #expect(rig.core.partialsDiscarded == discarded + 1)
        rig.unit.pageRequest(Self.request(sid, last: true, group: 1, 0x9000))
        rig.settle()
        #expect(h.groups.count == 1 && h.groups[0].faults.count == 1, "the partials before the overflow were dropped")
        #expect(ep.responses.last == FakeSMMUEndpoint.PRIResponse(ssid: nil, groupIndex: 1, response: .success))
    }

    @Test("release answers the device's pending groups Invalid Request and takes it off the fault queue")
    func releasePending() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, ep) = try rig.addEndpoint("a", dev: 1, ats: true, pri: true)
        let h = RecordingIOPFHandler(core: rig.core)
        _ = try rig.faultingDomain(for: a, handler: h)
        rig.unit.pageRequest(Self.request(rig.sid(a), last: true, group: 6, 0x3000))
        rig.settle()
        #expect(h.groups.count == 1 && ep.responses.isEmpty)
        // A request still in the queue at release reaches the core first, then is answered.
        rig.unit.pageRequest(Self.request(rig.sid(a), last: true, group: 8, 0x4000))
        try rig.core.release(a)
        rig.settle()
        #expect(Set(ep.responses.map(\.groupIndex)) == [6, 8] && ep.responses.allSatisfy { $0.response == .invalidRequest })
        #expect(!a.reportsPageFaults)
    }
}
