import Testing
import Platform
import Formats
import Hardware
import Kernel
@testable import Simulation

/// The errno of the `IOMMUError` `body` throws, or nil when it does not throw.
/// (-1 if it throws anything else: every API error must be an `IOMMUError`.)
private func pasidErrno(_ body: () throws -> Void) -> Int32? {
    do { try body() } catch let e as IOMMUError { return e.errno } catch { return -1 }
    return nil
}

@Suite("the global PASID allocator")
struct PASIDAttachAllocatorTests {
    @Test("the first PASID handed out is 1, never 0")
    func firstIsOne() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("accel", dev: 1, pasids: 64)
        let p = try rig.core.allocGlobalPASID(for: dev)
        #expect(p.rawValue == 1)
        #expect(rig.core.pasids.isAllocated(p))
        #expect(rig.core.pasids.allocated == 1)
        #expect(try rig.core.allocGlobalPASID(for: dev).rawValue == 2)
    }

    @Test("a freed PASID is reused first: the lowest free one is handed out")
    func lowestFreeReuse() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("accel", dev: 1, pasids: 64)
        var got: [UInt32] = []
        for _ in 0..<6 { got.append(try rig.core.allocGlobalPASID(for: dev).rawValue) }
        #expect(got == [1, 2, 3, 4, 5, 6])
        try rig.core.freeGlobalPASID(PASID(truncating: 5))
        try rig.core.freeGlobalPASID(PASID(truncating: 3))
        #expect(!rig.core.pasids.isAllocated(PASID(truncating: 3)))
        #expect(try rig.core.allocGlobalPASID(for: dev).rawValue == 3)
        #expect(try rig.core.allocGlobalPASID(for: dev).rawValue == 5)
        #expect(try rig.core.allocGlobalPASID(for: dev).rawValue == 7)
        #expect(rig.core.pasids.allocated == 7)
    }

    @Test("allocation is bounded by the device's PASID limit and fails with ENOSPC when exhausted")
    func boundedByDevice() throws {
        let rig = try KernelRig()
        let (small, _) = try rig.add("small", dev: 1, pasids: 8)
        let (big, _) = try rig.add("big", dev: 2, pasids: 64)
        #expect(small.maxPASIDs == 8)
        var got: [UInt32] = []
        for _ in 1..<8 { got.append(try rig.core.allocGlobalPASID(for: small).rawValue) }
        #expect(got == Array(1...7))
        #expect(pasidErrno { _ = try rig.core.allocGlobalPASID(for: small) } == 28)
        #expect(rig.core.pasids.allocated == 7, "a failed allocation takes nothing")
        // The space is global: a device with a higher limit gets the next one above.
        #expect(try rig.core.allocGlobalPASID(for: big).rawValue == 8)
        try rig.core.freeGlobalPASID(PASID(truncating: 4))
        #expect(try rig.core.allocGlobalPASID(for: small).rawValue == 4)
    }

    @Test("a device without PASID capability cannot allocate one (EOPNOTSUPP)")
    func noCapability() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("legacy", dev: 1)
        #expect(dev.maxPASIDs == 0)
        #expect(pasidErrno { _ = try rig.core.allocGlobalPASID(for: dev) } == 95)
        #expect(rig.core.pasids.allocated == 0)
    }

    @Test("freeing an attached PASID is EBUSY; freeing one never allocated is ENOENT")
    func freeErrors() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("accel", dev: 1, pasids: 64)
        let d = try rig.core.allocDomain(for: dev, flags: .pasid)
        let p = try rig.core.allocGlobalPASID(for: dev)
        try rig.core.attachPASID(d, to: dev, pasid: p)
        #expect(pasidErrno { try rig.core.freeGlobalPASID(p) } == 16)
        #expect(rig.core.pasids.isAllocated(p))
        #expect(pasidErrno { try rig.core.freeGlobalPASID(PASID(truncating: 40)) } == 2)
        #expect(pasidErrno { try rig.core.freeGlobalPASID(.noPASID) } == 2)
        try rig.core.detachPASID(d, from: dev, pasid: p)
        try rig.core.freeGlobalPASID(p)
        #expect(pasidErrno { try rig.core.freeGlobalPASID(p) } == 2, "a double free is ENOENT")
        #expect(rig.core.pasids.allocated == 0)
    }
}

@Suite("attaching, replacing and detaching domains on PASIDs")
struct PASIDAttachTests {
    @Test("DMA tagged with an attached PASID translates through that PASID's domain")
    func dmaThroughPASID() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("accel", dev: 1, pasids: 64)
        let d = try rig.core.allocDomain(for: dev, flags: .pasid)
        let pa = try rig.mapBuffers(d, iova: 0x4_0000)[0]
        let p = try rig.core.allocGlobalPASID(for: dev)
        let path = try rig.core.attachPASID(d, to: dev, pasid: p)
        #expect(path == .fresh)
        #expect(rig.core.domain(of: dev, pasid: p) === d)
        #expect(d.attachments == 1)
        let c = try #require(rig.dmaWrite(ep, 0x4_0000 + 0x80, value: 0x5A, pasid: p))
        #expect(c.fault == nil)
        #expect(c.transferred == 64)
        #expect(try rig.platform.memory.load8(pa + 0x80) == 0x5A)
        #expect(try rig.platform.memory.load8(pa + 0x80 + 63) == 0x5A)
        // The RID (no PASID) still goes through the default domain, which does not map it.
        #expect(rig.dmaWrite(ep, 0x4_0000, value: 0x01)?.fault != nil)
        #expect(try rig.platform.memory.load8(pa) == 0)
        #expect(rig.violations.isEmpty)
    }

    @Test("attaching a second domain to an occupied PASID fails with EBUSY and keeps the first")
    func occupiedPASID() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("accel", dev: 1, pasids: 64)
        let c = try rig.core.allocDomain(for: dev, flags: .pasid)
        let d = try rig.core.allocDomain(for: dev, flags: .pasid)
        let pa = try rig.mapBuffers(c, iova: 0x1000)[0]
        let p = try rig.core.allocGlobalPASID(for: dev)
        try rig.core.attachPASID(c, to: dev, pasid: p)
        #expect(pasidErrno { try rig.core.attachPASID(d, to: dev, pasid: p) } == 16)
        #expect(pasidErrno { try rig.core.attachPASID(c, to: dev, pasid: p) } == 16)
        #expect(rig.core.domain(of: dev, pasid: p) === c)
        #expect(c.attachments == 1 && d.attachments == 0)
        #expect(rig.dmaWrite(ep, 0x1000, value: 0x33, pasid: p)?.fault == nil)
        #expect(try rig.platform.memory.load8(pa) == 0x33)
    }

    @Test("PASID 0 and PASIDs at or beyond the device limit are EINVAL")
    func invalidPASIDs() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("accel", dev: 1, pasids: 64)
        let d = try rig.core.allocDomain(for: dev, flags: .pasid)
        #expect(pasidErrno { try rig.core.attachPASID(d, to: dev, pasid: .noPASID) } == 22)
        #expect(pasidErrno { try rig.core.attachPASID(d, to: dev, pasid: PASID(truncating: 64)) } == 22)
        #expect(pasidErrno { try rig.core.attachPASID(d, to: dev, pasid: PASID(truncating: 1000)) } == 22)
        #expect(d.attachments == 0)
        #expect(dev.group?.pasidDomains.isEmpty == true)
        // The last PASID below the limit is fine.
        try rig.core.attachPASID(d, to: dev, pasid: PASID(truncating: 63))
        #expect(rig.core.domain(of: dev, pasid: PASID(truncating: 63)) === d)
    }

    @Test("a paging domain allocated without the PASID flag cannot be attached to a PASID (EOPNOTSUPP)")
    func needsPASIDFlag() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("accel", dev: 1, pasids: 64)
        let d = try rig.core.allocDomain(for: dev)
        let p = try rig.core.allocGlobalPASID(for: dev)
        #expect(pasidErrno { try rig.core.attachPASID(d, to: dev, pasid: p) } == 95)
        #expect(rig.core.domain(of: dev, pasid: p) == nil)
        #expect(d.attachments == 0)
        #expect(rig.driver.units[0].domainIDs.allocated == 1, "only the default domain holds a DID")
    }

    @Test("a device without PASID capability cannot have a PASID attached (EOPNOTSUPP)")
    func deviceWithoutPASIDs() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("legacy", dev: 1)
        let d = try rig.core.allocDomain(for: dev, flags: .pasid)
        #expect(pasidErrno { try rig.core.attachPASID(d, to: dev, pasid: PASID(truncating: 1)) } == 95)
        #expect(d.attachments == 0)
    }

    @Test("replacing a PASID's domain C with D is hitless and DMA to an address mapped alike keeps working",
          arguments: VTdPagingStage.allCases)
    func replacePASID(stage: VTdPagingStage) throws {
        let rig = try KernelRig(stage: stage)
        let (dev, ep) = try rig.add("accel", dev: 1, pasids: 64)
        let c = try rig.core.allocDomain(for: dev, flags: .pasid)
        let d = try rig.core.allocDomain(for: dev, flags: .pasid)
        let shared = try rig.machine.allocateBuffer()
        try rig.core.map(c, iova: 0x7000, physical: shared, size: 4096, permissions: .readWrite)
        try rig.core.map(d, iova: 0x7000, physical: shared, size: 4096, permissions: .readWrite)
        let onlyD = try rig.mapBuffers(d, iova: 0x9000)[0]
        let p = try rig.core.allocGlobalPASID(for: dev)
        try rig.core.attachPASID(c, to: dev, pasid: p)
        #expect(rig.dmaWrite(ep, 0x7000, value: 0x10, pasid: p)?.fault == nil)
        #expect(rig.dmaWrite(ep, 0x9000, pasid: p)?.fault != nil, "C does not map 0x9000")
        let path = try rig.core.replacePASID(d, on: dev, pasid: p)
        #expect(path.isHitless)
        #expect(path == (stage == .first ? .staged : .compareExchange128))
        #expect(rig.core.lastUpdatePath == path)
        #expect(rig.core.domain(of: dev, pasid: p) === d)
        #expect(c.attachments == 0 && d.attachments == 1)
        #expect(rig.dmaWrite(ep, 0x7000, value: 0x20, pasid: p)?.fault == nil)
        #expect(try rig.platform.memory.load8(shared) == 0x20)
        #expect(rig.dmaWrite(ep, 0x9000, value: 0x30, pasid: p)?.fault == nil, "D's own mapping is live")
        #expect(try rig.platform.memory.load8(onlyD) == 0x30)
        #expect(try rig.core.replacePASID(d, on: dev, pasid: p) == .unchanged)
        try rig.core.freeDomain(c)
        #expect(rig.violations.isEmpty)
    }

    @Test("replacing the domain of a PASID that is not attached is EINVAL")
    func replaceUnattached() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("accel", dev: 1, pasids: 64)
        let d = try rig.core.allocDomain(for: dev, flags: .pasid)
        #expect(pasidErrno { try rig.core.replacePASID(d, on: dev, pasid: PASID(truncating: 3)) } == 22)
        #expect(d.attachments == 0)
        #expect(rig.core.domain(of: dev, pasid: PASID(truncating: 3)) == nil)
    }

    @Test("after detachPASID, DMA with that PASID faults and the oracle sees no violation")
    func detachThenFault() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("accel", dev: 1, pasids: 64)
        let d = try rig.core.allocDomain(for: dev, flags: .pasid)
        let pa = try rig.mapBuffers(d, iova: 0x5000)[0]
        let p = try rig.core.allocGlobalPASID(for: dev)
        try rig.core.attachPASID(d, to: dev, pasid: p)
        #expect(rig.dmaWrite(ep, 0x5000, value: 0x44, pasid: p)?.fault == nil)
        try rig.core.detachPASID(d, from: dev, pasid: p)
        #expect(rig.core.domain(of: dev, pasid: p) == nil)
        #expect(d.attachments == 0)
        let c = try #require(rig.dmaWrite(ep, 0x5000, value: 0x55, pasid: p))
        #expect(c.fault != nil)
        #expect(try rig.platform.memory.load8(pa) == 0x44, "the write after detach did not land")
        #expect(pasidErrno { try rig.core.detachPASID(d, from: dev, pasid: p) } == 2, "detaching twice is ENOENT")
        rig.settle()
        #expect(rig.oracle.faultsSeen > 0)
        #expect(rig.violations.isEmpty)
        try rig.core.freeDomain(d)
        try rig.core.freeGlobalPASID(p)
    }

    @Test("attachPASID on a multi-device group sets the PASID on every PASID-capable device of it")
    func groupWide() throws {
        let rig = try KernelRig()
        let (a, epA) = try rig.add("fn0", dev: 2, fn: 0, unit: 0, group: "g", pasids: 64)
        let (b, epB) = try rig.add("far", dev: 2, fn: 0, unit: 1, group: "g", pasids: 64)
        let (legacy, epL) = try rig.add("fn1", dev: 2, fn: 1, unit: 0, group: "g")
        #expect(a.group === b.group && b.group === legacy.group)
        let d = try rig.core.allocDomain(for: a, flags: .pasid)
        let pa = try rig.mapBuffers(d, iova: 0xA000)[0]
        let p = try rig.core.allocGlobalPASID(for: a)
        try rig.core.attachPASID(d, to: a, pasid: p)
        #expect(d.attachments == 2, "one attachment per PASID-capable device")
        #expect(rig.core.domain(of: b, pasid: p) === d, "the PASID belongs to the group")
        #expect(rig.dmaWrite(epA, 0xA000, value: 0x61, pasid: p)?.fault == nil)
        #expect(try rig.platform.memory.load8(pa) == 0x61)
        #expect(rig.dmaWrite(epB, 0xA000, value: 0x62, pasid: p)?.fault == nil)
        #expect(try rig.platform.memory.load8(pa) == 0x62)
        #expect(rig.dmaWrite(epL, 0xA000, value: 0x63, pasid: p)?.fault != nil, "the device without PASIDs got no entry")
        #expect(try rig.platform.memory.load8(pa) == 0x62)
        #expect(rig.driver.units[1].domainIDs.allocated == 2, "default domain + d on unit 1")
        try rig.core.detachPASID(d, from: b, pasid: p)
        #expect(d.attachments == 0)
        #expect(rig.dmaWrite(epA, 0xA000, pasid: p)?.fault != nil)
        #expect(rig.dmaWrite(epB, 0xA000, pasid: p)?.fault != nil)
        #expect(rig.driver.units[1].domainIDs.allocated == 1)
        #expect(rig.violations.isEmpty)
    }

    @Test("a group-wide PASID attach failing on a later device removes the entries already set")
    func attachPASIDRollback() throws {
        let rig = try KernelRig()
        let (a, epA) = try rig.add("near", dev: 2, unit: 0, group: "g", pasids: 64)
        let (_, epB) = try rig.add("far", dev: 2, unit: 1, group: "g", pasids: 64)
        let d = try rig.core.allocDomain(for: a, flags: .pasid)
        try rig.mapBuffers(d, iova: 0xA000)
        let p = try rig.core.allocGlobalPASID(for: a)
        let before = rig.driver.units.map { $0.domainIDs.allocated }
        rig.platform.faults.reset()
        rig.platform.faults.mode = .failNth(2, only: .didAlloc)
        #expect(pasidErrno { try rig.core.attachPASID(d, to: a, pasid: p) } == 28)
        rig.platform.faults.mode = .off
        #expect(rig.platform.faults.fired.count == 1)
        #expect(rig.core.domain(of: a, pasid: p) == nil)
        #expect(d.attachments == 0)
        #expect(rig.driver.units.map { $0.domainIDs.allocated } == before)
        #expect(rig.dmaWrite(epA, 0xA000, pasid: p)?.fault != nil, "the first device's entry was removed again")
        #expect(rig.dmaWrite(epB, 0xA000, pasid: p)?.fault != nil)
        // Nothing is left half-done: the attach works once the resource is there.
        try rig.core.attachPASID(d, to: a, pasid: p)
        #expect(rig.dmaWrite(epA, 0xA000, pasid: p)?.fault == nil)
        #expect(rig.dmaWrite(epB, 0xA000, pasid: p)?.fault == nil)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("a group-wide PASID replace failing on a later device puts the switched devices back in the old domain")
    func replacePASIDRollback() throws {
        let rig = try KernelRig()
        let (a, epA) = try rig.add("near", dev: 2, unit: 0, group: "g", pasids: 64)
        let (_, epB) = try rig.add("far", dev: 2, unit: 1, group: "g", pasids: 64)
        let c = try rig.core.allocDomain(for: a, flags: .pasid)
        let d = try rig.core.allocDomain(for: a, flags: .pasid)
        let pa = try rig.mapBuffers(c, iova: 0xA000)[0]
        let p = try rig.core.allocGlobalPASID(for: a)
        try rig.core.attachPASID(c, to: a, pasid: p)
        let before = rig.driver.units.map { $0.domainIDs.allocated }
        rig.platform.faults.reset()
        rig.platform.faults.mode = .failNth(2, only: .didAlloc)
        #expect(pasidErrno { try rig.core.replacePASID(d, on: a, pasid: p) } == 28)
        rig.platform.faults.mode = .off
        #expect(rig.platform.faults.fired.count == 1)
        #expect(rig.core.domain(of: a, pasid: p) === c)
        #expect(c.attachments == 2)
        #expect(d.attachments == 0)
        #expect(rig.driver.units.map { $0.domainIDs.allocated } == before)
        #expect(rig.dmaWrite(epA, 0xA000, value: 0x71, pasid: p)?.fault == nil)
        #expect(try rig.platform.memory.load8(pa) == 0x71)
        #expect(rig.dmaWrite(epB, 0xA000, value: 0x72, pasid: p)?.fault == nil)
        #expect(try rig.platform.memory.load8(pa) == 0x72)
        // C can be detached cleanly: its attachment count matches the devices using it.
        try rig.core.detachPASID(c, from: a, pasid: p)
        #expect(c.attachments == 0)
        try rig.core.freeDomain(c)
        try rig.core.freeDomain(d)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("replacing a PASID's domain under DMA traffic never faults an address both domains map alike",
          arguments: [UInt64(1), 2, 3])
    func replacePASIDUnderTraffic(seed: UInt64) throws {
        let rig = try KernelRig(seed: seed)
        let (a, epA) = try rig.add("near", dev: 4, unit: 0, group: "g", pasids: 64)
        let (_, epB) = try rig.add("far", dev: 4, unit: 1, group: "g", pasids: 64)
        let c = try rig.core.allocDomain(for: a, flags: .pasid)
        let d = try rig.core.allocDomain(for: a, flags: .pasid)
        let base: UInt64 = 0x40_0000
        for i in 0..<4 {
            let pa = try rig.machine.allocateBuffer()
            for dom in [c, d] {
                try rig.core.map(dom, iova: base + UInt64(i) * 4096, physical: pa, size: 4096, permissions: .readWrite)
            }
        }
        let p = try rig.core.allocGlobalPASID(for: a)
        try rig.core.attachPASID(c, to: a, pasid: p)
        rig.scheduler.yieldPolicy = YieldPolicy(probability: 1, maxAdvanceNs: 5000)
        let streams = [epA, epB].map { TrafficStream(endpoint: $0, pasid: p, intervalNs: 400, scheduler: rig.scheduler) }
        for s in streams {
            s.targets = [.init(address: base, length: 4 * 4096)]
            s.start()
        }
        rig.scheduler.run(until: rig.scheduler.now + 40_000)
        #expect(try rig.core.replacePASID(d, on: a, pasid: p).isHitless)
        rig.scheduler.run(until: rig.scheduler.now + 40_000)
        #expect(try rig.core.replacePASID(c, on: a, pasid: p).isHitless)
        rig.scheduler.run(until: rig.scheduler.now + 40_000)
        for s in streams { s.stop() }
        rig.settle()
        #expect(epA.counters.completed > 0 && epB.counters.completed > 0)
        #expect(epA.counters.faulted == 0)
        #expect(epB.counters.faulted == 0)
        #expect(rig.core.domain(of: a, pasid: p) === c)
        #expect(rig.oracle.checks > 0)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("releasing the last PASID-capable device of a group leaves no PASID attachment to a domain that can be freed")
    func releaseLastPASIDDevice() throws {
        let rig = try KernelRig()
        let (a, _) = try rig.add("accel", dev: 2, fn: 0, group: "g", pasids: 64)
        let (b, _) = try rig.add("legacy", dev: 2, fn: 1, group: "g")
        let d = try rig.core.allocDomain(for: a, flags: .pasid)
        let p = try rig.core.allocGlobalPASID(for: a)
        try rig.core.attachPASID(d, to: a, pasid: p)
        try rig.core.release(a)
        #expect(d.attachments == 0)
        // Either the domain is still in use (and cannot be freed) or the PASID is gone with it.
        if pasidErrno({ try rig.core.freeDomain(d) }) == nil {
            #expect(rig.core.domain(of: b, pasid: p) == nil, "the group still records a freed domain on \(p)")
            #expect(pasidErrno { try rig.core.freeGlobalPASID(p) } == nil)
        }
    }

    @Test("the identity domain on a PASID passes DMA at address X through to physical X")
    func identityOnPASID() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("accel", dev: 1, pasids: 64)
        let identity = try #require(rig.driver.identityDomain)
        let x = try rig.machine.allocateBuffer()
        let p = try rig.core.allocGlobalPASID(for: dev)
        try rig.core.attachPASID(identity, to: dev, pasid: p)
        #expect(rig.core.domain(of: dev, pasid: p) === identity)
        let c = try #require(rig.dmaWrite(ep, x + 0x40, value: 0x7E, pasid: p))
        #expect(c.fault == nil)
        #expect(try rig.platform.memory.load8(x + 0x40) == 0x7E)
        // RID traffic is still translated by the (empty) default domain.
        #expect(rig.dmaWrite(ep, x, value: 0x01)?.fault != nil)
        #expect(try rig.platform.memory.load8(x) == 0)
        try rig.core.detachPASID(identity, from: dev, pasid: p)
        #expect(rig.dmaWrite(ep, x + 0x40, value: 0x02, pasid: p)?.fault != nil)
        #expect(try rig.platform.memory.load8(x + 0x40) == 0x7E)
        #expect(rig.violations.isEmpty)
    }

    @Test("a PASID can move between a paging domain and the identity domain hitlessly",
          arguments: VTdPagingStage.allCases)
    func replaceWithIdentity(stage: VTdPagingStage) throws {
        let rig = try KernelRig(stage: stage)
        let (dev, ep) = try rig.add("accel", dev: 1, pasids: 64)
        let identity = try #require(rig.driver.identityDomain)
        let x = try rig.machine.allocateBuffer()
        let d = try rig.core.allocDomain(for: dev, flags: .pasid)
        // d maps x at IOVA x: both domains map it alike.
        try rig.core.map(d, iova: x, physical: x, size: 4096, permissions: .readWrite)
        let p = try rig.core.allocGlobalPASID(for: dev)
        try rig.core.attachPASID(d, to: dev, pasid: p)
        let path = try rig.core.replacePASID(identity, on: dev, pasid: p)
        #expect(rig.core.domain(of: dev, pasid: p) === identity)
        #expect(d.attachments == 0)
        #expect(rig.dmaWrite(ep, x, value: 0x0F, pasid: p)?.fault == nil)
        #expect(try rig.platform.memory.load8(x) == 0x0F)
        #expect(path.isHitless)
        #expect(path == (stage == .first ? .staged : .compareExchange128),
                "DID, PGTT and table pointer switch in one 128-bit exchange (the first-stage pointer word after it)")
        #expect(rig.violations.isEmpty)
    }
}
