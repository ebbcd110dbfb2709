import Platform
import Kernel

// `expect-error` and `expect-path` of one action, checked as it is performed.
extension ScenarioRunner {
    /// What the action being performed expects, and what its steps did.
    struct ActionWatch {
        var errors: Set<String>
        var paths: Set<UpdatePath>
        /// The core's update-path counts before the action (the paths it takes are the
        /// counts that grew).
        var pathCountsBefore: [String: Int]
        var expectedFailures: [StepRecord] = []
        var otherFailures = 0
    }

    /// Performs a timed action. One that says `expect-error` must have a step fail with one
    /// of those errors (recorded as expected; the run goes on) and roll that step back; one
    /// that says `expect-path` must succeed with every entry change on one of those paths.
    /// What does not hold is an unmet expectation of the run, at the action's line.
    func perform(_ a: Scenario.TimedAction) {
        guard !a.expectedErrors.isEmpty || !a.expectedPaths.isEmpty else { return performAction(a) }
        watch = ActionWatch(errors: Set(a.expectedErrors), paths: Set(a.expectedPaths), pathCountsBefore: m.core.updatePathCounts)
        performAction(a)
        if let w = watch, abort == nil { check(a, w) }
        watch = nil
    }

    private func check(_ a: Scenario.TimedAction, _ w: ActionWatch) {
        let place = "\(scenario.file):\(a.source.line)"
        func unmet(_ text: String) {
            actionExpectationFailures.append("\(place): \(text)")
            note("\(a.label): \(text)")
        }
        if !w.errors.isEmpty {
            let wanted = w.errors.sorted().joined(separator: " or ")
            if w.expectedFailures.isEmpty {
                unmet("'\(a.label)' was expected to fail with \(wanted) but \(w.otherFailures > 0 ? "failed with another error" : "succeeded")")
            }
            for r in w.expectedFailures where !r.notRolledBack.isEmpty {
                unmet("'\(r.label)' failed as expected but did not roll back: \(r.notRolledBack.joined(separator: "; "))")
            }
        }
        if !w.paths.isEmpty && w.otherFailures == 0 {
            let wanted = UpdatePath.allCases.filter(w.paths.contains).map(\.rawValue).joined(separator: " or ")
            let after = m.core.updatePathCounts
            let taken = UpdatePath.allCases.filter { after[$0.rawValue, default: 0] > w.pathCountsBefore[$0.rawValue, default: 0] }
            if taken.isEmpty {
                unmet("'\(a.label)' changed no translation entry (expected the \(wanted) path)")
            } else if !taken.allSatisfy(w.paths.contains) {
                unmet("'\(a.label)' took the \(taken.map(\.rawValue).joined(separator: " and ")) path (expected \(wanted))")
            }
        }
    }
}
