import Testing
import ArgumentParser
import Hardware
@testable import iommu_sim

@Suite("SMMUv3 benches: the translate bench's Swift and C sides agree, and --arch parses")
struct SMMUv3BenchTests {
    @Test("a small smmuv3 translate run: checksums, hits and walk misses of Swift and C agree; every walk misses")
    func translateSidesAgree() throws {
        let bench = TranslateBenchmark(operations: 4096, rounds: 2)
        // `runSMMUv3` throws `mismatch` when the two sides' checksums or counts differ.
        let r = try bench.runSMMUv3(memorySize: 2 << 30, walkPages: 4096)
        #expect(r.arch == "smmuv3" && !r.hasNested)
        #expect(r.swiftHit.checksum == r.cHit.checksum && r.swiftHit.checksum != 0)
        #expect(r.swiftWalk.checksum == r.cWalk.checksum && r.swiftWalk.checksum != 0)
        // A hit run after a walk run starts with the walk set's pages in the TLB: both sides
        // miss the same first lookups.
        #expect(r.swiftHit.hits == r.cHit.hits && r.swiftHit.misses == r.cHit.misses)
        #expect(r.swiftHit.hits > r.swiftHit.misses)
        #expect(r.swiftWalk.hits == 0 && r.swiftWalk.misses == UInt64(2 * 4096))
        #expect(r.cWalk.misses == r.swiftWalk.misses)
        let json = TranslateReport(result: r).render(json: true)
        for key in ["\"iotlbHitNs\"", "\"walkNs\"", "\"cIotlbHitNs\"", "\"cWalkNs\"", "\"arch\": \"smmuv3\""] {
            #expect(json.contains(key), "\(key) in \(json)")
        }
        #expect(!json.contains("nestedWalkNs"))
    }

    @Test("a walk set that is not a power of two, or too small, is refused with an error")
    func badWalkSet() {
        #expect(throws: TranslateBenchmark.BenchFailure.self) { try TranslateBenchmark(operations: 1000, rounds: 1).runSMMUv3(walkPages: 5000) }
        #expect(throws: TranslateBenchmark.BenchFailure.self) { try TranslateBenchmark(operations: 1000, rounds: 1).runSMMUv3(walkPages: 1024) }
    }

    @Test("--arch parses for translate and dma-map (default vtd); an unknown arch is refused")
    func archParses() throws {
        #expect(try TranslateCommand.parse(["--arch", "smmuv3"]).arch == .smmuv3)
        #expect(try TranslateCommand.parse([]).arch == .vtd)
        #expect(try DMAMapCommand.parse(["--arch", "smmuv3", "--mode", "strict"]).arch == .smmuv3)
        #expect(try DMAMapCommand.parse([]).arch == .vtd)
        #expect(throws: (any Error).self) { try TranslateCommand.parse(["--arch", "amd"]) }
        #expect(throws: (any Error).self) { try DMAMapCommand.parse(["--arch", "arm"]) }
    }

    @Test("a short smmuv3 dma-map run in each mode maps and unmaps through the SMMUv3 driver")
    func dmaMapRuns() throws {
        for mode in DMAMapBenchmark.Mode.allCases {
            var o = DMAMapBenchmark.Options()
            o.arch = .smmuv3; o.mode = mode; o.seconds = 0.05
            // Strict with a latency: the commands are applied inline and the wait spins to their deadline.
            o.invalidationLatencyNs = mode == .strict ? 1000 : 0
            let r = try DMAMapBenchmark(options: o).run()
            #expect(r.pairs > 0, "\(mode)")
            if mode == .strict {
                #expect(r.iotlbDescriptors >= UInt64(r.pairs), "every strict unmap sends a TLBI")
                #expect(r.pairs <= 50_000, "each strict pair spent the 1,000 ns latency")
            }
        }
    }
}
