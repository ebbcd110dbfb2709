import Platform
import Formats
import Hardware
import CReference

/// `iommu-sim bench translate --arch smmuv3`: the SMMUv3 unit's translate path (STE cache →
/// CD cache → TLB → stage-1 walk; IHI 0070 §3.3, §3.9, §16.2) beside the C reference of
/// the same algorithm (`CReference/smmu_reference.c`) over the same memory and tables.
///
/// Setup: one SMMUv3 unit (default features and caches, zero latency) enabled by
/// `SMMUv3TestBench`; StreamID 0x10 → a linear stream table STE with Config = stage 1 and
/// S1CDMax 0 → one CD (ASID 7, T0SZ 16, IPS 48) over a 4-level `ArmStage1Format` table of
/// 4 KiB pages, readable, writable and unprivileged (AP[1], as Linux maps without
/// IOMMU_PRIV). Hit and walk sets as the VT-d measurement: 512 random resident pages
/// (1024 addresses whose TLB sets do not overflow), and `walkPages` contiguous pages in a
/// fixed random order so every lookup misses the 1024-entry TLB. Requests are reads
/// without a SubstreamID, unprivileged.
extension TranslateBenchmark {
    /// The StreamID and ASID the measurement uses.
    static let smmuStreamID: UInt32 = 0x10
    static let smmuASID: UInt16 = 7

    func runSMMUv3(memorySize: UInt64 = 2 << 30, walkPages: Int = 16_384) throws -> Result {
        // Streams are indexed with a mask; the walk set must dwarf the TLB (1024 entries).
        guard walkPages >= 4096, walkPages <= 1 << 18, walkPages & (walkPages - 1) == 0 else {
            throw BenchFailure.setup("walk pages must be a power of two in 4096...262144")
        }
        let platform: PlatformContext
        do { platform = try PlatformContext(memorySize: memorySize, seed: 1) } catch { throw BenchFailure.setup("memory: \(error)") }
        let config = SMMUv3Configuration(latency: .uniform(0))
        let unit = SMMUv3Unit(configuration: config, platform: platform)
        let sid = Self.smmuStreamID
        var rng = SeededRNG(seed: 42)
        let hitPages: [UInt64]
        let walkBase: UInt64 = 1 << 30
        do {
            let bench = try SMMUv3TestBench(platform: platform, unit: unit)
            try bench.enable()
            // 4 KiB leaves only (maxLeafLevel 1), so every walk reads four levels.
            let table = try IOPageTable<ArmStage1Format>(memory: platform.memory, frames: platform.frames, levels: 4,
                                                         maxLeafLevel: 1, addressWidth: unit.features.outputAddressBits)
            let rights: PagePermissions = [.read, .write, .user]
            var chosen = Set<UInt64>()
            while chosen.count < 512 { chosen.insert(rng.next(below: 1 << 18)) }
            hitPages = chosen.sorted()
            for (i, page) in hitPages.enumerated() {
                try table.map(iova: page << 12, physical: (1 << 31) + UInt64(i) << 12, size: 4096, permissions: rights)
            }
            try table.map(iova: walkBase, physical: 3 << 30, size: UInt64(walkPages) << 12, permissions: rights)
            let cdt = try bench.makeCDTable()
            try bench.setCD(cdt, .s1(asid: Self.smmuASID, ttb: table.root))
            try bench.setSTE(sid, bench.stage1STE(cdt))
        } catch { throw BenchFailure.setup("\(error)") }

        var hitStream = [UInt64](repeating: 0, count: 4096)
        for i in hitStream.indices { hitStream[i] = hitPages[Int(rng.next(below: UInt64(hitPages.count)))] << 12 | rng.next(below: 4096) }
        var order = Array(0..<walkPages)
        for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next(below: UInt64(i + 1)))) }
        let walkStream = order.map { walkBase + UInt64($0) << 12 + 8 }

        let f = unit.features
        guard let ref = smmu_ref_create(platform.memory.unsafeBase, platform.memory.unsafeBackedBitmap, platform.memory.size,
                                        unit.read64(SMMUv3Register.strtabBase), unit.read32(SMMUv3Register.strtabBaseCfg),
                                        Int32(f.sidBits), Int32(f.outputAddressBits), Int32(f.ssidBits),
                                        unit.read32(SMMUv3Register.cr0ack) & SMMUv3Bits.cr0SMMUEN != 0 ? 1 : 0,
                                        unit.read32(SMMUv3Register.gbpa) & SMMUv3Bits.gbpaAbort != 0 ? 1 : 0,
                                        unit.read32(SMMUv3Register.cr2) & SMMUv3Bits.cr2E2H != 0 ? 1 : 0,
                                        Int32(config.steCacheEntries), Int32(config.steCacheWays),
                                        Int32(config.cdCacheEntries), Int32(config.cdCacheWays),
                                        Int32(config.tlbEntries), Int32(config.tlbWays)) else {
            throw BenchFailure.setup("C reference allocation")
        }
        defer { smmu_ref_destroy(ref) }

        // Keep only hit-set addresses whose pages stay resident (as the VT-d measurement).
        _ = measureSMMU(unit, sid, hitStream, ops: 8192)
        hitStream = try Self.residentHitSet(hitStream, misses: { unit.counters.tlbMisses }) {
            _ = unit.translate(streamID: sid, substreamID: nil, address: $0, access: .read)
        }
        _ = measureSMMU(unit, sid, hitStream, ops: 100_000)
        _ = measureSMMURef(ref, sid, hitStream, ops: 100_000)
        var runs: [(Figures, Figures, Figures, Figures)] = []
        for _ in 0..<max(1, rounds) {
            let round = (measureSMMU(unit, sid, hitStream, ops: operations), measureSMMURef(ref, sid, hitStream, ops: operations),
                         measureSMMU(unit, sid, walkStream, ops: operations), measureSMMURef(ref, sid, walkStream, ops: operations))
            guard round.0.checksum == round.1.checksum, round.2.checksum == round.3.checksum,
                  round.0.hits == round.1.hits, round.2.misses == round.3.misses else {
                throw BenchFailure.mismatch("checksums \(round.0.checksum)/\(round.1.checksum), \(round.2.checksum)/\(round.3.checksum); "
                                            + "hits \(round.0.hits)/\(round.1.hits), walk misses \(round.2.misses)/\(round.3.misses)")
            }
            runs.append(round)
        }
        let zero = Figures(p50: 0, mean: 0, checksum: 0, hits: 0, misses: 0)
        return Result(swiftHit: Self.medianFigures(runs.map(\.0)), cHit: Self.medianFigures(runs.map(\.1)),
                      swiftWalk: Self.medianFigures(runs.map(\.2)), cWalk: Self.medianFigures(runs.map(\.3)),
                      swiftNested: zero, cNested: zero,
                      hitRatio: Self.median(runs.map { $0.0.p50 / max($0.1.p50, 0.001) }),
                      walkRatio: Self.median(runs.map { $0.2.p50 / max($0.3.p50, 0.001) }),
                      nestedRatio: 0, operations: operations, rounds: max(1, rounds), arch: "smmuv3")
    }

    static func median(_ v: [Double]) -> Double { let s = v.sorted(); return s.isEmpty ? 0 : s[s.count / 2] }

    static func medianFigures(_ f: [Figures]) -> Figures {
        Figures(p50: median(f.map(\.p50)), mean: median(f.map(\.mean)), checksum: f.first?.checksum ?? 0,
                hits: f.map(\.hits).reduce(0, +), misses: f.map(\.misses).reduce(0, +))
    }

    private func measureSMMU(_ unit: SMMUv3Unit, _ sid: UInt32, _ stream: [UInt64], ops: Int) -> Figures {
        let mask = stream.count - 1
        let before = unit.counters
        let r = stream.withUnsafeBufferPointer { s in
            timed(ops: ops) { i -> UInt64? in
                if case .translated(let pa, _, _) = unit.translate(streamID: sid, substreamID: nil, address: s[i & mask], access: .read) {
                    return pa
                }
                return nil
            }
        }
        let after = unit.counters
        return summarize(r.samples, total: r.total, ops: ops, checksum: r.sum, hits: after.tlbHits - before.tlbHits,
                         misses: after.tlbMisses - before.tlbMisses)
    }

    private func measureSMMURef(_ ref: OpaquePointer, _ sid: UInt32, _ stream: [UInt64], ops: Int) -> Figures {
        let mask = stream.count - 1
        let h0 = smmu_ref_tlb_hits(ref), m0 = smmu_ref_tlb_misses(ref)
        var pa: UInt64 = 0
        let r = stream.withUnsafeBufferPointer { s in
            timed(ops: ops) { i -> UInt64? in
                smmu_ref_translate(ref, sid, s[i & mask], Int32(DMAAccess.read.rawValue), &pa) == 0 ? pa : nil
            }
        }
        return summarize(r.samples, total: r.total, ops: ops, checksum: r.sum, hits: smmu_ref_tlb_hits(ref) - h0,
                         misses: smmu_ref_tlb_misses(ref) - m0)
    }
}
