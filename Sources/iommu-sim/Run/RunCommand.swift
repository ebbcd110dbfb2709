import ArgumentParser
import Foundation
import Platform
import Simulation

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a scenario (default: the built-in tour) with the oracle checking every DMA, and report."
    )

    @Argument(help: "A built-in scenario (see `iommu-sim scenarios`) or a YAML scenario file.")
    var scenario: String = "tour"

    @Option(help: "Seed for the scheduler, yield points and workloads; the same seed gives the same run.")
    var seed: UInt64 = 1

    @Flag(help: "Print a JSON report (keys scenario, seed, virtualTimeNs, dma, iotlb, invalidations, oracle, deviceCounters, unitCounters, queueCounters, domainIDs, pasids, failure, host); a run that stops early still prints it, with the reason under failure.")
    var json = false

    @Option(help: "Write a Chrome trace-event JSON file (opens in Perfetto / chrome://tracing).")
    var trace: String?

    @Option(help: "Write a self-contained HTML page of the run (IOTLB hit rate over time, faults and invalidations on a timeline, page-fault latency histogram).")
    var html: String?

    @Option(help: "Inject a broken behaviour to see the oracle catch it: \(Breakage.allCases.map(\.rawValue).joined(separator: ", ")).")
    var `break`: [String] = []

    @Option(name: .customLong("fail-nth"), help: "Fail the Nth fault-injection point hit (as `faults` does for its run N); failing steps are reported and the run goes on.")
    var failNth: Int?

    @Option(name: .customLong("fail-point"), help: "With --fail-nth: count only the hits of this fault-injection point (as `explore --inject-faults` does).")
    var failPoint: String?

    func run() throws {
        let loaded = try loadScenario(scenario)
        var options = ScenarioRunner.Options(seed: seed)
        options.trace = trace != nil
        options.record = html != nil
        if let failNth {
            guard failNth >= 1 else { throw ValidationError("--fail-nth must be at least 1") }
            var only: FaultPoint?
            if let failPoint {
                guard let p = FaultPoint.named(failPoint) else {
                    throw ValidationError("unknown fault point '\(failPoint)'; one of: \(FaultPoint.all.map(\.name).joined(separator: ", "))")
                }
                only = p
            }
            options.faultMode = .failNth(failNth, only: only)
            options.tolerant = true
        } else if failPoint != nil {
            throw ValidationError("--fail-point needs --fail-nth")
        }
        options.breakage = try parseBreakage(`break`)
        let outcome: ScenarioOutcome
        do {
            outcome = try ScenarioRunner(scenario: loaded, options: options).run()
        } catch let failed as ScenarioRunner.StepFailed {
            let r = failed.record
            try stop(failed.outcome, message: "\(failed)", failure: [
                ("kind", .string("step")), ("file", .string(failed.file)), ("line", .int(Int64(r.line))),
                ("step", .string(r.label)), ("timeNs", .uint(r.time)), ("error", .string(r.error ?? "")),
            ])
        } catch let over as ScenarioRunner.BudgetExceeded {
            try stop(over.outcome, message: "\(over)", failure: [
                ("kind", .string("budget")), ("file", .string(over.file)), ("line", .int(Int64(over.line))),
                ("budget", .string("machine.\(over.budget.rawValue)")), ("limit", .string(over.limit)),
                ("eventsRun", .uint(over.eventsRun)), ("timeNs", .uint(over.virtualTimeNs)),
            ])
        }
        if let trace, let buffer = outcome.trace {
            let data = ChromeTrace.render(buffer, scenario: loaded.name, seed: seed, unitNames: Set(loaded.units.map(\.name)))
            do { try data.write(to: URL(fileURLWithPath: trace)) } catch {
                throw RunFailure(message: "cannot write \(trace): \(error.localizedDescription)")
            }
        }
        if let html { try writePage(RunPage.render(outcome), to: html) }
        let report = Self.report(outcome)
        print(json ? report.json().render() : report.text())
        if outcome.result.violationCount > 0 || !outcome.expectationFailures.isEmpty { throw ExitCode(1) }
    }

    static func report(_ outcome: ScenarioOutcome) -> RunReport {
        var report = RunReport(result: outcome.result, expectationFailures: outcome.expectationFailures)
        report.steps = outcome.steps.map { s in
            "\(s.time) ns \(s.label)\(s.line > 0 ? " (line \(s.line))" : ""): \(s.error ?? "succeeded")\(s.expected ? " [expected]" : "")\(s.injected ? " [injected fault fired]" : "")"
                + (s.notRolledBack.isEmpty ? "" : "; NOT rolled back: " + s.notRolledBack.joined(separator: "; "))
        }
        return report
    }

    /// A run that stopped early: the error on stderr (`file:line: …`); with --json the report
    /// of what the run did until then, with the failure under `failure`, on stdout. Exit 1.
    func stop(_ outcome: ScenarioOutcome?, message: String, failure: [(String, JSON)]) throws -> Never {
        FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        if json {
            var report = outcome.map(Self.report)
            report?.failure = .object(failure + [("message", .string(message))])
            print(report?.json().render() ?? JSON.object([("failure", .object(failure + [("message", .string(message))]))]).render())
        }
        throw ExitCode(1)
    }
}

/// Loads a built-in scenario or a file; a bad file is reported with file:line and exits 2.
func loadScenario(_ nameOrPath: String) throws -> Scenario {
    do { return try BuiltinScenarios.load(nameOrPath) } catch {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
        throw ExitCode(2)
    }
}

/// `--break` values as breakages (a ValidationError names the unknown one and the choices).
func parseBreakage(_ names: [String]) throws -> Set<Breakage> {
    Set(try names.map { b in
        guard let x = Breakage(rawValue: b) else {
            throw ValidationError("unknown breakage '\(b)'; one of: \(Breakage.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return x
    })
}

struct RunFailure: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

struct ScenariosCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "scenarios", abstract: "List the built-in scenarios.")

    @Flag(help: "Print a built-in scenario's YAML instead (with --show NAME).")
    var yaml = false

    @Option(help: "Print this built-in scenario's YAML.")
    var show: String?

    func run() throws {
        if let show {
            guard let text = BuiltinScenarios.text(named: show) else { throw ValidationError("no built-in scenario '\(show)'") }
            print(text, terminator: "")
            return
        }
        // Names are padded to the longest, never cut.
        let width = BuiltinScenarios.names.map(\.count).max() ?? 0
        for name in BuiltinScenarios.names {
            let s = try? BuiltinScenarios.load(name)
            print("\(name.padding(toLength: width, withPad: " ", startingAt: 0))  \(s.map { firstSentence($0.description) } ?? "")")
        }
    }

    private func firstSentence(_ text: String) -> String {
        let t = text.split(separator: ";").first.map(String.init) ?? text
        return t.count > 100 ? String(t.prefix(97)) + "..." : t
    }
}
