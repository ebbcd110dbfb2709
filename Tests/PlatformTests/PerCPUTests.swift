import Testing
import Synchronization
@testable import Platform

@Suite("PerCPU: per-CPU values behind spin locks")
struct PerCPUTests {
    /// A value wider than a cache line, so a wrong stride would overlap slots.
    struct Wide { var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) }

    @Test("each slot starts as given, keeps its own value, and lies on its own 128-byte lines")
    func slotsAreSeparate() {
        let p = PerCPU<Wide>(count: 5) { i in Wide(words: (UInt64(i), 0, 0, 0, 0, 0, 0, 0, 0, UInt64(i) * 10)) }
        defer { p.deallocate() }
        for i in 0..<5 { p.withLock(i) { $0.words.9 += 1 } }
        for i in 0..<5 {
            let (first, last) = p.withLock(i) { ($0.words.0, $0.words.9) }
            #expect(first == UInt64(i) && last == UInt64(i) * 10 + 1)
        }
        #expect(p.stride % 128 == 0 && p.stride >= p.valueOffset + MemoryLayout<Wide>.size)
        #expect(UInt(bitPattern: p.base) % 128 == 0)
    }

    @Test("two threads taking one slot's lock a million times in all lose no update")
    func contendedSlotLosesNothing() {
        final class Box: @unchecked Sendable {
            let p = PerCPU<UInt64>(count: 2) { _ in 0 }
            let done = Atomic<Int>(0)
        }
        let box = Box()
        defer { box.p.deallocate() }
        let rounds = 500_000
        var threads: [HostThread] = []
        for _ in 0..<2 {
            let t = HostThread.start {
                for _ in 0..<rounds { box.p.withLock(0) { $0 &+= 1 } }
                box.done.add(1, ordering: .releasing)
            }
            if let t { threads.append(t) }
        }
        for t in threads { t.join() }
        #expect(threads.count == 2)
        #expect(box.p.withLock(0) { $0 } == UInt64(threads.count * rounds))
        #expect(box.p.withLock(1) { $0 } == 0)
    }

    @Test("deallocate hands every value to its last look, once")
    func deallocateVisitsEverySlot() {
        let p = PerCPU<Int>(count: 3) { $0 + 1 }
        var seen: [Int] = []
        p.deallocate { seen.append($0) }
        #expect(seen == [1, 2, 3])
    }
}
