import Simulation

/// `compare`'s figures as a table, deterministic JSON, or an HTML page with plots.
struct CompareReport {
    var scenario: String
    var seed: UInt64
    var runs: [PolicyRun]

    static let header = ["policy", "inval ns", "buffers/s", "MB/s", "map ns/op", "unmap ns/op", "unmap CPU µs",
                         "inval/unmap", "waits/unmap", "IOVA peak pg", "IOVA end pg",
                         "exposure p50 µs", "p99 µs", "max µs", "violations"]

    func rows() -> [[String]] {
        runs.map { r in
            [r.policy.rawValue, String(r.invalidationNs), Self.grouped(r.buffersPerSecond), Self.fixed(r.bytesPerSecond / 1e6, 1),
             Self.fixed(r.mapLatency.meanNs, 0), Self.fixed(r.unmapLatency.meanNs, 0), Self.fixed(Double(r.unmapLatency.totalNs) / 1000, 0),
             Self.fixed(r.invalidationsPerUnmap, 3), Self.fixed(r.waitsPerUnmap, 3), String(r.iovaPeakPages), String(r.iovaEndPages),
             Self.fixed(Double(r.exposureP50Ns) / 1000, 1), Self.fixed(Double(r.exposureP99Ns) / 1000, 1), Self.fixed(Double(r.exposureMaxNs) / 1000, 1),
             String(r.violations)]
        }
    }

    func text() -> String {
        var out = ["Scenario \(scenario), seed \(seed): \(runs.count) run(s), figures over each run's timed phase in virtual time", ""]
        let table = [Self.header] + rows()
        let widths = Self.header.indices.map { c in table.map { $0[c].count }.max() ?? 0 }
        for (i, row) in table.enumerated() {
            out.append(row.enumerated().map { c, cell in
                c == 0 ? cell.padding(toLength: widths[c], withPad: " ", startingAt: 0) : String(repeating: " ", count: widths[c] - cell.count) + cell
            }.joined(separator: "  "))
            if i == 0 { out.append(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")) }
        }
        out.append("")
        out.append("Throughput: DMA-API buffers the drivers turned around (unmapped after the device used them, mapped again) per virtual second.")
        out.append("Exposure window: per unmapped 4 KiB page, from its unmap's return until the flush covering it completed (the oracle's stale window).")
        for r in runs where r.violations > 0 {
            out.append("VIOLATIONS under \(r.policy.rawValue) at \(r.invalidationNs) ns:")
            for v in r.violationSummaries { out.append("  \(v)") }
        }
        return out.joined(separator: "\n")
    }

    func json() -> JSON {
        .object([
            ("scenario", .string(scenario)),
            ("seed", .uint(seed)),
            ("runs", .array(runs.map { r in
                .object([
                    ("policy", .string(r.policy.rawValue)),
                    ("invalidationNs", .uint(r.invalidationNs)),
                    ("timedNs", .uint(r.timedNs)),
                    ("throughput", .object([
                        ("buffers", .uint(r.buffersCycled)), ("bytes", .uint(r.bytesCycled)),
                        ("buffersPerSecond", .double(r.buffersPerSecond)), ("bytesPerSecond", .double(r.bytesPerSecond)),
                        ("deviceBytes", .uint(r.deviceBytes)), ("deviceBytesPerSecond", .double(r.deviceBytesPerSecond)),
                    ])),
                    ("cpu", .object([
                        ("maps", .uint(r.mapLatency.count)), ("mapNs", .uint(r.mapLatency.totalNs)), ("mapNsPerOp", .double(r.mapLatency.meanNs)),
                        ("unmaps", .uint(r.unmapLatency.count)), ("unmapNs", .uint(r.unmapLatency.totalNs)),
                        ("unmapNsPerOp", .double(r.unmapLatency.meanNs)), ("unmapMaxNs", .uint(r.unmapLatency.maxNs)),
                    ])),
                    ("invalidations", .object([
                        ("descriptors", .uint(r.invalidations)), ("waits", .uint(r.waits)),
                        ("perUnmap", .double(r.invalidationsPerUnmap)), ("waitsPerUnmap", .double(r.waitsPerUnmap)),
                        ("flushes", .uint(r.flushCount)),
                    ])),
                    ("iova", .object([("peakPages", .int(r.iovaPeakPages)), ("endPages", .int(r.iovaEndPages))])),
                    ("exposure", .object([
                        ("p50Ns", .uint(r.exposureP50Ns)), ("p99Ns", .uint(r.exposureP99Ns)), ("maxNs", .uint(r.exposureMaxNs)),
                        ("pages", .uint(r.exposedPages)), ("deferredUnmaps", .int(Int64(r.deferredUnmaps))),
                    ])),
                    ("violations", .int(Int64(r.violations))),
                    ("violationDetails", .array(r.violationSummaries.map { .string($0) })),
                ])
            })),
        ])
    }

    // MARK: HTML

    static func color(_ p: ComparedPolicy) -> String {
        switch p {
        case .strict: return SVGPlot.palette[1]
        case .lazy: return SVGPlot.palette[0]
        case .singleQueue: return SVGPlot.palette[2]
        }
    }

    var policies: [ComparedPolicy] { runs.reduce(into: []) { if !$0.contains($1.policy) { $0.append($1.policy) } } }
    var latencies: [UInt64] { runs.map(\.invalidationNs).reduce(into: []) { if !$0.contains($1) { $0.append($1) } }.sorted() }

    /// The latency the timeline and the histogram show: the middle one.
    var shownLatency: UInt64 { let l = latencies; return l.isEmpty ? 0 : l[(l.count - 1) / 2] }

    static func page(_ r: CompareReport) -> String {
        var page = HTMLPage(title: "Strict versus lazy unmap: \(r.scenario) (seed \(r.seed))")
        page.paragraph("Each run is the scenario in virtual time with the same seed, its DMA domains under one policy (strict: invalidate and wait in every unmap; lazy: per-CPU flush queues of 256 entries and 10 ms; single-queue: one queue of 32768 entries and 1 s per domain, as drivers/iommu/dma-iommu.c) and every unit's IOTLB invalidation costing the given latency. Figures cover the timed phase; the oracle checked every DMA.")
        page.table(header, r.rows())
        let logX = (r.latencies.first ?? 0) > 0 && Double(r.latencies.last ?? 0) / Double(max(r.latencies.first ?? 1, 1)) >= 8
        let xAxis = SVGPlot.Axis(label: "IOTLB invalidation latency (ns)", scale: logX ? .log : .linear)
        let throughput = r.policies.map { p in
            SVGPlot.Series(name: p.rawValue, color: color(p),
                           points: r.runs.filter { $0.policy == p }.map { (Double($0.invalidationNs), $0.bytesPerSecond / 1e6) })
        }
        page.heading("Throughput and exposure against invalidation latency")
        page.figure(SVGPlot.lines(id: "throughput", title: "DMA-API throughput", x: xAxis,
                                  y: SVGPlot.Axis(label: "MB/s of buffers turned around"), series: throughput),
                    caption: "Buffers unmapped and mapped again per virtual second, times their size. Strict unmaps wait for the invalidation, so the CPU turns fewer buffers around as the latency grows.")
        var exposure: [SVGPlot.Series] = []
        for p in r.policies {
            let runs = r.runs.filter { $0.policy == p }
            exposure.append(SVGPlot.Series(name: "\(p.rawValue) p99", color: color(p), points: runs.map { (Double($0.invalidationNs), Double($0.exposureP99Ns) / 1000) }))
            exposure.append(SVGPlot.Series(name: "max", color: color(p), points: runs.map { (Double($0.invalidationNs), Double($0.exposureMaxNs) / 1000) }, dashed: true))
        }
        page.figure(SVGPlot.lines(id: "exposure", title: "Exposure window after unmap (p99 solid, max dashed)", x: xAxis,
                                  y: SVGPlot.Axis(label: "µs a device could still reach the page", scale: .log), series: exposure),
                    caption: "Per unmapped page, from the unmap's return to the completion of the flush that ended its stale translation (the oracle's record). Strict is 0: its unmap returns after the invalidation.")
        let shown = r.shownLatency
        let at = r.runs.filter { $0.invalidationNs == shown }
        page.heading("At \(shown) ns: flushes and unmap latency")
        let end = Double(at.map(\.timedNs).max() ?? 1) / 1000
        let lanes = at.map { run in
            SVGPlot.Lane(name: "\(run.policy.rawValue) (\(run.flushCount))", color: color(run.policy),
                         events: run.flushes.map { (Double($0.startNs) / 1000, Double($0.endNs) / 1000, 1) })
        }
        page.figure(SVGPlot.timeline(id: "flushes", title: "TLB flushes over the run at \(shown) ns",
                                     x: SVGPlot.Axis(label: "virtual time (µs)"), range: (0, max(end, 1)), lanes: lanes),
                    caption: "Each bar is a flush in progress: a strict unmap's invalidation and wait, or a flush queue's flush of a whole domain. The count follows each policy's name; single-queue may not flush before teardown.")
        // The same lanes over 40 µs: strict's flushes one by one, around the flush-queue flush
        // nearest the middle of the run when there is one.
        let queued = at.filter { $0.policy != .strict }.flatMap(\.flushes).map { Double($0.startNs) / 1000 }
        let near = queued.min { abs($0 - end / 2) < abs($1 - end / 2) }
        let mid = max(0, ((near ?? end / 2) - 10).rounded(.down))
        page.figure(SVGPlot.timeline(id: "flushes-zoom", title: "The same flushes, \(Int(mid))–\(Int(mid) + 40) µs",
                                     x: SVGPlot.Axis(label: "virtual time (µs)"), range: (mid, mid + 40), lanes: lanes, emptyText: "none in this window"),
                    caption: "A 40 µs window of the timeline above: each strict unmap waits out its own invalidation; lazy unmaps return at once and one flush of the domain now and then covers a whole queue.")
        let (low, top) = bucketRange(at.map(\.unmapLatency))
        let categories = (low...top).map { bucketLabel($0) }
        page.figure(SVGPlot.histogram(id: "unmap-latency", title: "DMA-API unmap latency at \(shown) ns", categories: categories,
                                      xLabel: "virtual CPU time in dma_unmap (bucket ≥)", yLabel: "unmaps",
                                      series: at.map { ($0.policy.rawValue, color($0.policy), $0.unmapLatency.counts[low...top].map { Double($0) }) },
                                      emptyLabel: "no DMA-API unmaps in this run"),
                    caption: "Power-of-two buckets of the virtual time each unmap took (its waits and the yields inside it). Lazy unmaps return at once except the one that fills its queue and flushes it.")
        return page.render()
    }

    /// The buckets worth drawing: from the lowest bucket any histogram uses to the highest
    /// (bucket 0 alone when all are empty).
    static func bucketRange(_ hs: [LatencyHistogram]) -> (Int, Int) {
        let low = hs.compactMap { $0.counts.firstIndex(where: { $0 > 0 }) }.min() ?? 0
        let top = hs.compactMap { $0.counts.lastIndex(where: { $0 > 0 }) }.max() ?? 0
        return (low, max(low, top))
    }

    /// A histogram bucket by its lower bound: "0", "512ns", "1µs", "33µs".
    static func bucketLabel(_ b: Int) -> String {
        let ns = LatencyHistogram.lowerBound(b)
        if ns == 0 { return "0" }
        if ns < 1000 { return "\(ns)ns" }
        let us = Double(ns) / 1000
        return us < 10 ? "\(fixed(us, 1))µs" : "\(Int(us.rounded()))µs"
    }

    static func fixed(_ v: Double, _ digits: Int) -> String {
        guard v.isFinite else { return "-" }
        var p = 1.0
        for _ in 0..<digits { p *= 10 }
        let r = (v * p).rounded() / p
        if digits == 0 { return String(Int(r)) }
        let s = String(r)
        let parts = s.split(separator: ".")
        let frac = parts.count > 1 ? String(parts[1]) : ""
        return String(parts[0]) + "." + (frac + String(repeating: "0", count: digits)).prefix(digits)
    }

    static func grouped(_ v: Double) -> String {
        let s = String(Int(v.rounded()))
        var out = ""
        for (i, ch) in s.enumerated() {
            if i > 0 && (s.count - i) % 3 == 0 && ch != "-" { out.append(",") }
            out.append(ch)
        }
        return out
    }
}
