/// The allocated IOVA ranges of one domain, in page frames (Linux `iova_domain.rbroot`,
/// drivers/iommu/iova.c): an AVL tree of disjoint inclusive ranges in flat storage, each node
/// augmented with the free gap just below it and the largest gap in its subtree.
///
/// Linux walks from a cached node downwards until a gap fits, which is usually fast but
/// degrades to a linear walk when the space is fragmented (the 500 MB + 12 MB + 499 MB case
/// in the allocator's history needed the cached-node retry to be fixed). With the largest gap
/// kept per subtree, a top-down allocation below any limit descends straight to the highest
/// fitting gap: O(log n) whatever the fragmentation. That makes the cached node unnecessary
/// (see docs/architecture.md).
///
/// A sentinel node just above the highest usable frame (Linux's `anchor`) is always present,
/// so every free range is the gap below some node. Not thread safe: the owner locks.
struct IOVATree {
    struct Node {
        var lo: UInt64
        var hi: UInt64
        /// Free frames between the previous node's `hi` (or `start - 1`) and `lo`.
        var gapBelow: UInt64
        /// Largest `gapBelow` in this subtree.
        var maxGap: UInt64
        var left: Int32
        var right: Int32
        var height: Int8
    }

    static let none: Int32 = -1

    private(set) var nodes: [Node] = []
    private var freeNodes: [Int32] = []
    private(set) var root: Int32 = none
    /// Lowest frame that can be handed out (frame 0 never is).
    let start: UInt64
    /// Highest frame that can be handed out.
    let end: UInt64
    /// Allocated ranges (the sentinel excluded).
    private(set) var count = 0

    init(start: UInt64, end: UInt64) {
        self.start = max(1, start)
        self.end = max(self.start, end)
        nodes.reserveCapacity(64)
        let anchor = self.end &+ 1
        _ = insert(lo: anchor, hi: anchor)
        count = 0
    }

    // MARK: Node helpers

    @inline(__always) private func height(_ n: Int32) -> Int8 { n == Self.none ? 0 : nodes[Int(n)].height }
    @inline(__always) private func maxGap(_ n: Int32) -> UInt64 { n == Self.none ? 0 : nodes[Int(n)].maxGap }

    @inline(__always) private mutating func update(_ n: Int32) {
        let i = Int(n)
        let l = nodes[i].left, r = nodes[i].right
        nodes[i].height = max(height(l), height(r)) + 1
        nodes[i].maxGap = max(nodes[i].gapBelow, max(maxGap(l), maxGap(r)))
    }

    private mutating func rotateRight(_ n: Int32) -> Int32 {
        let l = nodes[Int(n)].left
        nodes[Int(n)].left = nodes[Int(l)].right
        nodes[Int(l)].right = n
        update(n); update(l)
        return l
    }

    private mutating func rotateLeft(_ n: Int32) -> Int32 {
        let r = nodes[Int(n)].right
        nodes[Int(n)].right = nodes[Int(r)].left
        nodes[Int(r)].left = n
        update(n); update(r)
        return r
    }

    private mutating func balance(_ n: Int32) -> Int32 {
        update(n)
        let i = Int(n)
        let b = Int(height(nodes[i].left)) - Int(height(nodes[i].right))
        if b > 1 {
            let l = nodes[i].left
            if height(nodes[Int(l)].left) < height(nodes[Int(l)].right) { nodes[i].left = rotateLeft(l) }
            return rotateRight(n)
        }
        if b < -1 {
            let r = nodes[i].right
            if height(nodes[Int(r)].right) < height(nodes[Int(r)].left) { nodes[i].right = rotateRight(r) }
            return rotateLeft(n)
        }
        return n
    }

    private mutating func newNode(lo: UInt64, hi: UInt64, gap: UInt64) -> Int32 {
        let node = Node(lo: lo, hi: hi, gapBelow: gap, maxGap: gap, left: Self.none, right: Self.none, height: 1)
        if let i = freeNodes.popLast() { nodes[Int(i)] = node; return i }
        nodes.append(node)
        return Int32(nodes.count - 1)
    }

    // MARK: Queries

    /// The node holding `pfn` in its range, or `none`.
    func find(containing pfn: UInt64) -> Int32 {
        var n = root
        while n != Self.none {
            let node = nodes[Int(n)]
            if pfn < node.lo { n = node.left } else if pfn > node.hi { n = node.right } else { return n }
        }
        return Self.none
    }

    /// The range starting at `pfn`, if allocated.
    func range(at pfn: UInt64) -> (lo: UInt64, hi: UInt64)? {
        let n = find(containing: pfn)
        guard n != Self.none, nodes[Int(n)].lo == pfn, nodes[Int(n)].lo <= end else { return nil }
        return (nodes[Int(n)].lo, nodes[Int(n)].hi)
    }

    // MARK: Insert

    /// Inserts [lo, hi], which must be free. Returns false if it overlaps an allocated range.
    mutating func insert(lo: UInt64, hi: UInt64) -> Bool {
        guard lo <= hi, lo >= start, hi <= end &+ 1, !overlaps(lo: lo, hi: hi) else { return false }
        return insertFree(lo: lo, hi: hi)
    }

    /// Inserts [lo, hi] that `findHighest` just found free (no overlap check).
    mutating func insertFree(lo: UInt64, hi: UInt64) -> Bool {
        var added = false
        root = insert(root, lo: lo, hi: hi, predecessorHi: start &- 1, added: &added)
        if added { count += 1 }
        return added
    }

    private func overlaps(lo: UInt64, hi: UInt64) -> Bool {
        var n = root
        while n != Self.none {
            let node = nodes[Int(n)]
            if hi < node.lo { n = node.left } else if lo > node.hi { n = node.right } else { return true }
        }
        return false
    }

    /// Recursive AVL insert. `predecessorHi` is the `hi` of the nearest node below on the path
    /// so far; the new node's successor is on the path too (the last node we went left at),
    /// and its gap shrinks.
    private mutating func insert(_ n: Int32, lo: UInt64, hi: UInt64, predecessorHi: UInt64, added: inout Bool) -> Int32 {
        if n == Self.none {
            added = true
            return newNode(lo: lo, hi: hi, gap: lo &- predecessorHi &- 1)
        }
        let i = Int(n)
        if hi < nodes[i].lo {
            // The new range sits below this node: if this node is its successor (no node in
            // between), its gap now starts above the new range. The deepest such node on the
            // path is the successor; a shallower one keeps a gap computed from a node lower
            // down, so only update when the gap's start lies below `lo`.
            let gapStart = nodes[i].lo &- nodes[i].gapBelow
            if gapStart <= lo { nodes[i].gapBelow = nodes[i].lo &- hi &- 1 }
            nodes[i].left = insert(nodes[i].left, lo: lo, hi: hi, predecessorHi: predecessorHi, added: &added)
        } else {
            nodes[i].right = insert(nodes[i].right, lo: lo, hi: hi, predecessorHi: nodes[i].hi, added: &added)
        }
        return balance(n)
    }

    // MARK: Remove

    /// Removes the range starting at `lo`. Returns its `hi`, or nil if none starts there.
    mutating func remove(lo: UInt64) -> UInt64? {
        guard lo <= end, let r = range(at: lo) else { return nil }
        root = remove(root, lo: lo)
        // The successor's gap grows by the freed range and the gap below it.
        growSuccessorGap(after: r.hi, by: r.hi &- r.lo &+ 1)
        count -= 1
        return r.hi
    }

    private mutating func remove(_ n: Int32, lo: UInt64) -> Int32 {
        let i = Int(n)
        if lo < nodes[i].lo {
            nodes[i].left = remove(nodes[i].left, lo: lo)
        } else if lo > nodes[i].lo {
            nodes[i].right = remove(nodes[i].right, lo: lo)
        } else {
            let l = nodes[i].left, r = nodes[i].right
            let gap = nodes[i].gapBelow
            freeNodes.append(n)
            if l == Self.none || r == Self.none {
                let child = l == Self.none ? r : l
                pendingGap = gap
                return child == Self.none ? Self.none : balance(child)
            }
            // Two children: the successor (minimum of the right subtree) takes this place.
            var successor = Self.none
            let newRight = removeMin(r, into: &successor)
            let s = Int(successor)
            nodes[s].left = l
            nodes[s].right = newRight
            nodes[s].gapBelow &+= gap
            pendingGap = 0
            return balance(successor)
        }
        return balance(n)
    }

    /// Gap of a removed node that had at most one child; its successor (elsewhere in the
    /// tree) absorbs it in `growSuccessorGap`.
    private var pendingGap: UInt64 = 0

    private mutating func removeMin(_ n: Int32, into minimum: inout Int32) -> Int32 {
        let i = Int(n)
        if nodes[i].left == Self.none {
            minimum = n
            return nodes[i].right
        }
        nodes[i].left = removeMin(nodes[i].left, into: &minimum)
        return balance(n)
    }

    /// Adds the freed range and the removed node's gap to the gap of the first node above
    /// `hi`, and refreshes the aggregates on its path.
    private mutating func growSuccessorGap(after hi: UInt64, by size: UInt64) {
        let extra = size &+ pendingGap
        pendingGap = 0
        root = grow(root, after: hi, by: extra)
    }

    /// Descends to the smallest node with `lo > hi` (the successor), adds `extra` to its gap
    /// and refreshes aggregates on the way back up.
    private mutating func grow(_ n: Int32, after hi: UInt64, by extra: UInt64) -> Int32 {
        var done = false
        return grow(n, after: hi, by: extra, done: &done)
    }

    private mutating func grow(_ n: Int32, after hi: UInt64, by extra: UInt64, done: inout Bool) -> Int32 {
        guard n != Self.none else { return n }
        let i = Int(n)
        if nodes[i].lo > hi {
            nodes[i].left = grow(nodes[i].left, after: hi, by: extra, done: &done)
            if !done { nodes[i].gapBelow &+= extra; done = true }
        } else {
            nodes[i].right = grow(nodes[i].right, after: hi, by: extra, done: &done)
        }
        update(n)
        return n
    }

    // MARK: Allocate

    /// Nodes an exact search may visit before it settles for a gap that fits whatever its
    /// alignment.
    static let searchBudget = 8

    /// The highest `size`-frame block aligned to `align` (a power of two) that lies in a free
    /// gap, at or below `limit` and at or above `start`. Top-down, as Linux allocates.
    ///
    /// Gaps as large as `size` whose aligned block does not fit make an exact search visit
    /// many nodes when the space is fragmented (Linux's walk has the same weakness). So the
    /// exact search has a budget; when it runs out, the highest gap of at least
    /// `size + align - 1` frames, which always holds an aligned block, is taken instead, a
    /// straight O(log n) descent. Only if no such gap exists does the exact search run to
    /// the end. (Linux's cached node likewise trades the strictly highest block for speed.)
    func findHighest(size: UInt64, align: UInt64, limit: UInt64, budget exactBudget: Int = searchBudget) -> UInt64? {
        guard size > 0 else { return nil }
        let limit = min(limit, end)
        var budget = exactBudget
        if let found = search(root, size: size, minGap: size, align: align, limit: limit, budget: &budget) { return found }
        guard budget <= 0 else { return nil } // the exact search saw everything: nothing fits
        var unlimited = Int.max
        let (roomy, o) = size.addingReportingOverflow(align &- 1)
        if !o, let found = search(root, size: size, minGap: roomy, align: align, limit: limit, budget: &unlimited) { return found }
        return search(root, size: size, minGap: size, align: align, limit: limit, budget: &unlimited)
    }

    /// Highest aligned block of `size` in a gap of at least `minGap`, visiting at most
    /// `budget` nodes.
    private func search(_ n: Int32, size: UInt64, minGap: UInt64, align: UInt64, limit: UInt64, budget: inout Int) -> UInt64? {
        guard n != Self.none, budget > 0 else { return nil }
        budget -= 1
        let node = nodes[Int(n)]
        guard node.maxGap >= minGap else { return nil }
        let gapStart = node.lo &- node.gapBelow
        if gapStart <= limit {
            // Higher gaps first: the right subtree, then this node's own gap.
            if let found = search(node.right, size: size, minGap: minGap, align: align, limit: limit, budget: &budget) { return found }
            if node.gapBelow >= minGap {
                let top = min(node.lo &- 1, limit)
                if top >= gapStart, top &- gapStart &+ 1 >= size {
                    let candidate = (top &- size &+ 1) & ~(align &- 1)
                    if candidate >= gapStart && candidate >= start { return candidate }
                }
            }
        }
        return search(node.left, size: size, minGap: minGap, align: align, limit: limit, budget: &budget)
    }

    /// Walks every range in order (for checks and flushes).
    func forEach(_ body: (UInt64, UInt64) -> Void) {
        func walk(_ n: Int32) {
            guard n != Self.none else { return }
            let node = nodes[Int(n)]
            walk(node.left)
            if node.lo <= end { body(node.lo, node.hi) }
            walk(node.right)
        }
        walk(root)
    }

    /// Checks the AVL shape, the order, and every gap and aggregate (tests).
    func validate() -> Bool {
        var previousHi = start &- 1
        var ok = true
        func walk(_ n: Int32) -> (height: Int8, maxGap: UInt64) {
            guard n != Self.none else { return (0, 0) }
            let node = nodes[Int(n)]
            let l = walk(node.left)
            if node.lo <= previousHi &&  previousHi != start &- 1 { ok = false }
            if node.gapBelow != node.lo &- previousHi &- 1 { ok = false }
            previousHi = node.hi
            let r = walk(node.right)
            if abs(Int(l.height) - Int(r.height)) > 1 { ok = false }
            let h = max(l.height, r.height) + 1
            let g = max(node.gapBelow, max(l.maxGap, r.maxGap))
            if h != node.height || g != node.maxGap { ok = false }
            return (h, g)
        }
        _ = walk(root)
        return ok
    }
}
