import Testing
import Foundation
import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD
@testable import Simulation

/// The VMM role: a VMM drives the machine through iommufd in scenario files, and the oracle
/// checks what iommufd promises.
@Suite("VMMScenarios: a VMM drives devices through iommufd; the oracle checks IOASes, pins and fault answers")
struct VMMScenarioTests {
    static let small = """
    name: vmm-small
    units: [{name: dmar0}]
    devices:
      - {name: vf0, rid: "00:05.0", unit: dmar0}
    workloads:
      - {name: guest-dma, type: dma, device: vf0, iova: 0x10000000, pages: 16, interval-ns: 500, start: 5000, stop: 40000}
    actions:
      - {at: 0, do: create-process, name: qemu}
      - {at: 0, do: mmap, name: ram, process: qemu, pages: 16}
      - {at: 0, do: iommufd-open, name: fd, process: qemu}
      - {at: 0, do: iommufd-bind, iommufd: fd, device: vf0}
      - {at: 0, do: ioas-alloc, name: io, iommufd: fd}
      - {at: 0, do: ioas-map, ioas: io, region: ram, iova: 0x10000000}
      - {at: 0, do: iommufd-attach, device: vf0, to: io}
      - {at: 1000, do: iommufd-destroy, object: io, expect-error: EBUSY}
      - {at: 1000, do: ioas-unmap, ioas: io, iova: 0x10001000, pages: 1, expect-error: ENOENT}
    end-ns: 50000
    expect:
      violations: 0
      frames-left: 0
      faults: [{device: vf0, at-most: 0}]
    """

    @Test("a VMM maps guest RAM into an IOAS, attaches a device to it and the device's DMA reaches that memory; errnos are expected by name")
    func smallVMMRun() throws {
        let o = try runScenario(try ScenarioLoader.load(yaml: Self.small, file: "vmm-small.yaml"))
        #expect(o.result.violationCount == 0, "\(o.result.violations)")
        #expect(o.expectationFailures.isEmpty, "\(o.expectationFailures)")
        let vf = try #require(o.result.devices.first { $0.name == "vf0" })
        #expect(vf.requests > 10 && vf.faultedRequests == 0)
    }

    @Test("loading refuses unknown iommufd names and a fault handler's IOAS keys on a plain fault queue")
    func loaderRefusesBadReferences() throws {
        let bad = Self.small.replacingOccurrences(of: "do: iommufd-attach, device: vf0, to: io}", with: "do: iommufd-attach, device: vf0, to: nowhere}")
        #expect(throws: ScenarioError.self) { try ScenarioLoader.load(yaml: bad, file: "bad.yaml") }
        let noContext = Self.small.replacingOccurrences(of: "do: ioas-alloc, name: io, iommufd: fd}", with: "do: ioas-alloc, name: io, iommufd: other}")
        #expect(throws: ScenarioError.self) { try ScenarioLoader.load(yaml: noContext, file: "bad.yaml") }
    }

    @Test("vmm-faults answers every page request group exactly once, through the VMM or the kernel, across replace, detach and close")
    func everyGroupAnsweredOnce() throws {
        for seed: UInt64 in 1...3 {
            let o = try runScenario(try BuiltinScenarios.load("vmm-faults"), seed: seed)
            #expect(o.result.violationCount == 0, "\(o.result.violations)")
            let c = Dictionary(uniqueKeysWithValues: o.result.pageFaultCounters)
            #expect((c["user-auto-responses"] ?? 0) > 0, "groups were pending when the kernel answered them")
            #expect(c["unexpected-responses"] == 0, "no group was answered twice")
            #expect(o.expectationFailures.isEmpty, "\(o.expectationFailures)")
        }
    }

    @Test("the oracle catches a domain of an IOAS that maps something the IOAS does not")
    func ioasCheckCatchesADomainOutOfStep() throws {
        let machine = try Machine(seed: 1, memorySize: 64 << 20, units: [VTdConfiguration(name: "dmar0")], policy: .strict)
        let (dev, _) = try machine.addDevices([DeviceDescription(name: "vf", requesterID: RequesterID(bus: 0, device: 5, function: 0))])[0]
        let process = try machine.core.createProcess()
        let ctx = IOMMUFDContext(core: machine.core, memory: process)
        let id = try ctx.bind(dev)
        var alloc = StructBytes(size: IOMMUFDCommand.ioasAlloc.size)
        try ctx.call(.ioasAlloc, &alloc)
        let ioasID = alloc.u32(8)
        let hwpt = try ctx.attach(id, to: ioasID)
        let ioas = try #require(ctx.object(ioasID) as? IOAS)
        machine.oracle.checkIOAS(ioas, context: "fd")
        #expect(machine.oracle.violations.isEmpty)
        // A mapping made behind the IOAS's back, straight into its domain.
        let domain = try #require((ctx.object(hwpt) as? HWPT)?.domain)
        try machine.core.map(domain, iova: 0x5000_0000, physical: try machine.allocateBuffer(), size: 4096, permissions: .readWrite)
        machine.oracle.checkIOAS(ioas, context: "fd")
        #expect(machine.oracle.violations.contains { $0.invariant == "ioas-domain-mismatch" })
    }

    @Test("the oracle reports pins a closed context left charged")
    func pinsLeftIsCaught() throws {
        let machine = try Machine(seed: 1, memorySize: 64 << 20, units: [VTdConfiguration(name: "dmar0")], policy: .strict)
        let process = try machine.core.createProcess()
        let ledger = PinLedger()
        let ctx = IOMMUFDContext(core: machine.core, memory: process, ledger: ledger)
        ctx.close()
        machine.oracle.checkPinsReleased(ctx, context: "clean")
        #expect(machine.oracle.violations.isEmpty)
        // Pages charged by someone else to the same ledger stay charged after close.
        let other = IOMMUFDContext(core: machine.core, memory: process, ledger: ledger)
        let (dev, _) = try machine.addDevices([DeviceDescription(name: "vf", requesterID: RequesterID(bus: 0, device: 6, function: 0))])[0]
        let id = try other.bind(dev)
        var alloc = StructBytes(size: IOMMUFDCommand.ioasAlloc.size)
        try other.call(.ioasAlloc, &alloc)
        try other.attach(id, to: alloc.u32(8))
        let va = try process.mmap(length: 8192, permissions: .readWrite)
        var map = StructBytes(size: IOMMUFDCommand.ioasMap.size)
        map.set32(4, UAPI.mapReadable | UAPI.mapWriteable); map.set32(8, alloc.u32(8)); map.set64(16, va); map.set64(24, 8192)
        try other.call(.ioasMap, &map)
        machine.oracle.checkPinsReleased(ctx, context: "shared ledger")
        #expect(machine.oracle.violations.contains { $0.invariant == "pins-left" })
        other.close()
    }
}
