import ArgumentParser
import Platform
import Simulation

/// `iommu-sim bench iopf`: the IO page-fault round trip on the system's own path (device →
/// unit's page request queue → VT-d PRQ handling → core IOPF pipeline → SVA handler →
/// page response → retried translation), one group at a time and pipelined, single pages
/// and groups of 32 (target T11).
struct IOPFCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "iopf",
        abstract: "IO page-fault round trip through the real unit, driver and pipeline: p50/p99 ns and faults per second."
    )

    @Option(help: "Single-page faults per round.")
    var faults: Int = 20_000
    @Option(help: "Groups per round in the batched run.")
    var groups: Int = 2_000
    @Option(help: "Pages per group in the batched run.")
    var groupSize: Int = 32
    @Option(help: "Accesses in flight in the pipelined single-page run (the others keep one).")
    var outstanding: Int = 16
    @Option(help: "Rounds; the report gives medians over them.")
    var rounds: Int = 5
    @Flag(help: "Print JSON (keys p50Ns, p99Ns, faultsPerSecond, oneAtATimeFaultsPerSecond, batchedP50Ns, batchedP99Ns, batchedFaultsPerSecond).")
    var json = false

    func validate() throws {
        guard (100...1_000_000).contains(faults) else { throw ValidationError("--faults must be between 100 and 10^6") }
        guard (10...100_000).contains(groups) else { throw ValidationError("--groups must be between 10 and 10^5") }
        guard (2...512).contains(groupSize), groups * groupSize <= 1 << 20 else {
            throw ValidationError("--group-size must be between 2 and 512, and groups × group size at most 2^20")
        }
        guard (1...512).contains(outstanding) else { throw ValidationError("--outstanding must be between 1 and 512") }
        guard (1...100).contains(rounds) else { throw ValidationError("--rounds must be between 1 and 100") }
    }

    func run() throws {
        let rt: IOPFRoundTrip
        do { rt = try IOPFRoundTrip(memorySize: 1 << 30) } catch { throw RunFailure(message: "\(error)") }
        var single: [IOPFRoundTrip.Result] = [], piped: [IOPFRoundTrip.Result] = [], batched: [IOPFRoundTrip.Result] = []
        do {
            _ = try rt.run(groups: min(faults, 2000), groupSize: 1) // warm-up
            for _ in 0..<rounds {
                single.append(try rt.run(groups: faults / 4, groupSize: 1))
                piped.append(try rt.run(groups: faults, groupSize: 1, outstanding: outstanding))
                batched.append(try rt.run(groups: groups, groupSize: groupSize))
            }
        } catch { throw RunFailure(message: "\(error)") }
        let p50 = median(single.map(\.p50Ns)), p99 = median(single.map(\.p99Ns))
        let oneAtATime = median(single.map(\.faultsPerSecond)), perSecond = median(piped.map(\.faultsPerSecond))
        let bp50 = median(batched.map(\.p50Ns)), bp99 = median(batched.map(\.p99Ns)), bps = median(batched.map(\.faultsPerSecond))
        let errors = (single + piped + batched).reduce(0) { $0 + $1.errors }
        if json {
            print(JSON.object([
                ("benchmark", .string("iopf")), ("path", .string("unit, VT-d driver, core IOPF pipeline, SVA handler")),
                ("faults", .int(Int64(faults))), ("groups", .int(Int64(groups))), ("groupSize", .int(Int64(groupSize))),
                ("outstanding", .int(Int64(outstanding))), ("rounds", .int(Int64(rounds))),
                ("p50Ns", .double(p50)), ("p99Ns", .double(p99)), ("faultsPerSecond", .double(perSecond)),
                ("oneAtATimeFaultsPerSecond", .double(oneAtATime)),
                ("batchedP50Ns", .double(bp50)), ("batchedP99Ns", .double(bp99)), ("batchedFaultsPerSecond", .double(bps)),
                ("errors", .int(Int64(errors))),
            ]).render())
        } else {
            func r(_ v: Double) -> String { String(Int(v.rounded())) }
            print("""
            iopf round trip on the system's path (medians of \(rounds) rounds)
              one at a time, single pages: p50 \(r(p50)) ns, p99 \(r(p99)) ns, \(r(oneAtATime)) faults/s
              \(outstanding) in flight, single pages: \(r(perSecond)) faults/s
              groups of \(groupSize), one at a time: group p50 \(r(bp50)) ns, p99 \(r(bp99)) ns, \(r(bps)) faults/s
              \(errors == 0 ? "every access completed after its page requests were answered" : "ERRORS: \(errors)")
            """)
        }
        if errors > 0 { throw RunFailure(message: "\(errors) round trip(s) went wrong") }
    }
}
