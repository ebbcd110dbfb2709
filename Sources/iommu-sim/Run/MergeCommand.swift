import ArgumentParser
import Foundation
import Simulation

/// `iommu-sim merge REPORT.json...`: the shard reports of one sharded `explore --json`
/// campaign joined into the report of the whole range.
struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Merge the --json reports of `explore --shard K/N` into the report of the whole seed range (every shard once)."
    )

    @Argument(help: "Shard reports (explore --shard K/N --json), one per shard.")
    var reports: [String] = []

    func merged() throws -> (ExploreSummary, wallNs: UInt64) {
        var summaries: [ExploreSummary] = []
        var wall: UInt64 = 0
        for path in reports {
            guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("cannot read \(path)") }
            let (s, w) = try Self.parse(data, name: path)
            summaries.append(s)
            wall &+= w
        }
        do { return (try ExploreSummary.merge(summaries), wall) } catch { throw ValidationError(error.description) }
    }

    func run() throws {
        let (m, wall) = try merged()
        let host = JSON.object([("shards", .int(Int64(reports.count))), ("wallNs", .uint(wall))])
        print(ExploreCommand.render(m, host: host).render())
        if !m.violations.isEmpty { throw ExitCode(1) }
    }

    /// One report as `explore --json` printed it (every field checked; a wrong one is named).
    static func parse(_ data: Data, name: String) throws -> (ExploreSummary, wallNs: UInt64) {
        func bad(_ what: String) -> ValidationError { ValidationError("\(name): \(what)") }
        guard let top = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { throw bad("not a JSON object") }
        guard let scenario = top["scenario"] as? String, let seeds = top["seeds"] as? String,
              let runs = (top["runs"] as? NSNumber)?.intValue, runs >= 0 else { throw bad("missing scenario, seeds or runs") }
        var shard: Shard?
        if let s = top["shard"] as? [String: Any] {
            guard let k = (s["index"] as? NSNumber)?.intValue, let n = (s["count"] as? NSNumber)?.intValue,
                  let v = Shard("\(k)/\(n)") else { throw bad("shard is not {index, count} with 0 ≤ index < count") }
            shard = v
        }
        guard let list = top["violations"] as? [[String: Any]] else { throw bad("missing violations") }
        var violations: [ExploreSummary.Violation] = []
        for v in list {
            guard let seed = (v["seed"] as? NSNumber)?.uint64Value, let invariant = v["invariant"] as? String,
                  let detail = v["detail"] as? String, let seeds = (v["seeds"] as? NSNumber)?.intValue,
                  let time = (v["timeNs"] as? NSNumber)?.uint64Value, let replay = v["replay"] as? String else {
                throw bad("a violation lacks seed, invariant, detail, seeds, timeNs or replay")
            }
            violations.append(.init(seed: seed, invariant: invariant, detail: detail, seeds: seeds, timeNs: time, replay: replay))
        }
        let wall = ((top["host"] as? [String: Any])?["wallNs"] as? NSNumber)?.uint64Value ?? 0
        return (ExploreSummary(scenario: scenario, seeds: seeds, runs: runs, violations: violations, shard: shard), wall)
    }
}
