#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization
import CIOMMUSupport

/// A test-and-set spin lock (Linux `spinlock_t` / `raw_spinlock_t`): taking it when free is
/// one compare-exchange, releasing it one release store, with no thread-ID lookup and no
/// second locked operation (Swift's `Mutex` on Linux, a PI futex lock, does both). A waiter
/// spins on plain loads with a pause hint and yields the CPU every 1024 looks, since user
/// space cannot stop the holder being preempted as `spin_lock` does. Not re-entrant.
///
/// For locks held briefly, or held across a hardware wait that every waiter would spin on
/// anyway (Linux `qi->q_lock`). Its address must not change: keep it in a class or in raw
/// storage that is never moved.
public struct SpinLock: ~Copyable, @unchecked Sendable {
    @usableFromInline let state: Atomic<UInt32>

    public init() { state = Atomic(0) }

    @inlinable @inline(__always)
    public func lock() { Self.acquire(state) }

    @inlinable @inline(__always)
    public func unlock() { state.store(0, ordering: .releasing) }

    /// Runs `body` with the lock held.
    @inlinable @inline(__always)
    public func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Takes the lock word `state` (0: free, 1: held): the protocol `PerCPU` uses too, on
    /// lock words it keeps in its own storage.
    @inlinable @inline(__always)
    public static func acquire(_ state: borrowing Atomic<UInt32>) {
        if !state.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged { wait(state) }
    }

    /// The contended path: spin on loads until the lock looks free, then try again.
    @usableFromInline @inline(never)
    static func wait(_ state: borrowing Atomic<UInt32>) {
        var looks = 0
        repeat {
            while state.load(ordering: .relaxed) != 0 {
                looks += 1
                if looks & 1023 == 0 { sched_yield() } else { ciommu_cpu_relax() }
            }
        } while !state.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged
    }
}
