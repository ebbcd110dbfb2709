import Testing
import Platform
import Formats
@testable import Hardware

@Suite("SMMUv3 TLBI_NH_VA: a small range removed by probing tags drops exactly the overlapping entries of its ASID")
struct SMMUv3TLBIProbeTests {
    let urw: PagePermissions = [.read, .write, .user]

    /// Whether translating `va` on `sid` walks (its TLB entry is gone).
    func walks(_ rig: SMMUv3Rig, _ va: UInt64, sid: UInt32) -> Bool {
        let before = rig.unit.counters.walks
        _ = rig.translate(va, sid: sid)
        return rig.unit.counters.walks != before
    }

    @Test("pages and a 2 MiB block, two ASIDs: ranges below and above the probe limit remove the same entries a scan would")
    func probeMatchesScan() throws {
        for (pages, probed) in [(UInt8(3), true), (UInt8(31), true), (UInt8(31), false), (UInt8(7), false)] {
            let rig = try SMMUv3Rig()
            let t = try rig.bench.stage1Table()
            try t.map(iova: 0x10000, physical: 0x80_0000, size: 0x40000, permissions: urw)       // 64 pages
            try t.map(iova: 0x4000_0000, physical: 0x20_0000, size: 0x20_0000, permissions: urw) // a 2 MiB block
            try rig.attachStage1(t, asid: 7, sid: 0x10)
            try rig.attachStage1(t, asid: 8, sid: 0x11)
            let vas = (0..<64).map { 0x10000 + UInt64($0) << 12 } + [0x4010_0000]                // one address in the block: a walk refills it
            for sid: UInt32 in [0x10, 0x11] { for va in vas + [0x4000_0000] { _ = rig.translate(va, sid: sid) } }
            #expect(rig.unit.superpageEntries != 0)
            // `probed`: (NUM + 1) × 2^SCALE pages at most the limit; else scale it past it.
            let scale: UInt8 = probed ? 0 : 4
            let first: UInt64 = 0x14000
            let span = (UInt64(pages) + 1) << (UInt64(scale) + 12)
            #expect((span >> 12 <= Hardware.SMMUv3Unit.probeLimitPages) == probed)
            try rig.bench.sync([
                .tlbiNHVA(vmid: 0, asid: 7, TLBIAddress(address: first, leaf: true, granule: .size4K, num: pages, scale: scale)),
                .tlbiNHVA(vmid: 0, asid: 7, TLBIAddress(address: 0x4008_0000, leaf: true)),
            ])
            for va in vas {
                let inRange = (va >= first && va < first + span) || va >= 0x4000_0000
                #expect(walks(rig, va, sid: 0x10) == inRange, "ASID 7, \(String(va, radix: 16)), span \(span)")
                #expect(!walks(rig, va, sid: 0x11), "ASID 8 untouched, \(String(va, radix: 16))")
            }
        }
    }
}
