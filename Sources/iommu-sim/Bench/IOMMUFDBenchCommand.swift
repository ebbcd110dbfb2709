import ArgumentParser
import Foundation
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
    @Flag(help: "Print JSON (keys mapUnmapPairNs, map1GiBMs, faultRoundTripNs, dirtyBitmap1GiBMs, cMapUnmapPairNs, cIoctlOverheadNs, ...).")
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
        let option = median(rs.map(\.optionIoctlNs))
        // The same through the C ABI: a C program under the preload library (nil without a C
        // compiler or the library).
        let c = CPreloadBench.run(pairs: min(pairs, 20_000), rounds: rounds)
        let cPair = c.map { String(format: "%.1f", $0.mapUnmapPairNs) } ?? "null"
        let cOverhead = c.map { String(format: "%.1f", $0.optionIoctlNs - option) } ?? "null"
        if json {
            print("{\"mapUnmapPairNs\": \(String(format: "%.1f", pair)), \"map1GiBMs\": \(String(format: "%.2f", gib)), " +
                  "\"faultRoundTripNs\": \(String(format: "%.1f", fault)), \"coreMapUnmapPairNs\": \(String(format: "%.1f", corePair)), \"dirtyBitmap1GiBMs\": \(String(format: "%.2f", dirty)), " +
                  "\"optionIoctlNs\": \(String(format: "%.1f", option)), \"cMapUnmapPairNs\": \(cPair), \"cIoctlOverheadNs\": \(cOverhead), " +
                  "\"rounds\": \(rounds), \"pairs\": \(pairs), \"faults\": \(faults)}")
        } else {
            print("from C through the preload library:      \(cPair) ns/pair (IOAS_MAP + UNMAP, target <= 1500)")
            print("  the shim's cost above the Swift entry:   \(cOverhead) ns/ioctl (target <= 150)")
            print("IOAS_MAP + IOAS_UNMAP 4 KiB, one domain:   \(String(format: "%8.1f", pair)) ns/pair   (target <= 1000)")
            print("  (core map + unmap, same domain:          \(String(format: "%8.1f", corePair)) ns/pair, reference)")
            print("IOAS_MAP 1 GiB, 2 MiB-contiguous:          \(String(format: "%8.2f", gib)) ms        (target <= 10)")
            print("GET_DIRTY_BITMAP 1 GiB of 4 KiB, 10% dirty: \(String(format: "%8.2f", dirty)) ms        (target <= 20)")
            print("fault object round trip (real PRI path):   \(String(format: "%8.1f", fault)) ns       (target <= 2000)")
        }
    }
}

/// The C side of `bench iommufd`: Tests/C/bench/iommufd_bench.c compiled with the system C
/// compiler and run under libIOMMUPreload.so beside this executable, with the oracle off (as
/// the Swift side runs), printing its medians as JSON.
enum CPreloadBench {
    struct Result { var mapUnmapPairNs: Double; var optionIoctlNs: Double }

    static func run(pairs: Int, rounds: Int) -> Result? {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        let source = root.appendingPathComponent("Tests/C/bench/iommufd_bench.c").path
        guard FileManager.default.fileExists(atPath: source), let lib = try? PreloadCommand.library() else { return nil }
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("iommufd_bench-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        guard shell(["/usr/bin/env", "cc", "-O2", "-o", out, source], env: [:]) != nil else { return nil }
        guard let text = shell([out, String(pairs), String(rounds)], env: ["LD_PRELOAD": lib, "SWIFTIOMMU_ORACLE": "0"]),
              let data = text.data(using: .utf8),
              let o = try? JSONSerialization.jsonObject(with: data) as? [String: Double],
              let pair = o["cMapUnmapPairNs"], let option = o["cOptionIoctlNs"] else { return nil }
        return Result(mapUnmapPairNs: pair, optionIoctlNs: option)
    }

    private static func shell(_ args: [String], env: [String: String]) -> String? {
        let p = Foundation.Process()
        p.executableURL = URL(fileURLWithPath: args[0])
        p.arguments = Array(args.dropFirst())
        var e = ProcessInfo.processInfo.environment
        for (k, v) in env { e[k] = v }
        p.environment = e
        let pipe = Pipe()
        p.standardOutput = pipe
        do { try p.run() } catch { return nil }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { return nil }
        return String(data: data, encoding: .utf8)
    }
}
