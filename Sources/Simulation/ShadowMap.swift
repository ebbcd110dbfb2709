import Formats

/// The oracle's copy of what software mapped in one domain: sorted, non-overlapping
/// regions of IOVA with their physical base, permissions and whether the mapping is still
/// being made, settled, or being unmapped. Lookup is a binary search.
struct ShadowMap {
    enum State: UInt8 { case mapping, settled, unmapping }

    struct Region {
        var start: UInt64
        var end: UInt64 // exclusive
        var physical: UInt64
        var permissions: PagePermissions
        var state: State
    }

    private(set) var regions: [Region] = []

    /// Index of the first region whose end is above `address`.
    private func firstIndex(endingAfter address: UInt64) -> Int {
        var lo = 0, hi = regions.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if regions[mid].end <= address { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    func lookup(_ address: UInt64) -> Region? {
        let i = firstIndex(endingAfter: address)
        guard i < regions.count, regions[i].start <= address else { return nil }
        return regions[i]
    }

    /// Removes [start, end), splitting regions that straddle its edges.
    mutating func remove(_ start: UInt64, _ end: UInt64) {
        guard start < end else { return }
        var i = firstIndex(endingAfter: start)
        var insert: [Region] = []
        let from = i
        while i < regions.count && regions[i].start < end {
            let r = regions[i]
            if r.start < start {
                var left = r; left.end = start; insert.append(left)
            }
            if r.end > end {
                var right = r; right.start = end; right.physical = r.physical + (end - r.start); insert.append(right)
            }
            i += 1
        }
        regions.replaceSubrange(from..<i, with: insert)
    }

    mutating func insert(_ start: UInt64, _ end: UInt64, physical: UInt64, permissions: PagePermissions, state: State) {
        guard start < end else { return }
        remove(start, end)
        let i = firstIndex(endingAfter: start)
        regions.insert(Region(start: start, end: end, physical: physical, permissions: permissions, state: state), at: i)
    }

    /// Inserts [start, end) → physical only where nothing is mapped yet (a map that overlaps
    /// an existing mapping fails with EEXIST and must not disturb it).
    mutating func insertIntoHoles(_ start: UInt64, _ end: UInt64, physical: UInt64, permissions: PagePermissions, state: State) {
        guard start < end else { return }
        var holes: [(UInt64, UInt64)] = []
        var cursor = start
        var i = firstIndex(endingAfter: start)
        while i < regions.count && regions[i].start < end {
            if regions[i].start > cursor { holes.append((cursor, regions[i].start)) }
            cursor = max(cursor, regions[i].end)
            i += 1
        }
        if cursor < end { holes.append((cursor, end)) }
        for (a, b) in holes {
            insert(a, b, physical: physical + (a - start), permissions: permissions, state: state)
        }
    }

    /// Removes the regions in state `state` within [start, end).
    mutating func remove(_ start: UInt64, _ end: UInt64, inState state: State) {
        var doomed: [(UInt64, UInt64)] = []
        var i = firstIndex(endingAfter: start)
        while i < regions.count && regions[i].start < end {
            if regions[i].state == state { doomed.append((max(start, regions[i].start), min(end, regions[i].end))) }
            i += 1
        }
        for (a, b) in doomed { remove(a, b) }
    }

    /// Sets the state of whatever is mapped in [start, end) (splitting at the edges).
    /// Only regions in state `from` (nil: any) change.
    mutating func setState(_ start: UInt64, _ end: UInt64, to state: State, from: State? = nil) {
        guard start < end else { return }
        var affected: [Region] = []
        var i = firstIndex(endingAfter: start)
        while i < regions.count && regions[i].start < end {
            let r = regions[i]
            if from == nil || r.state == from {
                var part = r
                part.start = max(r.start, start)
                part.end = min(r.end, end)
                part.physical = r.physical + (part.start - r.start)
                affected.append(part)
            }
            i += 1
        }
        for var part in affected {
            part.state = state
            insert(part.start, part.end, physical: part.physical, permissions: part.permissions, state: state)
        }
    }

    var isEmpty: Bool { regions.isEmpty }

    /// The first region overlapping [start, end), if any.
    func firstOverlap(_ start: UInt64, _ end: UInt64) -> Region? {
        let i = firstIndex(endingAfter: start)
        guard i < regions.count, regions[i].start < end else { return nil }
        return regions[i]
    }

    /// Adds every region of `other` (replacing what it overlaps).
    mutating func merge(_ other: ShadowMap) {
        for r in other.regions { insert(r.start, r.end, physical: r.physical, permissions: r.permissions, state: r.state) }
    }
}
