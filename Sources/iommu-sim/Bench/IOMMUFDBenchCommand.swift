import ArgumentParser
import Platform

/// `iommu-sim bench iommufd`: IOAS map/unmap, a 1 GiB map and the fault-object round
/// trip through the ioctl entry (targets T13, T14, T15).
struct IOMMUFDBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "iommufd",
        abstract: "iommufd through the ioctl entry: IOAS_MAP+UNMAP pair (ns), 1 GiB map (ms), fault-object round trip (ns)."
    )

    @Option(help: "Map/unmap pairs per round.")
    var pairs: Int = 100_000
    @Option(help: "Fault round trips per round.")
    var faults: Int = 20_000
    @Option(help: "Rounds; the report gives medians over them.")
    var rounds: Int = 5
    @Flag(help: "Print JSON (keys mapUnmapPairNs, map1GiBMs, faultRoundTripNs).")
    var json = false

    func validate() throws {
        guard (100...100_000_000).contains(pairs), (10...10_000_000).contains(faults) else {
            throw ValidationError("--pairs must be in 100...10^8 and --faults in 10...10^7")
        }
        guard (1...100).contains(rounds) else { throw ValidationError("--rounds must be between 1 and 100") }
    }

    func run() throws {
        let bench = try IOMMUFDBenchmark(pairs: pairs, faults: faults)
        _ = try IOMMUFDBenchmark(pairs: 1000, faults: 100).round() // warm-up on its own machine
        var rs: [IOMMUFDBenchmark.Round] = []
        for _ in 0..<rounds { rs.append(try bench.round()) }
        let pair = median(rs.map(\.mapUnmapPairNs)), gib = median(rs.map(\.map1GiBMs)), fault = median(rs.map(\.faultRoundTripNs))
        let corePair = median(rs.map(\.coreMapUnmapPairNs)), dirty = median(rs.map(\.dirtyBitmap1GiBMs))
        if json {
            print("{\"mapUnmapPairNs\": \(String(format: "%.1f", pair)), \"map1GiBMs\": \(String(format: "%.2f", gib)), " +
                  "\"faultRoundTripNs\": \(String(format: "%.1f", fault)), \"coreMapUnmapPairNs\": \(String(format: "%.1f", corePair)), \"dirtyBitmap1GiBMs\": \(String(format: "%.2f", dirty)), \"rounds\": \(rounds), \"pairs\": \(pairs), \"faults\": \(faults)}")
        } else {
            print("IOAS_MAP + IOAS_UNMAP 4 KiB, one domain:   \(String(format: "%8.1f", pair)) ns/pair   (target <= 1000)")
            print("  (core map + unmap, same domain:          \(String(format: "%8.1f", corePair)) ns/pair, reference)")
            print("IOAS_MAP 1 GiB, 2 MiB-contiguous:          \(String(format: "%8.2f", gib)) ms        (target <= 10)")
            print("GET_DIRTY_BITMAP 1 GiB of 4 KiB, 10% dirty: \(String(format: "%8.2f", dirty)) ms        (target <= 20)")
            print("fault object round trip (real PRI path):   \(String(format: "%8.1f", fault)) ns       (target <= 2000)")
        }
    }
}
