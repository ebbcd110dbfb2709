import Testing
import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD
@testable import Simulation

@Suite("IO page faults: ATS, PRI, the page request queue, the fault pipeline, SVA, user fault queues")
struct PageFaultTests {
    /// A rig with one ATS+PRI device bound to a fresh process.
    static func svaRig(credits: Int = 64, seed: UInt64 = 1, pageRequestInternalNs: UInt64? = nil) throws -> (KernelRig, Device, PCIeEndpoint, Process, SVAHandle) {
        var units = [VTdConfiguration(name: "dmar0"), VTdConfiguration(name: "dmar1")]
        if let ns = pageRequestInternalNs { for i in units.indices { units[i].latency.pageRequestInternalNs = ns } }
        let rig = try KernelRig(seed: seed, units: units)
        let (dev, ep) = try rig.add("accel", dev: 1, pasids: 1 << 16, ats: true, pri: true)
        ep.priConfiguration.credits = credits
        // These tests time requests exactly: a group's requests go back to back.
        ep.priConfiguration.requestSpacingNs = 0
        let proc = try rig.core.createProcess()
        let h = try rig.core.svaBind(dev, to: proc)
        return (rig, dev, ep, proc, h)
    }

    @Test func svaDemandPagingResolvesFaultsInTheProcessAndTheDeviceRetriesToCompletion() throws {
        let (rig, dev, ep, proc, h) = try Self.svaRig()
        #expect(dev.reportsPageFaults)
        let va = try proc.mmap(length: 8 * 4096, permissions: .readWrite)
        let r = rig.atsAccess(ep, pasid: h.pasid, va, length: 8 * 4096, write: true)
        #expect(r?.outcome == .completed)
        #expect(r?.transferred == 8 * 4096)
        #expect(r?.groups == 1)
        #expect(proc.residentPages.count == 8)
        #expect(ep.atsCounters.successResponses == 1)
        #expect(ep.atsCounters.translatedRequests >= 8)
        // The device's bytes are in the process's page (the staging pattern starts 7, 38, ...).
        let frame = try #require(proc.residentPages[va])
        #expect(try rig.platform.memory.load8(frame) == 7)
        #expect(try rig.platform.memory.load8(frame + 1) == 38)
        // A second access hits the device TLB: no new page request.
        let again = rig.atsAccess(ep, pasid: h.pasid, va, length: 4096, write: false)
        #expect(again?.outcome == .completed)
        #expect(ep.atsCounters.groups == 1)
        var stopped = false
        ep.stopPASID(h.pasid, stopMarker: false) { stopped = true }
        #expect(stopped)
        try rig.core.svaUnbind(h)
        try proc.exit()
        rig.settle()
        #expect(rig.core.pasids.allocated == 0)
        #expect(rig.violations.isEmpty)
    }

    @Test func aFaultTheVMAForbidsIsAnsweredInvalidAndTheAccessFails() throws {
        let (rig, _, ep, proc, h) = try Self.svaRig()
        let ro = try proc.mmap(length: 4096, permissions: .read)
        let w = rig.atsAccess(ep, pasid: h.pasid, ro, write: true)
        #expect(w?.outcome == .invalidResponse)
        #expect(proc.residentPages.isEmpty)
        let outside = rig.atsAccess(ep, pasid: h.pasid, 0x7000_0000_0000, write: false)
        #expect(outside?.outcome == .invalidResponse)
        let r = rig.atsAccess(ep, pasid: h.pasid, ro, write: false)
        #expect(r?.outcome == .completed)
        #expect(rig.core.pageResponses[1] == 2)
        #expect(rig.violations.isEmpty)
    }

    @Test func munmapInvalidatesTheDeviceTLBBeforeTheFramesAreFreed() throws {
        let (rig, _, ep, proc, h) = try Self.svaRig()
        let va = try proc.mmap(length: 4 * 4096, permissions: .readWrite)
        #expect(rig.atsAccess(ep, pasid: h.pasid, va, length: 4 * 4096)?.outcome == .completed)
        #expect(ep.deviceTLBEntries(pasid: h.pasid, start: va, end: va + 4 * 4096 - 1).count == 4)
        try proc.munmap(address: va, length: 4 * 4096)
        #expect(ep.deviceTLBEntries(pasid: h.pasid, start: va, end: va + 4 * 4096 - 1).isEmpty)
        #expect(rig.violations.isEmpty)
    }

    @Test func theOracleCatchesAnUnmapThatSkipsTheDeviceTLBInvalidation() throws {
        let (rig, _, ep, proc, h) = try Self.svaRig()
        rig.core.injectedBugs = [.skipDeviceTLBInvalidation]
        let va = try proc.mmap(length: 4096, permissions: .readWrite)
        #expect(rig.atsAccess(ep, pasid: h.pasid, va)?.outcome == .completed)
        try proc.munmap(address: va, length: 4096)
        #expect(rig.violations.contains { $0.invariant == "stale-device-tlb" })
    }

    @Test func addressesAndLengthsAtTheTopOfTheSpaceAreErrorsNotTraps() throws {
        let (rig, _, ep, proc, h) = try Self.svaRig()
        #expect(throws: IOMMUError.self) { try proc.munmap(address: 0x4000_0000, length: .max) }
        #expect(throws: IOMMUError.self) { try proc.munmap(address: 0xFFFF_FFFF_FFFF_F000, length: 4096) }
        // An access whose end wraps past the top of the address space asks for pages and fails cleanly.
        let r = rig.atsAccess(ep, pasid: h.pasid, 0xFFFF_FFFF_FFFF_F800, length: 8192, write: true)
        #expect(r != nil)
        #expect(r?.outcome != .completed)
        #expect(rig.violations.isEmpty)
    }

    @Test func pageRequestsWithoutAFaultHandlerAreAnsweredInvalid() throws {
        let rig = try KernelRig()
        let (_, ep) = try rig.add("nic", dev: 2, ats: true, pri: true)
        // The default DMA domain has no fault handler: an unmapped IOVA ends in Invalid Request.
        let r = rig.atsAccess(ep, pasid: nil, 0x1234_5000)
        #expect(r?.outcome == .invalidResponse)
        #expect(rig.core.pageFaultsWithoutHandler == 1)
        #expect(ep.atsCounters.unexpectedResponses == 0)
        #expect(rig.violations.isEmpty)
    }

    @Test func requestsForAPASIDWithoutAnEntryAreAnsweredByTheUnitItself() throws {
        let rig = try KernelRig()
        let (_, ep) = try rig.add("accel", dev: 3, pasids: 1 << 10, ats: true, pri: true)
        let r = rig.atsAccess(ep, pasid: PASID(truncating: 77), 0x4000_0000)
        #expect(r?.outcome == .unsupportedRequest || r?.outcome == .invalidResponse)
        // Force the page request path: the translation says "no access" only with a present
        // entry, so send the request directly.
        let before = rig.machine.units[0].counters.pageRequestsAutoResponded
        rig.machine.units[0].receivePageRequest(PageRequestDescriptor(requester: ep.requesterID, pasid: PASID(truncating: 77),
                                                                     read: true, write: false, lastInGroup: true, groupIndex: 5, address: 0x4000_0000))
        try rig.scheduler.wait(until: { rig.machine.units[0].counters.pageRequestsAutoResponded == before + 1 }, timeoutNs: 100_000)
        #expect(rig.machine.units[0].counters.pageRequestsAutoResponded == before + 1)
        rig.settle()
        #expect(rig.core.pageFaultsReported == 0)
        #expect(ep.pageGroupResponses.last?.responseCode == PageResponseCode.invalidRequest.rawValue)
    }

    @Test func aFullPageRequestQueueSetsOverflowAutoRespondsAndTheDriverRecovers() throws {
        // Requests queue the instant they arrive, so 3,200 of them outrun the handler.
        let (rig, _, ep, proc, h) = try Self.svaRig(credits: 8192, pageRequestInternalNs: 0)
        ep.priConfiguration.retryLimit = 64
        let pages = 32 * 100
        let va = try proc.mmap(length: UInt64(pages) * 4096, permissions: .readWrite)
        var results: [ATSAccessResult] = []
        for i in 0..<100 {
            ep.atsAccess(pasid: h.pasid, address: va + UInt64(i) * 32 * 4096, length: 32 * 4096, write: true) { results.append($0) }
        }
        let deadline = rig.scheduler.now + 200_000_000
        while results.count < 100 && rig.scheduler.runNext(notAfter: deadline) {}
        rig.settle()
        #expect(results.count == 100)
        #expect(results.allSatisfy { $0.outcome == .completed })
        let u = rig.machine.units[0]
        #expect(u.counters.pageRequestOverflows > 0 as UInt64)
        #expect(rig.driver.units[0].pageRequestOverflowsCleared > 0)
        #expect(u.read32(VTdRegister.pageRequestStatus) & VTdPageRequestStatus.overflow == 0)
        #expect(rig.core.partialsDiscarded > 0)
        #expect(proc.residentPages.count == pages)
        #expect(ep.priState.outstandingGroups == 0)
        #expect(rig.violations.isEmpty)
    }

    /// Runs requests into the queue, stops the PASID with a stop marker, unbinds at once,
    /// gives the PASID to a new process and lets everything settle.
    static func teardownAndReuse(bug: InjectedBugs) throws -> (KernelRig, PCIeEndpoint, inFlightAfterUnbind: UInt64, queuedAfterUnbind: Bool) {
        let (rig, _, ep, proc, h) = try Self.svaRig()
        rig.core.injectedBugs = bug
        let va = try proc.mmap(length: 64 * 4096, permissions: .readWrite)
        for i in 0..<4 { ep.atsAccess(pasid: h.pasid, address: va + UInt64(i) * 16 * 4096, length: 16 * 4096, write: true) { _ in } }
        let u = rig.machine.units[0]
        while u.counters.pageRequestsQueued < 16 && rig.scheduler.runNext(hardwareOnly: true) {}
        ep.stopPASID(h.pasid, stopMarker: true) {}
        try rig.core.svaUnbind(h)
        let inFlight = ep.link.pageResponsesInFlight + ep.link.pageRequestsInFlight
        let queued = rig.driver.units[0].pageRequestQueueHolds(ep.requesterID, pasid: h.pasid.rawValue)
        try proc.exit()
        let next = try rig.core.createProcess()
        let h2 = try rig.core.svaBind(h.device, to: next)
        #expect(h2.pasid == h.pasid)
        ep.startPASID(h2.pasid)
        rig.settle()
        return (rig, ep, inFlight, queued)
    }

    @Test func aStopWaitsOnlyForTranslationRequestsIssuedBeforeIt() throws {
        let (rig, _, ep, proc, h) = try Self.svaRig()
        ep.misbehaviour = .requestsAfterStop // it goes on using the PASID after the stop
        let va = try proc.mmap(length: 8 * 4096, permissions: .readWrite)
        // The later access's page is resident: it completes the moment its translation returns.
        #expect(proc.fault(at: va + 4 * 4096, access: [.read, .write]))
        ep.atsAccess(pasid: h.pasid, address: va, length: 4096, write: true) { _ in }
        while ep.atsCounters.translationRequests == 0 && rig.scheduler.runNext(hardwareOnly: true) {}
        var stoppedAt: UInt64?
        ep.stopPASID(h.pasid, stopMarker: true) { stoppedAt = rig.scheduler.now }
        var laterDoneAt: UInt64?
        ep.atsAccess(pasid: h.pasid, address: va + 4 * 4096, length: 4096, write: true) { _ in laterDoneAt = rig.scheduler.now }
        while (stoppedAt == nil || laterDoneAt == nil) && rig.scheduler.runNext() {}
        let stopped = try #require(stoppedAt), later = try #require(laterDoneAt)
        #expect(ep.atsCounters.translationRequests >= 2, "the device kept translating after the stop")
        #expect(stopped < later, "the stop completed once the request issued before it was answered, not when the later one was")
    }

    @Test func framesOfAnSVAMunmapWhoseInvalidationTimedOutAreHeldUntilTranslationIsOffThenFreed() throws {
        let (rig, _, ep, proc, h) = try Self.svaRig()
        let va = try proc.mmap(length: 4 * 4096, permissions: .readWrite)
        #expect(rig.atsAccess(ep, pasid: h.pasid, va, length: 4 * 4096, write: true)?.outcome == .completed)
        let resident = proc.residentPages.count
        #expect(resident == 4)
        rig.platform.faults.mode = .failNth(1, only: .invalidationTimeout)
        #expect(throws: Never.self) { try proc.munmap(address: va, length: 4 * 4096) }
        rig.platform.faults.mode = .off
        let held = rig.core.framesHeldForFailedInvalidations
        #expect(held.count >= resident, "the data frames (and any table page) wait")
        #expect(held.allSatisfy { rig.platform.frames.isAllocated($0) })
        rig.driver.shutdown()
        rig.core.releaseHeldFrames()
        #expect(rig.core.framesHeldForFailedInvalidations.isEmpty)
        #expect(held.allSatisfy { !rig.platform.frames.isAllocated($0) })
    }

    @Test func aStopWithAStopMarkerReportsStoppedOnlyAfterThePASIDsTranslationRequestsComplete() throws {
        let (rig, _, ep, proc, h) = try Self.svaRig()
        let va = try proc.mmap(length: 4 * 4096, permissions: .readWrite)
        ep.atsAccess(pasid: h.pasid, address: va, length: 4 * 4096, write: true) { _ in }
        // Run until the translation request is on the link, not yet answered.
        while ep.atsCounters.translationRequests == 0 && rig.scheduler.runNext(hardwareOnly: true) {}
        #expect(ep.atsCounters.translationRequests == 1)
        var stoppedAt: UInt64?
        ep.stopPASID(h.pasid, stopMarker: true) { stoppedAt = rig.scheduler.now }
        #expect(stoppedAt == nil, "a translation request is outstanding: the function has not stopped yet")
        while stoppedAt == nil && rig.scheduler.runNext(hardwareOnly: true) {}
        #expect(stoppedAt != nil)
        #expect(ep.atsCounters.stopMarkers == 1)
        try rig.core.svaUnbind(h)
        try proc.exit()
        rig.settle()
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test func pasidTeardownDrainsTheQueueFaultWorkAndFabricBeforeThePASIDIsReused() throws {
        let (rig, ep, inFlight, queued) = try Self.teardownAndReuse(bug: [])
        #expect(inFlight == 0)
        #expect(!queued)
        #expect(rig.driver.units[0].pageRequestDrains > 0)
        #expect(ep.atsCounters.stopMarkers == 1)
        #expect(UInt64(rig.driver.units[0].stopMarkersDropped) + rig.machine.units[0].counters.stopMarkersDiscarded == 1)
        #expect(rig.violations.isEmpty)
    }

    @Test func withoutTheDrainAResponseForTheOldOwnerReachesTheNextOne() throws {
        let (rig, _, _, queued) = try Self.teardownAndReuse(bug: [.skipPageRequestDrain])
        #expect(queued)
        #expect(rig.violations.contains { $0.invariant == "page-response-crossed-pasid" })
    }

    @Test func aUserFaultQueueDeliversWholeGroupsTakesOneResponsePerCookieAndRefusesBadResponses() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("vf", dev: 4, ats: true, pri: true)
        let g = try #require(dev.group)
        try rig.core.claimDMAOwner(g)
        let domain = try rig.core.allocDomain(for: dev)
        let q = rig.core.allocFaultQueue()
        try rig.core.setFaultQueue(q, for: domain)
        try rig.core.attach(domain, to: g)
        var result: ATSAccessResult?
        ep.atsAccess(pasid: nil, address: 0x10_0000, length: 3 * 4096, write: true) { result = $0 }
        while q.undelivered == 0 && rig.scheduler.runNext() {}
        #expect(q.read(maxRecords: 2).isEmpty) // a group of three does not fit in two
        let records = q.read(maxRecords: 16)
        #expect(records.count == 3)
        #expect(Set(records.map(\.cookie)).count == 1)
        #expect((records.last?.flags ?? 0) & 2 == 2)
        #expect(records.map(\.address) == [0x10_0000, 0x10_1000, 0x10_2000])
        #expect(records.allSatisfy { $0.devID == dev.objectID && $0.permissions & 3 == 3 })
        let cookie = records[0].cookie
        #expect(throws: IOMMUError.self) { try q.respond(cookie: cookie, code: 7) }
        #expect(throws: IOMMUError.self) { try q.respond(cookie: cookie + 100, code: 0) }
        #expect(q.awaitingResponse == 1)
        try rig.mapBuffers(domain, iova: 0x10_0000, pages: 3)
        try q.respond(cookie: cookie, code: FaultQueue.responseSuccess)
        #expect(throws: IOMMUError.self) { try q.respond(cookie: cookie, code: 0) }
        while result == nil && rig.scheduler.runNext() {}
        #expect(result?.outcome == .completed)
        #expect(ep.atsCounters.responses == 1)
        try rig.core.detach(domain, from: g)
        try rig.core.freeDomain(domain)
        try rig.core.releaseDMAOwner(g)
        rig.settle()
        #expect(rig.violations.isEmpty)
    }

    @Test func pendingUserFaultsAreAnsweredInvalidOnReplaceAndOnClose() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("vf", dev: 4, ats: true, pri: true)
        let g = try #require(dev.group)
        try rig.core.claimDMAOwner(g)
        let a = try rig.core.allocDomain(for: dev), b = try rig.core.allocDomain(for: dev)
        let qa = rig.core.allocFaultQueue(), qb = rig.core.allocFaultQueue()
        try rig.core.setFaultQueue(qa, for: a)
        try rig.core.setFaultQueue(qb, for: b)
        try rig.core.attach(a, to: g)
        var first: ATSAccessResult?, second: ATSAccessResult?
        ep.atsAccess(pasid: nil, address: 0x20_0000, length: 4096, write: false) { first = $0 }
        while qa.undelivered == 0 && rig.scheduler.runNext() {}
        _ = qa.read(maxRecords: 8) // read, never answered
        try rig.core.replace(g, with: b)
        #expect(qa.autoResponses == 1)
        while first == nil && rig.scheduler.runNext() {}
        #expect(first?.outcome == .invalidResponse)
        ep.atsAccess(pasid: nil, address: 0x30_0000, length: 4096, write: false) { second = $0 }
        while qb.undelivered == 0 && rig.scheduler.runNext() {}
        qb.close()
        while second == nil && rig.scheduler.runNext() {}
        #expect(second?.outcome == .invalidResponse)
        #expect(ep.atsCounters.unexpectedResponses == 0)
        try rig.core.detach(b, from: g)
        try rig.core.freeDomain(a)
        try rig.core.freeDomain(b)
        try rig.core.releaseDMAOwner(g)
        rig.settle()
        #expect(rig.violations.isEmpty)
    }

    @Test func releasingADeviceAnswersItsPendingGroupsOnceAndLaterAnswersAreIgnored() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("vf", dev: 5, ats: true, pri: true)
        let g = try #require(dev.group)
        try rig.core.claimDMAOwner(g)
        let d = try rig.core.allocDomain(for: dev)
        let q = rig.core.allocFaultQueue()
        try rig.core.setFaultQueue(q, for: d)
        try rig.core.attach(d, to: g)
        ep.atsAccess(pasid: nil, address: 0x40_0000, length: 4096, write: true) { _ in }
        while q.undelivered == 0 && rig.scheduler.runNext() {}
        let group = try #require(rig.core.pendingFaultGroups(of: dev).first)
        try rig.core.release(dev)
        #expect(!group.isPending)
        let late = rig.core.lateResponses
        rig.core.respond(group, .success)
        #expect(rig.core.lateResponses == late + 1)
        rig.settle()
        #expect(ep.atsCounters.invalidResponses == 1)
        #expect(ep.atsCounters.unexpectedResponses == 0)
        try rig.core.freeDomain(d)
    }

    @Test func aMisbehavingDeviceIsContainedAndCountedWithoutTraps() throws {
        let (rig, dev, ep, proc, h) = try Self.svaRig(credits: 4)
        ep.misbehaviour = .all
        let va = try proc.mmap(length: 64 * 4096, permissions: .readWrite)
        var done = 0
        for i in 0..<16 { ep.atsAccess(pasid: h.pasid, address: va + UInt64(i) * 4 * 4096, length: 4 * 4096, write: true) { _ in done += 1 } }
        let deadline = rig.scheduler.now + 100_000_000
        while done < 16 && rig.scheduler.runNext(notAfter: deadline) {}
        #expect(rig.machine.units[0].counters.unsolicitedCompletions > 0)
        ep.stopPASID(h.pasid, stopMarker: true) {}
        // Told to stop, it keeps asking.
        var after: ATSAccessResult?
        ep.atsAccess(pasid: h.pasid, address: va + 63 * 4096, length: 4096, write: true) { after = $0 }
        try rig.core.svaUnbind(h)
        let deadline2 = rig.scheduler.now + 10_000_000
        while after == nil && rig.scheduler.runNext(notAfter: deadline2) {}
        #expect(after != nil)
        try proc.exit()
        rig.settle()
        #expect(rig.core.pendingFaultGroups(of: dev).isEmpty)
        #expect(rig.core.pasids.allocated == 0)
    }
}
