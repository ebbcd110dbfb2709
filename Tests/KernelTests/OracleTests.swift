import Testing
import Platform
import Formats
@testable import Hardware
@testable import Kernel
@testable import Simulation

/// The oracle fed by hand: a device that was never probed (so no real traffic or kernel
/// event touches its window) and stand-in domains whose numbers no real domain uses.
private struct OracleFeed {
    let rig: KernelRig
    let device: Device
    var oracle: Oracle { rig.oracle }

    init(untrusted: Bool = false) throws {
        rig = try KernelRig()
        device = Device(DeviceDescription(name: "fake", requesterID: KernelRig.rid(0, 9), unit: 0, untrusted: untrusted), driver: rig.driver)
    }

    func domain(_ id: Int) -> IOMMUDomain {
        let d = IOMMUDomain(type: .unmanaged, owner: ObjectIdentifier(rig.driver), pageSizes: 1 << 12, apertureEnd: .max)
        d.id = id
        return d
    }

    /// Moves the device's RID traffic from `from` to `to` in one announced step.
    func transition(from: IOMMUDomain?, to: IOMMUDomain?, path: UpdatePath = .fresh) {
        oracle.transitionBegan(device, pasid: nil, from: from, to: to)
        oracle.transitionEnded(device, pasid: nil, current: to, path: path)
    }

    func map(_ d: IOMMUDomain, iova: UInt64, physical: UInt64, size: UInt64 = 0x1000, permissions: PagePermissions = .readWrite) {
        oracle.mapBegan(d, iova: iova, physical: physical, size: size, permissions: permissions)
        oracle.mapEnded(d, iova: iova, size: size, mapped: true)
    }

    /// Feeds one access as the unit would report it: `physical` for a completed access, nil
    /// (with a fault reason) for a faulted one.
    func access(_ iova: UInt64, physical: UInt64?, _ access: DMAAccess = .write, source: RequesterID? = nil) {
        let record = DMAAccessRecord(source: source ?? device.requesterID, pasid: nil, address: iova, length: 64, access: access,
                                     physical: physical, fault: physical == nil ? .smSecondStagePermission : nil,
                                     time: rig.scheduler.now)
        oracle.check(unit: device.unit, record)
    }

    var invariants: [String] { oracle.violations.map(\.invariant) }
}

@Suite("OracleChecks: the isolation oracle flags every broken invariant and nothing else")
struct OracleChecksTests {
    // MARK: Against the real kernel and hardware

    @Test("strict unmap leaves no stale translation: DMA after unmap faults and the oracle sees nothing wrong")
    func strictUnmapNoStale() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("nic0", dev: 2)
        let domain = try #require(dev.attachedDomain)
        let unit = rig.machine.units[0]
        try rig.mapBuffers(domain, iova: 0x10_0000)
        #expect(rig.dmaWrite(ep, 0x10_0000)?.fault == nil)
        let hits = unit.counters.iotlbHits
        #expect(rig.dmaWrite(ep, 0x10_0040)?.fault == nil)
        #expect(unit.counters.iotlbHits > hits, "the second access must hit the IOTLB entry the first filled")

        #expect(try rig.core.unmap(domain, iova: 0x10_0000, size: 0x1000) == 0x1000)
        let after = rig.dmaWrite(ep, 0x10_0000)
        #expect(after?.fault != nil)
        #expect(after?.transferred == 0)
        #expect(rig.oracle.checks > 0)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("the oracle catches a stale translation when the hardware drops IOTLB invalidations", arguments: VTdPagingStage.allCases)
    func droppedIOTLBInvalidationIsStale(stage: VTdPagingStage) throws {
        let rig = try KernelRig(stage: stage)
        let (dev, ep) = try rig.add("nic0", dev: 2)
        let domain = try #require(dev.attachedDomain)
        let unit = rig.machine.units[0]
        let pa = try rig.mapBuffers(domain, iova: 0x10_0000)[0]
        #expect(rig.dmaWrite(ep, 0x10_0000, value: 0x11)?.fault == nil)
        #expect(rig.violations.isEmpty)

        unit.descriptorFaults[rig.iotlbDescriptorType] = .drop
        // The wait descriptor after the dropped one still completes, so unmap returns normally.
        #expect(try rig.core.unmap(domain, iova: 0x10_0000, size: 0x1000) == 0x1000)
        #expect(unit.counters.descriptorsDropped >= 1)
        #expect(rig.core.iovaToPhys(domain, 0x10_0000) == nil)

        let stale = rig.dmaWrite(ep, 0x10_0000, value: 0x22)
        #expect(stale?.fault == nil, "the cached entry still translates")
        #expect(try rig.platform.memory.load8(pa) == 0x22)
        #expect(rig.violations.contains { $0.invariant == "stale-translation" }, "\(rig.violations)")
    }

    /// Descriptors are applied in queue order and the wait descriptor fences behind the
    /// delayed IOTLB descriptor, so a delay shorter than the wait time-out only makes strict
    /// unmap take longer: the invalidation is complete when unmap returns (a slow IOMMU).
    @Test("an IOTLB invalidation delayed within the wait time-out only makes strict unmap slower", arguments: VTdPagingStage.allCases)
    func delayedInvalidationStillStrict(stage: VTdPagingStage) throws {
        let rig = try KernelRig(stage: stage)
        let (dev, ep) = try rig.add("nic0", dev: 2)
        let domain = try #require(dev.attachedDomain)
        let unit = rig.machine.units[0]
        try rig.mapBuffers(domain, iova: 0x10_0000)
        #expect(rig.dmaWrite(ep, 0x10_0000)?.fault == nil)

        unit.descriptorFaults[rig.iotlbDescriptorType] = .delay(200_000)
        let start = rig.scheduler.now
        #expect(try rig.core.unmap(domain, iova: 0x10_0000, size: 0x1000) == 0x1000)
        #expect(rig.scheduler.now - start >= 200_000, "unmap must have waited for the delayed invalidation")
        #expect(unit.counters.descriptorsDropped == 0)
        #expect(rig.dmaWrite(ep, 0x10_0000)?.fault != nil)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    /// With a delay beyond the driver's 1 ms wait time-out the wait never completes in time:
    /// unmap fails with ETIMEDOUT, and since it never announced the unmap as done the
    /// oracle keeps treating the old translation as permitted (the caller was told the unmap
    /// did not complete). Once the late descriptor is applied the translation is gone.
    @Test("an IOTLB invalidation delayed beyond the wait time-out makes strict unmap fail with ETIMEDOUT, without a violation", arguments: VTdPagingStage.allCases)
    func delayedInvalidationTimesOut(stage: VTdPagingStage) throws {
        let rig = try KernelRig(stage: stage)
        let (dev, ep) = try rig.add("nic0", dev: 2)
        let domain = try #require(dev.attachedDomain)
        let unit = rig.machine.units[0]
        try rig.mapBuffers(domain, iova: 0x10_0000)
        #expect(rig.dmaWrite(ep, 0x10_0000)?.fault == nil)

        unit.descriptorFaults[rig.iotlbDescriptorType] = .delay(1_000_000)
        do {
            try rig.core.unmap(domain, iova: 0x10_0000, size: 0x1000)
            Issue.record("unmap must not return while the invalidation is outstanding")
        } catch {
            #expect(error.errno == 110)
        }
        #expect(rig.dmaWrite(ep, 0x10_0000)?.fault == nil, "the invalidation has not been applied yet")
        rig.settle()
        #expect(rig.dmaWrite(ep, 0x10_0000)?.fault != nil, "the late invalidation removed the translation")
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    // MARK: Fed by hand

    @Test("an access by a device with no domain attached is an unpermitted access")
    func noDomainUnpermitted() throws {
        let f = try OracleFeed()
        let checks = f.oracle.checks
        f.access(0x1000, physical: 0x1000)
        #expect(f.oracle.checks == checks + 1)
        #expect(f.invariants == ["unpermitted-access"])
        // A fault with no domain attached is expected.
        f.access(0x1000, physical: nil)
        #expect(f.invariants == ["unpermitted-access"])
        #expect(f.oracle.expectedFaults >= 1)
    }

    @Test("an access that lands on another physical address than the mapping's is an unpermitted access")
    func wrongPhysicalUnpermitted() throws {
        let f = try OracleFeed()
        let a = f.domain(100)
        f.map(a, iova: 0x1000, physical: 0x20_0000)
        f.transition(from: nil, to: a)
        f.access(0x1040, physical: 0x20_0040)
        #expect(f.invariants.isEmpty, "the mapped target is permitted")
        f.access(0x1040, physical: 0x30_0040)
        #expect(f.invariants == ["unpermitted-access"])
        f.access(0x5000, physical: 0x5000)
        #expect(f.invariants == ["unpermitted-access", "unpermitted-access"], "an unmapped IOVA reaching memory")
    }

    @Test("a write through a read-only mapping is an unpermitted access; a read through it is fine")
    func writeToReadOnly() throws {
        let f = try OracleFeed()
        let a = f.domain(100)
        f.map(a, iova: 0x1000, physical: 0x20_0000, permissions: .read)
        f.transition(from: nil, to: a)
        f.access(0x1000, physical: 0x20_0000, .read)
        #expect(f.invariants.isEmpty)
        f.access(0x1000, physical: 0x20_0000, .write)
        #expect(f.invariants == ["unpermitted-access"])
    }

    @Test("a fault at a settled mapping outside any transition is an unexpected fault; at an unmapped IOVA it is expected")
    func unexpectedFault() throws {
        let f = try OracleFeed()
        let a = f.domain(100)
        f.map(a, iova: 0x1000, physical: 0x20_0000)
        f.transition(from: nil, to: a)
        let expected = f.oracle.expectedFaults
        f.access(0x8000, physical: nil)
        #expect(f.invariants.isEmpty)
        #expect(f.oracle.expectedFaults == expected + 1)
        f.access(0x1000, physical: nil)
        #expect(f.invariants == ["unexpected-fault"])
        #expect(f.oracle.faultsSeen == 2)
    }

    @Test("a fault while a mapping is still being established is expected")
    func faultWhileMapping() throws {
        let f = try OracleFeed()
        let a = f.domain(100)
        f.transition(from: nil, to: a)
        f.oracle.mapBegan(a, iova: 0x1000, physical: 0x20_0000, size: 0x1000, permissions: .readWrite)
        f.access(0x1000, physical: nil)
        f.access(0x1000, physical: 0x20_0000)
        #expect(f.invariants.isEmpty, "a mapping in progress may or may not be visible")
        f.oracle.mapEnded(a, iova: 0x1000, size: 0x1000, mapped: true)
        f.access(0x1000, physical: nil)
        #expect(f.invariants == ["unexpected-fault"])
    }

    @Test("a fault during a hitless replace at an address mapped alike in both domains is a replace-not-hitless violation")
    func hitlessReplaceFault() throws {
        let f = try OracleFeed()
        let a = f.domain(100), b = f.domain(101)
        for d in [a, b] { f.map(d, iova: 0x1000, physical: 0x20_0000) }
        f.map(a, iova: 0x2000, physical: 0x21_0000)
        f.transition(from: nil, to: a)
        f.oracle.transitionBegan(f.device, pasid: nil, from: a, to: b)
        f.access(0x1000, physical: nil)
        f.access(0x2000, physical: nil) // only A maps it: a gap there is allowed
        #expect(f.invariants.isEmpty, "judged when the transition ends, by its path")
        f.oracle.transitionEnded(f.device, pasid: nil, current: b, path: .compareExchange128)
        #expect(f.invariants == ["replace-not-hitless"])
    }

    @Test("the same fault during a teardown-and-setup replace is expected")
    func teardownReplaceFault() throws {
        let f = try OracleFeed()
        let a = f.domain(100), b = f.domain(101)
        for d in [a, b] { f.map(d, iova: 0x1000, physical: 0x20_0000) }
        f.transition(from: nil, to: a)
        let expected = f.oracle.expectedFaults
        f.oracle.transitionBegan(f.device, pasid: nil, from: a, to: b)
        f.access(0x1000, physical: nil)
        f.oracle.transitionEnded(f.device, pasid: nil, current: b, path: .teardownSetup)
        #expect(f.invariants.isEmpty)
        #expect(f.oracle.expectedFaults == expected + 1)
    }

    @Test("during a transition either domain's translation is permitted; after it only the new one")
    func transitionWindow() throws {
        let f = try OracleFeed()
        let a = f.domain(100), b = f.domain(101)
        f.map(a, iova: 0x1000, physical: 0x20_0000)
        f.map(b, iova: 0x1000, physical: 0x30_0000)
        f.transition(from: nil, to: a)
        f.oracle.transitionBegan(f.device, pasid: nil, from: a, to: b)
        f.access(0x1000, physical: 0x20_0000)
        f.access(0x1000, physical: 0x30_0000)
        #expect(f.invariants.isEmpty)
        f.oracle.transitionEnded(f.device, pasid: nil, current: b, path: .compareExchange128)
        f.access(0x1000, physical: 0x30_0000)
        #expect(f.invariants.isEmpty)
        f.access(0x1000, physical: 0x20_0000)
        #expect(f.invariants == ["unpermitted-access"])
    }

    @Test("during unmap the old translation is permitted; after unmap returns it is a stale translation")
    func unmapWindow() throws {
        let f = try OracleFeed()
        let a = f.domain(100)
        f.map(a, iova: 0x1000, physical: 0x20_0000, size: 0x2000)
        f.transition(from: nil, to: a)
        f.oracle.unmapBegan(a, iova: 0x1000, size: 0x2000)
        f.access(0x1000, physical: 0x20_0000)
        f.access(0x1000, physical: nil)
        #expect(f.invariants.isEmpty, "while unmapping, the translation may be used or gone")
        // Only the first page went (a hole stopped the unmap); the second stays settled.
        f.oracle.unmapEnded(a, iova: 0x1000, requested: 0x2000, unmapped: 0x1000)
        f.access(0x2000, physical: 0x20_1000)
        #expect(f.invariants.isEmpty)
        f.access(0x1000, physical: 0x20_0000)
        #expect(f.invariants == ["stale-translation"])
        f.access(0x2000, physical: nil)
        #expect(f.invariants == ["stale-translation", "unexpected-fault"], "the part not unmapped is settled again")
        // Mapping the IOVA again clears the stale record.
        f.map(a, iova: 0x1000, physical: 0x40_0000)
        f.access(0x1000, physical: 0x40_0000)
        #expect(f.invariants.count == 2)
    }

    @Test("handing out a reserved DID is did-reserved; handing one out twice is did-double-allocation")
    func didInvariants() throws {
        let rig = try KernelRig()
        rig.oracle.domainIDAllocated(driver: rig.driver, unit: 0, did: DomainID(0))
        rig.oracle.domainIDAllocated(driver: rig.driver, unit: 0, did: DomainID(1))
        #expect(rig.violations.map(\.invariant) == ["did-reserved", "did-reserved"])
        rig.oracle.domainIDAllocated(driver: rig.driver, unit: 0, did: DomainID(40))
        #expect(rig.violations.count == 2)
        rig.oracle.domainIDAllocated(driver: rig.driver, unit: 1, did: DomainID(40))
        #expect(rig.violations.count == 2, "DIDs are per unit")
        rig.oracle.domainIDAllocated(driver: rig.driver, unit: 0, did: DomainID(40))
        #expect(rig.violations.map(\.invariant) == ["did-reserved", "did-reserved", "did-double-allocation"])
        rig.oracle.domainIDReleased(driver: rig.driver, unit: 0, did: DomainID(40))
        rig.oracle.domainIDAllocated(driver: rig.driver, unit: 0, did: DomainID(40))
        #expect(rig.violations.count == 3, "a released DID may be handed out again")
        #expect(rig.oracle.violationCount == 3)
    }

    // MARK: Teardown

    @Test("a user domain left allocated after every device is released is a domain leak")
    func domainLeak() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic0", dev: 2)
        let leaked = try rig.core.allocDomain(for: dev)
        try rig.core.release(dev)
        rig.settle()
        rig.driver.shutdown()
        rig.machine.freeBuffers()
        rig.oracle.checkTeardown(core: rig.core, driver: rig.driver)
        #expect(rig.violations.contains { $0.invariant == "domain-leak" }, "\(rig.violations)")
        #expect(rig.core.liveDomains.count == 1)
        withExtendedLifetime(leaked) {}
    }

    @Test("a PASID left allocated at teardown is a PASID leak")
    func pasidLeak() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("gpu0", dev: 3, pasids: 64)
        let pasid = try rig.core.allocGlobalPASID(for: dev)
        #expect(rig.core.pasids.isAllocated(pasid))
        try rig.core.release(dev)
        rig.settle()
        rig.driver.shutdown()
        rig.machine.freeBuffers()
        rig.oracle.checkTeardown(core: rig.core, driver: rig.driver)
        #expect(rig.violations.map(\.invariant) == ["pasid-leak"], "\(rig.violations)")
    }

    @Test("a clean teardown leaves no frame, DID, PASID or domain, and the oracle reports nothing")
    func cleanTeardown() throws {
        let rig = try KernelRig()
        let (nic, nicEP) = try rig.add("nic0", dev: 2)
        let (gpu, gpuEP) = try rig.add("gpu0", bus: 1, dev: 0, unit: 1, pasids: 64)
        let nicDomain = try #require(nic.attachedDomain)
        try rig.mapBuffers(nicDomain, iova: 0x10_0000, pages: 2)
        #expect(rig.dmaWrite(nicEP, 0x10_0000)?.fault == nil)
        let user = try rig.core.allocDomain(for: gpu, flags: .pasid)
        try rig.mapBuffers(user, iova: 0x4000_0000)
        let pasid = try rig.core.allocGlobalPASID(for: gpu)
        try rig.core.attachPASID(user, to: gpu, pasid: pasid)
        #expect(rig.dmaRead(gpuEP, 0x4000_0000, pasid: pasid)?.fault == nil)

        try rig.core.detachPASID(user, from: gpu, pasid: pasid)
        try rig.core.freeGlobalPASID(pasid)
        try rig.core.freeDomain(user)
        #expect(try rig.core.unmap(nicDomain, iova: 0x10_0000, size: 0x2000) == 0x2000)
        try rig.core.release(nic)
        try rig.core.release(gpu)
        rig.settle()
        rig.driver.shutdown()
        rig.machine.freeBuffers()
        rig.oracle.checkTeardown(core: rig.core, driver: rig.driver)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
        #expect(rig.platform.frames.inUse == 0)
        #expect(rig.core.liveDomains.isEmpty)
        #expect(rig.core.pasids.allocated == 0)
    }

    @Test("teardown with a mapped default domain still frees its page tables with the domain")
    func teardownFreesMappedDomain() throws {
        let rig = try KernelRig()
        let (nic, nicEP) = try rig.add("nic0", dev: 2)
        try rig.mapBuffers(try #require(nic.attachedDomain), iova: 0x10_0000, pages: 3)
        #expect(rig.dmaWrite(nicEP, 0x10_0000)?.fault == nil)
        #expect(rig.platform.frames.inUse(.pageTable) > 0)
        try rig.core.release(nic)
        rig.settle()
        rig.driver.shutdown()
        rig.machine.freeBuffers()
        rig.oracle.checkTeardown(core: rig.core, driver: rig.driver)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
        #expect(rig.platform.frames.inUse == 0)
    }

    // MARK: Deferred-flush policy

    @Test("a deferred unmap under the strict policy is a violation; under lazy, in a trusted device's domain, it is not")
    func deferredUnmapNeedsLazyPolicy() throws {
        let feed = try OracleFeed()
        let d = feed.domain(900)
        feed.transition(from: nil, to: d)
        feed.map(d, iova: 0x1000, physical: 0x80_0000)
        feed.oracle.policy = .lazy
        feed.oracle.unmapDeferred(d, iova: 0x1000, requested: 0x1000, unmapped: 0x1000, tables: [])
        #expect(feed.invariants.isEmpty, "\(feed.invariants)")
        feed.map(d, iova: 0x2000, physical: 0x80_1000)
        feed.oracle.policy = .strict
        feed.oracle.unmapDeferred(d, iova: 0x2000, requested: 0x1000, unmapped: 0x1000, tables: [])
        #expect(feed.invariants == ["deferred-unmap-not-lazy"])
    }

    @Test("a deferred unmap in a domain an untrusted device can reach is a violation")
    func deferredUnmapUntrusted() throws {
        let feed = try OracleFeed(untrusted: true)
        let d = feed.domain(901)
        feed.oracle.policy = .lazy
        feed.transition(from: nil, to: d)
        feed.map(d, iova: 0x1000, physical: 0x80_0000)
        feed.oracle.unmapDeferred(d, iova: 0x1000, requested: 0x1000, unmapped: 0x1000, tables: [])
        #expect(feed.invariants == ["deferred-unmap-untrusted"])
    }
}
