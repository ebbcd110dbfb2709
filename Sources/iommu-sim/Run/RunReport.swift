import Simulation

/// Renders a `RunResult` as plain words or as deterministic JSON (wall-clock figures only
/// under `host`).
struct RunReport {
    let result: RunResult
    var expectationFailures: [String] = []
    /// Failed steps and steps in which an injected fault fired.
    var steps: [String] = []
    /// Why the run stopped before its end (a failed step, a budget); null for a run that ended.
    var failure: JSON?

    func json() -> JSON {
        let r = result
        let hostSeconds = Double(r.wallNs) / 1e9
        return .object([
            ("scenario", .string(r.scenario)),
            ("seed", .uint(r.seed)),
            ("virtualTimeNs", .uint(r.virtualTimeNs)),
            ("eventsRun", .uint(r.eventsRun)),
            ("yieldsTaken", .uint(r.yieldsTaken)),
            ("dma", .object([
                ("translations", .uint(r.translations)),
                ("faults", .uint(r.translationFaults)),
                ("faultsRecorded", .uint(r.faultsRecorded)),
                ("devices", .array(r.devices.map { d in
                    .object([("name", .string(d.name)), ("requests", .uint(d.requests)), ("faultedRequests", .uint(d.faultedRequests)),
                             ("faultsReported", .int(Int64(d.faultsReported))), ("bytesRead", .uint(d.bytesRead)),
                             ("bytesWritten", .uint(d.bytesWritten))])
                })),
            ])),
            ("iotlb", .object([("hits", .uint(r.iotlbHits)), ("misses", .uint(r.iotlbMisses))])),
            ("invalidations", .object([("total", .uint(r.invalidations)), ("waits", .uint(r.invalidationWaits)),
                                       ("byType", .object(r.invalidationsByType.map { ($0.0, .uint($0.1)) }))])),
            ("updatePaths", .object(r.updatePaths.map { ($0.0, .int(Int64($0.1))) })),
            ("dmaAPI", .object([
                ("maps", .uint(r.dmaAPI.maps)), ("unmaps", .uint(r.dmaAPI.unmaps)),
                ("flushes", .uint(r.dmaAPI.flushes)), ("fullQueueFlushes", .uint(r.dmaAPI.fullQueueFlushes)),
                ("timerFlushes", .uint(r.dmaAPI.timerFlushes)), ("rolloverFlushes", .uint(r.dmaAPI.rolloverFlushes)),
                ("entriesPerFlush", .double(r.dmaAPI.entriesPerFlush)),
                ("invalidationsPerUnmap", .double(r.dmaAPI.invalidationsPerUnmap)),
            ])),
            ("pageFaults", .object(r.pageFaultCounters.map { (Self.camel($0.0), .uint($0.1)) })),
            ("deviceCounters", Self.groups(r.deviceCounters)),
            ("unitCounters", Self.groups(r.unitCounters)),
            ("queueCounters", Self.groups(r.queueCounters)),
            ("domainIDs", .object(Dictionary(grouping: r.domainIDs, by: \.domain).sorted { $0.key < $1.key }.map { name, records in
                (name, .object(records.map { ($0.unit, .array($0.dids.map { .int(Int64($0)) })) }))
            })),
            ("pasids", .object(r.pasids.map { ($0.name, .uint(UInt64($0.value))) })),
            ("memory", .object([("peakFrames", .int(Int64(r.peakFrames))), ("framesLeft", .int(Int64(r.framesLeft)))])),
            ("oracle", .object([
                ("checks", .uint(r.oracleChecks)),
                ("expectedFaults", .uint(r.expectedFaults)),
                ("violationCount", .int(Int64(r.violationCount))),
                ("violations", .array(r.violations.map { v in
                    .object([("invariant", .string(v.invariant)), ("detail", .string(v.detail)),
                             ("event", .uint(v.event)), ("timeNs", .uint(v.time))])
                })),
            ])),
            ("workloads", .array(r.workloads.map { w in
                .object([("name", .string(w.name)), ("startedNs", w.startedNs.map { .uint($0) } ?? .null),
                         ("operations", .uint(w.operations)), ("mayIdle", .bool(w.mayIdle))])
            })),
            ("lateItems", .array(r.lateItems.map { l in
                .object([("label", .string(l.label)), ("dueNs", .uint(l.dueNs)), ("ranNs", .uint(l.ranNs))])
            })),
            ("failure", failure ?? .null),
            ("failedSteps", .array(steps.map { .string($0) })),
            ("expectationFailures", .array(expectationFailures.map { .string($0) })),
            ("host", .object([
                ("wallNs", .uint(r.wallNs)),
                ("translationsPerSecond", .double(hostSeconds > 0 ? Double(r.translations) / hostSeconds : 0)),
            ])),
        ])
    }

    func text() -> String {
        let r = result
        var out: [String] = []
        out.append("Scenario \(r.scenario), seed \(r.seed): \(fmt(r.virtualTimeNs / 1000)) µs of virtual time, \(fmt(r.eventsRun)) events, \(fmt(r.yieldsTaken)) yields to hardware")
        out.append("")
        out.append("What happened:")
        for (t, line) in r.log { out.append("  \(pad(fmt(t / 1000), 7)) µs  \(line)") }
        out.append("")
        out.append("DMA: \(fmt(r.translations)) translations, \(fmt(r.translationFaults)) faulted (\(fmt(r.faultsRecorded)) recorded by hardware)")
        for d in r.devices {
            out.append("  \(pad(d.name, 6)) \(pad(fmt(d.requests), 7)) requests, \(pad(fmt(d.faultedRequests), 4)) faulted, \(pad(String(d.faultsReported), 3)) faults reported to the core, \(fmt(d.bytesRead)) B read, \(fmt(d.bytesWritten)) B written")
        }
        let total = r.iotlbHits + r.iotlbMisses
        let rate = total == 0 ? 0 : Double(r.iotlbHits) * 100 / Double(total)
        out.append("IOTLB: \(fmt(r.iotlbHits)) hits, \(fmt(r.iotlbMisses)) misses (\(String(format1(rate)))% hits)")
        out.append("Invalidations: \(fmt(r.invalidations)) descriptors (" + r.invalidationsByType.filter { $0.1 > 0 }.map { "\($0.0) \($0.1)" }.joined(separator: ", ") + "), \(fmt(r.invalidationWaits)) waits")
        out.append("Entry updates: " + r.updatePaths.map { "\($0.0) \($0.1)" }.joined(separator: ", "))
        let q = r.dmaAPI
        out.append("DMA API (first DMA ring): \(q.maps) maps, \(q.unmaps) unmaps, \(q.flushes) flushes (full \(q.fullQueueFlushes), timer \(q.timerFlushes), rollover \(q.rolloverFlushes)), \(format1(q.entriesPerFlush)) entries/flush")
        if r.pageFaultCounter("ats-accesses") + r.pageFaultCounter("page-faults") + r.pageFaultCounter("page-requests") > 0 {
            let c = r.pageFaultCounter
            out.append("ATS/PRI: \(fmt(c("ats-accesses"))) accesses (\(fmt(c("ats-completed"))) completed, \(fmt(c("ats-failed"))) failed), \(fmt(c("device-tlb-hits"))) device-TLB hits, \(fmt(c("page-request-groups"))) page request groups (\(fmt(c("page-requests"))) requests), \(fmt(c("stop-markers"))) stop markers, \(fmt(c("credit-waits"))) credit waits")
            out.append("Page request queue: \(fmt(c("prq-queued"))) queued, \(fmt(c("prq-overflows"))) overflows (\(fmt(c("prq-overflows-cleared"))) cleared), \(fmt(c("unit-auto-responses"))) answered by the unit, \(fmt(c("pasid-drains"))) PASID drains, \(fmt(c("stop-markers-dropped"))) stop markers dropped by the driver, \(fmt(c("stop-markers-discarded"))) by the unit")
            out.append("Fault pipeline: \(fmt(c("page-faults"))) faults in \(fmt(c("fault-groups"))) groups, responses success \(fmt(c("responses-success"))) / invalid \(fmt(c("responses-invalid"))) / failure \(fmt(c("responses-failure"))), \(fmt(c("faults-without-handler"))) without handler, \(fmt(c("late-responses"))) late, \(fmt(c("user-auto-responses"))) auto-answered on detach/close")
        }
        if !r.workloads.isEmpty {
            out.append("Workloads: " + r.workloads.map { w in
                guard let t = w.startedNs else { return "\(w.name) NEVER RAN" }
                return "\(w.name) \(fmt(w.operations)) op(s) from \(fmt(t / 1000)) µs" + (w.operations == 0 ? (w.mayIdle ? " (idle, allowed)" : " (DID NOTHING)") : "")
            }.joined(separator: ", "))
        }
        if let worst = r.lateItems.max(by: { $0.ranNs - $0.dueNs < $1.ranNs - $1.dueNs }) {
            out.append("Ran late (software before them was still running): \(r.lateItems.count) item(s); the latest, \(worst.label), due at \(fmt(worst.dueNs)) ns, ran at \(fmt(worst.ranNs)) ns")
        }
        if !r.domainIDs.isEmpty || !r.pasids.isEmpty {
            out.append("Names: " + (r.domainIDs.map { "\($0.domain) DID \($0.dids.map(String.init).joined(separator: "/")) on \($0.unit)" }
                                    + r.pasids.map { "\($0.name) PASID \($0.value)" }).joined(separator: ", "))
        }
        out.append("Memory: peak \(r.peakFrames) frames, \(r.framesLeft) left after teardown")
        out.append("Oracle: \(fmt(r.oracleChecks)) checks, \(fmt(r.expectedFaults)) expected faults, \(r.violationCount) violation(s)")
        for v in r.violations { out.append("  \(v)") }
        if !steps.isEmpty {
            out.append("Steps that failed or met an injected fault:")
            for x in steps { out.append("  \(x)") }
        }
        if expectationFailures.isEmpty {
            out.append("Expectations: met")
        } else {
            out.append("Expectations NOT met:")
            for e in expectationFailures { out.append("  \(e)") }
        }
        let secs = Double(r.wallNs) / 1e9
        out.append("Host: \(format1(secs * 1000)) ms wall, \(fmt(UInt64(secs > 0 ? Double(r.translations) / secs : 0))) translations/s")
        return out.joined(separator: "\n")
    }

    /// Counters per owner, under the names scenario files use.
    static func groups(_ groups: [CounterGroup]) -> JSON {
        .object(groups.map { g in (g.owner, .object(g.counters.map { ($0.name, .uint($0.value)) })) })
    }

    /// "prq-overflows" → "prqOverflows".
    static func camel(_ name: String) -> String {
        let parts = name.split(separator: "-")
        return parts.enumerated().map { $0.offset == 0 ? String($0.element) : $0.element.prefix(1).uppercased() + $0.element.dropFirst() }.joined()
    }

    private func fmt(_ v: UInt64) -> String {
        let s = String(v)
        var out = ""
        for (i, ch) in s.enumerated() {
            if i > 0 && (s.count - i) % 3 == 0 { out.append(",") }
            out.append(ch)
        }
        return out
    }

    private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }

    private func format1(_ v: Double) -> String {
        let x = (v * 10).rounded() / 10
        return String(x)
    }
}
