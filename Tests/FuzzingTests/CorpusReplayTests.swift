import Foundation
import Testing
import Platform
import Fuzzing

/// Every fuzz target's seed corpus and regression inputs, replayed in the debug build (with
/// its exclusivity checks): each must hold every invariant its target checks.
@Suite("Fuzz corpora and regression inputs")
struct CorpusReplayTests {
    static let fuzzRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("fuzz")

    static func inputs(_ target: FuzzTarget) -> [URL] {
        ["corpus", "regressions"].flatMap { kind -> [URL] in
            let dir = fuzzRoot.appendingPathComponent(kind).appendingPathComponent(target.rawValue)
            let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
            return names.filter { !$0.hasPrefix(".") }.sorted().map { dir.appendingPathComponent($0) }
        }
    }

    @Test("every seed and regression input of a fuzz target holds its invariants", arguments: FuzzTarget.allCases)
    func replay(target: FuzzTarget) throws {
        let files = Self.inputs(target)
        #expect(!files.isEmpty, "fuzz/corpus/\(target.rawValue) has no seed inputs")
        for f in files {
            let bytes = try [UInt8](Data(contentsOf: f))
            let r = target.run(bytes)
            #expect(r.failures.isEmpty, "\(f.lastPathComponent): \(r.failures.joined(separator: "; "))")
        }
    }

    @Test("random inputs hold a fuzz target's invariants (a few, deterministic)", arguments: FuzzTarget.allCases)
    func random(target: FuzzTarget) {
        var rng = SeededRNG(seed: 24)
        for _ in 0..<8 {
            let bytes = (0..<Int(rng.next(below: 600))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            let r = target.run(bytes)
            #expect(r.failures.isEmpty, "\(r.failures.joined(separator: "; "))")
        }
    }
}

/// The fuzz targets are the same everywhere they are listed.
@Suite("Fuzz target lists")
struct FuzzTargetListTests {
    static func text(_ path: String) -> String {
        (try? String(contentsOf: CorpusReplayTests.fuzzRoot.deletingLastPathComponent().appendingPathComponent(path), encoding: .utf8)) ?? ""
    }

    @Test("every fuzz target has a seed corpus, a regressions folder, and is named by run.sh, the fuzz workflow and the README")
    func listed() {
        let runScript = Self.text("fuzz/run.sh"), workflow = Self.text(".github/workflows/fuzz.yml"), readme = Self.text("README.md")
        for t in FuzzTarget.allCases {
            for kind in ["corpus", "regressions"] {
                var isDirectory: ObjCBool = false
                let path = CorpusReplayTests.fuzzRoot.appendingPathComponent(kind).appendingPathComponent(t.rawValue).path
                #expect(FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue, "\(path)")
            }
            #expect(runScript.contains(t.rawValue), "fuzz/run.sh does not name \(t.rawValue)")
            #expect(workflow.contains(t.rawValue), ".github/workflows/fuzz.yml does not run \(t.rawValue)")
            #expect(readme.contains("`\(t.rawValue)`"), "README does not name \(t.rawValue)")
        }
        let corpora = (try? FileManager.default.contentsOfDirectory(atPath: CorpusReplayTests.fuzzRoot.appendingPathComponent("corpus").path)) ?? []
        #expect(Set(corpora) == Set(FuzzTarget.allCases.map(\.rawValue)), "fuzz/corpus has folders for no target")
    }
}
