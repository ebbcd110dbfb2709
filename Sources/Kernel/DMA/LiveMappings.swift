import Synchronization

/// The DMA API's record of live streaming mappings, IOVA frame → granules, so that an
/// unmap of something never mapped, a double unmap or an unmap with the wrong size is a
/// typed error that changes nothing (Linux trusts the caller and WARNs, or corrupts the
/// IOVA caches). Lock-free open addressing over atomic words; map and unmap of different
/// ranges from different threads do not contend beyond the cache lines they touch. Probes
/// are bounded; the rare entry that finds no slot goes to a locked overflow table.
final class LiveMappings: @unchecked Sendable {
    private static let empty: UInt64 = 0
    private static let tombstone: UInt64 = .max
    private static let maxProbes = 32

    private let keys: UnsafeMutablePointer<Atomic<UInt64>>
    private let values: UnsafeMutablePointer<Atomic<UInt64>>
    private let mask: Int
    private let overflow = Mutex<[UInt64: UInt64]>([:])
    private let overflowCount = Atomic<Int>(0)

    /// A table with room for about `capacity` live mappings before probing gets long.
    init(capacity: Int) {
        var n = 1024
        while n < capacity * 2 { n <<= 1 }
        mask = n - 1
        keys = .allocate(capacity: n)
        values = .allocate(capacity: n)
        for i in 0..<n {
            (keys + i).initialize(to: Atomic(0))
            (values + i).initialize(to: Atomic(0))
        }
    }

    deinit {
        keys.deinitialize(count: mask + 1)
        values.deinitialize(count: mask + 1)
        keys.deallocate()
        values.deallocate()
    }

    @inline(__always)
    private func slot(_ key: UInt64) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 40) & mask
    }

    /// Records `pfn` (not live) with `pages`.
    func insert(pfn: UInt64, pages: UInt64) {
        let key = pfn &+ 1
        var i = slot(key)
        for _ in 0..<Self.maxProbes {
            let k = keys[i].load(ordering: .relaxed)
            if k == Self.empty || k == Self.tombstone,
               keys[i].compareExchange(expected: k, desired: key, ordering: .acquiringAndReleasing).exchanged {
                values[i].store(pages, ordering: .releasing)
                return
            }
            i = (i + 1) & mask
        }
        overflow.withLock { $0[key] = pages }
        overflowCount.add(1, ordering: .releasing)
    }

    /// Removes `pfn` if it is live with exactly `pages`. Returns false (and changes nothing)
    /// otherwise; `found` tells the recorded size when the frame is live.
    func remove(pfn: UInt64, pages: UInt64, found: inout UInt64?) -> Bool {
        let key = pfn &+ 1
        var i = slot(key)
        for _ in 0..<Self.maxProbes {
            let k = keys[i].load(ordering: .acquiring)
            if k == Self.empty { break }
            if k == key {
                let v = values[i].load(ordering: .acquiring)
                found = v
                guard v == pages else { return false }
                guard keys[i].compareExchange(expected: key, desired: Self.tombstone, ordering: .acquiringAndReleasing).exchanged else {
                    found = nil
                    return false
                }
                return true
            }
            i = (i + 1) & mask
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

    /// Live mappings, counted by a scan (statistics only: no shared counter on the hot path).
    var count: Int {
        var n = 0
        for i in 0...mask {
            let k = keys[i].load(ordering: .relaxed)
            if k != Self.empty && k != Self.tombstone { n += 1 }
        }
        return n + overflow.withLock { $0.count }
    }
}
