import Simulation

/// `run --html`: one page for one run, from what the run recorded (`RunRecorder`): the IOTLB
/// hit rate over virtual time, faults, invalidations and flushes on a timeline, and the IO
/// page-fault latency histogram.
enum RunPage {
    static func render(_ outcome: ScenarioOutcome) -> String {
        let r = outcome.result
        var page = HTMLPage(title: "Run of \(r.scenario) (seed \(r.seed))")
        let total = r.iotlbHits + r.iotlbMisses
        page.paragraph("\(r.virtualTimeNs / 1000) µs of virtual time, \(r.translations) translations (\(r.translationFaults) faulted), IOTLB \(total == 0 ? 0 : r.iotlbHits * 100 / total)% hits, \(r.invalidations) invalidation descriptors and \(r.invalidationWaits) waits, \(r.violationCount) oracle violation(s) in \(r.oracleChecks) checks.")
        guard let rec = outcome.recording else {
            page.paragraph("This run recorded nothing.")
            return page.render()
        }
        page.table(["figure", "value"], [
            ["timed phase (µs)", String((rec.timedPhaseEndNs &- rec.timedPhaseStartNs) / 1000)],
            ["DMA-API maps / unmaps", "\(rec.mapLatency.count) / \(rec.unmapLatency.count)"],
            ["TLB flushes (strict unmaps and flush-queue flushes)", String(rec.flushCount)],
            ["IO page faults timed (ATS accesses that sent page requests)", String(rec.pageFaultLatency.count)],
            ["oracle violations", String(r.violationCount)],
        ])
        let samples = rec.samples
        // Per interval between samples: hit rate, and the counts as timeline bars.
        var hitRate: [(x: Double, y: Double)] = []
        var invalidations: [(start: Double, end: Double, weight: Double)] = []
        var faults: [(start: Double, end: Double, weight: Double)] = []
        for (a, b) in zip(samples, samples.dropFirst()) where b.timeNs > a.timeNs {
            let t0 = Double(a.timeNs) / 1000, t1 = Double(b.timeNs) / 1000
            let hits = b.totals.iotlbHits &- a.totals.iotlbHits, misses = b.totals.iotlbMisses &- a.totals.iotlbMisses
            if hits + misses > 0 { hitRate.append((t1, Double(hits) * 100 / Double(hits + misses))) }
            let inv = b.totals.invalidations &- a.totals.invalidations
            if inv > 0 { invalidations.append((t0, t1, Double(inv))) }
            let f = b.totals.faults &- a.totals.faults
            if f > 0 { faults.append((t0, t1, Double(f))) }
        }
        let end = Double(max(rec.timedPhaseEndNs, 1)) / 1000
        page.heading("IOTLB and invalidations over the run")
        if hitRate.isEmpty {
            page.figure(SVGPlot.histogram(id: "iotlb-hit-rate", title: "IOTLB hit rate over virtual time", categories: ["-"], xLabel: "virtual time (µs)",
                                          yLabel: "hit rate (%)", series: [], emptyLabel: "no translations in this run"),
                        caption: "The units translated nothing during the timed phase.")
        } else {
            page.figure(SVGPlot.lines(id: "iotlb-hit-rate", title: "IOTLB hit rate over virtual time", x: SVGPlot.Axis(label: "virtual time (µs)"),
                                      y: SVGPlot.Axis(label: "hits per translation (%)"),
                                      series: [SVGPlot.Series(name: "all units", color: SVGPlot.palette[0], points: hitRate)]),
                        caption: "Hits over hits and misses of every unit's IOTLB (SMMUv3: TLB) per interval of \(rec.sampleEveryNs / 1000) µs (sampled as traffic runs, no extra events).")
        }
        let flushLane = SVGPlot.Lane(name: "flushes (\(rec.flushCount))", color: SVGPlot.palette[1],
                                     events: rec.flushes.map { (Double($0.startNs) / 1000, Double($0.endNs) / 1000, 1) })
        page.figure(SVGPlot.timeline(id: "events", title: "Faults, invalidations and flushes", x: SVGPlot.Axis(label: "virtual time (µs)"),
                                     range: (0, end), lanes: [
                                        SVGPlot.Lane(name: "faults (\(r.translationFaults))", color: SVGPlot.palette[4], events: faults),
                                        SVGPlot.Lane(name: "invalidations", color: SVGPlot.palette[3], events: invalidations),
                                        flushLane,
                                     ]),
                    caption: "Translation faults and invalidation descriptors per interval (bar height: count, relative to the lane's largest), and each TLB flush while it runs (a strict unmap's invalidation and wait, or a flush queue's flush).")
        page.heading("IO page faults")
        let h = rec.pageFaultLatency
        let (low, top) = CompareReport.bucketRange([h])
        let p = rec.pageFaultSamples.percentiles([0.5, 0.99])
        page.figure(SVGPlot.histogram(id: "page-fault-latency", title: "IO page-fault latency", categories: (low...top).map { CompareReport.bucketLabel($0) },
                                      xLabel: "from the access's page request to its completion (bucket ≥)", yLabel: "faulting accesses",
                                      series: h.count == 0 ? [] : [("page faults", SVGPlot.palette[2], h.counts[low...top].map { Double($0) })],
                                      emptyLabel: "no page faults in this run"),
                    caption: h.count == 0 ? "No ATS access of this run sent a page request." :
                        "ATS accesses that sent page requests (PRI), from the access to its completion after the response: p50 \(p[0]) ns, p99 \(p[1]) ns, max \(h.maxNs) ns.")
        return page.render()
    }
}
