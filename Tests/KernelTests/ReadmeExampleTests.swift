import Testing
import Formats
import Hardware
import Kernel
import Simulation

@Suite("README example")
struct ReadmeExampleTests {
    @Test("the README's library example maps, attaches, does DMA and unmaps with no oracle violation")
    func readmeExample() throws {
        let m = try Machine(seed: 7, units: [VTdConfiguration(name: "dmar0")])
        let (dev, ep) = try m.addDevices([DeviceDescription(name: "nic0", requesterID: RequesterID(bus: 0, device: 2, function: 0),
                                                           maxPASIDs: 64)])[0]
        let a = try m.core.allocDomain(for: dev, flags: .pasid)
        let pa = try m.allocateBuffer()
        try m.core.map(a, iova: 0x1000, physical: pa, size: 4096, permissions: .readWrite)
        try m.core.claimDMAOwner(dev.group!)
        try m.core.attach(a, to: dev.group!)
        ep.submit(.write(0x1000, [1, 2, 3]))
        _ = m.scheduler.runUntilIdle()
        try m.core.unmap(a, iova: 0x1000, size: 4096)
        #expect(m.oracle.violations.isEmpty)
        #expect(try m.platform.memory.load8(pa + 2) == 3)
        #expect(ep.counters.faulted == 0)
    }
}
