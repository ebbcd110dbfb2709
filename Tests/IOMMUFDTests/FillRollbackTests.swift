import Testing
import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD

/// A mapping exists in every domain of its IOAS or in none: a fill that fails part-way is
/// undone everywhere, whichever allocation fails (a fail_nth sweep over the map).
@Suite struct FillRollbackTests {
    @Test func aMapThatFailsInAnyDomainLeavesNoDomainHoldingItAndNoPin() throws {
        var n = 1
        var failures = 0
        while n < 200 {
            let rig = try IOMMUFDRig()
            let (dev, _) = try rig.addDevice("nic", dev: 1)
            let id = try rig.ctx.bind(dev)
            let ioas = try rig.ioasAlloc()
            let first = rig.hwptAlloc(dev: id, pt: ioas), second = rig.hwptAlloc(dev: id, pt: ioas)
            try #require(first.rc == 0 && second.rc == 0)
            let ram = try rig.touchedRAM(4 << 20)
            let domains = try [first.id, second.id].map { try #require((rig.ctx.object($0) as? HWPT)?.domain) }
            let faults = rig.machine.platform.faults
            faults.reset()
            faults.mode = .failNth(n, only: .frameAlloc)
            let m = rig.map(ioas, va: ram, length: 4 << 20, iova: 0x4000_0000)
            let fired = !faults.fired.isEmpty
            faults.mode = .off
            guard fired else {
                #expect(m.rc == 0, "the map succeeds once no allocation fails")
                break
            }
            failures += 1
            #expect(m.rc == -Errno.ENOMEM, "n=\(n)")
            for d in domains {
                for page in stride(from: UInt64(0x4000_0000), to: 0x4040_0000, by: 0x1000) {
                    #expect(rig.core.iovaToPhys(d, page) == nil, "n=\(n): \(d) still maps 0x\(String(page, radix: 16))")
                }
            }
            #expect(try #require(rig.ctx.object(ioas) as? IOAS).areaCount == 0)
            #expect(rig.ctx.ledger.chargedPages == 0 && rig.process.pinnedPages == 0, "n=\(n)")
            rig.ctx.close()
            #expect(rig.machine.oracle.violations.isEmpty, "n=\(n): \(rig.machine.oracle.violations)")
            n += 1
        }
        #expect(failures >= 2, "allocations in both domains were failed")
    }
}
