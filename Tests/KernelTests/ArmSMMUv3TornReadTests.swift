import Testing
import Platform
import Formats
import Hardware
@testable import Kernel

/// STE/CD rewrites under DMA: between two 64-bit stores of one step the unit may fetch the
/// entry half written (IHI 0070: 64-bit single-copy atomicity). The driver yields there, so a
/// device translating all along meets every state the entry writer leaves in memory.
@Suite("SMMUv3 torn reads: a unit fetching entries between the writer's 64-bit stores sees the old domain, the new one, or (only through V = 0) a fault")
struct ArmSMMUv3TornReadTests {
    @Test("a CD rewritten A → B under translations every nanosecond: every result is A's page, B's page or C_BAD_CD, never a mix")
    func cdRewriteUnderTraffic() throws {
        let rig = try ArmSMMUv3Rig()
        let dev = try rig.add("a", dev: 1)
        let g = try #require(dev.group)
        try rig.core.claimDMAOwner(g)
        let a = try rig.core.allocDomain(for: dev), b = try rig.core.allocDomain(for: dev)
        let pa = try rig.buffer(), pb = try rig.buffer()
        try rig.core.map(a, iova: 0x40000, physical: pa, size: 4096, permissions: .readWrite)
        try rig.core.map(b, iova: 0x40000, physical: pb, size: 4096, permissions: .readWrite)
        try rig.core.attach(a, to: g)
        rig.settle()
        let s = rig.platform.scheduler
        s.yieldPolicy = YieldPolicy(probability: 1, maxAdvanceNs: 3)
        var results: [SMMUv3TranslationResult] = []
        var running = true
        func tick() {
            guard running else { return }
            results.append(rig.translate(dev, 0x40010))
            s.schedule(after: 1, kind: .hardware) { tick() }
        }
        s.schedule(after: 1, kind: .hardware) { tick() }
        let yieldsBefore = s.yieldCounts[KernelYield.betweenEntryWords] ?? 0
        try rig.core.replace(g, with: b)
        running = false
        s.yieldPolicy = .never
        rig.settle()
        #expect((s.yieldCounts[KernelYield.betweenEntryWords] ?? 0) > yieldsBefore, "the writer yielded between words")
        #expect(results.count > 20, "the device translated during the update (\(results.count) times)")
        var seen: Set<String> = []
        for r in results {
            switch r {
            case .translated(let p, _, _) where p == pa + 0x10: seen.insert("A")
            case .translated(let p, _, _) where p == pb + 0x10: seen.insert("B")
            case .terminated(.cBadCD?): seen.insert("C_BAD_CD")
            default: Issue.record("a torn CD gave \(r)")
            }
        }
        // The first store of the update is V = 0 (the writer's breaking path): from then until
        // the last step the device sees C_BAD_CD, then B; never A's ASID with B's table.
        #expect(seen == ["C_BAD_CD", "B"], "\(seen)")
        #expect(rig.physical(dev, 0x40010) == pb + 0x10)
    }
}
