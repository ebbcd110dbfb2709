import Formats

/// One cached non-leaf paging entry (VT-d §6.2.4): the physical address of the table it
/// points at and the rights accumulated from the root down to and including it.
struct PSCEntry: Sendable {
    /// Physical address of the next table (host-physical, after the second stage, for nested).
    var table: UInt64
    /// For nested first-stage entries: the second-stage leaf entry that maps the next table
    /// page (0 when none), for second-stage D updates when hardware writes A/D into it.
    var tableStage2Leaf: UInt64
    var permissions: UInt8
    var flags: UInt8
    /// Nested: the second stage lets hardware write the next table page (A/D updates).
    static let tableWritable: UInt8 = 1
    static let empty = PSCEntry(table: 0, tableStage2Leaf: 0, permissions: 0, flags: 0)
}

/// What a paging-structure-cache entry caches, part of its tag (VT-d §6.2.4.1).
enum PSCKind: UInt64 {
    /// First-stage entries of a PGTT=001 walk, tagged (DID, PASID).
    case firstStage = 1
    /// Second-stage entries (PGTT=010 walks, and the second-stage walks inside nested ones),
    /// tagged by DID alone.
    case secondStage = 2
    /// First-stage entries of a nested (PGTT=011) walk, tagged (DID, PASID); they hold
    /// host-physical table addresses, so they depend on the second stage too.
    case nested = 3
}

/// The paging-structure caches of a unit (VT-d §6.2.4): one set-associative cache per
/// non-leaf level (PDE, PDPE, PML4E, PML5E and their second-stage counterparts), holding the
/// entries walks went through. A walk that misses the IOTLB starts below the deepest cached
/// entry covering its address, so a cached entry keeps pointing at its table page until an
/// invalidation removes it, even if software freed that page.
///
/// Tags: key0 = input address >> the span shift of the entry's level; key1 = kind << 56 |
/// DID << 20 | PASID (PASID 0 for second-stage entries).
final class PagingStructureCache {
    /// Level 2 (PDE) … level 5 (PML5E).
    let pde: TaggedCache<PSCEntry>
    let pdpe: TaggedCache<PSCEntry>
    let pml4e: TaggedCache<PSCEntry>
    let pml5e: TaggedCache<PSCEntry>
    /// False when configured with 0 entries: no lookups, no fills.
    let enabled: Bool
    /// Nested entries inserted since the caches were last empty (a type-2 invalidation must
    /// scan for them: they are tagged per PASID).
    @exclusivity(unchecked) var nestedEntries: UInt64 = 0

    init(entriesPerLevel: Int, ways: Int) {
        enabled = entriesPerLevel > 0
        let n = max(1, entriesPerLevel), w = max(1, min(ways, n))
        pde = TaggedCache(capacity: n, ways: w, empty: .empty)
        pdpe = TaggedCache(capacity: n, ways: w, empty: .empty)
        pml4e = TaggedCache(capacity: n, ways: w, empty: .empty)
        pml5e = TaggedCache(capacity: n, ways: w, empty: .empty)
    }

    @inline(__always)
    static func key1(_ kind: PSCKind, did: UInt16, pasid: UInt32) -> UInt64 {
        kind.rawValue << 56 | UInt64(did) << 20 | UInt64(kind == .secondStage ? 0 : pasid & 0xFFFFF)
    }

    static func kind(_ key1: UInt64) -> UInt64 { (key1 >> 56) & 3 }
    static func did(_ key1: UInt64) -> UInt16 { UInt16(truncatingIfNeeded: key1 >> 20) }
    static func pasid(_ key1: UInt64) -> UInt32 { UInt32(key1 & 0xFFFFF) }

    /// The cache of `level` (2…5).
    @inline(__always)
    func cache(_ level: Int) -> TaggedCache<PSCEntry> {
        switch level {
        case 2: return pde
        case 3: return pdpe
        case 4: return pml4e
        default: return pml5e
        }
    }

    var count: Int { pde.count + pdpe.count + pml4e.count + pml5e.count }

    /// The deepest cached entry covering `address` for a walk of `levels` levels: its level
    /// and payload, or nil (VT-d §6.2.5: use the PDE cache, else the PDPE cache, …).
    /// - Complexity: at most `levels - 1` probes, no allocation.
    @inline(__always)
    func deepest(_ address: UInt64, key1: UInt64, levels: Int) -> (level: Int, entry: PSCEntry)? {
        var level = 2
        while level <= levels {
            if let s = cache(level).lookup(address >> PageTableGeometry.shift(level: level), key1) {
                return (level, s.pointee.payload)
            }
            level &+= 1
        }
        return nil
    }

    @inline(__always)
    func insert(level: Int, address: UInt64, key1: UInt64, _ entry: PSCEntry) {
        if key1 >> 56 == PSCKind.nested.rawValue { nestedEntries &+= 1 }
        cache(level).insert(address >> PageTableGeometry.shift(level: level), key1, entry)
    }

    /// Drops every entry whose tag satisfies `match`. Returns how many.
    @discardableResult
    func removeAll(where match: (UInt64) -> Bool) -> Int {
        var n = 0
        for level in 2...5 { n += cache(level).removeAll { _, k1, _ in match(k1) } }
        noteRemoved()
        return n
    }

    /// Drops the entries tagged `key1` exactly whose span overlaps `[lo, hi)`; then, when
    /// `alsoMatch` is given, the entries it accepts wherever they lie. Returns how many.
    @discardableResult
    func removeOverlapping(lo: UInt64, hi: UInt64, key1: UInt64, alsoMatch: ((UInt64) -> Bool)? = nil) -> Int {
        var n = 0
        for level in 2...5 {
            let c = cache(level)
            guard c.count > 0 else { continue }
            let shift = PageTableGeometry.shift(level: level)
            let first = lo >> shift, last = (hi &- 1) >> shift
            if last &- first < 8 && alsoMatch == nil {
                var k = first
                while true {
                    if c.remove(k, key1) { n += 1 }
                    if k == last { break }
                    k &+= 1
                }
            } else {
                n += c.removeAll { k0, k1, _ in (k1 == key1 && k0 >= first && k0 <= last) || (alsoMatch?(k1) ?? false) }
            }
        }
        noteRemoved()
        return n
    }

    private func noteRemoved() {
        if count == 0 { nestedEntries = 0 }
    }
}
