import Testing
import Foundation
import Yams
import Simulation
@testable import iommu_sim

/// Sharded exploration: N local shards merged give the unsharded report; the deployment
/// manifests run exactly the tested command line.
@Suite("Sharded explore: shards merge to the unsharded report, and the Kubernetes Job and CI workflow run that command line")
struct ShardedExploreTests {
    static let base = ["did-reuse", "--seeds", "1..7", "--break", "did-released-before-invalidation", "--jobs", "2"]

    static func summary(_ args: [String]) throws -> ExploreSummary {
        try ExploreCommand.parse(args).explore().summary
    }

    /// Through the --json text and back, as `iommu-sim merge` reads the files.
    static func roundTrip(_ s: ExploreSummary) throws -> ExploreSummary {
        let text = ExploreCommand.render(s, host: .object([("wallNs", .uint(1))])).render()
        return try MergeCommand.parse(Data(text.utf8), name: "shard").0
    }

    @Test("N shards (1, 3, 5 and more shards than seeds) merge to the unsharded report: runs, violations, soonest seeds, seed counts, replays", arguments: [1, 3, 5, 9])
    func shardsMergeToUnsharded(n: Int) throws {
        let whole = try Self.summary(Self.base)
        #expect(!whole.violations.isEmpty, "the broken run has findings to merge")
        let shards = try (0..<n).map { k in try Self.roundTrip(Self.summary(Self.base + ["--shard", "\(k)/\(n)"])) }
        #expect(shards.reduce(0) { $0 + $1.runs } == 7)
        let merged = try ExploreSummary.merge(shards.reversed())
        #expect(merged == whole)
    }

    @Test("a missing or duplicated shard, a shard of another campaign or an unsharded report is an error")
    func badCampaigns() throws {
        let s = try (0..<3).map { k in try Self.summary(Self.base + ["--shard", "\(k)/3"]) }
        #expect(throws: ShardMergeError.missing([1])) { try ExploreSummary.merge([s[0], s[2]]) }
        #expect(throws: ShardMergeError.duplicate(0)) { try ExploreSummary.merge([s[0], s[1], s[2], s[0]]) }
        var other = s[2]
        other.seeds = "1..8"
        #expect(throws: ShardMergeError.self) { try ExploreSummary.merge([s[0], s[1], other]) }
        var plain = s[1]
        plain.shard = nil
        #expect(throws: ShardMergeError.notSharded(1)) { try ExploreSummary.merge([s[0], plain, s[2]]) }
        #expect(Shard("3/3") == nil && Shard("-1/2") == nil && Shard("1/0") == nil && Shard("x") == nil)
    }

    /// The repository root (this file is Tests/IOMMUSimTests/…).
    static var root: URL { URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent() }

    static func load(_ path: String) throws -> [String: Any] {
        let text = try String(contentsOf: root.appendingPathComponent(path), encoding: .utf8)
        return try #require(try Yams.load(yaml: text) as? [String: Any])
    }

    /// The `iommu-sim explore …` words of a shell line, with `vars` substituted.
    static func exploreWords(_ line: String, _ vars: [String: String]) throws -> [String] {
        var s = line
        for (k, v) in vars { s = s.replacingOccurrences(of: k, with: v) }
        let command = try #require(s.components(separatedBy: ">").first)
        let words = command.split(separator: " ").map { $0.replacingOccurrences(of: "\"", with: "") }.filter { !$0.isEmpty }
        let at = try #require(words.firstIndex(of: "explore"))
        #expect(at > 0 && words[at - 1] == "iommu-sim")
        return Array(words[(at + 1)...])
    }

    @Test("the Kubernetes Indexed Job runs `explore SCENARIO --seeds … --shard $JOB_COMPLETION_INDEX/$SHARDS --json` once per index, and its shards merge")
    func kubernetesJob() throws {
        let job = try Self.load("deploy/kubernetes/explore-job.yaml")
        let spec = try #require(job["spec"] as? [String: Any])
        #expect(spec["completionMode"] as? String == "Indexed")
        let completions = try #require(spec["completions"] as? Int)
        let pod = try #require((spec["template"] as? [String: Any])?["spec"] as? [String: Any])
        let container = try #require((pod["containers"] as? [[String: Any]])?.first)
        let env = Dictionary(uniqueKeysWithValues: try #require(container["env"] as? [[String: Any]]).compactMap { e in
            (e["name"] as? String).map { ($0, "\(e["value"] ?? "")") }
        })
        #expect(env["SHARDS"] == "\(completions)", "one shard per completion index")
        let line = try #require((container["args"] as? [String])?.first)
        #expect(line.contains("--shard \"$JOB_COMPLETION_INDEX/$SHARDS\"") && line.contains("--json"))
        // Run exactly that line for every index, on a small range, and merge.
        let summaries = try (0..<completions).map { k in
            try Self.summary(Self.exploreWords(line, ["$SCENARIO": "did-reuse", "$SEEDS": "1..20", "$JOB_COMPLETION_INDEX": "\(k)",
                                                      "$SHARDS": "\(completions)"]) + ["--jobs", "2"])
        }
        let merged = try ExploreSummary.merge(summaries)
        #expect(merged == (try Self.summary(["did-reuse", "--seeds", "1..20", "--jobs", "2"])))
        let mergeJob = try Self.load("deploy/kubernetes/explore-merge.yaml")
        let mergeLine = "\(mergeJob)"
        #expect(mergeLine.contains("iommu-sim merge /reports/shard-*.json"))
    }

    @Test("the CI workflow's matrix runs the same command line for shards 0..<SHARDS, and a merge job joins them")
    func ciWorkflow() throws {
        let wf = try Self.load(".github/workflows/explore.yml")
        let env = try #require(wf["env"] as? [String: Any])
        let shards = try #require(Int("\(env["SHARDS"] ?? "")"))
        let jobs = try #require(wf["jobs"] as? [String: Any])
        let shardJob = try #require(jobs["shard"] as? [String: Any])
        let matrix = try #require((shardJob["strategy"] as? [String: Any])?["matrix"] as? [String: Any])
        #expect(matrix["shard"] as? [Int] == Array(0..<shards))
        let steps = try #require(shardJob["steps"] as? [[String: Any]])
        let line = try #require(steps.compactMap { $0["run"] as? String }.first { $0.contains("explore") })
        #expect(line.contains("--shard \"${{ matrix.shard }}/$SHARDS\"") && line.contains("--json"))
        let summaries = try (0..<shards).map { k in
            try Self.summary(Self.exploreWords(line, ["$SCENARIO": "did-reuse", "$SEEDS": "1..20", "${{ matrix.shard }}": "\(k)",
                                                      "$SHARDS": "\(shards)", "docker run --rm iommu-sim": "iommu-sim"]) + ["--jobs", "2"])
        }
        #expect(try ExploreSummary.merge(summaries) == (try Self.summary(["did-reuse", "--seeds", "1..20", "--jobs", "2"])))
        let merge = try #require(jobs["merge"] as? [String: Any])
        #expect("\(merge)".contains("iommu-sim merge /reports/shard-*.json"))
        let dockerfile = try String(contentsOf: Self.root.appendingPathComponent("Dockerfile"), encoding: .utf8)
        #expect(dockerfile.contains("FROM swift:") && dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/iommu-sim\"]"))
    }
}
