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
        for w in r.workloads where w.idleUnexpectedly {
            out.append("workload \(w.name) started at \(w.startedNs ?? 0) ns and did nothing (say may-idle: true if that is expected)")
        }
        return out
    }
}
