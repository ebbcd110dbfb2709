import Testing
import Platform
import Formats
import Hardware
import Kernel
@testable import Simulation

/// The errno of the `IOMMUError` `body` throws, or nil when it does not throw.
/// (-1 if it throws anything else: every API error must be an `IOMMUError`.)
private func attachErrno(_ body: () throws -> Void) -> Int32? {
    do { try body() } catch let e as IOMMUError { return e.errno } catch { return -1 }
    return nil
}

/// The `IOMMUError` `body` throws, or nil when it does not throw.
private func attachError(_ body: () throws -> Void) -> IOMMUError? {
    do { try body() } catch let e as IOMMUError { return e } catch {
        Issue.record("not an IOMMUError: \(error)")
    }
    return nil
}

@Suite("default domains follow the DMA policy and device properties")
struct AttachReplaceDefaultDomainTests {
    @Test("strict policy gives a translated DMA domain without deferred flushing")
    func strictPolicy() throws {
        let rig = try KernelRig(policy: .strict)
        let (dev, _) = try rig.add("nic", dev: 1)
        let g = try #require(dev.group)
        let d = try #require(g.defaultDomain)
        #expect(d.type == .dma)
        #expect(!d.flags.contains(.deferredFlush))
        #expect(d.isCoreOwned)
        #expect(g.domain === d)
        #expect(dev.attachedDomain === d)
        #expect(d.attachments == 1)
    }

    @Test("lazy policy gives a DMA domain with deferred flushing when the driver can defer")
    func lazyPolicy() throws {
        let rig = try KernelRig(policy: .lazy)
        let (dev, _) = try rig.add("nic", dev: 1)
        #expect(rig.driver.capable(dev, .deferredFlush))
        let d = try #require(dev.group?.defaultDomain)
        #expect(d.type == .dma)
        #expect(d.flags.contains(.deferredFlush))
        #expect(dev.attachedDomain === d)
    }

    @Test("an untrusted device under the lazy policy still gets a strict DMA domain")
    func lazyUntrusted() throws {
        let rig = try KernelRig(policy: .lazy)
        let (dev, _) = try rig.add("thunderbolt", dev: 1, untrusted: true)
        let d = try #require(dev.group?.defaultDomain)
        #expect(d.type == .dma)
        #expect(!d.flags.contains(.deferredFlush))
    }

    @Test("an untrusted device under the passthrough policy is translated, not identity-mapped")
    func passthroughUntrusted() throws {
        let rig = try KernelRig(policy: .passthrough)
        let (dev, _) = try rig.add("thunderbolt", dev: 1, untrusted: true)
        let d = try #require(dev.group?.defaultDomain)
        #expect(d.type == .dma)
        #expect(d !== rig.driver.identityDomain)
    }

    @Test("passthrough policy gives the driver's static identity domain")
    func passthroughPolicy() throws {
        let rig = try KernelRig(policy: .passthrough)
        let (dev, _) = try rig.add("nic", dev: 1)
        let identity = try #require(rig.driver.identityDomain)
        #expect(dev.group?.defaultDomain === identity)
        #expect(dev.attachedDomain === identity)
        #expect(rig.core.liveDomains.isEmpty, "the static identity domain is not a live (allocated) domain")
    }

    @Test("passthrough policy on hardware without pass-through falls back to a strict DMA domain")
    func passthroughWithoutHardwareSupport() throws {
        let noPT = VTdConfiguration(name: "dmar0", extendedCapability: .make(passThrough: false))
        let rig = try KernelRig(policy: .passthrough, units: [noPT])
        #expect(rig.driver.identityDomain == nil)
        let (dev, _) = try rig.add("nic", dev: 1, prefer: .identity)
        let d = try #require(dev.group?.defaultDomain)
        #expect(d.type == .dma)
        #expect(!d.flags.contains(.deferredFlush))
        #expect(dev.attachedDomain === d)
    }

    @Test("a device preferring identity gets the identity domain under the strict policy")
    func preferIdentity() throws {
        let rig = try KernelRig(policy: .strict)
        let (dev, _) = try rig.add("gpu", dev: 1, prefer: .identity)
        let (other, _) = try rig.add("nic", dev: 2)
        #expect(dev.attachedDomain === rig.driver.identityDomain)
        #expect(other.attachedDomain?.type == .dma, "the preference is per device, not global")
    }

    @Test("identity-mapped DMA of a passthrough device lands on the physical address it names")
    func identityDMA() throws {
        let rig = try KernelRig(policy: .passthrough)
        let (_, ep) = try rig.add("nic", dev: 1)
        let pa = try rig.machine.allocateBuffer()
        let c = try #require(rig.dmaWrite(ep, pa, value: 0x3C))
        #expect(c.fault == nil)
        #expect(try rig.platform.memory.load8(pa) == 0x3C)
        #expect(rig.violations.isEmpty)
    }

    @Test("devices with the same group key share one group and one default domain, across units")
    func sharedGroup() throws {
        let rig = try KernelRig()
        let (a, _) = try rig.add("fn0", dev: 3, fn: 0, unit: 0, group: "multi")
        let (b, _) = try rig.add("fn1", dev: 3, fn: 1, unit: 0, group: "multi")
        let (c, _) = try rig.add("far", dev: 4, unit: 1, group: "multi")
        let (solo, _) = try rig.add("solo", dev: 5)
        let g = try #require(a.group)
        #expect(b.group === g)
        #expect(c.group === g)
        #expect(solo.group !== g)
        #expect(g.devices.count == 3)
        let d = try #require(g.defaultDomain)
        #expect(a.attachedDomain === d && b.attachedDomain === d && c.attachedDomain === d)
        #expect(d.attachments == 3)
        #expect(solo.attachedDomain !== d)
        // One DID per (domain, unit): the shared default domain uses one on each unit.
        #expect(rig.driver.units[0].domainIDs.allocated == 2, "shared domain + solo's domain")
        #expect(rig.driver.units[1].domainIDs.allocated == 1)
    }
}

@Suite("attach, replace and detach of user domains")
struct AttachReplaceTests {
    @Test("a user domain attaches to a group that is in its default domain")
    func attachUserDomain() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("nic", dev: 1)
        let g = try #require(dev.group)
        let a = try rig.core.allocDomain(for: dev)
        #expect(a.type == .unmanaged)
        let pa = try rig.mapBuffers(a, iova: 0x10_0000)[0]
        try rig.core.attach(a, to: g)
        #expect(g.domain === a)
        #expect(dev.attachedDomain === a)
        #expect(a.attachments == 1)
        #expect(g.defaultDomain?.attachments == 0)
        let c = try #require(rig.dmaWrite(ep, 0x10_0000, value: 0x77))
        #expect(c.fault == nil)
        #expect(try rig.platform.memory.load8(pa) == 0x77)
        #expect(rig.violations.isEmpty)
    }

    @Test("attaching a second user domain while one is attached fails with EBUSY and changes nothing")
    func attachSecondIsBusy() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("nic", dev: 1)
        let g = try #require(dev.group)
        let a = try rig.core.allocDomain(for: dev)
        let b = try rig.core.allocDomain(for: dev)
        let pa = try rig.mapBuffers(a, iova: 0x2000)[0]
        try rig.core.attach(a, to: g)
        let dids = rig.driver.units[0].domainIDs.allocated
        #expect(attachErrno { try rig.core.attach(b, to: g) } == 16)
        #expect(attachErrno { try rig.core.attach(b, to: dev) } == 16)
        #expect(g.domain === a)
        #expect(dev.attachedDomain === a)
        #expect(a.attachments == 1)
        #expect(b.attachments == 0)
        #expect(rig.driver.units[0].domainIDs.allocated == dids)
        #expect(rig.dmaWrite(ep, 0x2000, value: 0x11)?.fault == nil)
        #expect(try rig.platform.memory.load8(pa) == 0x11)
    }

    @Test("replacing user domain A with B is hitless (a 128-bit exchange on second-stage domains, staged around one on first-stage ones) and moves every device to B",
          arguments: VTdPagingStage.allCases)
    func replaceIsHitless(stage: VTdPagingStage) throws {
        let rig = try KernelRig(stage: stage)
        let (d0, _) = try rig.add("fn0", dev: 2, fn: 0, group: "g")
        let (d1, ep1) = try rig.add("fn1", dev: 2, fn: 1, group: "g")
        let g = try #require(d0.group)
        let a = try rig.core.allocDomain(for: d0)
        let b = try rig.core.allocDomain(for: d0)
        let shared = try rig.machine.allocateBuffer()
        try rig.core.map(a, iova: 0x8000, physical: shared, size: 4096, permissions: .readWrite)
        try rig.core.map(b, iova: 0x8000, physical: shared, size: 4096, permissions: .readWrite)
        try rig.core.attach(a, to: g)
        let removedBefore = rig.core.updatePathCounts[UpdatePath.removed.rawValue, default: 0]
        let teardownBefore = rig.core.updatePathCounts[UpdatePath.teardownSetup.rawValue, default: 0]
        try rig.core.replace(g, with: b)
        let hitless: UpdatePath = stage == .first ? .staged : .compareExchange128
        #expect(rig.core.lastUpdatePath == hitless)
        #expect(rig.core.lastUpdatePath.isHitless)
        #expect(rig.core.updatePathCounts[UpdatePath.removed.rawValue, default: 0] == removedBefore, "never through blocked")
        #expect(rig.core.updatePathCounts[UpdatePath.teardownSetup.rawValue, default: 0] == teardownBefore)
        #expect(rig.core.updatePathCounts[hitless.rawValue, default: 0] >= 2)
        #expect(g.domain === b)
        #expect(d0.attachedDomain === b && d1.attachedDomain === b)
        #expect(a.attachments == 0 && b.attachments == 2)
        #expect(rig.dmaWrite(ep1, 0x8000, value: 0x42)?.fault == nil)
        #expect(try rig.platform.memory.load8(shared) == 0x42)
        // Nothing uses A any more: it can be freed.
        try rig.core.freeDomain(a)
        #expect(rig.violations.isEmpty)
    }

    @Test("replacing a domain with itself changes nothing")
    func replaceSame() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic", dev: 1)
        let g = try #require(dev.group)
        let a = try rig.core.allocDomain(for: dev)
        try rig.core.attach(a, to: g)
        let counts = rig.core.updatePathCounts
        try rig.core.replace(g, with: a)
        #expect(rig.core.updatePathCounts == counts)
        #expect(a.attachments == 1)
    }

    @Test("detach returns the group to its default domain, and a second detach fails with ENOENT")
    func detachToDefault() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("nic", dev: 1)
        let g = try #require(dev.group)
        let def = try #require(g.defaultDomain)
        let defPA = try rig.mapBuffers(def, iova: 0x4000)[0]
        let a = try rig.core.allocDomain(for: dev)
        try rig.core.attach(a, to: g)
        #expect(rig.dmaWrite(ep, 0x4000)?.fault != nil, "A does not map 0x4000")
        try rig.core.detach(a, from: g)
        #expect(g.domain === def)
        #expect(dev.attachedDomain === def)
        #expect(a.attachments == 0)
        #expect(def.attachments == 1)
        #expect(rig.dmaWrite(ep, 0x4000, value: 0x99)?.fault == nil)
        #expect(try rig.platform.memory.load8(defPA) == 0x99)
        #expect(attachErrno { try rig.core.detach(a, from: g) } == 2)
        #expect(g.domain === def)
        #expect(attachErrno { try rig.core.detach(def, from: g) } == 2, "the default domain is not detachable")
        try rig.core.freeDomain(a)
        #expect(rig.violations.isEmpty)
    }

    @Test("detach after claimDMAOwner returns the group to the blocking domain, not the default one")
    func detachToBlocking() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("nic", dev: 1)
        let g = try #require(dev.group)
        let def = try #require(g.defaultDomain)
        try rig.mapBuffers(def, iova: 0x4000)
        try rig.core.claimDMAOwner(g)
        #expect(g.dmaOwned)
        #expect(g.domain === rig.driver.blockedDomain)
        #expect(dev.attachedDomain === rig.driver.blockedDomain)
        let a = try rig.core.allocDomain(for: dev)
        try rig.core.attach(a, to: g)
        #expect(g.domain === a)
        try rig.core.detach(a, from: g)
        #expect(g.domain === rig.driver.blockedDomain)
        #expect(dev.attachedDomain === rig.driver.blockedDomain)
        #expect(rig.dmaWrite(ep, 0x4000)?.fault != nil, "blocked: not even the default domain's mappings")
        #expect(attachErrno { try rig.core.detach(a, from: g) } == 2)
        try rig.core.releaseDMAOwner(g)
        #expect(g.domain === def)
        #expect(dev.attachedDomain === def)
        #expect(rig.dmaWrite(ep, 0x4000)?.fault == nil)
        #expect(rig.violations.isEmpty)
    }

    @Test("a device failing part-way through a group attach rolls the switched devices back to the old domain")
    func rollbackOnPartialFailure() throws {
        let rig = try KernelRig()
        let (d0, ep0) = try rig.add("near", dev: 1, unit: 0, group: "split")
        let (d1, ep1) = try rig.add("far", dev: 1, unit: 1, group: "split")
        let g = try #require(d0.group)
        #expect(d1.group === g)
        let def = try #require(g.defaultDomain)
        let pa = try rig.mapBuffers(def, iova: 0x6000)[0]
        let units = rig.driver.units
        #expect(units[0].domainIDs.allocated == 1 && units[1].domainIDs.allocated == 1)

        let b = try rig.core.allocDomain(for: d0)
        // The first device takes a DID for B on unit 0; the second one's DID on unit 1 fails.
        rig.platform.faults.reset()
        rig.platform.faults.mode = .failNth(2, only: .didAlloc)
        let err = attachError { try rig.core.attach(b, to: g) }
        rig.platform.faults.mode = .off
        #expect(err?.errno == 28)
        #expect(err?.isIncompatible == false)
        #expect(rig.platform.faults.fired.count == 1)
        #expect(g.domain === def)
        #expect(d0.attachedDomain === def, "the first device must be rolled back")
        #expect(d1.attachedDomain === def)
        #expect(def.attachments == 2)
        #expect(b.attachments == 0)
        #expect(rig.core.blockedByRollback == 0)
        #expect(units[0].domainIDs.allocated == 1)
        #expect(units[1].domainIDs.allocated == 1)
        #expect(units[0].domainIDs.quarantined.isEmpty && units[1].domainIDs.quarantined.isEmpty)
        // Both devices really translate through the old domain again.
        #expect(rig.dmaWrite(ep0, 0x6000, value: 0x21)?.fault == nil)
        #expect(try rig.platform.memory.load8(pa) == 0x21)
        #expect(rig.dmaWrite(ep1, 0x6000, value: 0x22)?.fault == nil)
        #expect(try rig.platform.memory.load8(pa) == 0x22)
        // And the group can still take B once the resource is there.
        try rig.core.attach(b, to: g)
        #expect(d0.attachedDomain === b && d1.attachedDomain === b)
        #expect(rig.violations.isEmpty)
    }

    @Test("a replace failing part-way keeps the old user domain on every device")
    func replaceRollback() throws {
        let rig = try KernelRig()
        let (d0, _) = try rig.add("near", dev: 1, unit: 0, group: "split")
        let (d1, ep1) = try rig.add("far", dev: 1, unit: 1, group: "split")
        let g = try #require(d0.group)
        let a = try rig.core.allocDomain(for: d0)
        let b = try rig.core.allocDomain(for: d0)
        let pa = try rig.mapBuffers(a, iova: 0x6000)[0]
        try rig.core.attach(a, to: g)
        let before = rig.driver.units.map { $0.domainIDs.allocated }
        rig.platform.faults.reset()
        rig.platform.faults.mode = .failNth(2, only: .didAlloc)
        #expect(attachErrno { try rig.core.replace(g, with: b) } == 28)
        rig.platform.faults.mode = .off
        #expect(g.domain === a)
        #expect(d0.attachedDomain === a && d1.attachedDomain === a)
        #expect(a.attachments == 2 && b.attachments == 0)
        #expect(rig.driver.units.map { $0.domainIDs.allocated } == before)
        #expect(rig.dmaWrite(ep1, 0x6000, value: 0x5)?.fault == nil)
        #expect(try rig.platform.memory.load8(pa) == 0x5)
        #expect(rig.violations.isEmpty)
    }

    @Test("detach must succeed: a device that cannot take its default domain back is blocked")
    func detachMustSucceed() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("nic", dev: 1)
        let g = try #require(dev.group)
        let def = try #require(g.defaultDomain)
        try rig.mapBuffers(def, iova: 0x3000)
        let a = try rig.core.allocDomain(for: dev)
        try rig.mapBuffers(a, iova: 0x3000)
        try rig.core.attach(a, to: g)
        // The default domain gave its DID back when the device left it; taking one again fails.
        rig.platform.faults.reset()
        rig.platform.faults.mode = .failNth(1, only: .didAlloc)
        let err = attachError { try rig.core.detach(a, from: g) }
        rig.platform.faults.mode = .off
        #expect(err == nil, "detach does not fail once its arguments are right")
        #expect(rig.platform.faults.fired.count == 1, "the injected failure was reached")
        #expect(dev.attachedDomain === rig.driver.blockedDomain)
        #expect(g.domain === def)
        #expect(a.attachments == 0)
        #expect(rig.core.blockedByRollback == 1)
        #expect(rig.driver.units[0].domainIDs.allocated == 0, "A's DID went back, none was taken")
        #expect(rig.dmaWrite(ep, 0x3000)?.fault != nil, "a blocked device reaches nothing")
        try rig.core.freeDomain(a)
        // Setting the group's domain again brings the blocked device back.
        try rig.core.replace(g, with: def)
        #expect(dev.attachedDomain === def)
        #expect(rig.dmaWrite(ep, 0x3000)?.fault == nil)
        #expect(rig.violations.isEmpty)
    }

    @Test("a domain of another driver instance is refused as incompatible (EINVAL), not as a hard error")
    func incompatibleOtherDriver() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic", dev: 1)
        let g = try #require(dev.group)
        let hw = VTdUnit(configuration: VTdConfiguration(name: "dmar2"), platform: rig.platform)
        let other = try VTdDriver(name: "intel-iommu-2", platform: rig.platform, hardware: [hw])
        rig.core.register(other)
        let foreignDev = try #require(try rig.core.probe([DeviceDescription(name: "foreign", requesterID: KernelRig.rid(7, 0))],
                                                         driver: other).first)
        #expect(foreignDev.driver === other)
        let foreign = try rig.core.allocDomain(for: foreignDev)
        let err = try #require(attachError { try rig.core.attach(foreign, to: g) })
        #expect(err.isIncompatible)
        #expect(err.errno == 22)
        #expect(attachError { try rig.core.replace(g, with: foreign) }?.isIncompatible == true)
        #expect(g.domain === g.defaultDomain)
        #expect(dev.attachedDomain === g.defaultDomain)
        #expect(foreign.attachments == 0)
        // The foreign domain still works where it belongs.
        try rig.core.attach(foreign, to: foreignDev)
        #expect(foreignDev.attachedDomain === foreign)
    }

    @Test("running out of domain IDs is ENOSPC, a real failure and not 'incompatible'")
    func didExhaustion() throws {
        let small = VTdConfiguration(name: "dmar-small", capability: .make(domainIDBits: 4))
        let rig = try KernelRig(units: [small])
        #expect(rig.driver.units[0].domainIDs.limit == 16)
        var devs: [Device] = []
        for i in 1...14 { devs.append(try rig.add("d\(i)", dev: UInt8(i)).0) }
        #expect(rig.driver.units[0].domainIDs.allocated == 14, "DIDs 2...15 are all in use")
        let g = try #require(devs[0].group)
        let a = try rig.core.allocDomain(for: devs[0])
        let err = try #require(attachError { try rig.core.attach(a, to: g) })
        #expect(err.errno == 28)
        #expect(!err.isIncompatible)
        #expect(g.domain === g.defaultDomain)
        #expect(devs[0].attachedDomain === g.defaultDomain)
        #expect(a.attachments == 0)
        #expect(rig.driver.units[0].domainIDs.allocated == 14)
        // Probing a 15th device fails the same way and leaves nothing behind.
        let groups = rig.core.groups.count
        let live = rig.core.liveDomains.count
        do {
            try rig.add("d15", dev: 15)
            Issue.record("probing with no DID left should fail")
        } catch let e as IOMMUError {
            #expect(e.errno == 28)
        }
        #expect(rig.core.devices.count == 14)
        #expect(rig.core.groups.count == groups)
        #expect(rig.core.liveDomains.count == live)
        // Freeing a DID (release one device) lets the attach through.
        try rig.core.release(devs[13])
        try rig.core.attach(a, to: g)
        #expect(devs[0].attachedDomain === a)
        #expect(rig.violations.isEmpty)
    }

    @Test("a device joining a group whose domain it cannot take fails its probe and leaves the group as it was")
    func joinGroupFails() throws {
        let small = VTdConfiguration(name: "dmar-small", capability: .make(domainIDBits: 4))
        let rig = try KernelRig(units: [VTdConfiguration(name: "dmar0"), small])
        let (first, ep) = try rig.add("first", dev: 1, unit: 0, group: "g")
        let g = try #require(first.group)
        let def = try #require(g.defaultDomain)
        let pa = try rig.mapBuffers(def, iova: 0x1000)[0]
        for i in 1...14 { try rig.add("filler\(i)", dev: UInt8(i), unit: 1) }
        #expect(rig.driver.units[1].domainIDs.allocated == 14)
        do {
            try rig.add("joiner", dev: 20, unit: 1, group: "g")
            Issue.record("joining needs a DID for the group's domain on unit 1, and none is left")
        } catch let e as IOMMUError {
            #expect(e.errno == 28)
        }
        #expect(g.devices.count == 1)
        #expect(g.domain === def)
        #expect(def.attachments == 1)
        #expect(rig.core.devices.count == 15)
        #expect(rig.core.device(driver: rig.driver, unit: 1, requesterID: KernelRig.rid(0, 20)) == nil)
        #expect(rig.driver.units[1].domainIDs.allocated == 14)
        #expect(rig.dmaWrite(ep, 0x1000, value: 0x12)?.fault == nil)
        #expect(try rig.platform.memory.load8(pa) == 0x12)
        #expect(rig.violations.isEmpty)
    }

    @Test("another group's default domain cannot be attached or replaced in, so it never outlives its group")
    func foreignDefaultDomainRefused() throws {
        let rig = try KernelRig()
        let (a, _) = try rig.add("a", dev: 1)
        let (b, _) = try rig.add("b", dev: 2)
        let foreign = try #require(a.group?.defaultDomain)
        let bg = try #require(b.group)
        #expect(attachErrno { try rig.core.attach(foreign, to: bg) } == 22)
        #expect(attachErrno { try rig.core.replace(bg, with: foreign) } == 22)
        #expect(bg.domain === bg.defaultDomain)
        try rig.core.release(a)
        #expect(rig.core.liveDomains[foreign.id] == nil, "the emptied group's default domain is freed with it")
        try rig.core.release(b)
        rig.machine.freeBuffers()
        rig.driver.shutdown()
        rig.oracle.checkTeardown(core: rig.core, driver: rig.driver)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("replacing a domain under DMA traffic never faults an address both domains map alike",
          arguments: [UInt64(1), 2, 3, 4, 5])
    func replaceUnderTraffic(seed: UInt64) throws {
        let rig = try KernelRig(seed: seed)
        let (d0, ep0) = try rig.add("fn0", dev: 6, fn: 0, unit: 0, group: "g")
        let (d1, ep1) = try rig.add("fn1", dev: 6, fn: 1, unit: 1, group: "g")
        let g = try #require(d0.group)
        let a = try rig.core.allocDomain(for: d0)
        let b = try rig.core.allocDomain(for: d0)
        let base: UInt64 = 0x20_0000
        let pages = 4
        for p in 0..<pages {
            let pa = try rig.machine.allocateBuffer()
            let iova = base + UInt64(p) * 4096
            try rig.core.map(a, iova: iova, physical: pa, size: 4096, permissions: .readWrite)
            try rig.core.map(b, iova: iova, physical: pa, size: 4096, permissions: .readWrite)
        }
        try rig.core.attach(a, to: g)
        rig.scheduler.yieldPolicy = YieldPolicy(probability: 1, maxAdvanceNs: 5000)
        let streams = [ep0, ep1].map { TrafficStream(endpoint: $0, intervalNs: 400, scheduler: rig.scheduler) }
        for s in streams {
            s.targets = [.init(address: base, length: UInt64(pages) * 4096)]
            s.start()
        }
        rig.scheduler.run(until: rig.scheduler.now + 40_000)
        let midReplaceYields = rig.scheduler.yieldCounts[KernelYield.afterPASIDEntryWrite, default: 0]
        try rig.core.replace(g, with: b)
        #expect(rig.core.lastUpdatePath.isHitless)
        #expect(rig.scheduler.yieldCounts[KernelYield.afterPASIDEntryWrite, default: 0] > midReplaceYields,
                "hardware ran between the entry switch and its flush")
        rig.scheduler.run(until: rig.scheduler.now + 40_000)
        try rig.core.replace(g, with: a)
        rig.scheduler.run(until: rig.scheduler.now + 40_000)
        for s in streams { s.stop() }
        rig.settle()
        #expect(streams.allSatisfy { $0.issued > 0 })
        #expect(ep0.counters.completed > 0 && ep1.counters.completed > 0)
        #expect(ep0.counters.faulted == 0)
        #expect(ep1.counters.faulted == 0)
        #expect(rig.core.updatePathCounts[UpdatePath.teardownSetup.rawValue, default: 0] == 0)
        #expect(d0.attachedDomain === a && d1.attachedDomain === a)
        #expect(rig.oracle.checks > 0)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }
}
