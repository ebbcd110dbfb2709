import Testing
import Platform
import Formats
import Hardware
@testable import Kernel
@testable import Simulation

/// Forwards every kernel event to the oracle and, at each DID allocation and release,
/// records how many cache entries the unit still holds tagged with that DID.
private final class DIDLifetimeSpy: KernelObserver {
    struct Event: Equatable {
        var unit: Int
        var did: DomainID
        var iotlb: Int
        var pasidCache: Int
    }

    let oracle: Oracle
    let units: [VTdUnit]
    var released: [Event] = []
    var allocated: [Event] = []

    init(_ machine: Machine) {
        oracle = machine.oracle
        units = machine.units
    }

    func mapBegan(_ domain: IOMMUDomain, iova: UInt64, physical: UInt64, size: UInt64, permissions: PagePermissions) {
        oracle.mapBegan(domain, iova: iova, physical: physical, size: size, permissions: permissions)
    }
    func mapEnded(_ domain: IOMMUDomain, iova: UInt64, size: UInt64, mapped: Bool) {
        oracle.mapEnded(domain, iova: iova, size: size, mapped: mapped)
    }
    func unmapBegan(_ domain: IOMMUDomain, iova: UInt64, size: UInt64) { oracle.unmapBegan(domain, iova: iova, size: size) }
    func unmapEnded(_ domain: IOMMUDomain, iova: UInt64, requested: UInt64, unmapped: UInt64) {
        oracle.unmapEnded(domain, iova: iova, requested: requested, unmapped: unmapped)
    }
    func transitionBegan(_ device: Device, pasid: PASID?, from: IOMMUDomain?, to: IOMMUDomain?) {
        oracle.transitionBegan(device, pasid: pasid, from: from, to: to)
    }
    func transitionEnded(_ device: Device, pasid: PASID?, current: IOMMUDomain?, path: UpdatePath) {
        oracle.transitionEnded(device, pasid: pasid, current: current, path: path)
    }
    func domainFreed(_ domain: IOMMUDomain) { oracle.domainFreed(domain) }
    func domainIDAllocated(driver: any IOMMUDriver, unit: Int, did: DomainID) {
        let c = units[unit].cachedEntries(taggedWith: did)
        allocated.append(Event(unit: unit, did: did, iotlb: c.iotlb, pasidCache: c.pasidCache))
        oracle.domainIDAllocated(driver: driver, unit: unit, did: did)
    }
    func domainIDReleased(driver: any IOMMUDriver, unit: Int, did: DomainID) {
        let c = units[unit].cachedEntries(taggedWith: did)
        released.append(Event(unit: unit, did: did, iotlb: c.iotlb, pasidCache: c.pasidCache))
        oracle.domainIDReleased(driver: driver, unit: unit, did: did)
    }
    func faultReported(_ device: Device?, _ fault: ReportedFault) { oracle.faultReported(device, fault) }
}

/// How a domain loses its last user in `didReleasedAfterInvalidation`.
enum DIDDeparture: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case detachToIdentityDefault
    case releaseDevice
    case replaceWithAnotherDomain
    var testDescription: String { rawValue }
}

@Suite("DIDLifetime: domain IDs are reserved, shared per unit, reference counted and reused only after invalidation")
struct DIDLifetimeTests {

    /// The DID `domain` holds on `unit`, read from the driver's books.
    func did(_ domain: IOMMUDomain?, on unit: Int) -> DomainID? {
        (domain as? VTdDMARDomain)?.did(on: unit)
    }

    /// The PASID-table entry the hardware would read for the RID traffic of `device`.
    func ridPASIDEntry(_ rig: KernelRig, _ device: Device) throws -> PASIDEntry {
        let u = rig.driver.units[device.unit]
        let info = try #require(u.devices[device.requesterID.rawValue])
        let address = try #require(try u.pasidEntryAddress(info, 0, create: false))
        return try u.readEntry(address)
    }

    @Test("the first DID handed out on a unit is 2; identity attachments use the shared DID 1 and allocate nothing")
    func firstDIDIsTwo() throws {
        let rig = try KernelRig()
        let u0 = rig.driver.units[0]
        #expect(u0.domainIDs.allocated == 0)
        #expect(u0.domainIDs.reservedIntact)

        let (nvme, _) = try rig.add("nvme0", dev: 1, prefer: .identity)
        #expect(nvme.attachedDomain?.type == .identity)
        #expect(u0.domainIDs.allocated == 0, "an identity attachment must not allocate a DID")
        let idEntry = try ridPASIDEntry(rig, nvme)
        #expect(idEntry.present)
        #expect(idEntry.pgtt == .passThrough)
        #expect(idEntry.did == DomainIDAllocator.shared)
        #expect(u0.domainIDs.reservedIntact)

        let (nic, _) = try rig.add("nic0", dev: 2)
        #expect(nic.attachedDomain?.type == .dma)
        #expect(did(nic.attachedDomain, on: 0) == DomainID(2))
        #expect(u0.domainIDs.allocated == 1)
        #expect(u0.domainIDs.isInUse(DomainID(2)))
        let dmaEntry = try ridPASIDEntry(rig, nic)
        #expect(dmaEntry.pgtt == .firstStage, "DMA domains are first stage, as Linux chooses on a unit with FLTS")
        #expect(dmaEntry.did == DomainID(2))
        #expect(u0.domainIDs.reservedIntact)

        // The other unit starts from 2 as well.
        let (other, _) = try rig.add("nic1", bus: 1, dev: 0, unit: 1)
        #expect(did(other.attachedDomain, on: 1) == DomainID(2))
        #expect(rig.driver.units[1].domainIDs.allocated == 1)

        try rig.core.release(nic)
        try rig.core.release(other)
        try rig.core.release(nvme)
        #expect(u0.domainIDs.allocated == 0)
        #expect(rig.driver.units[1].domainIDs.allocated == 0)
        #expect(u0.domainIDs.reservedIntact)
        #expect(rig.driver.units[1].domainIDs.reservedIntact)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("a domain holds one DID per unit, shared by its attachments there and freed with the last of them")
    func oneDIDPerDomainAndUnit() throws {
        let rig = try KernelRig()
        let u0 = rig.driver.units[0], u1 = rig.driver.units[1]
        let (a, _) = try rig.add("a", dev: 2, prefer: .identity)
        let (b, _) = try rig.add("b", dev: 3, prefer: .identity)
        let (c, _) = try rig.add("c", bus: 1, dev: 0, unit: 1, prefer: .identity)
        #expect(u0.domainIDs.allocated == 0)
        #expect(u1.domainIDs.allocated == 0)

        let x = try rig.core.allocDomain(for: a)
        #expect(did(x, on: 0) == nil, "allocation alone takes no DID")
        #expect(u0.domainIDs.allocated == 0)

        try rig.core.attach(x, to: a)
        let didX = try #require(did(x, on: 0))
        #expect(didX == DomainID(2))
        #expect(u0.domainIDs.allocated == 1)

        try rig.core.attach(x, to: b)
        #expect(did(x, on: 0) == didX, "a second device on the same unit shares the DID")
        #expect(u0.domainIDs.allocated == 1)
        #expect((x as? VTdDMARDomain)?.unitDIDs[0]?.users == 2)
        #expect(try ridPASIDEntry(rig, a).did == didX)
        #expect(try ridPASIDEntry(rig, b).did == didX)

        try rig.core.attach(x, to: c)
        #expect(did(x, on: 1) == DomainID(2))
        #expect(u1.domainIDs.allocated == 1, "a device on another unit takes a DID there")
        #expect(u0.domainIDs.allocated == 1)

        try rig.core.detach(x, from: try #require(a.group))
        #expect(u0.domainIDs.allocated == 1, "another attachment on unit 0 still holds the DID")
        #expect(u0.domainIDs.isInUse(didX))
        #expect(did(x, on: 0) == didX)

        try rig.core.detach(x, from: try #require(b.group))
        #expect(u0.domainIDs.allocated == 0, "the last detach on unit 0 frees the DID")
        #expect(!u0.domainIDs.isInUse(didX))
        #expect(did(x, on: 0) == nil)
        #expect(u1.domainIDs.allocated == 1)

        try rig.core.detach(x, from: try #require(c.group))
        #expect(u1.domainIDs.allocated == 0)
        #expect(u0.domainIDs.reservedIntact && u1.domainIDs.reservedIntact)
        try rig.core.freeDomain(x)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("a DID is released only after the invalidation that removes its cache entries", arguments: DIDDeparture.allCases)
    func didReleasedAfterInvalidation(_ departure: DIDDeparture) throws {
        let rig = try KernelRig()
        let spy = DIDLifetimeSpy(rig.machine)
        rig.core.observer = spy
        defer { rig.core.observer = rig.oracle }
        let unit = rig.machine.units[0]
        let (dev, ep) = try rig.add("dev", dev: 2, prefer: .identity)
        let x = try rig.core.allocDomain(for: dev)
        try rig.mapBuffers(x, iova: 0x10_0000, pages: 4)
        try rig.core.attach(x, to: dev)
        let didX = try #require(did(x, on: 0))
        for p in 0..<4 {
            #expect(rig.dmaWrite(ep, 0x10_0000 + UInt64(p) * 4096)?.fault == nil)
        }
        #expect(unit.cachedEntries(taggedWith: didX).iotlb >= 4, "traffic must have filled the IOTLB under the DID")
        #expect(unit.cachedEntries(taggedWith: didX).pasidCache >= 1)

        var y: IOMMUDomain?
        switch departure {
        case .detachToIdentityDefault:
            try rig.core.detach(x, from: try #require(dev.group))
        case .releaseDevice:
            try rig.core.release(dev)
        case .replaceWithAnotherDomain:
            let other = try rig.core.allocDomain(for: dev)
            try rig.core.replace(try #require(dev.group), with: other)
            #expect(did(other, on: 0) == DomainID(3), "the DID being released is still in use while the new one is taken")
            y = other
        }
        let releases = spy.released.filter { $0.unit == 0 && $0.did == didX }
        #expect(releases.count == 1, "\(spy.released)")
        for r in releases {
            #expect(r.iotlb == 0, "IOTLB entries tagged with \(didX) remained when it was released")
            #expect(r.pasidCache == 0, "PASID-cache entries tagged with \(didX) remained when it was released")
        }
        #expect(!rig.driver.units[0].domainIDs.isInUse(didX))
        #expect(rig.driver.units[0].domainIDs.quarantined.isEmpty)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
        withExtendedLifetime((spy, y)) {}
    }

    @Test("a freed DID is reused lowest-first, and the new domain under it never sees the old domain's translations")
    func didReuseAfterInvalidation() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("dev", dev: 2, prefer: .identity)
        let unit = rig.machine.units[0]

        let a = try rig.core.allocDomain(for: dev)
        let bufA = try rig.mapBuffers(a, iova: 0x10_0000)[0]
        try rig.core.attach(a, to: dev)
        #expect(did(a, on: 0) == DomainID(2))
        #expect(rig.dmaWrite(ep, 0x10_0000, value: 0xA5)?.fault == nil)
        #expect(rig.dmaWrite(ep, 0x10_0040, value: 0xA5)?.fault == nil)
        #expect(unit.cachedEntries(taggedWith: DomainID(2)).iotlb > 0)

        try rig.core.detach(a, from: try #require(dev.group))
        #expect(!rig.driver.units[0].domainIDs.isInUse(DomainID(2)))
        #expect(unit.cachedEntries(taggedWith: DomainID(2)).iotlb == 0)
        #expect(unit.cachedEntries(taggedWith: DomainID(2)).pasidCache == 0)

        let b = try rig.core.allocDomain(for: dev)
        let bufB = try rig.mapBuffers(b, iova: 0x20_0000)[0]
        try rig.core.attach(b, to: dev)
        #expect(did(b, on: 0) == DomainID(2), "the lowest free DID is handed out again")

        let stale = rig.dmaWrite(ep, 0x10_0000, value: 0x5A)
        #expect(stale?.fault != nil, "an IOVA only the old domain mapped must fault under the reused DID")
        #expect(stale?.transferred == 0)
        #expect(try rig.platform.memory.load64(bufA) == 0xA5A5_A5A5_A5A5_A5A5, "the old domain's buffer was written through a stale translation")
        #expect(rig.dmaWrite(ep, 0x20_0000, value: 0x5A)?.fault == nil)
        #expect(try rig.platform.memory.load64(bufB) == 0x5A5A_5A5A_5A5A_5A5A)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("with IOTLB invalidations dropped, releasing a DID that still tags cached entries is caught by the oracle", arguments: VTdPagingStage.allCases)
    func droppedInvalidationCaught(stage: VTdPagingStage) throws {
        let rig = try KernelRig(stage: stage)
        let (dev, ep) = try rig.add("dev", dev: 2, prefer: .identity)
        let unit = rig.machine.units[0]
        let a = try rig.core.allocDomain(for: dev)
        let bufA = try rig.mapBuffers(a, iova: 0x10_0000)[0]
        try rig.core.attach(a, to: dev)
        #expect(rig.dmaWrite(ep, 0x10_0000, value: 0xA5)?.fault == nil)
        #expect(unit.cachedEntries(taggedWith: DomainID(2)).iotlb > 0)
        #expect(rig.violations.isEmpty)

        unit.descriptorFaults[rig.iotlbDescriptorType] = .drop
        try rig.core.detach(a, from: try #require(dev.group))
        #expect(unit.counters.descriptorsDropped > 0)
        #expect(unit.cachedEntries(taggedWith: DomainID(2)).iotlb > 0, "the dropped descriptor left the entries behind")
        #expect(rig.violations.contains { $0.invariant == "did-released-while-cached" }, "\(rig.violations)")

        // The next allocation reuses the DID while the stale entries remain; the new domain's
        // device then reaches the old buffer through them.
        let b = try rig.core.allocDomain(for: dev)
        try rig.mapBuffers(b, iova: 0x20_0000)
        try rig.core.attach(b, to: dev)
        #expect(did(b, on: 0) == DomainID(2))
        #expect(rig.violations.contains { $0.invariant == "did-reuse-while-cached" }, "\(rig.violations)")
        #expect(rig.dmaWrite(ep, 0x10_0000, value: 0x5A)?.fault == nil, "the stale entry translates under the reused DID")
        #expect(try rig.platform.memory.load64(bufA) == 0x5A5A_5A5A_5A5A_5A5A)
        #expect(rig.violations.contains { $0.invariant == "unpermitted-access" }, "\(rig.violations)")
    }
    @Test("when a unit's DIDs run out, attach fails with ENOSPC and changes nothing; a freed DID makes room again")
    func didExhaustion() throws {
        // ND = 0: 16 DIDs, of which 0 and 1 are reserved, so 14 can be handed out.
        let rig = try KernelRig(units: [VTdConfiguration(name: "dmar0", capability: .make(domainIDBits: 4)),
                                        VTdConfiguration(name: "dmar1")])
        let u0 = rig.driver.units[0]
        #expect(u0.domainIDs.limit == 16)
        var devices: [Device] = []
        var domains: [IOMMUDomain] = []
        for i in 0..<15 {
            let (d, _) = try rig.add("dev\(i)", dev: UInt8(i + 1), prefer: .identity)
            devices.append(d)
            domains.append(try rig.core.allocDomain(for: d))
        }
        for i in 0..<14 { try rig.core.attach(domains[i], to: devices[i]) }
        #expect(u0.domainIDs.allocated == 14)
        #expect(Set(domains.prefix(14).compactMap { did($0, on: 0)?.rawValue }) == Set(2...15))

        do {
            try rig.core.attach(domains[14], to: devices[14])
            Issue.record("a 15th DID cannot exist on this unit")
        } catch {
            #expect(error.errno == 28)
        }
        #expect(devices[14].attachedDomain?.type == .identity, "the failed attach leaves the device where it was")
        #expect(domains[14].attachments == 0)
        #expect(did(domains[14], on: 0) == nil)
        #expect(u0.domainIDs.allocated == 14)

        let freed = try #require(did(domains[5], on: 0))
        try rig.core.detach(domains[5], from: try #require(devices[5].group))
        try rig.core.attach(domains[14], to: devices[14])
        #expect(did(domains[14], on: 0) == freed)
        #expect(u0.domainIDs.reservedIntact)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }
    @Test("under traffic and random yields, every DID released on attach, replace and detach tags no cached entry",
          arguments: 1...4 as ClosedRange<UInt64>)
    func didReleaseUnderTraffic(seed: UInt64) throws {
        let rig = try KernelRig(seed: seed)
        let spy = DIDLifetimeSpy(rig.machine)
        rig.core.observer = spy
        defer { rig.core.observer = rig.oracle }
        rig.scheduler.yieldPolicy = YieldPolicy(probability: 0.5, maxAdvanceNs: 3_000)
        let (dev, ep) = try rig.add("dev", dev: 2)
        let group = try #require(dev.group)
        let a = try rig.core.allocDomain(for: dev), b = try rig.core.allocDomain(for: dev)
        var targets: [TrafficStream.Target] = []
        for i in 0..<8 {
            let iova = 0x10_0000 + UInt64(i) * 0x1000
            let pa = try rig.machine.allocateBuffer()
            try rig.core.map(a, iova: iova, physical: pa, size: 4096, permissions: .readWrite)
            try rig.core.map(b, iova: iova, physical: pa, size: 4096, permissions: .readWrite)
            targets.append(.init(address: iova, length: 4096))
        }
        let traffic = TrafficStream(endpoint: ep, intervalNs: 200, scheduler: rig.scheduler)
        traffic.targets = targets
        traffic.start()
        var t: UInt64 = rig.scheduler.now
        func run(_ ns: UInt64) { t += ns; rig.scheduler.run(until: t) }
        for _ in 0..<4 {
            try rig.core.attach(a, to: group)
            run(5_000)
            try rig.core.replace(group, with: b)
            run(5_000)
            try rig.core.detach(b, from: group)
            run(5_000)
        }
        traffic.stop()
        run(20_000)
        #expect(traffic.issued > 50)
        #expect(spy.released.count >= 12, "each attach, replace and detach released a DID")
        for r in spy.released {
            #expect(r.iotlb == 0 && r.pasidCache == 0, "\(r.did) on unit \(r.unit) released with cached entries")
        }
        for r in spy.allocated {
            #expect(r.iotlb == 0 && r.pasidCache == 0, "\(r.did) on unit \(r.unit) handed out with cached entries")
        }
        #expect(rig.driver.units[0].domainIDs.allocated == 1, "only the default domain keeps a DID")
        #expect(rig.violations.isEmpty, "\(rig.violations)")
        withExtendedLifetime(spy) {}
    }
}
