import Testing
@testable import Platform

@Suite("SeededRNG")
struct SeededRNGTests {
    @Test("the same seed gives the same sequence", arguments: [UInt64(0), 1, 42, .max])
    func sameSeedSameSequence(seed: UInt64) {
        var a = SeededRNG(seed: seed), b = SeededRNG(seed: seed)
        let xs = (0..<64).map { _ in a.next() }
        let ys = (0..<64).map { _ in b.next() }
        #expect(xs == ys)
        #expect(Set(xs).count == 64)
    }

    @Test("the sequence is xoshiro256** seeded by SplitMix64 (fixed reference values)")
    func referenceValues() {
        var r0 = SeededRNG(seed: 0)
        let out0 = (0..<4).map { _ in r0.next() }
        #expect(out0 == [0x99EC_5F36_CB75_F2B4, 0xBF6E_1F78_4956_452A, 0x1A5F_849D_4933_E6E0, 0x6AA5_94F1_262D_2D2C])
        var r42 = SeededRNG(seed: 42)
        let out42 = (0..<4).map { _ in r42.next() }
        #expect(out42 == [0x1578_0B2E_0C2E_C716, 0x6104_D986_6D11_3A7E, 0xAE17_5332_39E4_99A1, 0xECB8_AD47_03B3_60A1])
    }

    @Test("different seeds give different sequences")
    func differentSeedsDiffer() {
        let seqs = (UInt64(0)..<16).map { seed -> [UInt64] in
            var r = SeededRNG(seed: seed)
            return (0..<8).map { _ in r.next() }
        }
        #expect(Set(seqs.map { $0.description }).count == 16)
    }

    @Test("next(below:) stays in range and reaches every value", arguments: [UInt64(1), 2, 7, 10, 1000])
    func belowInRange(bound: UInt64) {
        var r = SeededRNG(seed: bound)
        var seen = Set<UInt64>()
        for _ in 0..<(Int(bound) * 50) {
            let v = r.next(below: bound)
            #expect(v < bound)
            seen.insert(v)
        }
        #expect(seen.count == Int(bound))
    }

    @Test("next(below:) with a huge bound stays below it")
    func belowHugeBound() {
        var r = SeededRNG(seed: 9)
        let bound = UInt64.max - 12345
        for _ in 0..<1000 {
            let v = r.next(below: bound)
            #expect(v < bound)
        }
    }

    @Test("next(below: 0) returns 0")
    func boundZero() {
        var r = SeededRNG(seed: 5)
        let values = (0..<10).map { _ in r.next(below: 0) }
        #expect(values == Array(repeating: 0, count: 10))
    }

    @Test("chance is never true at p <= 0 and always true at p >= 1")
    func chanceExtremes() {
        var r = SeededRNG(seed: 11)
        for _ in 0..<200 {
            let results = [r.chance(0), r.chance(-1), r.chance(1), r.chance(2)]
            #expect(results == [false, false, true, true])
        }
    }

    @Test("chance(0.5) is true roughly half the time")
    func chanceHalf() {
        var r = SeededRNG(seed: 12)
        let n = (0..<10_000).filter { _ in r.chance(0.5) }.count
        #expect((4_500...5_500).contains(n))
    }

    @Test("fork is deterministic and gives a stream different from the parent")
    func forkDeterministic() {
        var a = SeededRNG(seed: 77), b = SeededRNG(seed: 77)
        var ca = a.fork(), cb = b.fork()
        let xa = (0..<8).map { _ in ca.next() }
        let xb = (0..<8).map { _ in cb.next() }
        let parent = (0..<8).map { _ in a.next() }
        #expect(xa == xb)
        #expect(xa != parent)
    }
}
