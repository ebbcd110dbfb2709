import Platform
import Synchronization

/// The DMA API's record of live streaming mappings, IOVA frame → granules, so that an
/// unmap of something never mapped, a double unmap or an unmap with the wrong size is a
/// typed error that changes nothing (Linux trusts the caller and WARNs, or corrupts the
/// IOVA caches). Lock-free open addressing over atomic words, probes bounded; the rare
/// entry that finds no slot goes to a locked overflow table.
///
/// One shard per CPU slot (CPUs wrap onto at most `maxShards`), each on its own cache
/// lines and each as large as the single table was: a map records its frame in its CPU's
/// shard, and an unmap looks in its own CPU's shard first, then in the others. CPUs that
/// unmap what they mapped (as per-CPU drivers and `bench dma-map` do) then write only their
/// own lines. With one shared table, two CPUs' mappings hashed into the same lines, and
/// each insert or remove took a line the other CPU had just written.
final class LiveMappings: @unchecked Sendable {
    private static let empty: UInt64 = 0
    private static let tombstone: UInt64 = .max
    private static let maxProbes = 32
    /// Shards at most (memory: 16 bytes a slot, `capacity * 2` slots a shard).
    static let maxShards = 8

    private let keys: UnsafeMutablePointer<Atomic<UInt64>>
    private let values: UnsafeMutablePointer<Atomic<UInt64>>
    /// Slots per shard (a power of two) minus one.
    private let mask: Int
    private let shards: Int
    private let overflow = Mutex<[UInt64: UInt64]>([:])
    private let overflowCount = Atomic<Int>(0)

    /// Room for about `capacity` live mappings per shard before probing gets long.
    init(capacity: Int, shards: Int = 1) {
        var n = 1024
        while n < capacity * 2 { n <<= 1 }
        mask = n - 1
        self.shards = max(1, shards)
        let total = n * self.shards
        // 64-byte aligned, and shards are multiples of 64 bytes: no line spans two shards.
        keys = UnsafeMutableRawPointer.allocate(byteCount: total * 8, alignment: 64).bindMemory(to: Atomic<UInt64>.self, capacity: total)
        values = UnsafeMutableRawPointer.allocate(byteCount: total * 8, alignment: 64).bindMemory(to: Atomic<UInt64>.self, capacity: total)
        for i in 0..<total {
            (keys + i).initialize(to: Atomic(0))
            (values + i).initialize(to: Atomic(0))
        }
    }

    deinit {
        keys.deinitialize(count: (mask + 1) * shards)
        values.deinitialize(count: (mask + 1) * shards)
        UnsafeMutableRawPointer(keys).deallocate()
        UnsafeMutableRawPointer(values).deallocate()
    }

    @inline(__always)
    private func slot(_ key: UInt64) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 40) & mask
    }

    @inline(__always)
    private func shard(for cpu: Int) -> Int { cpuSlot(cpu, shards) }

    /// Records `pfn` (not live) with `pages`, in `cpu`'s shard.
    func insert(pfn: UInt64, pages: UInt64, cpu: Int) {
        let key = pfn &+ 1
        let base = shard(for: cpu) &* (mask &+ 1)
        var i = slot(key)
        for _ in 0..<Self.maxProbes {
            let k = keys[base &+ i].load(ordering: .relaxed)
            if k == Self.empty || k == Self.tombstone,
               keys[base &+ i].compareExchange(expected: k, desired: key, ordering: .acquiringAndReleasing).exchanged {
                values[base &+ i].store(pages, ordering: .releasing)
                return
            }
            i = (i &+ 1) & mask
        }
        overflow.withLock { $0[key] = pages }
        overflowCount.add(1, ordering: .releasing)
    }

    /// Removes `pfn` if it is live with exactly `pages`, looking in `cpu`'s shard first.
    /// Returns false (and changes nothing) otherwise; `found` tells the recorded size when
    /// the frame is live.
    func remove(pfn: UInt64, pages: UInt64, cpu: Int, found: inout UInt64?) -> Bool {
        let key = pfn &+ 1
        let own = shard(for: cpu)
        switch removeInShard(own, key: key, pages: pages, found: &found) {
        case .removed: return true
        case .wrongSize: return false
        case .absent: break
        }
        for s in 0..<shards where s != own {
            switch removeInShard(s, key: key, pages: pages, found: &found) {
            case .removed: return true
            case .wrongSize: return false
            case .absent: continue
            }
        }
        guard overflowCount.load(ordering: .acquiring) > 0 else { return false }
        let removed: Bool = overflow.withLock { o in
            guard let v = o[key] else { return false }
            found = v
            guard v == pages else { return false }
            o[key] = nil
            return true
        }
        if removed { overflowCount.subtract(1, ordering: .relaxed) }
        return removed
    }

    /// The granules `pfn` is live with, or nil (looking in every shard, then the overflow).
    func pages(of pfn: UInt64) -> UInt64? {
        let key = pfn &+ 1
        for s in 0..<shards {
            if let i = find(s, key: key) { return values[i].load(ordering: .acquiring) }
        }
        guard overflowCount.load(ordering: .acquiring) > 0 else { return nil }
        return overflow.withLock { $0[key] }
    }

    private enum ShardResult { case removed, wrongSize, absent }

    /// The index of `key`'s slot in `shard`, or nil.
    @inline(__always)
    private func find(_ shard: Int, key: UInt64) -> Int? {
        let base = shard &* (mask &+ 1)
        var i = slot(key)
        for _ in 0..<Self.maxProbes {
            let k = keys[base &+ i].load(ordering: .acquiring)
            if k == Self.empty { return nil }
            if k == key { return base &+ i }
            i = (i &+ 1) & mask
        }
        return nil
    }

    @inline(__always)
    private func removeInShard(_ shard: Int, key: UInt64, pages: UInt64, found: inout UInt64?) -> ShardResult {
        guard let i = find(shard, key: key) else { return .absent }
        let v = values[i].load(ordering: .acquiring)
        found = v
        guard v == pages else { return .wrongSize }
        guard keys[i].compareExchange(expected: key, desired: Self.tombstone, ordering: .acquiringAndReleasing).exchanged else {
            // Another CPU removed it first (a racing double unmap).
            found = nil
            return .absent
        }
        return .removed
    }

    /// Live mappings, counted by a scan (statistics only: no shared counter on the hot path).
    var count: Int {
        var n = 0
        for i in 0..<((mask + 1) * shards) {
            let k = keys[i].load(ordering: .relaxed)
            if k != Self.empty && k != Self.tombstone { n += 1 }
        }
        return n + overflow.withLock { $0.count }
    }
}
