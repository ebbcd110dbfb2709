import ArgumentParser
import Foundation
import Simulation

/// `iommu-sim compare`: one scenario under every (DMA policy, invalidation latency), in
/// virtual time with one seed, measured from the oracle's and the runner's records.
struct CompareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Run a scenario under strict, lazy and single-queue unmap at several invalidation latencies and compare throughput, invalidations, IOVA space and exposure windows."
    )

    @Argument(help: "A built-in scenario (see `iommu-sim scenarios`; strict-vs-lazy is made for this) or a YAML scenario file.")
    var scenario: String = "strict-vs-lazy"

    @Option(help: "Comma-separated DMA policies: \(ComparedPolicy.allCases.map(\.rawValue).joined(separator: ", ")).")
    var policies: String = "strict,lazy,single-queue"

    @Option(name: .customLong("invalidation-ns"), help: "Comma-separated TLB invalidation latencies in ns (each unit's IOTLB invalidation; SMMUv3: TLBI).")
    var invalidationNs: String = "500,2000,8000"

    @Option(help: "Seed for every run (the same seed gives the same figures).")
    var seed: UInt64 = 1

    @Flag(help: "Print a JSON report (keys scenario, seed, runs: policy, invalidationNs, throughput, cpu, invalidations, iova, exposure, violations).")
    var json = false

    @Option(help: "Write a self-contained HTML page with plots (throughput and exposure against latency, flush timeline, unmap latency histogram).")
    var html: String?

    /// The parsed `--policies` (in the order given, duplicates dropped).
    static func parsePolicies(_ text: String) throws -> [ComparedPolicy] {
        let words = try Self.words(text, option: "--policies")
        var out: [ComparedPolicy] = []
        for w in words {
            guard let p = ComparedPolicy(rawValue: w) else {
                throw ValidationError("unknown policy '\(w)' in --policies; one of: \(ComparedPolicy.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            if !out.contains(p) { out.append(p) }
        }
        return out
    }

    /// The parsed `--invalidation-ns` (ascending, duplicates dropped), each at most 1 s.
    static func parseLatencies(_ text: String) throws -> [UInt64] {
        let words = try Self.words(text, option: "--invalidation-ns")
        var out: [UInt64] = []
        for w in words {
            guard let v = UInt64(w), v <= 1_000_000_000 else {
                throw ValidationError("--invalidation-ns: '\(w)' is not a whole number of nanoseconds from 0 to 1000000000")
            }
            if !out.contains(v) { out.append(v) }
        }
        return out.sorted()
    }

    private static func words(_ text: String, option: String) throws -> [String] {
        let words = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard !words.isEmpty, !words.contains(where: \.isEmpty) else {
            throw ValidationError("\(option) needs a comma-separated list with no empty items (got '\(text)')")
        }
        return words
    }

    func validate() throws {
        _ = try Self.parsePolicies(policies)
        _ = try Self.parseLatencies(invalidationNs)
    }

    func comparison() throws -> (Scenario, [PolicyRun]) {
        let loaded = try loadScenario(scenario)
        let c = PolicyComparison(scenario: loaded, policies: try Self.parsePolicies(policies),
                                 invalidationNs: try Self.parseLatencies(invalidationNs), seed: seed)
        do { return (loaded, try c.run()) } catch {
            throw RunFailure(message: "\(error)")
        }
    }

    func run() throws {
        let (loaded, runs) = try comparison()
        let report = CompareReport(scenario: loaded.name, seed: seed, runs: runs)
        if let html {
            try writePage(CompareReport.page(report), to: html)
        }
        print(json ? report.json().render() : report.text())
        if runs.contains(where: { $0.violations > 0 }) { throw ExitCode(1) }
    }
}

/// Writes an HTML page; a path that cannot be written is a clear error.
func writePage(_ page: String, to path: String) throws {
    do { try Data(page.utf8).write(to: URL(fileURLWithPath: path)) } catch {
        throw RunFailure(message: "cannot write \(path): \(error.localizedDescription)")
    }
}
