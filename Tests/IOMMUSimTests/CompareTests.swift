import Testing
import Foundation
import ArgumentParser
import Simulation
@testable import iommu_sim

/// `iommu-sim compare` and the HTML pages: the figures relate as strict and lazy unmap must,
/// bad options are errors, JSON is deterministic, every plot has data marks.
@Suite("compare: strict versus lazy unmap measured in virtual time, and the HTML pages")
struct CompareTests {
    /// strict-vs-lazy cut to 1 ms of traffic (debug builds run it in a fraction of a second).
    static func smallScenario() throws -> Scenario {
        var s = try BuiltinScenarios.load("strict-vs-lazy")
        s.endNs = 1_000_000
        return s
    }

    static func runs(_ policies: [ComparedPolicy], _ latencies: [UInt64]) throws -> [PolicyRun] {
        try PolicyComparison(scenario: smallScenario(), policies: policies, invalidationNs: latencies, seed: 1).run()
    }

    static func find(_ runs: [PolicyRun], _ p: ComparedPolicy, _ ns: UInt64) throws -> PolicyRun {
        try #require(runs.first { $0.policy == p && $0.invalidationNs == ns })
    }

    @Test("strict unmaps leave no exposure window and wait once per unmap; lazy ones leave windows up to the 10 ms flush-queue timeout and rarely wait; strict throughput falls as invalidations get slower")
    func strictAndLazyRelate() throws {
        let runs = try Self.runs([.strict, .lazy, .singleQueue], [500, 8000])
        #expect(runs.count == 6)
        for r in runs {
            #expect(r.violations == 0, "\(r.policy) at \(r.invalidationNs) ns: \(r.violationSummaries)")
            #expect(r.unmaps > 100 && r.buffersCycled > 100)
        }
        for ns: UInt64 in [500, 8000] {
            let strict = try Self.find(runs, .strict, ns), lazy = try Self.find(runs, .lazy, ns), single = try Self.find(runs, .singleQueue, ns)
            #expect(strict.exposureMaxNs == 0, "a strict unmap returns after its invalidation completed")
            #expect(strict.deferredUnmaps == 0)
            #expect(lazy.exposureP50Ns > strict.exposureP50Ns && lazy.exposureMaxNs > ns)
            // Linux's per-CPU flush queue flushes at the latest 10 ms after its oldest entry
            // (drivers/iommu/dma-iommu.c IOVA_FQ_TIMEOUT); the flush itself takes about one latency.
            #expect(lazy.exposureMaxNs <= 10_000_000 + 4 * ns + 10_000)
            #expect(single.exposureP50Ns >= lazy.exposureP50Ns, "one 32768-entry queue waits longer than per-CPU 256-entry ones")
            #expect(strict.waitsPerUnmap >= 0.99 && strict.invalidationsPerUnmap >= 0.99)
            #expect(lazy.waitsPerUnmap < 0.05 && lazy.waitsPerUnmap < strict.waitsPerUnmap)
            #expect(strict.unmapLatency.meanNs >= Double(ns), "a strict unmap waits for the invalidation")
            #expect(lazy.iovaPeakPages > strict.iovaPeakPages, "deferred unmaps hold their IOVAs until the flush")
            #expect(lazy.bytesPerSecond > strict.bytesPerSecond)
        }
        let s500 = try Self.find(runs, .strict, 500), s8000 = try Self.find(runs, .strict, 8000)
        #expect(s8000.bytesPerSecond < s500.bytesPerSecond * 0.5)
        let l500 = try Self.find(runs, .lazy, 500), l8000 = try Self.find(runs, .lazy, 8000)
        #expect(l8000.bytesPerSecond > l500.bytesPerSecond * 0.9, "lazy unmap hardly pays the latency")
    }

    @Test("recording does not change the run: the same events, virtual time and counters as an unrecorded run")
    func recordingChangesNothing() throws {
        let s = try Self.smallScenario()
        var plain = ScenarioRunner.Options(seed: 3)
        var recorded = plain
        recorded.record = true
        plain.record = false
        let a = try ScenarioRunner(scenario: s, options: plain).run(), b = try ScenarioRunner(scenario: s, options: recorded).run()
        #expect(a.recording == nil && b.recording != nil)
        #expect(a.result.eventsRun == b.result.eventsRun && a.result.virtualTimeNs == b.result.virtualTimeNs)
        #expect(a.result.translations == b.result.translations && a.result.invalidations == b.result.invalidations)
    }

    @Test("bad --policies and --invalidation-ns values and an unknown scenario are errors, not traps", arguments: [
        ["--policies", "strict,eager"], ["--policies", ""], ["--policies", "strict,,lazy"],
        ["--invalidation-ns", "5x"], ["--invalidation-ns", "-1"], ["--invalidation-ns", ""], ["--invalidation-ns", "2000000000"],
    ])
    func badOptions(_ args: [String]) {
        #expect(throws: (any Error).self) { try CompareCommand.parse(args) }
    }

    @Test("the errors name the bad value and the choices")
    func errorMessages() {
        do {
            _ = try CompareCommand.parse(["--policies", "strict,eager"])
            Issue.record("an unknown policy parsed")
        } catch {
            let text = CompareCommand.message(for: error)
            #expect(text.contains("eager") && text.contains("single-queue"))
        }
        #expect(throws: (any Error).self) { try CompareCommand.parse(["no-such-scenario"]).comparison() }
        #expect((try? CompareCommand.parseLatencies("8000, 500,2000,500")) == [500, 2000, 8000])
        #expect((try? CompareCommand.parsePolicies("lazy,strict,lazy")) == [.lazy, .strict])
    }

    @Test("the JSON report is byte-identical for the same seed and names every figure")
    func jsonIsDeterministic() throws {
        let a = CompareReport(scenario: "strict-vs-lazy", seed: 1, runs: try Self.runs([.strict, .lazy], [2000])).json().render()
        let b = CompareReport(scenario: "strict-vs-lazy", seed: 1, runs: try Self.runs([.strict, .lazy], [2000])).json().render()
        #expect(a == b)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(a.utf8)) as? [String: Any])
        let runs = try #require(object["runs"] as? [[String: Any]])
        #expect(runs.count == 2)
        for key in ["policy", "invalidationNs", "throughput", "cpu", "invalidations", "iova", "exposure", "violations"] {
            #expect(runs.allSatisfy { $0[key] != nil }, "key \(key)")
        }
    }

    /// The `<svg class="plot" …>…</svg>` elements of a page, by id.
    static func plots(_ page: String) -> [String: String] {
        var out: [String: String] = [:]
        var rest = page[...]
        while let open = rest.range(of: "<svg class=\"plot\" id=\""), let close = rest[open.upperBound...].range(of: "</svg>") {
            let svg = rest[open.lowerBound..<close.upperBound]
            let id = svg[open.upperBound...].prefix { $0 != "\"" }
            out[String(id)] = String(svg)
            rest = rest[close.upperBound...]
        }
        return out
    }

    @Test("the compare page is one self-contained document with five plots, each with axes, a legend or lanes, and data marks; text is escaped")
    func comparePage() throws {
        let runs = try Self.runs([.strict, .lazy], [500, 2000])
        let page = CompareReport.page(CompareReport(scenario: "a<b>&\"c\"", seed: 1, runs: runs))
        let plots = Self.plots(page)
        #expect(Set(plots.keys) == ["throughput", "exposure", "flushes", "flushes-zoom", "unmap-latency"])
        for (id, svg) in plots {
            #expect(svg.contains("class=\"mark"), "\(id) has data marks")
            #expect(svg.contains("<title>") && svg.contains("class=\"axis\""), "\(id) has a title and axes")
        }
        #expect(plots["throughput"]?.contains("class=\"legend\"") == true)
        #expect(page.contains("a&lt;b&gt;&amp;&quot;c&quot;") && !page.contains("a<b>"))
        // Nothing fetched: no external scripts, styles, images or fonts.
        for bad in ["<script src", "<link", "<img", "@import", "url(", "https://"] { #expect(!page.contains(bad), "\(bad)") }
        #expect(page.components(separatedBy: "http://").count - 1 == plots.count, "only the SVG namespace")
    }

    @Test("the run page draws the IOTLB hit rate, the fault/invalidation timeline and the page-fault histogram; a run without page faults says so inside the plot")
    func runPage() throws {
        var options = ScenarioRunner.Options(seed: 1)
        options.record = true
        let plain = try ScenarioRunner(scenario: Self.smallScenario(), options: options).run()
        let page = RunPage.render(plain)
        let plots = Self.plots(page)
        #expect(Set(plots.keys) == ["iotlb-hit-rate", "events", "page-fault-latency"])
        #expect(plots.values.allSatisfy { $0.contains("class=\"mark") })
        #expect(plots["page-fault-latency"]?.contains("no page faults in this run") == true)
        let faulting = try ScenarioRunner(scenario: BuiltinScenarios.load("sva-faults"), options: options).run()
        let recording = try #require(faulting.recording)
        #expect(recording.pageFaultLatency.count > 0)
        let svg = try #require(Self.plots(RunPage.render(faulting))["page-fault-latency"])
        #expect(svg.contains("<rect class=\"mark\"") && !svg.contains("no page faults"))
    }

    @Test("weighted percentiles take the nearest rank by weight; the histogram buckets by powers of two")
    func percentilesAndBuckets() {
        var s = DurationSamples()
        s.add(0, weight: 98)
        s.add(100, weight: 1)
        s.add(5000, weight: 1)
        #expect(s.percentiles([0.5, 0.98, 0.99, 1]) == [0, 0, 100, 5000])
        #expect(DurationSamples().percentiles([0.5]) == [0])
        var h = LatencyHistogram()
        for v: UInt64 in [0, 1, 2, 3, 1024, 1_000_000_000_000_000] { h.record(v) }
        #expect(h.counts[0] == 1 && h.counts[1] == 1 && h.counts[2] == 2 && h.counts[11] == 1 && h.counts[LatencyHistogram.buckets - 1] == 1)
    }
}
