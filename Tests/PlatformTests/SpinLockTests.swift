import Testing
import Synchronization
@testable import Platform

@Suite("SpinLock")
struct SpinLockTests {
    @Test("two threads incrementing under one spin lock a million times in all lose no update")
    func contendedLockLosesNothing() {
        final class Shared: @unchecked Sendable {
            let lock = SpinLock()
            var count = 0
            let finished = Atomic<Int>(0)
        }
        let shared = Shared()
        let rounds = 500_000
        var threads: [HostThread] = []
        for _ in 0..<2 {
            if let t = HostThread.start({
                for _ in 0..<rounds { shared.lock.withLock { shared.count &+= 1 } }
                shared.finished.add(1, ordering: .releasing)
            }) { threads.append(t) }
        }
        for t in threads { t.join() }
        #expect(threads.count == 2 && shared.finished.load(ordering: .acquiring) == 2)
        #expect(shared.count == 2 * rounds)
    }

    @Test("a body that throws releases the lock")
    func throwingBodyReleases() {
        struct Failure: Error {}
        let lock = SpinLock()
        #expect(throws: Failure.self) { try lock.withLock { () throws(Failure) in throw Failure() } }
        var taken = false
        lock.withLock { taken = true }
        #expect(taken)
    }
}
