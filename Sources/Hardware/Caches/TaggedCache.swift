/// A fixed-capacity, set-associative cache with LRU replacement, in flat unsafe storage.
///
/// This is the shape of a hardware translation cache (design §4): entries are tagged by two
/// 64-bit keys, stay until an invalidation removes them or capacity evicts the least
/// recently used entry of their set, and nothing on the lookup path allocates.
/// `key1` bit 63 is reserved as the valid bit; callers keep it clear in the keys they pass.

final class TaggedCache<Payload> {
    struct Slot {
        var key0: UInt64
        var key1: UInt64
        var stamp: UInt64
        var payload: Payload
    }

    static var validBit: UInt64 { 1 << 63 }

    let slots: UnsafeMutablePointer<Slot>
    let ways: Int
    let setShift: UInt64
    let setMask: UInt64
    @exclusivity(unchecked) var clock: UInt64 = 0
    let capacity: Int
    /// Valid entries.
    @exclusivity(unchecked) private(set) var count = 0
    /// Entries evicted by capacity.
    @exclusivity(unchecked) private(set) var evictions: UInt64 = 0

    /// `capacity` is rounded up to `ways` times a power of two (at least one set).
    init(capacity: Int, ways: Int, empty: Payload) {
        let w = max(1, ways)
        var sets = 1
        while sets * w < capacity { sets <<= 1 }
        self.ways = w
        self.capacity = sets * w
        self.setMask = UInt64(sets - 1)
        self.setShift = UInt64(64 - sets.trailingZeroBitCount)
        slots = .allocate(capacity: sets * w)
        slots.initialize(repeating: Slot(key0: 0, key1: 0, stamp: 0, payload: empty), count: sets * w)
    }

    deinit {
        slots.deinitialize(count: capacity)
        slots.deallocate()
    }

    @inline(__always)
    func setBase(_ key0: UInt64, _ key1: UInt64) -> UnsafeMutablePointer<Slot> {
        let h = (key0 ^ (key1 &* 0x9E37_79B9_7F4A_7C15)) &* 0xFF51_AFD7_ED55_8CCD
        let set = setMask == 0 ? 0 : Int(h >> setShift)
        return slots + set &* ways
    }

    /// The entry tagged `(key0, key1)`, marked most recently used; nil on a miss.
    /// - Complexity: O(ways), no allocation.
    @inline(__always)
    func lookup(_ key0: UInt64, _ key1: UInt64) -> UnsafeMutablePointer<Slot>? {
        guard let s = probe(key0, key1) else { return nil }
        touch(s)
        return s
    }

    /// The entry tagged `(key0, key1)` without marking it used (`touch` does, as `lookup`
    /// would have); nil on a miss.
    /// - Complexity: O(ways), no allocation.
    @inline(__always)
    func probe(_ key0: UInt64, _ key1: UInt64) -> UnsafeMutablePointer<Slot>? {
        let base = setBase(key0, key1)
        let k1 = key1 | Self.validBit
        var i = 0
        while i < ways {
            let s = base + i
            if s.pointee.key0 == key0 && s.pointee.key1 == k1 { return s }
            i &+= 1
        }
        return nil
    }

    /// Marks `slot` (one of this cache's) most recently used.
    @inline(__always)
    func touch(_ slot: UnsafeMutablePointer<Slot>) {
        clock &+= 1
        slot.pointee.stamp = clock
    }

    /// Inserts or replaces the entry tagged `(key0, key1)`; evicts the set's LRU entry when full.
    
    func insert(_ key0: UInt64, _ key1: UInt64, _ payload: Payload) {
        let base = setBase(key0, key1)
        let k1 = key1 | Self.validBit
        var match: UnsafeMutablePointer<Slot>? = nil
        var firstInvalid: UnsafeMutablePointer<Slot>? = nil
        var lru = base
        var i = 0
        while i < ways {
            let s = base + i
            if s.pointee.key0 == key0 && s.pointee.key1 == k1 { match = s; break }
            if s.pointee.key1 & Self.validBit == 0 {
                if firstInvalid == nil { firstInvalid = s }
            } else if s.pointee.stamp < lru.pointee.stamp || lru.pointee.key1 & Self.validBit == 0 {
                lru = s
            }
            i &+= 1
        }
        let victim = match ?? firstInvalid ?? lru
        noteReplacement(victim, newKey0: key0, newKey1: k1)
        clock &+= 1
        victim.pointee = Slot(key0: key0, key1: k1, stamp: clock, payload: payload)
    }

    @inline(__always)
    func noteReplacement(_ victim: UnsafeMutablePointer<Slot>, newKey0: UInt64, newKey1: UInt64) {
        if victim.pointee.key1 & Self.validBit == 0 {
            count += 1
        } else if victim.pointee.key0 != newKey0 || victim.pointee.key1 != newKey1 {
            evictions += 1
        }
    }

    /// Drops the entry tagged `(key0, key1)`; returns whether one was there.
    @discardableResult
    func remove(_ key0: UInt64, _ key1: UInt64) -> Bool {
        let base = setBase(key0, key1)
        let k1 = key1 | Self.validBit
        for i in 0..<ways where base[i].key0 == key0 && base[i].key1 == k1 {
            base[i].key1 = 0
            count -= 1
            return true
        }
        return false
    }

    /// Drops every entry for which `matches(key0, key1, payload)` holds. Returns how many.
    /// - Complexity: O(capacity).
    @discardableResult
    func removeAll(where matches: (UInt64, UInt64, Payload) -> Bool) -> Int {
        var n = 0
        for i in 0..<capacity where slots[i].key1 & Self.validBit != 0 {
            if matches(slots[i].key0, slots[i].key1 & ~Self.validBit, slots[i].payload) {
                slots[i].key1 = 0
                n += 1
            }
        }
        count -= n
        return n
    }

    /// Calls `body` for each valid entry.
    func forEach(_ body: (UInt64, UInt64, Payload) -> Void) {
        for i in 0..<capacity where slots[i].key1 & Self.validBit != 0 {
            body(slots[i].key0, slots[i].key1 & ~Self.validBit, slots[i].payload)
        }
    }
}
