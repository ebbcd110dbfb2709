import Platform
import Formats
import Hardware
import Kernel

// The `expect:` checks of a finished run.
extension ScenarioRunner {
    // MARK: Expectations

    func checkExpectations(_ r: RunResult) -> [String] {
        var out = actionExpectationFailures
        let e = scenario.expect
        if let v = e.violations, r.violationCount != v { out.append("expected \(v) violation(s), found \(r.violationCount)") }
        if let f = e.framesLeft, r.framesLeft != f { out.append("expected \(f) frame(s) left after teardown, found \(r.framesLeft)") }
        if let t = e.minTranslations, r.translations < t { out.append("expected at least \(t) translations, found \(r.translations)") }
        for c in e.counters {
            let v = r.pageFaultCounter(c.name)
            if v < c.atLeast { out.append("expected \(c.name) at least \(c.atLeast), found \(v)") }
            if let hi = c.atMost, v > hi { out.append("expected \(c.name) at most \(hi), found \(v)") }
        }
        for f in e.faults {
            let name = scenario.devices[f.device].description.name
            let n = r.devices.first { $0.name == name }?.faultsReported ?? 0
            if n < f.atLeast { out.append("expected at least \(f.atLeast) fault(s) reported for \(name), found \(n)") }
            if let hi = f.atMost, n > hi { out.append("expected at most \(hi) fault(s) reported for \(name), found \(n)") }
        }
        for c in e.scopedCounters {
            let groups = c.scope == .device ? r.deviceCounters : c.scope == .unit ? r.unitCounters : r.queueCounters
            guard let v = groups.first(where: { $0.owner == c.owner })?.value(c.name) else {
                out.append("expected \(c.owner)'s \(c.name), but the \(c.scope.rawValue) never existed in the run")
                continue
            }
            let what = "\(c.scope.rawValue) \(c.owner)'s \(c.name)"
            if c.atMost == c.atLeast, v != c.atLeast { out.append("expected \(what) to be \(c.atLeast), found \(v)"); continue }
            if v < c.atLeast { out.append("expected \(what) at least \(c.atLeast), found \(v)") }
            if let hi = c.atMost, v > hi { out.append("expected \(what) at most \(hi), found \(v)") }
        }
        for d in e.domainIDs {
            let unit = scenario.units[d.unit].name
            let got = r.domainIDs.first { $0.domain == d.domain && $0.unit == unit }?.dids ?? []
            if got.first != d.did {
                out.append("expected domain \(d.domain) to get DID \(d.did) on \(unit), "
                           + (got.isEmpty ? "but it never held one there" : "found \(got.map(String.init).joined(separator: " then "))"))
            }
        }
        for p in e.pasids {
            let got = r.pasids.first { $0.name == p.name }?.value
            if got != p.value { out.append("expected \(p.name) to get PASID \(p.value), " + (got.map { "found \($0)" } ?? "but it never got one")) }
        }
        for w in r.workloads where w.idleUnexpectedly {
            out.append("workload \(w.name) started at \(w.startedNs ?? 0) ns and did nothing (say may-idle: true if that is expected)")
        }
        return out
    }
}
