import Synchronization

/// One value per CPU slot, each behind its own spin lock (the `SpinLock` protocol on a lock
/// word beside the value) and on its own 128-byte lines: Linux's per-CPU data with a
/// `spinlock_t` beside it, as the IOVA rcache's `iova_cpu_rcache.lock`. For structures one
/// thread uses almost always: taking an uncontended lock is one compare-exchange and
/// releasing it one release store.
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

    /// Runs `body` on CPU `cpu`'s value with its lock held; a CPU number outside the slots
    /// wraps onto them (`cpuSlot`). Inlined into the caller, so the body is not a closure
    /// call and the value type is specialised.
    @inlinable @inline(__always)
    public func withLock<R, E: Error>(_ cpu: Int, _ body: (inout Value) throws(E) -> R) throws(E) -> R {
        let i = cpuSlot(cpu, count)
        let l = lock(i)
        SpinLock.acquire(l.pointee)
        defer { l.pointee.store(0, ordering: .releasing) }
        return try body(&value(i).pointee)
    }
}

/// The slot a CPU number selects among `count` per-CPU structures (never negative): the CPU
/// itself when in range (one compare, no division), else wrapped.
@inlinable @inline(__always)
public func cpuSlot(_ cpu: Int, _ count: Int) -> Int {
    UInt(bitPattern: cpu) < UInt(count) ? cpu : Int(UInt(bitPattern: cpu) % UInt(count))
}
