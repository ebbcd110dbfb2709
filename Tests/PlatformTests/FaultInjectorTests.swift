import Testing
import Foundation
@testable import Platform

@Suite("FaultInjector")
struct FaultInjectorTests {
    static let other = FaultPoint("test.other")

    @Test("mode off never fails and counts nothing")
    func offCountsNothing() {
        let f = FaultInjector()
        #expect(f.mode == .off)
        for _ in 0..<100 {
            #expect(!f.shouldFail(.frameAlloc))
            #expect(!f.shouldFail(.invalidationTimeout))
        }
        #expect(f.totalHits == 0)
        #expect(f.hits.isEmpty)
        #expect(f.fired.isEmpty)
    }

    @Test("mode count never fails and counts hits per point")
    func countMode() {
        let f = FaultInjector(mode: .count)
        for _ in 0..<5 { #expect(!f.shouldFail(.frameAlloc)) }
        for _ in 0..<3 { #expect(!f.shouldFail(.invalidationDrop)) }
        #expect(f.hits[.frameAlloc] == 5)
        #expect(f.hits[.invalidationDrop] == 3)
        #expect(f.hits[.invalidationTimeout] == nil)
        #expect(f.totalHits == 8)
        #expect(f.fired.isEmpty)
    }

    @Test("failNth(n) fails exactly the nth hit counted over every point", arguments: [1, 2, 5, 9])
    func failNthGlobal(n: Int) {
        let f = FaultInjector(mode: .failNth(n))
        let points: [FaultPoint] = [.frameAlloc, Self.other, .invalidationDrop]
        var failed: [Int] = []
        for i in 1...12 where f.shouldFail(points[i % 3]) { failed.append(i) }
        #expect(failed == [n])
        #expect(f.fired.count == 1)
        #expect(f.fired.first?.hit == n)
        #expect(f.fired.first?.point == points[n % 3])
        #expect(f.totalHits == 12)
    }

    @Test("failNth(n, only:) counts only hits of that point")
    func failNthOnly() {
        let f = FaultInjector(mode: .failNth(3, only: .frameAlloc))
        var log: [(FaultPoint, Bool)] = []
        // Interleave: other, alloc, other, alloc, other, alloc, alloc
        let seq: [FaultPoint] = [Self.other, .frameAlloc, Self.other, .frameAlloc, Self.other, .frameAlloc, .frameAlloc]
        for p in seq { log.append((p, f.shouldFail(p))) }
        #expect(log.map { $0.1 } == [false, false, false, false, false, true, false])
        #expect(f.fired.count == 1)
        #expect(f.fired.first?.point == .frameAlloc)
        // The recorded hit number is the global one (6th hit overall).
        #expect(f.fired.first?.hit == 6)
        #expect(f.hits[.frameAlloc] == 4)
        #expect(f.hits[Self.other] == 3)
    }

    @Test("failNth(n, only:) never fails other points even at the nth global hit")
    func failNthOnlyIgnoresOthers() {
        let f = FaultInjector(mode: .failNth(1, only: .invalidationTimeout))
        for _ in 0..<10 { #expect(!f.shouldFail(.frameAlloc)) }
        #expect(f.shouldFail(.invalidationTimeout))
        #expect(!f.shouldFail(.invalidationTimeout))
    }

    func probabilityPattern(seed: UInt64, p: Double = 0.5, only: Set<FaultPoint>? = nil) -> [Bool] {
        let f = FaultInjector(mode: .probability(p, only: only), seed: seed)
        return (0..<200).map { i in f.shouldFail(i % 2 == 0 ? .frameAlloc : Self.other) }
    }

    @Test("probability mode is deterministic for a seed")
    func probabilityDeterministic() {
        let a = probabilityPattern(seed: 1234), b = probabilityPattern(seed: 1234)
        #expect(a == b)
        let fails = a.filter { $0 }.count
        #expect(fails > 50 && fails < 150)
    }

    @Test("probability mode with different seeds gives different patterns")
    func probabilitySeedsDiffer() {
        let patterns = (UInt64(0)..<4).map { probabilityPattern(seed: $0) }
        #expect(Set(patterns.map { $0.description }).count == 4)
    }

    @Test("probability 1 fails every hit and 0 fails none")
    func probabilityExtremes() {
        #expect(probabilityPattern(seed: 3, p: 1).allSatisfy { $0 })
        #expect(probabilityPattern(seed: 3, p: 0).allSatisfy { !$0 })
    }

    @Test("probability with only: fails only the listed points")
    func probabilityOnly() {
        let pattern = probabilityPattern(seed: 8, p: 1, only: [.frameAlloc])
        for (i, failed) in pattern.enumerated() { #expect(failed == (i % 2 == 0)) }
    }

    @Test("fired records each failure with its point and global hit number, in order")
    func firedRecords() {
        let f = FaultInjector(mode: .probability(1, only: [Self.other]))
        _ = f.shouldFail(.frameAlloc)
        _ = f.shouldFail(Self.other)
        _ = f.shouldFail(.frameAlloc)
        _ = f.shouldFail(Self.other)
        #expect(f.fired.map(\.point) == [Self.other, Self.other])
        #expect(f.fired.map(\.hit) == [2, 4])
    }

    @Test("reset forgets counts and fired records but keeps the mode")
    func resetKeepsMode() {
        let f = FaultInjector(mode: .failNth(2))
        _ = f.shouldFail(.frameAlloc)
        #expect(f.shouldFail(.frameAlloc))
        f.reset()
        #expect(f.totalHits == 0)
        #expect(f.hits.isEmpty)
        #expect(f.fired.isEmpty)
        #expect(f.mode == .failNth(2))
        #expect(!f.shouldFail(.frameAlloc))
        #expect(f.shouldFail(.frameAlloc))
    }

    @Test("switching the mode to off stops failing and counting")
    func switchOff() {
        let f = FaultInjector(mode: .count)
        _ = f.shouldFail(.frameAlloc)
        f.mode = .off
        _ = f.shouldFail(.frameAlloc)
        #expect(f.totalHits == 1)
        f.mode = .failNth(2)
        #expect(f.shouldFail(.frameAlloc))
    }
}

@Suite("FaultPoints: one list names every injection point the code consults")
struct FaultPointListTests {
    /// The package's Sources directory, found from this file.
    static var sources: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources")
    }

    @Test("every FaultPoint(\"...\") the sources construct is in FaultPoint.all, and every shouldFail names a point declared beside it")
    func listIsComplete() throws {
        let files = FileManager.default.enumerator(at: Self.sources, includingPropertiesForKeys: nil)?
            .compactMap { $0 as? URL }.filter { $0.pathExtension == "swift" } ?? []
        #expect(files.count > 50, "the sources were found at \(Self.sources.path)")
        let literal = try Regex(#"FaultPoint\("([^"\\]+)"\)"#)
        let member = try Regex(#"shouldFail\(\.([A-Za-z]+)\)"#)
        let declared = try Regex(#"static var ([A-Za-z]+): FaultPoint \{ FaultPoint\("([^"]+)"\) \}"#)
        var names: Set<String> = [], used: Set<String> = [], members: [String: String] = [:]
        for f in files {
            let text = try String(contentsOf: f, encoding: .utf8)
            for m in text.matches(of: literal) { names.insert(String(m.output[1].substring ?? "")) }
            for m in text.matches(of: member) { used.insert(String(m.output[1].substring ?? "")) }
            for m in text.matches(of: declared) { members[String(m.output[1].substring ?? "")] = String(m.output[2].substring ?? "") }
        }
        let all = Set(FaultPoint.all.map(\.name))
        #expect(FaultPoint.all.count == all.count, "names are distinct")
        #expect(names == all, "constructed \(names.sorted()) vs listed \(all.sorted())")
        #expect(!used.isEmpty)
        for u in used { #expect(members[u].map(all.contains) == true, "shouldFail(.\(u)) is a point of FaultPoint.all") }
        #expect(Set(members.values) == all)
    }

    @Test("named finds a listed point and nothing else")
    func named() {
        #expect(FaultPoint.named("kernel.did-alloc") == .didAlloc)
        #expect(FaultPoint.named("frame.allocate") == nil)
    }
}
