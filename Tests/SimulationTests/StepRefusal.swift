import Testing
@testable import Simulation

/// Runs `scenario` twice: strictly, where the step at `line` must fail with an error naming
/// `error` and roll back everything it changed; then tolerant of that failure, where the run
/// must go on to its end with the oracle quiet. Returns the tolerant run for more checks.
@discardableResult
func expectStepRefused(_ scenario: Scenario, line: Int, error: String,
                       sourceLocation: SourceLocation = #_sourceLocation) throws -> ScenarioOutcome {
    do {
        _ = try ScenarioRunner(scenario: scenario, options: .init(seed: 1)).run()
        Issue.record("the step at line \(line) succeeded", sourceLocation: sourceLocation)
    } catch let e as ScenarioRunner.StepFailed {
        #expect(e.record.line == line, "\(e)", sourceLocation: sourceLocation)
        #expect(e.record.error?.contains(error) == true, "\(e)", sourceLocation: sourceLocation)
        #expect(e.record.notRolledBack.isEmpty, "\(e)", sourceLocation: sourceLocation)
    }
    var options = ScenarioRunner.Options(seed: 1)
    options.tolerant = true
    let o = try ScenarioRunner(scenario: scenario, options: options).run()
    #expect(o.result.violationCount == 0, "\(o.result.violations.prefix(3))", sourceLocation: sourceLocation)
    return o
}
