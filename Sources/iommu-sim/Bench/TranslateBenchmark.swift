import Platform
import Formats
import Hardware
import CReference

/// `iommu-sim bench translate`: IOTLB-hit and miss+walk translation cost, each beside the
/// C reference of the same algorithm over the same memory and tables.
///
/// Setup: one VT-d unit in scalable mode; device 00:01.0 with RID_PASID 0 → a second-stage
/// PASID entry (DID 5) over a 4-level table of 4 KiB pages.
/// - Hit: 512 random pages (half the IOTLB), random offsets, then only the 1024 addresses
///   whose pages stay resident (pages of an overflowing IOTLB set would measure misses).
/// - Walk: 16384 contiguous pages visited in a fixed random order; with LRU and 16× the IOTLB
///   capacity every lookup misses, while the 128 KiB of leaf tables stay hot in CPU caches.
/// - Nested: device 00:02.0, RID_PASID 1 → a nested entry (DID 6): 16384 pages in a fixed
///   random order; every translation misses and walks 4 first-stage levels over a 4-level
///   second stage (see `setUpNested`).
/// The unit runs without paging-structure caches, so Swift walks do the C reference's work.
/// Each measurement is timed in batches of 1000 translations; p50 is over batches, mean over
/// all ops. Rounds interleave Swift and C; the report gives medians over rounds.
nonisolated struct TranslateBenchmark {
    struct Figures {
        var p50: Double
        var mean: Double
        var checksum: UInt64
        var hits: UInt64
        var misses: UInt64
    }

    /// Medians over rounds; ratios are the median of each round's Swift/C p50 ratio (both
    /// sides of a ratio ran back to back, so machine noise mostly cancels).
    struct Result {
        var swiftHit: Figures, cHit: Figures, swiftWalk: Figures, cWalk: Figures
        var swiftNested: Figures, cNested: Figures
        var hitRatio: Double, walkRatio: Double, nestedRatio: Double
        var operations: Int
        var rounds: Int
        /// The unit measured: "vtd" or "smmuv3" (which has no nested measurement).
        var arch = "vtd"
        var hasNested: Bool { arch == "vtd" }
    }

    enum BenchFailure: Error, CustomStringConvertible {
        case setup(String)
        case mismatch(String)
        var description: String {
            switch self {
            case .setup(let s): return "benchmark setup failed: \(s)"
            case .mismatch(let s): return "Swift and C reference disagree: \(s)"
            }
        }
    }

    let operations: Int
    let rounds: Int
    let batch = 1000

    /// The first 1024 addresses of `stream` whose translation hits after one warm pass (the
    /// pages of an overflowing TLB set would make a "hit" run measure misses too).
    static func residentHitSet(_ stream: [UInt64], misses: () -> UInt64, translate: (UInt64) -> Void) throws -> [UInt64] {
        var resident: [UInt64] = []
        for a in stream {
            let m = misses()
            translate(a)
            if misses() == m { resident.append(a) }
        }
        guard resident.count >= 1024 else { throw BenchFailure.setup("too few resident hit pages") }
        return Array(resident.prefix(1024))
    }

    func run() throws -> Result {
        let platform: PlatformContext
        do { platform = try PlatformContext(memorySize: 2 << 30, seed: 1) } catch { throw BenchFailure.setup("memory: \(error)") }
        // Paging-structure caches off: every miss walks from the root, as the C reference does.
        let config = VTdConfiguration(pagingStructureCacheEntries: 0, latency: .uniform(0))
        let unit = VTdUnit(configuration: config, platform: platform)
        let rid = RequesterID(bus: 0, device: 1, function: 0)
        let nestedRID = RequesterID(bus: 0, device: 2, function: 0)
        var nestedStream: [UInt64] = []
        var rng = SeededRNG(seed: 42)
        let hitPages: [UInt64]
        let walkBase: UInt64 = 1 << 30
        let walkPages = 16_384
        do {
            let bench = try VTdTestBench(platform: platform, unit: unit)
            try bench.enable()
            try bench.setContext(rid)
            let table = try IOPageTable<SecondStageFormat>(memory: platform.memory, frames: platform.frames, levels: 4,
                                                          maxLeafLevel: 1, addressWidth: config.hostAddressWidth)
            var chosen = Set<UInt64>()
            while chosen.count < 512 { chosen.insert(rng.next(below: 1 << 18)) }
            hitPages = chosen.sorted()
            for (i, page) in hitPages.enumerated() {
                try table.map(iova: page << 12, physical: (1 << 31) + UInt64(i) << 12, size: 4096, permissions: .readWrite)
            }
            try table.map(iova: walkBase, physical: 3 << 30, size: UInt64(walkPages) << 12, permissions: .readWrite)
            try bench.setPASIDEntry(rid, pasid: 0, .make(pgtt: .secondStage, did: DomainID(5), secondStageTable: table.root,
                                                         secondStageLevels: 4))
            nestedStream = try Self.setUpNested(platform: platform, bench: bench, rid: nestedRID, addressWidth: config.hostAddressWidth,
                                                base: walkBase, pages: walkPages, rng: &rng)
        } catch { throw BenchFailure.setup("\(error)") }

        // Address streams shared by Swift and C.
        var hitStream = [UInt64](repeating: 0, count: 4096)
        for i in hitStream.indices { hitStream[i] = hitPages[Int(rng.next(below: UInt64(hitPages.count)))] << 12 | rng.next(below: 4096) }
        var order = Array(0..<walkPages)
        for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next(below: UInt64(i + 1)))) }
        let walkStream = order.map { walkBase + UInt64($0) << 12 + 8 }

        let ref = ref_unit_create(platform.memory.unsafeBase, platform.memory.unsafeBackedBitmap, platform.memory.size,
                                  unit.read64(VTdRegister.rootTableAddress) & ~0xFFF, Int32(config.iotlbEntries), Int32(config.iotlbWays),
                                  Int32(config.contextCacheEntries), Int32(config.contextCacheWays),
                                  Int32(config.pasidCacheEntries), Int32(config.pasidCacheWays),
                                  PageTableGeometry.addressMask(width: config.hostAddressWidth))
        defer { ref_unit_destroy(ref) }

        // Keep only hit-set pages that stay resident: pages whose IOTLB set overflows would
        // make the "hit" run measure misses too.
        _ = measureSwift(unit, rid, hitStream, ops: 8192)
        hitStream = try Self.residentHitSet(hitStream, misses: { unit.counters.iotlbMisses }) {
            _ = unit.translate(source: rid, pasid: nil, address: $0, access: .read)
        }
        // Warm both (fills caches, touches tables), then measure.
        _ = measureSwift(unit, rid, hitStream, ops: 100_000)
        _ = measureC(ref, rid, hitStream, ops: 100_000)
        // The first nested walks set the first-stage A bits; both sides then only test them.
        _ = measureSwift(unit, nestedRID, nestedStream, ops: nestedStream.count)
        _ = measureC(ref, nestedRID, nestedStream, ops: nestedStream.count)
        var runs: [(Figures, Figures, Figures, Figures)] = []
        var nestedRuns: [(Figures, Figures)] = []
        for _ in 0..<max(1, rounds) {
            let round = (measureSwift(unit, rid, hitStream, ops: operations), measureC(ref, rid, hitStream, ops: operations),
                         measureSwift(unit, rid, walkStream, ops: operations), measureC(ref, rid, walkStream, ops: operations))
            guard round.0.checksum == round.1.checksum, round.2.checksum == round.3.checksum else {
                throw BenchFailure.mismatch("checksums \(round.0.checksum)/\(round.1.checksum), \(round.2.checksum)/\(round.3.checksum)")
            }
            runs.append(round)
            let nested = (measureSwift(unit, nestedRID, nestedStream, ops: operations), measureC(ref, nestedRID, nestedStream, ops: operations))
            guard nested.0.checksum == nested.1.checksum, nested.0.misses == UInt64(operations) else {
                throw BenchFailure.mismatch("nested checksums \(nested.0.checksum)/\(nested.1.checksum), \(nested.0.misses) misses")
            }
            nestedRuns.append(nested)
        }
        func median(_ v: [Double]) -> Double { let s = v.sorted(); return s[s.count / 2] }
        func medianFigures(_ f: [Figures]) -> Figures {
            Figures(p50: median(f.map(\.p50)), mean: median(f.map(\.mean)), checksum: f[0].checksum,
                    hits: f.map(\.hits).reduce(0, +), misses: f.map(\.misses).reduce(0, +))
        }
        return Result(swiftHit: medianFigures(runs.map(\.0)), cHit: medianFigures(runs.map(\.1)),
                      swiftWalk: medianFigures(runs.map(\.2)), cWalk: medianFigures(runs.map(\.3)),
                      swiftNested: medianFigures(nestedRuns.map(\.0)), cNested: medianFigures(nestedRuns.map(\.1)),
                      hitRatio: median(runs.map { $0.0.p50 / max($0.1.p50, 0.001) }),
                      walkRatio: median(runs.map { $0.2.p50 / max($0.3.p50, 0.001) }),
                      nestedRatio: median(nestedRuns.map { $0.0.p50 / max($0.1.p50, 0.001) }),
                      operations: operations, rounds: max(1, rounds))
    }

    func summarize(_ samples: [Double], total: UInt64, ops: Int, checksum: UInt64, hits: UInt64, misses: UInt64) -> Figures {
        let sorted = samples.sorted()
        return Figures(p50: sorted.isEmpty ? 0 : sorted[sorted.count / 2], mean: Double(total) / Double(max(ops, 1)),
                       checksum: checksum, hits: hits, misses: misses)
    }

    /// Times `ops` calls of `op(i)` in batches; sums the addresses it returns (a checksum
    /// that also keeps the work alive). Inlined so the closure costs nothing per call.
    @inline(__always)
    func timed(ops: Int, _ op: (Int) -> UInt64?) -> (samples: [Double], total: UInt64, sum: UInt64) {
        var samples: [Double] = []
        samples.reserveCapacity(ops / batch + 1)
        var sum: UInt64 = 0, total: UInt64 = 0
        var i = 0, done = 0
        while done < ops {
            let n = min(batch, ops - done)
            let t0 = ref_now_ns()
            for _ in 0..<n {
                if let pa = op(i) { sum &+= pa }
                i &+= 1
            }
            let t = ref_now_ns() - t0
            total += t
            samples.append(Double(t) / Double(n))
            done += n
        }
        return (samples, total, sum)
    }

    private func measureSwift(_ unit: VTdUnit, _ rid: RequesterID, _ stream: [UInt64], ops: Int) -> Figures {
        let mask = stream.count - 1
        let before = unit.counters
        let r = stream.withUnsafeBufferPointer { s in
            timed(ops: ops) { i -> UInt64? in
                if case .translated(let pa, _, _) = unit.translate(source: rid, pasid: nil, address: s[i & mask], access: .read) { return pa }
                return nil
            }
        }
        let after = unit.counters
        return summarize(r.samples, total: r.total, ops: ops, checksum: r.sum, hits: after.iotlbHits - before.iotlbHits,
                         misses: after.iotlbMisses - before.iotlbMisses)
    }

    private func measureC(_ ref: OpaquePointer?, _ rid: RequesterID, _ stream: [UInt64], ops: Int) -> Figures {
        let mask = stream.count - 1
        let h0 = ref_iotlb_hits(ref), m0 = ref_iotlb_misses(ref)
        var pa: UInt64 = 0
        let r = stream.withUnsafeBufferPointer { s in
            timed(ops: ops) { i -> UInt64? in ref_translate(ref, rid.rawValue, s[i & mask], 0, &pa) == 0 ? pa : nil }
        }
        return summarize(r.samples, total: r.total, ops: ops, checksum: r.sum, hits: ref_iotlb_hits(ref) - h0,
                         misses: ref_iotlb_misses(ref) - m0)
    }
}
