import ArgumentParser
import Kernel

extension DMADirection: ExpressibleByArgument {
    public init?(argument: String) {
        switch argument {
        case "bidirectional", "bidi": self = .bidirectional
        case "to-device", "to": self = .toDevice
        case "from-device", "from": self = .fromDevice
        default: return nil
        }
    }
    public static var allValueStrings: [String] { ["bidirectional", "to-device", "from-device"] }
}

extension DMAMapBenchmark.Mode: ExpressibleByArgument {}

struct DMAMapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dma-map",
        abstract: "DMA API map + unmap cost with real threads (the knobs of Linux's dma_map_benchmark), strict or deferred."
    )

    @Option(help: "Threads, each with its own CPU slot.")
    var threads: Int = 1
    @Option(help: "Seconds to run.")
    var seconds: Double = 1
    @Option(help: "Pages (4 KiB) per mapping.")
    var granule: UInt64 = 1
    @Option(help: "Direction: bidirectional, to-device or from-device.")
    var dir: DMADirection = .bidirectional
    @Option(name: .customLong("dma-trans-ns"), help: "Delay between map and unmap (ns), spent spinning.")
    var dmaTransNs: UInt64 = 0
    @Option(help: "strict (invalidate on every unmap), lazy (per-CPU flush queues) or single-queue.")
    var mode: DMAMapBenchmark.Mode = .lazy
    @Option(name: .customLong("invalidation-latency-ns"), help: "Modelled cost of an IOTLB invalidation plus its wait, spent as real time.")
    var invalidationLatencyNs: UInt64 = 2000
    @Option(help: "Mappings per timed batch (1: time every operation alone).")
    var batch: Int = 16
    @Option(help: "The unit: vtd (VT-d driver) or smmuv3 (SMMUv3 driver; the latency is each TLBI's, CMD_SYNC free).")
    var arch: BenchArch = .vtd
    @Flag(help: "Print JSON (keys mapNs, unmapNs, pairsPerSecond, invalidationsPerUnmap, ...).")
    var json = false

    func validate() throws {
        guard (1...256).contains(threads) else { throw ValidationError("--threads must be between 1 and 256") }
        guard seconds > 0, seconds <= 3600 else { throw ValidationError("--seconds must be in (0, 3600]") }
        guard (1...512).contains(granule) else { throw ValidationError("--granule must be between 1 and 512 pages") }
        guard dmaTransNs <= 1_000_000_000 else { throw ValidationError("--dma-trans-ns must be at most 1 s") }
        guard invalidationLatencyNs <= 100_000_000 else { throw ValidationError("--invalidation-latency-ns must be at most 100 ms") }
        guard (1...1024).contains(batch) else { throw ValidationError("--batch must be between 1 and 1024") }
    }

    func run() throws {
        let options = DMAMapBenchmark.Options(threads: threads, seconds: seconds, granule: granule, direction: dir,
                                              dmaTransNs: dmaTransNs, mode: mode, invalidationLatencyNs: invalidationLatencyNs,
                                              batch: batch, arch: arch)
        let r: DMAMapBenchmark.Result
        do { r = try DMAMapBenchmark(options: options).run() } catch { throw RunFailure(message: "\(error)") }
        print(render(r))
    }

    func render(_ r: DMAMapBenchmark.Result) -> String {
        let s = r.stats
        func lat(_ x: Samples) -> JSON {
            .object([("mean", .double(x.mean)), ("p50", .double(x.percentile(0.5))), ("p99", .double(x.percentile(0.99)))])
        }
        let perUnmap = s.invalidationsPerUnmap
        let descriptorsPerUnmap = s.unmaps == 0 ? 0 : Double(r.iotlbDescriptors) / Double(s.unmaps)
        if json {
            return JSON.object([
                ("benchmark", .string("dma-map")),
                ("arch", .string(r.options.arch.rawValue)),
                ("mode", .string(r.options.mode.rawValue)),
                ("threads", .int(Int64(r.options.threads))),
                ("seconds", .double(r.options.seconds)),
                ("granule", .uint(r.options.granule)),
                ("dir", .string(r.options.direction.rawValue)),
                ("dmaTransNs", .uint(r.options.dmaTransNs)),
                ("invalidationLatencyNs", .uint(r.options.invalidationLatencyNs)),
                ("batch", .int(Int64(r.options.batch))),
                ("mapNs", lat(r.map)),
                ("unmapNs", lat(r.unmap)),
                ("pairNs", .double(r.map.mean + r.unmap.mean)),
                ("pairs", .int(Int64(r.pairs))),
                ("pairsPerSecond", .double(r.pairsPerSecond)),
                ("invalidationsPerUnmap", .double(perUnmap)),
                ("iotlbDescriptorsPerUnmap", .double(descriptorsPerUnmap)),
                ("flushes", .uint(s.flushes)),
                ("fullQueueFlushes", .uint(s.fullQueueFlushes)),
                ("timerFlushes", .uint(s.timerFlushes)),
                ("rolloverFlushes", .uint(s.rolloverFlushes)),
                ("entriesPerFlush", .double(s.entriesPerFlush)),
                ("strictInvalidations", .uint(s.strictInvalidations)),
            ]).render()
        }
        func f(_ v: Double) -> String { String((v * 10).rounded() / 10) }
        let inv = perUnmap > 0 ? "\(String(format6(perUnmap))) (1/\(f(1 / perUnmap)))" : "0"
        return """
        dma-map (\(r.options.arch.rawValue)): \(r.options.mode.rawValue), \(r.options.threads) thread(s), \(r.options.granule) page(s) \(r.options.direction.rawValue), \
        dma_trans \(r.options.dmaTransNs) ns, invalidation \(r.options.invalidationLatencyNs) ns, \(f(r.options.seconds)) s, batches of \(r.options.batch)
                     mean      p50      p99   (ns/op)
          map   \(pad(f(r.map.mean)))\(pad(f(r.map.percentile(0.5))))\(pad(f(r.map.percentile(0.99))))
          unmap \(pad(f(r.unmap.mean)))\(pad(f(r.unmap.percentile(0.5))))\(pad(f(r.unmap.percentile(0.99))))
          pairs/s: \(f(r.pairsPerSecond))   (\(r.pairs) pairs; \(f(r.map.mean + r.unmap.mean)) ns/pair per thread)
          invalidations per unmap: \(inv); flushes \(s.flushes) (full \(s.fullQueueFlushes), timer \(s.timerFlushes), rollover \(s.rolloverFlushes)), \(f(s.entriesPerFlush)) entries/flush
        """
    }

    private func pad(_ s: String) -> String { String(repeating: " ", count: max(1, 9 - s.count)) + s }
    private func format6(_ v: Double) -> String { String((v * 1e6).rounded() / 1e6) }
}
