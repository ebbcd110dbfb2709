#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization
import CIOMMUSupport

/// One value per CPU slot, each behind its own spin lock and on its own 128-byte lines
/// (Linux's per-CPU data with a `spinlock_t` beside it, as the IOVA rcache's
/// `iova_cpu_rcache.lock`). For structures one thread uses almost always: taking an
/// uncontended lock is one compare-exchange and releasing it one release store, with no
/// thread-ID lookup and no second atomic read-modify-write (Swift's `Mutex` does both on
/// Linux). A waiter spins on plain loads with a pause hint and yields the CPU after a
/// while, so a holder that was preempted gets to run.
///
/// Noncopyable: it owns its storage, freed (values deinitialised) when it goes away.
public struct PerCPU<Value>: ~Copyable, @unchecked Sendable {
    @usableFromInline let base: UnsafeMutableRawPointer
    @usableFromInline let stride: Int
    @usableFromInline let valueOffset: Int
    public let count: Int

    /// `count` slots (at least 1), slot `i` starting as `initial(i)`.
    public init(count: Int, _ initial: (Int) -> Value) {
        self.count = max(1, count)
        let align = max(MemoryLayout<Value>.alignment, MemoryLayout<UInt32>.alignment)
        let slotAlign = max(128, align)
        valueOffset = (MemoryLayout<UInt32>.size + align - 1) / align * align
        stride = (valueOffset + MemoryLayout<Value>.size + slotAlign - 1) / slotAlign * slotAlign
        base = .allocate(byteCount: stride * self.count, alignment: slotAlign)
        for i in 0..<self.count {
            let slot = base + i * stride
            slot.bindMemory(to: Atomic<UInt32>.self, capacity: 1).initialize(to: Atomic(0))
            (slot + valueOffset).bindMemory(to: Value.self, capacity: 1).initialize(to: initial(i))
        }
    }

    deinit {
        for i in 0..<count {
            value(i).deinitialize(count: 1)
            lock(i).deinitialize(count: 1)
        }
        base.deallocate()
    }

    @inlinable @inline(__always) func lock(_ i: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        (base + i &* stride).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

    @inlinable @inline(__always) func value(_ i: Int) -> UnsafeMutablePointer<Value> {
        (base + i &* stride + valueOffset).assumingMemoryBound(to: Value.self)
    }

    /// Runs `body` on slot `i`'s value (0 ≤ i < count) with its lock held. Inlined into the
    /// caller, so the body is not a closure call and the value type is specialised.
    @inlinable @inline(__always)
    public func withLock<R, E: Error>(_ i: Int, _ body: (inout Value) throws(E) -> R) throws(E) -> R {
        // Callers pick slots with `cpuSlot` or loop over `count`: a slot outside is a bug here.
        precondition(UInt(bitPattern: i) < UInt(count), "PerCPU slot out of range")
        let l = lock(i)
        if !l.pointee.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged {
            Self.wait(l)
        }
        defer { l.pointee.store(0, ordering: .releasing) }
        return try body(&value(i).pointee)
    }

    /// The contended path: spin on loads until the lock looks free, then try again; after
    /// 1024 looks give the CPU away.
    @usableFromInline @inline(never)
    static func wait(_ l: UnsafeMutablePointer<Atomic<UInt32>>) {
        var looks = 0
        repeat {
            while l.pointee.load(ordering: .relaxed) != 0 {
                looks += 1
                if looks & 1023 == 0 { sched_yield() } else { ciommu_cpu_relax() }
            }
        } while !l.pointee.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged
    }
}
