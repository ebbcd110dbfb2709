import ArgumentParser
import Simulation

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a scenario (default: the built-in tour) with the oracle checking every DMA, and report."
    )

    @Argument(help: "Scenario to run (built-in: tour).")
    var scenario: String = Tour.name

    @Option(help: "Seed for the scheduler, yield points and workloads; the same seed gives the same run.")
    var seed: UInt64 = 1

    @Flag(help: "Print a JSON report (keys scenario, seed, virtualTimeNs, dma, iotlb, invalidations, oracle, host).")
    var json = false

    func validate() throws {
        guard scenario == Tour.name else {
            throw ValidationError("unknown scenario '\(scenario)'; built-in scenarios: \(Tour.name)")
        }
    }

    func run() throws {
        let result: RunResult
        do {
            result = try Tour(seed: seed).run()
        } catch let failed as Tour.StepFailed {
            throw RunFailure(message: "\(failed)")
        }
        let report = RunReport(result: result)
        print(json ? report.json().render() : report.text())
        if result.violationCount > 0 { throw ExitCode(1) }
    }
}

struct RunFailure: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
