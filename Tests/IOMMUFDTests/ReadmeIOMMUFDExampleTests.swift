import Testing
import Formats
import Hardware
import Kernel
import IOMMUFD
import Simulation

@Suite("README iommufd example")
struct ReadmeIOMMUFDExampleTests {
    @Test("the README's iommufd example binds, maps guest RAM through the ioctl entry, DMAs into it and closes with nothing left")
    func readmeExample() throws {
        let m = try Machine(seed: 7, units: [VTdConfiguration(name: "dmar0")])
        let (nic, ep) = try m.addDevices([DeviceDescription(name: "nic0", requesterID: RequesterID(bus: 0, device: 2, function: 0))])[0]
        let vmm = try m.core.createProcess()
        let ctx = IOMMUFDContext(core: m.core, memory: vmm)
        let devID = try ctx.bind(nic)
        var alloc = StructBytes(size: IOMMUFDCommand.ioasAlloc.size)
        try ctx.call(.ioasAlloc, &alloc)
        let ioas = alloc.u32(8)
        try ctx.attach(devID, to: ioas)
        let ram = try vmm.mmap(length: 1 << 20, permissions: .readWrite)
        var map = StructBytes(size: IOMMUFDCommand.ioasMap.size)
        map.set32(4, UAPI.mapFixedIOVA | UAPI.mapReadable | UAPI.mapWriteable)
        map.set32(8, ioas); map.set64(16, ram); map.set64(24, 1 << 20); map.set64(32, 0x8000_0000)
        let rc = ctx.ioctl(IOMMUFDCommand.ioasMap.number, &map.bytes)
        #expect(rc == 0)
        ep.submit(.write(0x8000_1000, [1, 2, 3]))
        _ = m.scheduler.runUntilIdle()
        var bytes = [UInt8](repeating: 0, count: 3)
        _ = bytes.withUnsafeMutableBytes { vmm.copyIn(from: ram + 0x1000, into: $0) }
        #expect(bytes == [1, 2, 3])
        ctx.close()
        #expect(m.oracle.violations.isEmpty && ep.counters.faulted == 0)
        #expect(vmm.pinnedPages == 0 && nic.boundContext == nil)
    }
}
