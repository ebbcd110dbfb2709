import Testing
import Synchronization
@testable import Platform

@Suite("PerCPU: per-CPU values behind spin locks")
struct PerCPUTests {
    /// A value of 160 bytes, more than one 128-byte slot line, so a stride that ignored the
    /// value's size would overlap slots.
    struct Wide {
        var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                    UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)
    }

    @Test("each slot starts as given, keeps its own value, lies on 128-byte lines no other slot touches, and CPU numbers beyond the slots wrap")
    func slotsAreSeparate() {
        let p = PerCPU<Wide>(count: 5) { i in
            Wide(words: (UInt64(i), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, UInt64(i) * 10))
        }
        for i in 0..<5 { p.withLock(i) { $0.words.19 += 1 } }
        for i in 0..<5 {
            let (first, last) = p.withLock(i) { ($0.words.0, $0.words.19) }
            #expect(first == UInt64(i) && last == UInt64(i) * 10 + 1)
        }
        #expect(p.withLock(7) { $0.words.0 } == 2, "CPU 7 of 5 slots is slot 2")
        #expect(p.withLock(-1) { $0.words.0 } == UInt64(cpuSlot(-1, 5)))
        for i in 0..<4 {
            let start = UInt(bitPattern: p.lock(i)), next = UInt(bitPattern: p.lock(i + 1))
            let valueEnd = UInt(bitPattern: p.value(i)) + UInt(MemoryLayout<Wide>.size)
            #expect(start % 128 == 0 && next % 128 == 0)
            #expect(valueEnd <= next, "slot \(i)'s value runs into slot \(i + 1)")
        }
    }

    @Test("two threads taking one slot's lock a million times in all lose no update")
    func contendedSlotLosesNothing() {
        final class Box: @unchecked Sendable {
            let p = PerCPU<UInt64>(count: 2) { _ in 0 }
            let done = Atomic<Int>(0)
        }
        let box = Box()
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
        #expect(threads.count == 2 && box.done.load(ordering: .acquiring) == 2)
        #expect(box.p.withLock(0) { $0 } == UInt64(threads.count * rounds))
        #expect(box.p.withLock(1) { $0 } == 0)
    }

    @Test("when the storage goes away every value is released, once")
    func valuesAreReleasedWithTheStorage() {
        final class Tracked: @unchecked Sendable {}
        weak var first: Tracked?, last: Tracked?
        do {
            let values = (0..<3).map { _ in Tracked() }
            first = values[0]
            last = values[2]
            let p = PerCPU<Tracked>(count: 3) { values[$0] }
            #expect(p.withLock(2) { $0 } === values[2])
        }
        #expect(first == nil && last == nil)
    }
}
