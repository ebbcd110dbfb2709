import Testing
import Platform
import Formats
@testable import Hardware

@Suite("page requests on the unit: descriptor format, queue, overflow, page drain (VT-d §7.4, §7.10)")
struct PageRequestTests {
    @Test func pageRequestDescriptorsRoundTripAndRejectWrongTypesAndReservedBits() throws {
        let d = PageRequestDescriptor(requester: RequesterID(bus: 3, device: 4, function: 1), pasid: PASID(truncating: 0x1234),
                                      read: true, write: true, execute: false, privileged: false, lastInGroup: true,
                                      groupIndex: 0x1AB, address: 0x7FFF_1234_5000, privateData: 99)
        let raw = d.encode()
        #expect(PageRequestDescriptor.decode(raw) == .success(d))
        #expect(!d.isStopMarker)
        let stop = PageRequestDescriptor(requester: d.requester, pasid: d.pasid, read: false, write: false, lastInGroup: true,
                                         groupIndex: 0, address: 0)
        #expect(stop.isStopMarker)
        var wrong = raw
        wrong.qw0 = (wrong.qw0 & ~0xFF) | 2
        #expect(PageRequestDescriptor.decode(wrong) == .failure(.wrongType(2)))
        var reserved = raw
        reserved.qw0 |= 1 << 12
        #expect(PageRequestDescriptor.decode(reserved) == .failure(.reservedBits))
    }

    /// A unit with page requests enabled for `rig.rid` (RID_PASID entry present) and a queue
    /// of `order` pages.
    static func setUp(order: UInt8 = 0, internalNs: UInt64? = nil) throws -> (Rig, PCIeEndpoint, UInt64) {
        var config = VTdConfiguration()
        if let internalNs { config.latency.pageRequestInternalNs = internalNs }
        let rig = try Rig(configuration: config)
        try rig.bench.setContext(rig.rid, pageRequest: true)
        let table = try rig.secondStage()
        try rig.attachSecondStage(table)
        let base = try rig.platform.frames.allocateContiguous(1 << Int(order), .queue)
        rig.unit.write64(VTdRegister.pageRequestQueueAddress, VTdPageRequestQueueAddress.make(base: base, sizeOrder: order))
        let ep = PCIeEndpoint(name: "dev", requesterID: rig.rid, unit: rig.unit)
        return (rig, ep, base)
    }

    static func request(_ ep: PCIeEndpoint, group: UInt16, last: Bool = true) -> PageRequestDescriptor {
        PageRequestDescriptor(requester: ep.requesterID, pasid: nil, read: true, write: false, lastInGroup: last,
                              groupIndex: group, address: 0x1000 * UInt64(group))
    }

    @Test func aPageDrainWaitCompletesOnlyAfterPageRequestsInFlightReachTheQueue() throws {
        let (rig, ep, _) = try Self.setUp()
        ep.link.latencyNs = 20_000
        let u = rig.unit
        let d = Self.request(ep, group: 1)
        ep.link.up(pageRequest: true) { u.receivePageRequest(d) }
        let start = rig.platform.scheduler.now
        try rig.bench.submit([.wait(InvalidationWait(statusWrite: true, fence: true, pageDrain: true, statusData: 7, statusAddress: rig.bench.statusPage))])
        var depthAtCompletion = -1
        try rig.platform.scheduler.wait(until: {
            let done = (try? rig.memory.load32(rig.bench.statusPage)) == 7
            if done && depthAtCompletion < 0 { depthAtCompletion = u.pageRequestQueueDepth }
            return done
        }, timeoutNs: 1_000_000)
        #expect(rig.platform.scheduler.now - start >= 20_000)
        #expect(depthAtCompletion == 1)
        #expect(u.counters.drainsHeld == 1)
        // With nothing in flight the same wait does not hold.
        try rig.bench.invalidate([])
        try rig.bench.submit([.wait(InvalidationWait(statusWrite: true, fence: true, pageDrain: true, statusData: 9, statusAddress: rig.bench.statusPage))])
        try rig.platform.scheduler.wait(until: { (try? rig.memory.load32(rig.bench.statusPage)) == 9 }, timeoutNs: 1_000_000)
        #expect(u.counters.drainsHeld == 1)
    }

    @Test func aFullQueueSetsOverflowAndTheUnitAnswersLastRequestsWithSuccess() throws {
        let (rig, ep, _) = try Self.setUp()
        let u = rig.unit
        // One 4 KiB page holds 128 descriptors; one slot always stays empty.
        for g in 0..<130 { u.receivePageRequest(Self.request(ep, group: UInt16(g & 0x1FF))) }
        // Each request takes the unit's internal path before it is queued or answered.
        #expect(u.pageRequestQueueDepth == 0)
        try rig.platform.scheduler.wait(until: { u.pageRequestsProcessed == 130 }, timeoutNs: 1_000_000)
        #expect(u.pageRequestQueueDepth == 127)
        #expect(u.read32(VTdRegister.pageRequestStatus) & VTdPageRequestStatus.overflow != 0)
        #expect(u.read32(VTdRegister.pageRequestStatus) & VTdPageRequestStatus.pending != 0)
        #expect(u.counters.pageRequestOverflows == 3)
        _ = rig.platform.scheduler.runUntilIdle()
        #expect(ep.pageGroupResponses.count == 3)
        #expect(ep.pageGroupResponses.allSatisfy { $0.responseCode == PageResponseCode.success.rawValue })
        // Software consumes by moving the head; PRO is write-1-to-clear.
        u.write64(VTdRegister.pageRequestQueueHead, u.read64(VTdRegister.pageRequestQueueTail))
        u.write32(VTdRegister.pageRequestStatus, VTdPageRequestStatus.overflow | VTdPageRequestStatus.pending)
        #expect(u.read32(VTdRegister.pageRequestStatus) == 0)
        #expect(u.pageRequestQueueDepth == 0)
    }

    @Test func requestsWithPageRequestsDisabledInTheContextAreFaultedAndAnsweredInvalid() throws {
        let rig = try Rig()
        try rig.bench.setContext(rig.rid, pageRequest: false)
        let base = try rig.platform.frames.allocateContiguous(1, .queue)
        rig.unit.write64(VTdRegister.pageRequestQueueAddress, VTdPageRequestQueueAddress.make(base: base, sizeOrder: 0))
        let ep = PCIeEndpoint(name: "dev", requesterID: rig.rid, unit: rig.unit)
        rig.unit.receivePageRequest(Self.request(ep, group: 4))
        _ = rig.platform.scheduler.runUntilIdle()
        #expect(rig.unit.pendingFaultRecords.first?.record.reason == VTdFaultReason.smPREClear.rawValue)
        #expect(ep.pageGroupResponses.map(\.responseCode) == [PageResponseCode.invalidRequest.rawValue])
        #expect(rig.unit.pageRequestQueueDepth == 0)
    }
}

@Suite("the unit's internal page-request path and the page-drain wait (VT-d §7.10)")
struct PageRequestInternalPathTests {
    @Test("a page-drain wait reached while a request is on the unit's internal path completes only after it is queued and its response delivered")
    func drainCoversTheInternalPath() throws {
        // A slow internal path (5 µs a request), so the wait is reached while it holds one.
        let (rig, ep, _) = try PageRequestTests.setUp(internalNs: 5_000)
        let u = rig.unit
        // Arrived from the link, not yet checked and queued.
        u.receivePageRequest(PageRequestTests.request(ep, group: 3))
        #expect(u.pageRequestsProcessed < u.pageRequestsAccepted)
        try rig.bench.submit([.wait(InvalidationWait(statusWrite: true, fence: true, pageDrain: true, statusData: 5, statusAddress: rig.bench.statusPage))])
        var depthAtCompletion = -1
        try rig.platform.scheduler.wait(until: {
            let done = (try? rig.memory.load32(rig.bench.statusPage)) == 5
            if done && depthAtCompletion < 0 { depthAtCompletion = u.pageRequestQueueDepth }
            return done
        }, timeoutNs: 1_000_000)
        #expect(depthAtCompletion == 1, "the request is in the queue when the wait completes")
        #expect(u.counters.drainsHeld == 1)
    }

    @Test("a wait without page drain does not wait for the internal path")
    func plainWaitDoesNotDrain() throws {
        let (rig, ep, _) = try PageRequestTests.setUp(internalNs: 5_000)
        let u = rig.unit
        u.receivePageRequest(PageRequestTests.request(ep, group: 4))
        try rig.bench.submit([.wait(InvalidationWait(statusWrite: true, fence: true, pageDrain: false, statusData: 6, statusAddress: rig.bench.statusPage))])
        var depthAtCompletion = -1
        try rig.platform.scheduler.wait(until: {
            let done = (try? rig.memory.load32(rig.bench.statusPage)) == 6
            if done && depthAtCompletion < 0 { depthAtCompletion = u.pageRequestQueueDepth }
            return done
        }, timeoutNs: 1_000_000)
        #expect(u.counters.drainsHeld == 0)
        #expect(depthAtCompletion == 0, "the wait completed first; the request landed later")
    }
}
