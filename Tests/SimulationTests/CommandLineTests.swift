import Testing
import Foundation
@testable import Simulation

/// Runs the `iommu-sim` that `swift build --build-tests` put beside the test bundle.
private func iommuSim(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    let bundleDir = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    let candidates = [bundleDir.appendingPathComponent("iommu-sim"),
                      URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
                          .appendingPathComponent(".build/debug/iommu-sim")]
    let exe = try #require(candidates.first { FileManager.default.isExecutableFile(atPath: $0.path) }, "iommu-sim is built")
    let p = Process()
    p.executableURL = exe
    p.arguments = arguments
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

/// Writes `text` to a temporary scenario file; returns its path.
private func scenarioFile(_ bytes: [UInt8]) throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString).yaml").path
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    return path
}

@Suite("CommandLine: iommu-sim run and faults, as a user meets them")
struct CommandLineTests {
    @Test("run of a scenario whose step fails prints file:line: step … on stderr and exits 1")
    func runStepFailure() throws {
        let path = try scenarioFile(Array(failingScenario.utf8))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try iommuSim(["run", path])
        #expect(r.status == 1)
        #expect(r.stderr.contains("error: \(path):21: step 'detach U from vf0's group' failed at "), "\(r.stderr)")
    }

    @Test("run --json of a scenario whose step fails still prints a JSON report, with the failure under failure, and exits 1")
    func runJSONStepFailure() throws {
        let path = try scenarioFile(Array(failingScenario.utf8))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try iommuSim(["run", path, "--json"])
        #expect(r.status == 1)
        let root = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stdout)")
        let failure = try #require(root["failure"] as? [String: Any])
        #expect(failure["kind"] as? String == "step")
        #expect(failure["line"] as? Int == 21)
        #expect(failure["file"] as? String == path)
        #expect((failure["error"] as? String)?.hasPrefix("ENOENT") == true)
        #expect(root["scenario"] as? String == "small")
        #expect(((root["dma"] as? [String: Any])?["translations"] as? Int ?? 0) > 0, "the report is of the run until it stopped")
    }

    @Test("run --json of a scenario that ends has failure null")
    func runJSONSuccess() throws {
        let path = try scenarioFile(Array(smallScenario.utf8))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try iommuSim(["run", path, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let root = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(root.keys.contains("failure") && root["failure"] is NSNull)
    }

    @Test("run --json of a runaway prints the budget failure and exits 1")
    func runJSONBudget() throws {
        let yaml = smallScenario.replacingOccurrences(of: "machine: {policy: strict,", with: "machine: {max-events: 100, policy: strict,")
        let path = try scenarioFile(Array(yaml.utf8))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try iommuSim(["run", path, "--json"])
        #expect(r.status == 1)
        let root = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stdout)")
        let failure = try #require(root["failure"] as? [String: Any])
        #expect(failure["kind"] as? String == "budget" && failure["budget"] as? String == "machine.max-events")
        #expect(root["eventsRun"] as? Int == 100)
        #expect(r.stderr.contains("\(path):2: run stopped after 100 events"), "\(r.stderr)")
    }

    @Test("faults never prints a replay with --fail-nth 0: the counting run's failure replays as a plain run")
    func faultsReplayIsRunnable() throws {
        let path = try scenarioFile(Array(failingScenario.utf8))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try iommuSim(["faults", path, "--jobs", "2"])
        #expect(r.status == 1)
        #expect(r.stdout.contains("N=0 none: violation: the clean run is not clean"), "\(r.stdout)")
        #expect(r.stdout.contains("replay: iommu-sim run \(path) --seed 1\n"), "\(r.stdout)")
        #expect(!r.stdout.contains("--fail-nth 0"))
        let json = try iommuSim(["faults", path, "--jobs", "2", "--json"])
        let root = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        let failures = try #require(root["failures"] as? [[String: Any]])
        #expect(failures.contains { $0["n"] as? Int == 0 && $0["replay"] as? String == "iommu-sim run \(path) --seed 1" })
    }

    @Test("a scenario file that is not UTF-8 exits 2 with file:line:column")
    func runGarbage() throws {
        let path = try scenarioFile([0x89] + Array("PNG\r\n".utf8) + [0x1A, 0x0A])
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try iommuSim(["run", path])
        #expect(r.status == 2)
        #expect(r.stderr.hasPrefix("error: \(path):1:1: not UTF-8 text"), "\(r.stderr)")
    }
}
