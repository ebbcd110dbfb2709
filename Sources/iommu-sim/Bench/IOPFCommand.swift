import ArgumentParser
import Platform
import Simulation

extension IOPFRoundTrip.HandOff: ExpressibleByArgument {}

/// `iommu-sim bench iopf`: the IO page-fault round trip with real threads (device thread →
/// page request queue → handler → page group response → retried translation), single
/// requests and groups, with blocking and polling hand-off.
struct IOPFCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "iopf",
        abstract: "IO page-fault round trip on real threads: p50/p99 ns and faults per second, single requests and groups of 32."
    )

    @Option(help: "Single-page requests per pipelined round (one-at-a-time rounds take a quarter of them).")
    var faults: Int = 50_000
    @Option(help: "Groups per round in the batched run.")
    var groups: Int = 10_000
    @Option(help: "Pages per group in the batched run.")
    var groupSize: Int = 32
    @Option(help: "Page requests the device may have outstanding (PRI allocation) in the throughput runs; latency runs keep one group in flight.")
    var credits: Int = 64
    @Option(help: "Device work between one-at-a-time round trips, ns (lets a blocking handler fall asleep, so its wake-up is measured).")
    var gapNs: UInt64 = 20_000
    @Option(help: "Rounds; the report gives medians over them.")
    var rounds: Int = 5
    @Option(help: "Hand-off for the headline keys: blocking (the handler sleeps until the event) or polling.")
    var handOff: IOPFRoundTrip.HandOff = .blocking
    @Flag(help: "Print JSON (keys p50Ns, p99Ns, faultsPerSecond, batchedFaultsPerSecond, and per hand-off figures).")
    var json = false

    func validate() throws {
        guard (100...100_000_000).contains(faults) else { throw ValidationError("--faults must be between 100 and 10^8") }
        guard (10...10_000_000).contains(groups) else { throw ValidationError("--groups must be between 10 and 10^7") }
        guard (2...512).contains(groupSize) else { throw ValidationError("--group-size must be between 2 and 512") }
        guard credits >= groupSize, credits / groupSize <= 256, credits <= 256 else {
            throw ValidationError("--credits must cover one group (--group-size) and at most 256 requests")
        }
        guard (1...100).contains(rounds) else { throw ValidationError("--rounds must be between 1 and 100") }
    }

    struct Figures {
        var p50 = 0.0, p99 = 0.0, faultsPerSecond = 0.0, roundTripFaultsPerSecond = 0.0
        var batchedP50 = 0.0, batchedP99 = 0.0, batchedFaultsPerSecond = 0.0
        var errors = 0, sleeps = 0
    }

    func run() throws {
        let platform: PlatformContext
        let rt: IOPFRoundTrip
        do {
            platform = try PlatformContext(memorySize: 1 << 30, seed: 1)
            rt = try IOPFRoundTrip(memory: platform.memory, frames: platform.frames)
        } catch { throw RunFailure(message: "\(error)") }
        var wakes: [Double] = []
        do { for _ in 0..<rounds { wakes.append(try rt.wakeLatencyNs(gapNs: gapNs)) } } catch { throw RunFailure(message: "\(error)") }
        let wakeNs = median(wakes)
        var figures: [IOPFRoundTrip.HandOff: Figures] = [:]
        for mode in IOPFRoundTrip.HandOff.allCases {
            var single: [IOPFRoundTrip.Result] = [], piped: [IOPFRoundTrip.Result] = [], batched: [IOPFRoundTrip.Result] = []
            do {
                // Warm-up: page-table pages, caches, thread start.
                _ = try rt.run(handOff: mode, groups: min(faults, 2000), groupSize: 1)
                for _ in 0..<rounds {
                    single.append(try rt.run(handOff: mode, groups: faults / 4, groupSize: 1, gapNs: gapNs))
                    piped.append(try rt.run(handOff: mode, groups: faults, groupSize: 1, credits: credits))
                    batched.append(try rt.run(handOff: mode, groups: groups, groupSize: groupSize, credits: credits))
                }
            } catch { throw RunFailure(message: "\(error)") }
            var f = Figures()
            f.p50 = median(single.map(\.p50Ns)); f.p99 = median(single.map(\.p99Ns))
            f.roundTripFaultsPerSecond = median(single.map(\.faultsPerSecond))
            f.faultsPerSecond = median(piped.map(\.faultsPerSecond))
            f.batchedP50 = median(batched.map(\.p50Ns)); f.batchedP99 = median(batched.map(\.p99Ns))
            f.batchedFaultsPerSecond = median(batched.map(\.faultsPerSecond))
            f.errors = (single + piped + batched).reduce(0) { $0 + $1.errors }
            f.sleeps = single.reduce(0) { $0 + $1.sleeps }
            figures[mode] = f
        }
        let headline = figures[handOff] ?? Figures()
        let errors = figures.values.reduce(0) { $0 + $1.errors }
        func obj(_ f: Figures) -> JSON {
            .object([("p50Ns", .double(f.p50)), ("p99Ns", .double(f.p99)), ("faultsPerSecond", .double(f.faultsPerSecond)),
                     ("oneAtATimeFaultsPerSecond", .double(f.roundTripFaultsPerSecond)),
                     ("batchedP50Ns", .double(f.batchedP50)), ("batchedP99Ns", .double(f.batchedP99)),
                     ("batchedFaultsPerSecond", .double(f.batchedFaultsPerSecond)), ("handlerSleeps", .int(Int64(f.sleeps)))])
        }
        if json {
            print(JSON.object([
                ("benchmark", .string("iopf")),
                ("faults", .int(Int64(faults))), ("groups", .int(Int64(groups))), ("groupSize", .int(Int64(groupSize))),
                ("credits", .int(Int64(credits))),
                ("rounds", .int(Int64(rounds))), ("handOff", .string(handOff.rawValue)),
                ("p50Ns", .double(headline.p50)), ("p99Ns", .double(headline.p99)),
                ("faultsPerSecond", .double(headline.faultsPerSecond)),
                ("batchedFaultsPerSecond", .double(headline.batchedFaultsPerSecond)),
                ("blocking", obj(figures[.blocking] ?? Figures())), ("polling", obj(figures[.polling] ?? Figures())),
                ("gapNs", .uint(gapNs)),
                ("futexWakeNs", .double(wakeNs)),
                ("errors", .int(Int64(errors))),
            ]).render())
        } else {
            func r(_ v: Double) -> String { String(Int(v.rounded())) }
            func pad(_ s: String, _ n: Int = 12) -> String { String(repeating: " ", count: max(1, n - s.count)) + s }
            var lines = ["iopf round trip (medians of \(rounds) rounds; single: \(faults) faults; batched: \(groups) groups of \(groupSize); \(credits) credits)",
                         "  round trip: one request in flight; faults/s: single-page groups with \(credits) credits; batched: groups of \(groupSize)",
                         "  hand-off        p50 ns      p99 ns  1-at-a-time/s    faults/s   group p50 ns  group p99 ns  batched faults/s"]
            for mode in IOPFRoundTrip.HandOff.allCases {
                let f = figures[mode] ?? Figures()
                lines.append("  \(mode.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0))\(pad(r(f.p50)))\(pad(r(f.p99)))\(pad(r(f.roundTripFaultsPerSecond), 15))\(pad(r(f.faultsPerSecond)))\(pad(r(f.batchedP50), 15))\(pad(r(f.batchedP99), 14))\(pad(r(f.batchedFaultsPerSecond), 18))")
            }
            lines.append("  one-at-a-time round trips are \(gapNs) ns apart (the blocking handler sleeps between them); waking a sleeping thread costs \(r(wakeNs)) ns on this machine (median)")
            lines.append(errors == 0 ? "  every group answered SUCCESS once and every retried translation succeeded" : "  ERRORS: \(errors)")
            print(lines.joined(separator: "\n"))
        }
        if errors > 0 { throw RunFailure(message: "\(errors) round trip(s) went wrong") }
    }
}
