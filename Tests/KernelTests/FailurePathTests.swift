import Testing
import Platform
import Formats
import Hardware
import Kernel
@testable import Simulation

private func failureErrno(_ body: () throws -> Void) -> Int32? {
    do { try body(); return nil } catch let e as IOMMUError { return e.errno } catch { return -1 }
}

/// Paths where hardware fails or the group changes under PASID attachments: state stays
/// consistent and the oracle neither misses nor invents a violation.
@Suite("failure paths keep DIDs, PASIDs and the oracle consistent")
struct FailurePathTests {
    @Test("a device cannot join a group that has PASIDs attached (EBUSY), and the group is unchanged")
    func joinRefusedWithPASIDs() throws {
        let rig = try KernelRig()
        let (a, _) = try rig.add("a", dev: 1, group: "g", pasids: 64)
        let d = try rig.core.allocDomain(for: a, flags: .pasid)
        let p = try rig.core.allocGlobalPASID(for: a)
        try rig.core.attachPASID(d, to: a, pasid: p)
        #expect(failureErrno { try rig.add("b", dev: 2, group: "g", pasids: 64) } == 16)
        #expect(a.group?.devices.count == 1)
        try rig.core.detachPASID(d, from: a, pasid: p)
        try rig.add("b", dev: 2, group: "g", pasids: 64)
        #expect(a.group?.devices.count == 2)
    }

    @Test("detaching one of two PASIDs of a domain keeps its DID while the other PASID entry uses it")
    func didKeptForRemainingPASID() throws {
        let rig = try KernelRig()
        let (a, ep) = try rig.add("a", dev: 1, pasids: 64)
        let d = try rig.core.allocDomain(for: a, flags: .pasid)
        let pa = try rig.mapBuffers(d, iova: 0x1000)[0]
        let p1 = try rig.core.allocGlobalPASID(for: a), p2 = try rig.core.allocGlobalPASID(for: a)
        try rig.core.attachPASID(d, to: a, pasid: p1)
        try rig.core.attachPASID(d, to: a, pasid: p2)
        let before = rig.driver.units[0].domainIDs.allocated
        try rig.core.detachPASID(d, from: a, pasid: p1)
        #expect(rig.driver.units[0].domainIDs.allocated == before)
        #expect(rig.dmaWrite(ep, 0x1000, value: 0x42, pasid: p2)?.fault == nil)
        #expect(try rig.platform.memory.load8(pa) == 0x42)
        #expect(rig.dmaWrite(ep, 0x1000, pasid: p1)?.fault != nil)
        try rig.core.detachPASID(d, from: a, pasid: p2)
        #expect(rig.driver.units[0].domainIDs.allocated == before - 1)
        #expect(d.attachments == 0)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("a hitless replace whose flush times out keeps the old domain, and its new DID is never reused")
    func failedReplaceKeepsOldDomain() throws {
        let rig = try KernelRig()
        let (a, ep) = try rig.add("a", dev: 1)
        let g = try #require(a.group)
        try rig.core.claimDMAOwner(g)
        let dA = try rig.core.allocDomain(for: a), dB = try rig.core.allocDomain(for: a)
        let paA = try rig.mapBuffers(dA, iova: 0x1000)[0]
        try rig.mapBuffers(dB, iova: 0x1000)
        try rig.core.attach(dA, to: g)
        let unit = rig.machine.units[0]
        // The PASID-cache invalidation of the replace takes longer than the driver waits.
        unit.descriptorFaults[InvalidationDescriptor.pasidCacheType] = .delay(5_000_000)
        #expect(failureErrno { try rig.core.replace(g, with: dB) } == 110)
        unit.descriptorFaults = [:]
        rig.scheduler.run(until: rig.scheduler.now + 20_000_000)
        #expect(a.attachedDomain === dA && g.domain === dA)
        #expect(rig.dmaWrite(ep, 0x1000, value: 0x7A)?.fault == nil)
        #expect(try rig.platform.memory.load8(paA) == 0x7A, "DMA still lands in the old domain's buffer")
        #expect(rig.driver.units[0].domainIDs.quarantined.count == 1, "the new DID may be cached: quarantined")
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("after invalidation waits time out, the queue waits for room and later flushes still work")
    func queueRecoversAfterTimeouts() throws {
        let rig = try KernelRig()
        let (a, ep) = try rig.add("a", dev: 1)
        let dom = try #require(a.attachedDomain)
        let unit = rig.machine.units[0]
        for i in 0..<12 { try rig.mapBuffers(dom, iova: 0x10_0000 + UInt64(i) * 0x1000) }
        unit.descriptorFaults[InvalidationDescriptor.waitType] = .delay(3_000_000)
        for i in 0..<12 {
            #expect(failureErrno { _ = try rig.core.unmap(dom, iova: 0x10_0000 + UInt64(i) * 0x1000, size: 4096) } == 110)
        }
        unit.descriptorFaults = [:]
        // A healthy unmap afterwards completes and leaves nothing stale.
        try rig.mapBuffers(dom, iova: 0x20_0000)
        #expect(rig.dmaWrite(ep, 0x20_0000)?.fault == nil)
        try rig.core.unmap(dom, iova: 0x20_0000, size: 4096)
        #expect(rig.dmaWrite(ep, 0x20_0000)?.fault != nil)
        #expect(unit.counters.invalidationQueueErrors == 0)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("an IOVA whose unmap flush failed can be mapped again to other memory without a false violation")
    func remapAfterFailedUnmap() throws {
        let rig = try KernelRig()
        let (a, ep) = try rig.add("a", dev: 1)
        let dom = try #require(a.attachedDomain)
        try rig.mapBuffers(dom, iova: 0x1000)
        let unit = rig.machine.units[0]
        unit.descriptorFaults[InvalidationDescriptor.waitType] = .drop
        #expect(failureErrno { _ = try rig.core.unmap(dom, iova: 0x1000, size: 4096) } == 110)
        unit.descriptorFaults = [:]
        let fresh = try rig.mapBuffers(dom, iova: 0x1000)[0]
        #expect(rig.dmaWrite(ep, 0x1000, value: 0x3C)?.fault == nil)
        #expect(try rig.platform.memory.load8(fresh) == 0x3C)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }
}
