import Testing
import Platform
import Formats
import Hardware
import Kernel
@testable import Simulation

/// A small machine for kernel tests: two VT-d units under one driver, the oracle attached,
/// no yields unless a test asks for them.
struct KernelRig {
    let machine: Machine
    var core: IOMMUCore { machine.core }
    /// The rig's machine is VT-d, so it has the VT-d driver.
    let driver: VTdDriver
    var oracle: Oracle { machine.oracle }
    var scheduler: Scheduler { machine.scheduler }
    var platform: PlatformContext { machine.platform }

    /// `stage` nil: paging domains as Linux chooses them (first stage on these units).
    init(seed: UInt64 = 1, policy: DMAPolicy = .strict, units: [VTdConfiguration]? = nil, stage: VTdPagingStage? = nil,
         levels: Int = 4) throws {
        machine = try Machine(seed: seed, memorySize: 64 << 20,
                              units: units ?? [VTdConfiguration(name: "dmar0"), VTdConfiguration(name: "dmar1")],
                              policy: policy, pagingStage: stage, pagingLevels: levels)
        driver = try #require(machine.vtdDriver)
    }

    /// The stage paging domains get here.
    var stage: VTdPagingStage { driver.preferredStage ?? .first }
    /// The descriptor type that drops a paging domain's translations from the IOTLB: PASID-based
    /// for first-stage domains, the type-2 IOTLB descriptor for second-stage ones.
    var iotlbDescriptorType: UInt8 {
        stage == .first ? InvalidationDescriptor.pasidIOTLBType : InvalidationDescriptor.iotlbType
    }

    static func rid(_ bus: UInt8, _ dev: UInt8, _ fn: UInt8 = 0) -> RequesterID { RequesterID(bus: bus, device: dev, function: fn) }

    /// Probes one device and returns it with its endpoint.
    @discardableResult
    func add(_ name: String, bus: UInt8 = 0, dev: UInt8, fn: UInt8 = 0, unit: Int = 0, group: String? = nil,
             pasids: UInt32 = 0, untrusted: Bool = false, prefer: DomainType? = nil, ats: Bool = false, pri: Bool = false) throws -> (Device, PCIeEndpoint) {
        try machine.addDevices([DeviceDescription(name: name, requesterID: Self.rid(bus, dev, fn), unit: unit, groupKey: group,
                                                  maxPASIDs: pasids, ats: ats, pri: pri, untrusted: untrusted, preferredDomain: prefer)])[0]
    }

    /// Maps `pages` fresh buffer pages at `iova` in `domain`; returns their physical addresses.
    @discardableResult
    func mapBuffers(_ domain: IOMMUDomain, iova: UInt64, pages: Int = 1, permissions: PagePermissions = .readWrite) throws -> [UInt64] {
        var pas: [UInt64] = []
        for p in 0..<pages {
            let pa = try machine.allocateBuffer()
            try core.map(domain, iova: iova + UInt64(p) * 4096, physical: pa, size: 4096, permissions: permissions)
            pas.append(pa)
        }
        return pas
    }

    /// Issues a write of `bytes` bytes at `address` and runs hardware until it completes.
    @discardableResult
    func dmaWrite(_ ep: PCIeEndpoint, _ address: UInt64, bytes: Int = 64, value: UInt8 = 0xA5, pasid: PASID? = nil) -> PCIeEndpoint.Completion? {
        var done: PCIeEndpoint.Completion?
        ep.submit(.write(address, [UInt8](repeating: value, count: bytes), pasid: pasid)) { done = $0 }
        try? scheduler.wait(until: { done != nil }, timeoutNs: 1_000_000)
        return done
    }

    /// Issues a read and runs hardware until it completes.
    @discardableResult
    func dmaRead(_ ep: PCIeEndpoint, _ address: UInt64, bytes: Int = 64, pasid: PASID? = nil) -> PCIeEndpoint.Completion? {
        var done: PCIeEndpoint.Completion?
        ep.submit(.read(address, length: bytes, pasid: pasid)) { done = $0 }
        try? scheduler.wait(until: { done != nil }, timeoutNs: 1_000_000)
        return done
    }

    /// An ATS access through `ep`, run until it ends (software events included: the PRQ
    /// handler and fault work run as they would).
    func atsAccess(_ ep: PCIeEndpoint, pasid: PASID?, _ address: UInt64, length: Int = 4096, write: Bool = true,
                   limitNs: UInt64 = 10_000_000) -> ATSAccessResult? {
        var result: ATSAccessResult?
        ep.atsAccess(pasid: pasid, address: address, length: length, write: write) { result = $0 }
        let deadline = scheduler.now + limitNs
        while result == nil && scheduler.runNext(notAfter: deadline) {}
        return result
    }

    /// Runs every pending event (interrupt handlers included).
    func settle() { _ = scheduler.runUntilIdle() }

    var violations: [Violation] { oracle.violations }
}
