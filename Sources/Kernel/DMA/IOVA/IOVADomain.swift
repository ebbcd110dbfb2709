import Platform
import Synchronization

/// An IOVA space with per-CPU range caches (Linux `struct iova_domain` with its rcaches,
/// drivers/iommu/iova.c): ranges come from an `IOVATree` top-down and size-aligned; ranges of
/// up to 32 granules are recycled through per-CPU magazines (a loaded and a previous magazine
/// of 127 frames per CPU and size class) and a shared depot of full magazines, trimmed back
/// into the tree one magazine per 100 ms while it holds more than one per CPU. The depot
/// gives a CPU back its own magazines first (`IOVADepot`, a departure from Linux's single
/// list that keeps each CPU's IOVAs, and so its page-table lines, apart).
///
/// Cached ranges stay allocated in the tree (as in Linux): the caches only remember them.
/// Thread safe: one lock per CPU slot for its magazines, one for the tree and depot (taken in
/// that order). A CPU slot's fast path takes only its own lock and allocates nothing.
public final class IOVADomain: @unchecked Sendable {
    /// Size classes cached: 1, 2, 4, … 32 granules (Linux `IOVA_RANGE_CACHE_MAX_SIZE`).
    public static let cachedOrders = 6
    /// Frames per magazine (Linux `IOVA_MAG_SIZE`).
    public static let magazineSize = 127
    /// Largest cached size in granules (Linux `iova_rcache_range`).
    public static let maxCachedSize: UInt64 = 1 << UInt64(cachedOrders - 1)
    /// Granules whose page-table entries share a 64-byte cache line (eight 8-byte entries):
    /// the unit a cache miss refills from the tree (`refill`).
    public static let lineGranules: UInt64 = 8
    /// Depot trim period (Linux `IOVA_DEPOT_DELAY`).
    public static let depotDelayNs: UInt64 = 100_000_000

    public let granuleShift: UInt64
    /// Frames below this bound are addressable with 32 bits.
    public let dma32PFN: UInt64
    public let cpuCount: Int
    let clock: @Sendable () -> UInt64

    /// A magazine: word 0 is the count, words 1…127 the frames. Owned by exactly one holder
    /// (a CPU slot, the depot or the spare list) at a time, under that holder's lock. 1 KiB
    /// on a 128-byte boundary (Linux's come from kmalloc-1024): the count is written on every
    /// push and pop, and with heap alignment it could share a line with the last frames of a
    /// magazine another CPU holds.
    struct Magazine: @unchecked Sendable {
        let words: UnsafeMutablePointer<UInt64>
        static func make() -> Magazine {
            let words = IOVADomain.magazineSize + 1
            let m = UnsafeMutableRawPointer.allocate(byteCount: words * 8, alignment: 128)
                .bindMemory(to: UInt64.self, capacity: words)
            m.initialize(repeating: 0, count: words)
            return Magazine(words: m)
        }
        var pointee: UInt64 {
            get { words.pointee }
            nonmutating set { words.pointee = newValue }
        }
        subscript(i: Int) -> UInt64 {
            get { words[i] }
            nonmutating set { words[i] = newValue }
        }
        func deallocate() { UnsafeMutableRawPointer(words).deallocate() }
    }

    /// One CPU's magazines, one loaded and one previous per size class. Plain pointers
    /// (owned by the domain); `PerCPU` keeps two CPUs' slots off each other's lines.
    struct CPUCache: @unchecked Sendable {
        var loaded: UnsafeMutablePointer<Magazine>
        var previous: UnsafeMutablePointer<Magazine>
    }

    struct Shared: ~Copyable {
        var tree: IOVATree
        /// Size of the last failed allocation below 4 GiB (Linux `max32_alloc_size`): larger
        /// 32-bit requests fail at once until something below 4 GiB is freed.
        var max32AllocSize: UInt64
        var depot: IOVADepot
        var spare: [Magazine] = []
        var allMagazines: [Magazine] = []
        var trimDue: UInt64?
        var counters = IOVACounters()
    }

    /// The CPU slots, each behind its own spin lock, in raw storage so reaching one costs no
    /// reference counting.
    let slots: PerCPU<CPUCache>
    let shared: Mutex<Shared>

    /// - Parameters:
    ///   - granuleShift: log2 of the granule (the domain's smallest page, Linux `iova_shift`).
    ///   - startPFN: lowest frame to hand out (frame 0 never is).
    ///   - endPFN: highest frame that exists (the aperture end).
    ///   - cpus: CPU slots with their own caches (at most `IOMMUDMA.maxCPUs`; CPU numbers
    ///     beyond the slots wrap onto them).
    ///   - clock: nanoseconds, virtual in simulation or real in benchmarks (depot trimming).
    public init(granuleShift: UInt64 = 12, startPFN: UInt64 = 1, endPFN: UInt64, cpus: Int = 1,
                clock: @escaping @Sendable () -> UInt64) {
        self.granuleShift = granuleShift
        dma32PFN = granuleShift < 32 ? UInt64(1) << (32 - granuleShift) : 1
        cpuCount = min(max(1, cpus), IOMMUDMA.maxCPUs)
        self.clock = clock
        var all: [Magazine] = []
        func magazine() -> Magazine {
            let m = Magazine.make()
            all.append(m)
            return m
        }
        slots = PerCPU(count: cpuCount) { _ in
            let loaded = UnsafeMutablePointer<Magazine>.allocate(capacity: Self.cachedOrders)
            let previous = UnsafeMutablePointer<Magazine>.allocate(capacity: Self.cachedOrders)
            for o in 0..<Self.cachedOrders {
                (loaded + o).initialize(to: magazine())
                (previous + o).initialize(to: magazine())
            }
            return CPUCache(loaded: loaded, previous: previous)
        }
        shared = Mutex(Shared(tree: IOVATree(start: startPFN, end: endPFN), max32AllocSize: .max,
                              depot: IOVADepot(orders: Self.cachedOrders, cpus: cpuCount), allMagazines: all))
    }

    deinit {
        shared.withLock { s in
            for m in s.allMagazines { m.deallocate() }
            s.allMagazines = []
        }
        for i in 0..<cpuCount {
            slots.withLock(i) { c in
                c.loaded.deallocate()
                c.previous.deallocate()
            }
        }
    }

    /// The size actually allocated for `pages`: cached sizes round up to a power of two, so a
    /// free returns the range to the right cache (Linux `alloc_iova_fast`).
    @inlinable
    public static func roundedSize(_ pages: UInt64) -> UInt64 {
        guard pages > 1, pages <= maxCachedSize else { return pages }
        return UInt64(1) << UInt64(64 - (pages - 1).leadingZeroBitCount)
    }

    @inline(__always) static func order(_ size: UInt64) -> Int { 63 - size.leadingZeroBitCount }

    // MARK: Allocate and free

    /// Allocates `pages` granules ending at or below `limitPFN` (Linux `alloc_iova_fast`):
    /// from CPU `cpu`'s cache when the size is cached, else from the tree; if that fails and
    /// `flushOnFailure`, every cache is returned to the tree and the tree tried once more.
    /// Returns the first frame, or nil.
    public func allocate(pages: UInt64, limitPFN: UInt64, cpu: Int, flushOnFailure: Bool = true) -> UInt64? {
        let size = Self.roundedSize(pages)
        guard pages > 0, size <= limitPFN else { return nil }
        if size <= Self.maxCachedSize {
            let order = Self.order(size)
            if let pfn = cacheGet(order: order, size: size, limit: limitPFN, cpu: cpu) { return pfn }
            if let pfn = refill(order: order, size: size, limit: limitPFN, cpu: cpu) { return pfn }
        } else if let pfn = treeAllocate(size: size, limit: limitPFN) {
            return pfn
        }
        guard flushOnFailure else { return nil }
        flushCaches()
        return treeAllocate(size: size, limit: limitPFN)
    }

    /// Frees a range from `allocate` (Linux `free_iova_fast`): into CPU `cpu`'s cache when
    /// the size is cached, else back to the tree. Returns false if no such range is allocated
    /// (only checked on the tree path; the caller vouches for cached sizes).
    @discardableResult
    public func free(pfn: UInt64, pages: UInt64, cpu: Int) -> Bool {
        guard pages > 0 else { return false }
        let size = Self.roundedSize(pages)
        if size <= Self.maxCachedSize {
            cacheInsert(order: Self.order(size), pfn: pfn, cpu: cpu)
            return true
        }
        return shared.withLock { s in treeFree(&s, pfn: pfn) }
    }

    /// Frees several ranges from `allocate` for CPU `cpu` at once (the flush queue returning
    /// what a flush covered): the cached sizes under one acquisition of the CPU's cache
    /// lock, the others through the tree. The same as freeing them one by one in order, with
    /// one lock round trip instead of one per range (ranges of 0 granules are skipped).
    public func free(_ ranges: UnsafeBufferPointer<(pfn: UInt64, pages: UInt64)>, cpu: Int) {
        var uncached = 0
        let slot = cpuSlot(cpu, cpuCount)
        slots.withLock(slot) { c in
            for r in ranges where r.pages > 0 {
                let size = Self.roundedSize(r.pages)
                if size <= Self.maxCachedSize { insert(&c, order: Self.order(size), pfn: r.pfn, slot: slot) } else { uncached += 1 }
            }
        }
        guard uncached > 0 else { return }
        shared.withLock { s in
            for r in ranges where Self.roundedSize(r.pages) > Self.maxCachedSize { _ = treeFree(&s, pfn: r.pfn) }
        }
    }

    /// Reserves [lo, hi] so it is never handed out (Linux `reserve_iova`).
    @discardableResult
    public func reserve(lo: UInt64, hi: UInt64) -> Bool {
        shared.withLock { s in s.tree.insert(lo: lo, hi: hi) }
    }

    private func treeAllocate(size: UInt64, limit: UInt64) -> UInt64? {
        shared.withLock { s in treeAllocate(&s, size: size, limit: limit) }
    }

    /// One range from the tree, top-down and size-aligned (Linux `alloc_iova`), with the
    /// 32-bit fast fail.
    private func treeAllocate(_ s: inout Shared, size: UInt64, limit: UInt64) -> UInt64? {
        let is32 = limit < dma32PFN
        if is32 && size >= s.max32AllocSize {
            s.counters.fastFails += 1
            return nil
        }
        let align = size <= 1 ? 1 : UInt64(1) << UInt64(64 - (size - 1).leadingZeroBitCount)
        s.counters.treeAllocations += 1
        guard let lo = s.tree.allocate(size: size, align: align, limit: limit) else {
            if is32 { s.max32AllocSize = size }
            s.counters.failures += 1
            return nil
        }
        return lo
    }

    /// Returns every frame in `m` to the tree and empties it.
    private func drain(_ m: Magazine, _ s: inout Shared) {
        while m.pointee > 0 {
            _ = treeFree(&s, pfn: m[Int(m.pointee)])
            m.pointee -= 1
        }
    }

    private func treeFree(_ s: inout Shared, pfn: UInt64) -> Bool {
        guard s.tree.remove(lo: pfn) != nil else { return false }
        if pfn < dma32PFN { s.max32AllocSize = .max }
        s.counters.treeFrees += 1
        return true
    }

    // MARK: Per-CPU caches

    private func cacheGet(order: Int, size: UInt64, limit: UInt64, cpu: Int) -> UInt64? {
        let slot = cpuSlot(cpu, cpuCount)
        return slots.withLock(slot) { c in
            if let pfn = Self.pop(c.loaded[order], size: size, limit: limit) { return pfn }
            if c.previous[order].pointee > 0 {
                swap(&c.loaded[order], &c.previous[order])
                if let pfn = Self.pop(c.loaded[order], size: size, limit: limit) { return pfn }
            }
            // A full magazine from the depot replaces the empty loaded one.
            let empty = c.loaded[order]
            guard empty.pointee == 0, let full = takeFromDepot(order: order, slot: slot) else { return nil }
            shared.withLock { s in s.spare.append(empty) }
            c.loaded[order] = full
            return Self.pop(full, size: size, limit: limit)
        }
    }

    /// A cached size missed every cache: a range from the tree as Linux allocates it, and
    /// with it the ranges of the same size right below it down to the start of their
    /// page-table line (`lineGranules`), which go into the CPU's loaded magazine in the order
    /// the tree would have handed them out. A departure from Linux, which takes one range per
    /// miss: two CPUs missing at once then take alternate ranges, and from then on their
    /// IOVAs' page-table entries share lines that both write on every map and unmap. Taking
    /// a line's worth keeps each line with one CPU (docs/architecture.md has the figures).
    /// The extra ranges are allocated in the tree like any cached range, and come back on a
    /// cache flush.
    private func refill(order: Int, size: UInt64, limit: UInt64, cpu: Int) -> UInt64? {
        let slot = cpuSlot(cpu, cpuCount)
        return slots.withLock(slot) { c in
            let m = c.loaded[order]
            let room = min(Self.magazineSize - Int(m.pointee), Int(Self.lineGranules) - 1)
            return withUnsafeTemporaryAllocation(of: UInt64.self, capacity: Int(Self.lineGranules)) { extras -> UInt64? in
                var count = 0
                let first: UInt64? = shared.withLock { s in
                    guard let pfn = treeAllocate(&s, size: size, limit: limit) else { return nil }
                    var lowest = pfn
                    while count < room, lowest & (Self.lineGranules - 1) != 0,
                          let next = s.tree.allocate(size: size, align: size, limit: limit) {
                        s.counters.treeAllocations += 1
                        extras[count] = next
                        count += 1
                        // Not adjacent (the space below is taken): keep it, look no further.
                        guard next &+ size == lowest else { break }
                        lowest = next
                    }
                    return pfn
                }
                // Lowest first, so the next allocation pops the one right below `first`.
                var i = count
                while i > 0 {
                    i -= 1
                    m.pointee += 1
                    m[Int(m.pointee)] = extras[i]
                }
                return first
            }
        }
    }

    /// Takes a frame at or below `limit - size + 1` from the magazine (from the top).
    @inline(__always)
    static func pop(_ m: Magazine, size: UInt64, limit: UInt64) -> UInt64? {
        var i = Int(m.pointee)
        let highest = limit - size + 1
        while i > 0 {
            let pfn = m[i]
            if pfn <= highest {
                m[i] = m[Int(m.pointee)]
                m.pointee -= 1
                return pfn
            }
            i -= 1
        }
        return nil
    }

    private func cacheInsert(order: Int, pfn: UInt64, cpu: Int) {
        let slot = cpuSlot(cpu, cpuCount)
        slots.withLock(slot) { c in insert(&c, order: order, pfn: pfn, slot: slot) }
    }

    /// Puts `pfn` in the loaded magazine of `order`, swapping in the previous one or an
    /// empty one from the depot when it is full (Linux `iova_rcache_insert`). The CPU's
    /// cache lock is held.
    @inline(__always)
    private func insert(_ c: inout CPUCache, order: Int, pfn: UInt64, slot: Int) {
        var m = c.loaded[order]
        if Int(m.pointee) == Self.magazineSize {
            if Int(c.previous[order].pointee) < Self.magazineSize {
                swap(&c.loaded[order], &c.previous[order])
            } else {
                // Both full: the loaded one goes to the depot, an empty one is loaded.
                let full = m
                let fresh = shared.withLock { s -> Magazine in
                    s.depot.push(full, order: order, slot: slot)
                    s.counters.depotPushes += 1
                    trimDepot(&s)
                    if let e = s.spare.popLast() { return e }
                    let e = Magazine.make()
                    s.allMagazines.append(e)
                    return e
                }
                c.loaded[order] = fresh
            }
            m = c.loaded[order]
        }
        m.pointee += 1
        m[Int(m.pointee)] = pfn
    }

    private func takeFromDepot(order: Int, slot: Int) -> Magazine? {
        shared.withLock { s in
            trimDepot(&s)
            return s.depot.pop(order: order, slot: slot)
        }
    }

    /// Returns one depot magazine to the tree per `depotDelayNs` while the depot holds more
    /// magazines than there are CPUs (Linux `iova_depot_work_func`).
    private func trimDepot(_ s: inout Shared) {
        let now = clock()
        let total = s.depot.total
        guard total > cpuCount else { s.trimDue = nil; return }
        guard let due = s.trimDue else { s.trimDue = now &+ Self.depotDelayNs; return }
        guard now >= due else { return }
        if let m = s.depot.popForTrim() {
            drain(m, &s)
            s.spare.append(m)
            s.counters.depotTrims += 1
        }
        s.trimDue = total - 1 > cpuCount ? now &+ Self.depotDelayNs : nil
    }

    /// Returns every cached range to the tree (Linux `free_global_cached_iovas` +
    /// `free_cpu_cached_iovas`).
    public func flushCaches() {
        for i in 0..<cpuCount {
            slots.withLock(i) { c in
                shared.withLock { s in
                    for order in 0..<Self.cachedOrders {
                        drain(c.loaded[order], &s)
                        drain(c.previous[order], &s)
                    }
                }
            }
        }
        shared.withLock { s in
            for m in s.depot.removeAll() {
                drain(m, &s)
                s.spare.append(m)
            }
            s.trimDue = nil
            s.counters.cacheFlushes += 1
        }
    }

    // MARK: Inspection

    /// Ranges allocated in the tree (cached ones included).
    public var allocatedRanges: Int { shared.withLock { $0.tree.count } }

    /// Ranges sitting in caches (per-CPU magazines and the depot).
    public var cachedRanges: Int {
        var n = 0
        for i in 0..<cpuCount {
            n += slots.withLock(i) { c in
                (0..<Self.cachedOrders).reduce(0) { $0 + Int(c.loaded[$1].pointee) + Int(c.previous[$1].pointee) }
            }
        }
        return n + shared.withLock { s in s.depot.rangeCount }
    }

    public var depotMagazines: Int { shared.withLock { s in s.depot.total } }

    public var counters: IOVACounters { shared.withLock { $0.counters } }

    /// Whether [pfn, pfn + pages) lies inside one allocated range.
    public func isAllocated(pfn: UInt64, pages: UInt64) -> Bool {
        shared.withLock { s in
            guard pages > 0, let r = s.tree.range(containing: pfn) else { return false }
            return r.hi - pfn >= pages - 1
        }
    }

    /// The tree's structural check (tests).
    func validateTree() -> Bool { shared.withLock { $0.tree.validate() } }
}

/// What the IOVA allocator did.
public struct IOVACounters: Equatable, Sendable {
    public var treeAllocations: UInt64 = 0
    public var treeFrees: UInt64 = 0
    public var failures: UInt64 = 0
    public var fastFails: UInt64 = 0
    public var depotPushes: UInt64 = 0
    public var depotTrims: UInt64 = 0
    public var cacheFlushes: UInt64 = 0
    public init() {}
}
