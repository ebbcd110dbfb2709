import ArgumentParser
import Foundation
import Simulation

/// Progress on stderr, only when it is a terminal.
final class Progress: @unchecked Sendable {
    let enabled = isatty(STDERR_FILENO) != 0
    private let lock = NSLock()
    private var last: UInt64 = 0
    private let start = DispatchTime.now().uptimeNanoseconds

    func update(done: Int, total: Int, extra: String) {
        guard enabled else { return }
        lock.lock(); defer { lock.unlock() }
        let now = DispatchTime.now().uptimeNanoseconds
        guard done == total || now - last > 200_000_000 else { return }
        last = now
        let secs = Double(now - start) / 1e9
        let rate = secs > 0 ? Double(done) / secs : 0
        let eta = rate > 0 ? Double(total - done) / rate : 0
        let line = String(format: "\r%d/%d runs, %.0f/s, %@, ETA %.0f s   ", done, total, rate, extra, eta)
        FileHandle.standardError.write(Data(line.utf8))
        if done == total { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}

/// The process's peak resident set so far, in bytes (`getrusage`'s ru_maxrss, KiB on Linux).
func peakResidentBytes() -> UInt64 {
    var u = rusage()
    guard getrusage(RUSAGE_SELF.rawValue, &u) == 0 else { return 0 }
    return UInt64(max(0, u.ru_maxrss)) * 1024
}

struct ExploreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explore",
        abstract: "Run a scenario under every seed of a range; report each broken invariant once, with the seed that shows it soonest."
    )

    @Argument(help: "A built-in scenario or a YAML scenario file.")
    var scenario: String = "tour"

    @Option(help: "Seeds to run, as A..B (inclusive).")
    var seeds: String = "1..100"

    @Option(help: "Worker threads (default: the number of cores). The result does not depend on it.")
    var jobs: Int?

    @Flag(help: "Print JSON (keys scenario, runs, violations[{seed, invariant, detail, seeds, timeNs, replay}], wallNs, seedsPerMinute).")
    var json = false

    @Option(help: "Inject a broken behaviour (see `run --help`).")
    var `break`: [String] = []

    @Flag(name: .customLong("inject-faults"), help: "Each seed also fails one fault-injection point at one hit, both chosen from the seed; violations name it and replay it.")
    var injectFaults = false

    @Option(help: "Run slice K of N deterministic contiguous slices of the seeds (0 ≤ K < N, as JOB_COMPLETION_INDEX counts); `iommu-sim merge` joins the shards' --json reports.")
    var shard: String?

    func parseShard() throws -> Shard? {
        guard let shard else { return nil }
        guard let s = Shard(shard) else { throw ValidationError("--shard must be K/N with 0 ≤ K < N ≤ 1000000, got '\(shard)'") }
        return s
    }

    func parseSeeds() throws -> ClosedRange<UInt64> {
        let parts = seeds.components(separatedBy: "..")
        guard parts.count == 2, let a = UInt64(parts[0]), let b = UInt64(parts[1]), a <= b, b - a < 100_000_000 else {
            throw ValidationError("--seeds must be A..B with A ≤ B (e.g. 1..500), got '\(seeds)'")
        }
        return a...b
    }

    /// Runs the seeds (this shard's slice of them) and returns the report as `--json` prints
    /// it, with the host figures.
    func explore() throws -> (summary: ExploreSummary, report: Explorer.Report) {
        let range = try parseSeeds()
        let shard = try parseShard()
        if let jobs, !(1...1024).contains(jobs) { throw ValidationError("--jobs must be between 1 and 1024") }
        let loaded = try loadScenario(scenario)
        let breakage = try parseBreakage(`break`)
        let progress = Progress()
        let explorer = Explorer(scenario: loaded, breakage: breakage, injectFaults: injectFaults)
        let report: Explorer.Report
        if let shard, shard.slice(of: range) == nil {
            // More shards than seeds: this one has nothing to run.
            report = Explorer.Report(scenario: loaded.name, runs: 0, findings: [], wallNs: 0, translations: 0)
        } else {
            report = explorer.run(seeds: shard?.slice(of: range) ?? range, jobs: jobs ?? ProcessInfo.processInfo.activeProcessorCount) { done, total, violating in
                progress.update(done: done, total: total, extra: "\(violating) with violations")
            }
        }
        let breakFlags = `break`.map { " --break \($0)" }.joined()
        func replay(_ f: Explorer.Finding) -> String {
            let inject = f.injection.map { " --fail-point \($0.point) --fail-nth \($0.nth)" } ?? ""
            return "iommu-sim run \(scenario) --seed \(f.seed)\(breakFlags)\(inject) --trace t.json"
        }
        let summary = ExploreSummary(scenario: report.scenario, seeds: "\(range.lowerBound)..\(range.upperBound)", runs: report.runs,
                                     violations: report.findings.map {
                                         .init(seed: $0.seed, invariant: $0.invariant, detail: $0.detail, seeds: $0.seeds, timeNs: $0.timeNs, replay: replay($0))
                                     }, shard: shard)
        return (summary, report)
    }

    func run() throws {
        let (summary, report) = try explore()
        if json {
            let host = JSON.object([("wallNs", .uint(report.wallNs)), ("seedsPerMinute", .double(report.seedsPerMinute)),
                                    ("translations", .uint(report.translations)), ("peakRSSBytes", .uint(peakResidentBytes()))])
            print(Self.render(summary, host: host).render())
        } else {
            let slice = summary.shard.map { " (shard \($0.index)/\($0.count))" } ?? ""
            print("Explored \(report.scenario) over seeds \(summary.seeds.replacingOccurrences(of: "..", with: "..."))\(slice): \(report.runs) runs, \(report.findings.count) distinct violation(s)")
            for v in summary.violations {
                print("  [\(v.invariant)] in \(v.seeds) seed(s); soonest: seed \(v.seed) at \(v.timeNs) ns: \(v.detail)")
                print("    replay: \(v.replay)")
            }
            print(String(format: "Host: %.1f s wall, %.0f seeds/min, peak RSS %.0f MB", Double(report.wallNs) / 1e9, report.seedsPerMinute,
                         Double(peakResidentBytes()) / 1e6))
        }
        if !report.findings.isEmpty { throw ExitCode(1) }
    }

    /// An explore report as JSON: scenario, seeds (the whole range), shard (when sharded),
    /// runs, violations, host.
    static func render(_ s: ExploreSummary, host: JSON) -> JSON {
        var fields: [(String, JSON)] = [("scenario", .string(s.scenario)), ("seeds", .string(s.seeds))]
        if let shard = s.shard { fields.append(("shard", .object([("index", .int(Int64(shard.index))), ("count", .int(Int64(shard.count)))]))) }
        fields.append(("runs", .int(Int64(s.runs))))
        fields.append(("violations", .array(s.violations.map { v in
            .object([("seed", .uint(v.seed)), ("invariant", .string(v.invariant)), ("detail", .string(v.detail)),
                     ("seeds", .int(Int64(v.seeds))), ("timeNs", .uint(v.timeNs)), ("replay", .string(v.replay))])
        })))
        fields.append(("host", host))
        return .object(fields)
    }
}

struct FaultsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "faults",
        abstract: "fail_nth sweep: fail each fault-injection point the scenario reaches, one run each; check errors, rollback and leaks."
    )

    @Argument(help: "A built-in scenario or a YAML scenario file.")
    var scenario: String = "tour"

    @Option(help: "Seed of the runs.")
    var seed: UInt64 = 1

    @Option(help: "Worker threads (default: the number of cores).")
    var jobs: Int?

    @Flag(help: "Print JSON (keys points, runs, leaks, inconsistencies, failures[{n, point, kind, detail}], ...).")
    var json = false

    func run() throws {
        if let jobs, !(1...1024).contains(jobs) { throw ValidationError("--jobs must be between 1 and 1024") }
        let loaded = try loadScenario(scenario)
        let progress = Progress()
        let sweep = FaultSweep(scenario: loaded, seed: seed)
        let r: FaultSweep.Report
        do {
            r = try sweep.run(jobs: jobs ?? ProcessInfo.processInfo.activeProcessorCount) { done, total in
                progress.update(done: done, total: total, extra: "fail_nth")
            }
        } catch {
            // The counting run itself stopped (its budget): `file:line: …`.
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode(1)
        }
        func replay(_ f: FaultSweep.Failure) -> String? { sweep.replay(f).map { "iommu-sim run \(scenario) \($0)" } }
        if json {
            let j = JSON.object([
                ("scenario", .string(r.scenario)), ("seed", .uint(r.seed)),
                ("points", .int(Int64(r.points))),
                ("pointsByName", .object(r.pointsByName.map { ($0.0, .int(Int64($0.1))) })),
                ("runs", .int(Int64(r.runs))),
                ("leaks", .int(Int64(r.leaks))),
                ("inconsistencies", .int(Int64(r.inconsistencies))),
                ("returnedError", .int(Int64(r.returnedError))),
                ("absorbed", .int(Int64(r.absorbed))),
                ("absorbedByPoint", .object(r.absorbedByPoint.map { ($0.0, .int(Int64($0.1))) })),
                ("caughtByOracle", .int(Int64(r.caughtByOracle))),
                ("failures", .array(r.failures.map { f in
                    .object([("n", .int(Int64(f.n))), ("point", .string(f.point)), ("kind", .string(f.kind)), ("detail", .string(f.detail)),
                             ("replay", replay(f).map { .string($0) } ?? .null)])
                })),
                ("host", .object([("wallNs", .uint(r.wallNs))])),
            ])
            print(j.render())
        } else {
            print("fail_nth sweep of \(r.scenario) (seed \(r.seed)): \(r.points) injection points, \(r.runs) runs")
            print("  points: " + r.pointsByName.map { "\($0.0) \($0.1)" }.joined(separator: ", "))
            print("  failed step returned its error: \(r.returnedError); absorbed (fallback or hardware outside a step): \(r.absorbed) [\(r.absorbedByPoint.map { "\($0.0) \($0.1)" }.joined(separator: ", "))]; dropped descriptors caught by the oracle: \(r.caughtByOracle)")
            print("  leaks: \(r.leaks), inconsistencies: \(r.inconsistencies), failures: \(r.failures.count)")
            for f in r.failures.prefix(50) {
                print("    N=\(f.n) \(f.point): \(f.kind): \(f.detail)")
                print("      replay: \(replay(f) ?? "none (the counting run with the file's inject actions off; no single run is the same)")")
            }
            print(String(format: "Host: %.1f s wall", Double(r.wallNs) / 1e9))
        }
        if r.leaks > 0 || r.inconsistencies > 0 || !r.failures.isEmpty { throw ExitCode(1) }
    }
}
