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
/// Every operation is one iterative descent that records its root-to-node path in a scratch
/// stack, then one bottom-up fix-up along that path that stops at the first subtree whose
/// height and largest gap did not change (ancestors depend on nothing else). An allocation
/// inserts along the path its search found, so it descends once.
///
/// A node is what a search reads, in 32 bytes on a 32-byte boundary: one cache line per
/// visit. Heights (one byte each, so the whole array stays in L1 for the rebalancing reads)
/// and range ends (read once per removal) live in side arrays under the same slot number.
///
/// A sentinel node just above the highest usable frame (Linux's `anchor`) is always present,
/// so every free range is the gap below some node. Not thread safe: the owner locks.
/// Noncopyable: it owns raw storage.
struct IOVATree: ~Copyable {
    struct Node {
        var lo: UInt64
        /// Free frames between the previous node's `hi` (or `start - 1`) and `lo`.
        var gapBelow: UInt64
        /// Largest `gapBelow` in this subtree.
        var maxGap: UInt64
        /// Left child; on the free list, the next free slot.
        var left: Int32
        var right: Int32
    }

    static let none: Int32 = -1
    /// Deeper than any AVL tree over `Int32` slots can be (1.44 · log2(2^31) < 46).
    static let maxDepth = 64

    private var nodes: UnsafeMutablePointer<Node>
    /// AVL height of each slot's subtree.
    private var heights: UnsafeMutablePointer<Int8>
    /// Last frame of each slot's range.
    private var ends: UnsafeMutablePointer<UInt64>
    private var capacity: Int
    /// Slots handed out at least once.
    private var used = 0
    /// Freed slots, chained through `left`.
    private var freeList: Int32 = none
    /// Scratch root-to-node path of the last descent, and the side taken at each node.
    private let path: UnsafeMutablePointer<Int32>
    private let wentRight: UnsafeMutablePointer<Bool>
    private(set) var root: Int32 = none
    /// Lowest frame that can be handed out (frame 0 never is).
    let start: UInt64
    /// Highest frame that can be handed out.
    let end: UInt64
    /// Allocated ranges (the sentinel excluded).
    private(set) var count = 0

    /// `end` is capped one below the top frame, so the sentinel above it never wraps to 0.
    init(start: UInt64, end: UInt64) {
        self.start = min(max(1, start), UInt64.max - 1)
        self.end = min(max(self.start, end), UInt64.max - 1)
        capacity = 64
        nodes = Self.allocateNodes(capacity)
        heights = .allocate(capacity: capacity)
        ends = .allocate(capacity: capacity)
        path = .allocate(capacity: Self.maxDepth)
        wentRight = .allocate(capacity: Self.maxDepth)
        let anchor = self.end &+ 1
        root = newNode(lo: anchor, hi: anchor, gap: anchor &- self.start)
    }

    deinit {
        UnsafeMutableRawPointer(nodes).deallocate()
        heights.deallocate()
        ends.deallocate()
        path.deallocate()
        wentRight.deallocate()
    }

    // MARK: Node helpers

    private static func allocateNodes(_ capacity: Int) -> UnsafeMutablePointer<Node> {
        UnsafeMutableRawPointer.allocate(byteCount: capacity * MemoryLayout<Node>.stride, alignment: 64)
            .bindMemory(to: Node.self, capacity: capacity)
    }

    @inline(__always) private func height(_ n: Int32) -> Int8 { n == Self.none ? 0 : heights[Int(n)] }
    @inline(__always) private func maxGap(_ n: Int32) -> UInt64 { n == Self.none ? 0 : nodes[Int(n)].maxGap }

    /// Refreshes `n`'s height and largest gap from its children; returns its balance
    /// factor (left height minus right height).
    @inline(__always) @discardableResult private func update(_ n: Int32) -> Int8 {
        let p = nodes + Int(n)
        let l = p.pointee.left, r = p.pointee.right
        let lh = height(l), rh = height(r)
        heights[Int(n)] = max(lh, rh) + 1
        p.pointee.maxGap = max(p.pointee.gapBelow, max(maxGap(l), maxGap(r)))
        return lh - rh
    }

    private func rotateRight(_ n: Int32) -> Int32 {
        let l = nodes[Int(n)].left
        nodes[Int(n)].left = nodes[Int(l)].right
        nodes[Int(l)].right = n
        update(n); update(l)
        return l
    }

    private func rotateLeft(_ n: Int32) -> Int32 {
        let r = nodes[Int(n)].right
        nodes[Int(n)].right = nodes[Int(r)].left
        nodes[Int(r)].left = n
        update(n); update(r)
        return r
    }

    /// Refreshes `n` and restores the AVL balance at it; returns the subtree's new root.
    @inline(__always) private func balance(_ n: Int32) -> Int32 {
        let b = update(n)
        return b > 1 || b < -1 ? rotate(n, balance: b) : n
    }

    /// The rotations that restore balance at `n`, out of balance by two (`b` = ±2).
    private func rotate(_ n: Int32, balance b: Int8) -> Int32 {
        let i = Int(n)
        if b > 1 {
            let l = nodes[i].left
            if height(nodes[Int(l)].left) < height(nodes[Int(l)].right) { nodes[i].left = rotateLeft(l) }
            return rotateRight(n)
        }
        let r = nodes[i].right
        if height(nodes[Int(r)].right) < height(nodes[Int(r)].left) { nodes[i].right = rotateRight(r) }
        return rotateLeft(n)
    }

    private mutating func newNode(lo: UInt64, hi: UInt64, gap: UInt64) -> Int32 {
        let i: Int32
        if freeList != Self.none {
            i = freeList
            freeList = nodes[Int(i)].left
        } else {
            if used == capacity {
                let bigger = Self.allocateNodes(capacity * 2)
                bigger.moveInitialize(from: nodes, count: used)
                UnsafeMutableRawPointer(nodes).deallocate()
                nodes = bigger
                let taller = UnsafeMutablePointer<Int8>.allocate(capacity: capacity * 2)
                taller.moveInitialize(from: heights, count: used)
                heights.deallocate()
                heights = taller
                let longer = UnsafeMutablePointer<UInt64>.allocate(capacity: capacity * 2)
                longer.moveInitialize(from: ends, count: used)
                ends.deallocate()
                ends = longer
                capacity *= 2
            }
            i = Int32(used)
            used += 1
        }
        (nodes + Int(i)).initialize(to: Node(lo: lo, gapBelow: gap, maxGap: gap, left: Self.none, right: Self.none))
        heights[Int(i)] = 1
        ends[Int(i)] = hi
        return i
    }

    private mutating func freeNode(_ n: Int32) {
        nodes[Int(n)].left = freeList
        freeList = n
    }

    /// Points the parent of path entry `depth` (or the root) at `child`.
    @inline(__always) private mutating func link(atDepth depth: Int, to child: Int32) {
        if depth == 0 { root = child; return }
        let parent = Int(path[depth - 1])
        if wentRight[depth - 1] { nodes[parent].right = child } else { nodes[parent].left = child }
    }

    /// Rebalances path entries `top - 1` down to 0 after a change below them. A subtree whose
    /// root kept its height and largest gap leaves the entries above it as they were, so
    /// the walk stops there, or, if a node above (`mustReach`: the path entry whose own gap
    /// changed) is still ahead, jumps straight to that node.
    private mutating func fixUp(from top: Int, mustReach: Int) {
        let nodes = self.nodes, heights = self.heights, path = self.path
        var d = top - 1
        while d >= 0 {
            let n = path[d]
            let oldHeight = heights[Int(n)], oldGap = nodes[Int(n)].maxGap
            let q = balance(n)
            if q != n { link(atDepth: d, to: q) }
            if heights[Int(q)] == oldHeight && nodes[Int(q)].maxGap == oldGap {
                guard d > mustReach else { return }
                d = mustReach
            } else {
                d -= 1
            }
        }
    }

    // MARK: Queries

    /// The node holding `pfn` in its range, or `none`.
    func find(containing pfn: UInt64) -> Int32 {
        var n = root
        while n != Self.none {
            let node = nodes[Int(n)]
            if pfn < node.lo { n = node.left } else if pfn > ends[Int(n)] { n = node.right } else { return n }
        }
        return Self.none
    }

    /// The allocated range holding `pfn` (the sentinel excluded).
    func range(containing pfn: UInt64) -> (lo: UInt64, hi: UInt64)? {
        let n = find(containing: pfn)
        guard n != Self.none, nodes[Int(n)].lo <= end else { return nil }
        return (nodes[Int(n)].lo, ends[Int(n)])
    }

    /// The range starting at `pfn`, if allocated.
    func range(at pfn: UInt64) -> (lo: UInt64, hi: UInt64)? {
        guard let r = range(containing: pfn), r.lo == pfn else { return nil }
        return r
    }

    // MARK: Insert

    /// Inserts [lo, hi], which must be free. Returns false if it overlaps an allocated range
    /// or leaves the space.
    mutating func insert(lo: UInt64, hi: UInt64) -> Bool {
        guard lo <= hi, lo >= start, hi <= end else { return false }
        var depth = 0
        var n = root
        var predecessorHi = start &- 1
        var successorDepth = -1
        while n != Self.none {
            let node = nodes[Int(n)]
            path[depth] = n
            if hi < node.lo {
                wentRight[depth] = false
                successorDepth = depth
                n = node.left
            } else if lo > ends[Int(n)] {
                wentRight[depth] = true
                predecessorHi = ends[Int(n)]
                n = node.right
            } else {
                return false
            }
            depth += 1
        }
        // The sentinel lies above every insertable range, so a successor exists: the deepest
        // node the descent went left at. Its gap now starts above the new range.
        let s = Int(path[successorDepth])
        nodes[s].gapBelow = nodes[s].lo &- hi &- 1
        attach(lo: lo, hi: hi, gap: lo &- predecessorHi &- 1, depth: depth, mustReach: successorDepth)
        return true
    }

    /// Hangs a new node below path entry `depth - 1` on its recorded side and rebalances.
    private mutating func attach(lo: UInt64, hi: UInt64, gap: UInt64, depth: Int, mustReach: Int) {
        let x = newNode(lo: lo, hi: hi, gap: gap)
        link(atDepth: depth, to: x)
        count += 1
        fixUp(from: depth, mustReach: mustReach)
    }

    // MARK: Remove

    /// Removes the range starting at `lo`. Returns its `hi`, or nil if none starts there.
    mutating func remove(lo: UInt64) -> UInt64? {
        guard lo <= end else { return nil }
        var depth = 0
        var n = root
        var successorDepth = -1
        while n != Self.none {
            let nodeLo = nodes[Int(n)].lo
            if lo == nodeLo { break }
            path[depth] = n
            if lo < nodeLo {
                wentRight[depth] = false
                successorDepth = depth
                n = nodes[Int(n)].left
            } else {
                wentRight[depth] = true
                n = nodes[Int(n)].right
            }
            depth += 1
        }
        guard n != Self.none else { return nil }
        let r = nodes[Int(n)], rHi = ends[Int(n)], rHeight = heights[Int(n)]
        // The freed range and the gap below it join the gap of the next node up.
        let grown = rHi &- r.lo &+ 1 &+ r.gapBelow
        var mustReach: Int
        if r.left != Self.none && r.right != Self.none {
            // Two children: the successor (leftmost of the right subtree) takes this place.
            let place = depth
            path[depth] = n
            wentRight[depth] = true
            depth += 1
            var s = r.right
            while nodes[Int(s)].left != Self.none {
                path[depth] = s
                wentRight[depth] = false
                depth += 1
                s = nodes[Int(s)].left
            }
            let successorRight = nodes[Int(s)].right
            if path[depth - 1] == n { nodes[Int(n)].right = successorRight } else { nodes[Int(path[depth - 1])].left = successorRight }
            // It enters with the removed node's aggregates, which its ancestors were built on.
            let sp = nodes + Int(s)
            sp.pointee.left = r.left
            sp.pointee.right = nodes[Int(n)].right
            heights[Int(s)] = rHeight
            sp.pointee.maxGap = r.maxGap
            sp.pointee.gapBelow &+= grown
            path[place] = s
            link(atDepth: place, to: s)
            mustReach = place
        } else if r.right != Self.none {
            // Only a right child: in an AVL tree a leaf, and the successor.
            let c = Int(r.right)
            nodes[c].gapBelow &+= grown
            nodes[c].maxGap = nodes[c].gapBelow
            link(atDepth: depth, to: r.right)
            mustReach = -1
        } else {
            // The successor is the deepest ancestor the descent went left at (the sentinel
            // lies above every range, so there is one).
            link(atDepth: depth, to: r.left)
            let s = Int(path[successorDepth])
            nodes[s].gapBelow &+= grown
            mustReach = successorDepth
        }
        freeNode(n)
        count -= 1
        fixUp(from: depth, mustReach: mustReach)
        return rHi
    }

    // MARK: Allocate

    /// Nodes an exact search may enter before it settles for a gap that fits whatever its
    /// alignment. A cheap first look: it reaches the top few levels of the tree only. With
    /// 10^4 live ranges an 8-node look found a block in 0.4% of allocations and its cache
    /// misses cost a quarter of the allocation time; 4 halves that cost.
    static let searchBudget = 4

    /// The highest `size`-frame block aligned to `align` (a power of two) that lies in a free
    /// gap, at or below `limit` and at or above `start`. Top-down, as Linux allocates.
    ///
    /// Gaps as large as `size` whose aligned block does not fit make an exact search visit
    /// many nodes when the space is fragmented (Linux's walk has the same weakness). So the
    /// exact search has a budget of nodes; when it runs out, the highest gap of at least
    /// `size + align - 1` frames, which always holds an aligned block, is taken instead, a
    /// straight O(log n) descent. Only if no such gap exists does the exact search run to
    /// the end. (Linux's cached node likewise trades the strictly highest block for speed.)
    mutating func findHighest(size: UInt64, align: UInt64, limit: UInt64, budget: Int = searchBudget) -> UInt64? {
        locate(size: size, align: align, limit: limit, budget: budget)?.lo
    }

    /// `findHighest` and the insertion of the block it found, along the same path.
    mutating func allocate(size: UInt64, align: UInt64, limit: UInt64) -> UInt64? {
        guard let (lo, depth) = locate(size: size, align: align, limit: limit, budget: Self.searchBudget) else { return nil }
        // The block lies in the gap below path entry `depth - 1`: it becomes the in-order
        // predecessor of that node, the rightmost node of its left subtree.
        let owner = depth - 1
        let o = Int(path[owner])
        let gapStart = nodes[o].lo &- nodes[o].gapBelow
        let hi = lo &+ size &- 1
        nodes[o].gapBelow = nodes[o].lo &- hi &- 1
        wentRight[owner] = false
        var d = depth
        var c = nodes[o].left
        while c != Self.none {
            path[d] = c
            wentRight[d] = true
            d += 1
            c = nodes[Int(c)].right
        }
        attach(lo: lo, hi: hi, gap: lo &- gapStart, depth: d, mustReach: owner)
        return lo
    }

    /// Runs the budgeted exact search, then the roomy one, then the unbudgeted exact one.
    /// On success the path holds root … the node whose gap holds the block (`depth` entries).
    private mutating func locate(size: UInt64, align: UInt64, limit: UInt64, budget exactBudget: Int) -> (lo: UInt64, depth: Int)? {
        guard size > 0 else { return nil }
        let limit = min(limit, end)
        var budget = exactBudget
        if let found = search(size: size, minGap: size, align: align, limit: limit, budget: &budget) { return found }
        guard budget <= 0 else { return nil } // the exact search saw everything: nothing fits
        var unlimited = Int.max
        let (roomy, o) = size.addingReportingOverflow(align &- 1)
        if !o, let found = search(size: size, minGap: roomy, align: align, limit: limit, budget: &unlimited) { return found }
        return search(size: size, minGap: size, align: align, limit: limit, budget: &unlimited)
    }

    /// Highest aligned block of `size` in a gap of at least `minGap`, entering at most
    /// `budget` nodes: a reverse in-order walk (right subtree, own gap, left subtree) that
    /// skips subtrees whose largest gap is too small, and the right subtree and own gap of a
    /// node whose gap starts above `limit`. The path stack doubles as the walk's stack:
    /// `wentRight` marks a node whose own gap is still to be tried.
    private mutating func search(size: UInt64, minGap: UInt64, align: UInt64, limit: UInt64, budget: inout Int) -> (lo: UInt64, depth: Int)? {
        // Local copies: stores through the path would otherwise make the compiler reload
        // the storage pointers from `self` at every step.
        let nodes = self.nodes, path = self.path, wentRight = self.wentRight, start = self.start
        /// A child is entered only if its subtree holds a large-enough gap (read before
        /// entering, so a subtree skipped costs neither budget nor a stack entry).
        @inline(__always) func worthEntering(_ c: Int32) -> Int32 {
            c != Self.none && nodes[Int(c)].maxGap >= minGap ? c : Self.none
        }
        /// The highest aligned block of `size` in `node`'s own gap, if any.
        @inline(__always) func block(in node: Node) -> UInt64? {
            guard node.gapBelow >= minGap else { return nil }
            let gapStart = node.lo &- node.gapBelow
            let top = min(node.lo &- 1, limit)
            guard top >= gapStart, top &- gapStart &+ 1 >= size else { return nil }
            let candidate = (top &- size &+ 1) & ~(align &- 1)
            return candidate >= gapStart && candidate >= start ? candidate : nil
        }
        var depth = 0
        var n = worthEntering(root)
        while true {
            // Descend from n as far as the walk goes.
            while n != Self.none && budget > 0 {
                budget -= 1
                let node = nodes[Int(n)]
                path[depth] = n
                depth += 1
                if node.lo &- node.gapBelow <= limit {
                    let r = worthEntering(node.right)
                    if r != Self.none {
                        wentRight[depth - 1] = true
                        n = r
                        continue
                    }
                    // Nothing to the right: the own gap is next, then the left subtree.
                    if let lo = block(in: node) { return (lo, depth) }
                }
                wentRight[depth - 1] = false
                n = worthEntering(node.left)
            }
            // That subtree held nothing: back up to the nearest node whose own gap is untried.
            while depth > 0 && !wentRight[depth - 1] { depth -= 1 }
            guard depth > 0 else { return nil }
            let node = nodes[Int(path[depth - 1])]
            if let lo = block(in: node) { return (lo, depth) }
            wentRight[depth - 1] = false
            n = worthEntering(node.left)
        }
    }

    /// Walks every range in order (for checks and flushes).
    func forEach(_ body: (UInt64, UInt64) -> Void) {
        func walk(_ n: Int32) {
            guard n != Self.none else { return }
            let node = nodes[Int(n)]
            walk(node.left)
            if node.lo <= end { body(node.lo, ends[Int(n)]) }
            walk(node.right)
        }
        walk(root)
    }

    /// Checks the AVL shape, the order, and every gap and aggregate (tests).
    func validate() -> Bool {
        var previousHi = start &- 1
        var ok = true
        var seen = 0
        func walk(_ n: Int32) -> (height: Int8, maxGap: UInt64) {
            guard n != Self.none else { return (0, 0) }
            let node = nodes[Int(n)]
            seen += 1
            let l = walk(node.left)
            if node.lo <= previousHi && previousHi != start &- 1 { ok = false }
            if node.gapBelow != node.lo &- previousHi &- 1 { ok = false }
            previousHi = ends[Int(n)]
            let r = walk(node.right)
            if abs(Int(l.height) - Int(r.height)) > 1 { ok = false }
            let h = max(l.height, r.height) + 1
            let g = max(node.gapBelow, max(l.maxGap, r.maxGap))
            if h != heights[Int(n)] || g != node.maxGap { ok = false }
            return (h, g)
        }
        _ = walk(root)
        return ok && seen == count + 1 && previousHi == end &+ 1
    }
}
