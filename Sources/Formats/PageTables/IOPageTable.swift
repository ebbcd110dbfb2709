import Platform
import Synchronization

/// What an unmap collected for the caller to act on after the IOTLB flush: the range to
/// invalidate and the table pages that became free (Linux `struct iommu_iotlb_gather` with
/// its freelist). Freed tables must not be returned to the allocator before the flush that
/// covers `start..<end` has completed.
public struct UnmapGather: Sendable {
    public var start: UInt64 = .max
    public var end: UInt64 = 0
    /// Largest leaf size cleared, for choosing the invalidation granule.
    public var largestPage: UInt64 = 0
    public var freedTables: [UInt64] = []

    public init() {}

    public var isEmpty: Bool { start >= end && freedTables.isEmpty }

    @inlinable
    public mutating func add(range lo: UInt64, _ hi: UInt64, pageSize: UInt64) {
        if lo < start { start = lo }
        if hi > end { end = hi }
        if pageSize > largestPage { largestPage = pageSize }
    }
}

/// Errors of page-table updates (Linux errno in the comment).
public enum PageTableError: Error, Equatable, Sendable {
    /// Address, size or physical address not aligned to 4 KiB, or size 0 (-EINVAL).
    case misaligned
    /// The range reaches past the input address width (-EINVAL / -ERANGE).
    case outOfRange
    /// Something is already mapped in the range (-EEXIST).
    case alreadyMapped(iova: UInt64)
    /// No frame for a page-table page (-ENOMEM).
    case outOfMemory
    /// Neither read nor write requested: such a leaf would be non-present (-EINVAL, as in
    /// Linux `__domain_mapping`).
    case noAccess
}

/// A page table built by software in simulated memory: map a range with the largest page
/// sizes that fit, unmap a range (splitting a superpage that is partly unmapped, stopping at
/// the first hole), iova-to-phys, and teardown. Table pages become free only when an unmap
/// covers a table's whole span (the rule of Linux `dma_pte_clear_level`) and are handed to
/// the caller in the gather, to be freed after the IOTLB flush.
///
/// Updates are made so that a concurrent hardware walk sees either the old or the new
/// translation: a new table is filled before it is linked; a superpage is split by
/// building the equivalent table first and then swapping one 64-bit entry.
///
/// Several threads may map and unmap disjoint ranges at once (the DMA API does): a new
/// table is linked with a 64-bit compare-exchange, and the loser of a race frees its page
/// and uses the winner's (as Linux `pfn_to_dma_pte` does). A table is only freed by an
/// unmap covering its whole span, which the caller owns.
public final class IOPageTable<F: PageTableFormat>: @unchecked Sendable {
    public let memory: PhysicalMemory
    public let frames: FrameAllocator
    /// Number of levels (4 or 5).
    public let levels: Int
    /// Largest leaf level used when mapping (1: 4 KiB only, 2: 2 MiB, 3: 1 GiB).
    public let maxLeafLevel: Int
    /// Output address mask (host address width).
    public let addressMask: UInt64
    /// Physical address of the top-level table.
    @exclusivity(unchecked) public private(set) var root: UInt64
    /// Table pages currently owned, including the root.
    public var tablePages: Int { tablePageCount.load(ordering: .relaxed) }
    private let tablePageCount = Atomic<Int>(1)

    /// Input addresses are `0..<inputLimit`.
    public let inputLimit: UInt64
    /// The frame allocator's owner tag of every table page of this table, the root included
    /// (0: untagged), so an observer of the allocator knows which frames the walk can reach.
    public let ownerTag: UInt32
    /// Test-only broken behaviour: an unmap frees the table pages it unlinks at once, outside
    /// the gather (so before any invalidation). Never set outside oracle-strength runs.
    public var freesUnlinkedTablesAtOnce = false
    /// Bits the format's leaves lose when this table makes them (set once, before the first
    /// map). The SMMUv3 driver strips DBM from the leaves of domains without
    /// IO_PGTABLE_QUIRK_ARM_HD (Linux `arm_lpae_prot_to_pte` sets DBM only with the quirk).
    public var clearedLeafBits: UInt64 = 0

    /// Level-1 tables of recently walked 2 MiB regions, so a 4 KiB map or unmap in the same
    /// region skips the levels above (the DMA API's IOVAs cluster in a few regions). An entry
    /// is `(region + 1) << 28 | table frame`, 0 when empty, direct-mapped by region; only for
    /// 4-level tables (regions below 2^27) in memory of at most 1 TiB (frames below 2^28).
    /// Safe because a table is unlinked only by an unmap covering its whole span, whose caller
    /// owns every address in it, so no walk of that region is in flight: each unlink clears
    /// every entry, and an entry stored later names a table that is linked.
    private let leafHints: UnsafeMutablePointer<Atomic<UInt64>>?
    private static var leafHintCount: Int { 8 }

    public init(memory: PhysicalMemory, frames: FrameAllocator, levels: Int, maxLeafLevel: Int = 3,
                addressWidth: Int = 52, ownerTag: UInt32 = 0) throws(PageTableError) {
        guard (3...5).contains(levels), (1...3).contains(maxLeafLevel) else { throw .outOfRange }
        self.memory = memory
        self.frames = frames
        self.levels = levels
        self.maxLeafLevel = maxLeafLevel
        self.addressMask = PageTableGeometry.addressMask(width: addressWidth)
        self.inputLimit = PageTableGeometry.span(level: levels + 1)
        self.ownerTag = ownerTag
        do { root = try frames.allocate(.pageTable, owner: ownerTag) } catch { throw .outOfMemory }
        if levels == 4 && memory.frameCount <= 1 << 28 {
            let hints = UnsafeMutableRawPointer.allocate(byteCount: Self.leafHintCount * 8, alignment: 64)
                .bindMemory(to: Atomic<UInt64>.self, capacity: Self.leafHintCount)
            for i in 0..<Self.leafHintCount { (hints + i).initialize(to: Atomic(0)) }
            leafHints = hints
        } else {
            leafHints = nil
        }
    }

    deinit {
        if let leafHints {
            leafHints.deinitialize(count: Self.leafHintCount)
            UnsafeMutableRawPointer(leafHints).deallocate()
        }
    }

    /// Forgets every leaf-table hint (a table is being unlinked).
    private func clearLeafHints() {
        guard let leafHints else { return }
        for i in 0..<Self.leafHintCount { leafHints[i].store(0, ordering: .releasing) }
    }

    // MARK: Map

    /// Maps `[iova, iova+size)` to `[physical, physical+size)` with `permissions`, using the
    /// largest page size that both addresses and the remaining size allow.
    /// On failure nothing stays mapped (the part already mapped is cleared again); the
    /// caller must flush the range as after an unmap, since a device may have used it.
    // Pre-specialized for the formats the drivers use, so callers in other modules do not
    // run the generic code (format calls through witness tables).
    @_specialize(exported: true, where F == SecondStageFormat)
    @_specialize(exported: true, where F == FirstStageFormat)
    @_specialize(exported: true, where F == FirstStageDMAFormat)
    @_specialize(exported: true, where F == ArmStage1Format)
    @_specialize(exported: true, where F == ArmStage2Format)
    public func map(iova: UInt64, physical: UInt64, size: UInt64, permissions: PagePermissions) throws(PageTableError) {
        guard size > 0, (iova | physical | size) & 0xFFF == 0 else { throw .misaligned }
        guard !permissions.isDisjoint(with: .readWrite) else { throw .noAccess }
        guard iova < inputLimit, inputLimit - iova >= size, physical & ~addressMask == 0,
              (physical &+ size &- 1) & ~(addressMask | 0xFFF) == 0 else { throw .outOfRange }
        // One 4 KiB page where the tables exist: the leaf goes into an empty entry with one
        // compare-exchange, as Linux's `__domain_mapping` does (`cmpxchg64_local`); a single
        // read-modify-write takes the entry's line once, where a load and a store take it
        // twice when another CPU wrote it last. A non-empty entry (present or not) takes the
        // general path, which decides.
        if size == 0x1000, let slot = leafSlot4K(iova),
           (try? memory.compareExchange64Local(slot, expected: 0, desired: F.leaf(address: physical, permissions: permissions, level: 1) & ~clearedLeafBits)) == 0 {
            return
        }
        var done: UInt64 = 0
        while done < size {
            do {
                done += try mapOne(iova: iova + done, physical: physical + done, remaining: size - done, permissions: permissions)
            } catch {
                if done > 0 {
                    var undo = UnmapGather()
                    _ = try? unmap(iova: iova, size: done, gather: &undo, freeTables: false)
                }
                throw error
            }
        }
    }

    /// Maps one page (the largest that fits) and returns its size.
    @inline(__always)
    private func mapOne(iova: UInt64, physical: UInt64, remaining: UInt64, permissions: PagePermissions) throws(PageTableError) -> UInt64 {
        var target = 1
        var l = maxLeafLevel
        while l > 1 {
            let span = PageTableGeometry.span(level: l)
            if (iova | physical) & (span - 1) == 0 && remaining >= span { target = l; break }
            l -= 1
        }
        var table = root
        var level = levels
        while true {
            let slot = table + PageTableGeometry.index(iova, level: level) * 8
            let raw = (try? memory.load64(slot)) ?? 0
            let e = F.decode(raw, level: level, addressMask: addressMask)
            if level == target {
                if e.present {
                    // A table where a superpage would go: use smaller pages under it.
                    if !e.leaf && level > 1 { target -= 1; table = e.address; level -= 1; continue }
                    throw .alreadyMapped(iova: iova)
                }
                try? memory.store64(slot, F.leaf(address: physical, permissions: permissions, level: level) & ~clearedLeafBits)
                return PageTableGeometry.span(level: level)
            }
            if e.present {
                if e.leaf { throw .alreadyMapped(iova: iova) }
                table = e.address
            } else {
                let next: UInt64
                do { next = try frames.allocate(.pageTable, owner: ownerTag) } catch { throw .outOfMemory }
                let link = F.table(address: next)
                let (linked, found) = (try? memory.compareExchange64(slot, expected: raw, desired: link)) ?? (false, raw)
                if linked {
                    tablePageCount.add(1, ordering: .relaxed)
                    table = next
                } else {
                    // Another thread linked a table here first: use it.
                    try? frames.free(next, neverPublished: true)
                    let winner = F.decode(found, level: level, addressMask: addressMask)
                    guard winner.present, !winner.leaf else { throw .alreadyMapped(iova: iova) }
                    table = winner.address
                }
            }
            level -= 1
        }
    }

    // MARK: Unmap

    /// Unmaps `[iova, iova+size)`, stopping at the first hole. Returns the bytes unmapped
    /// from `iova` on. A superpage only partly inside the range is split first; if no frame
    /// is available for the split the unmap stops there (`outOfMemory` after the part done).
    @discardableResult
    @_specialize(exported: true, where F == SecondStageFormat)
    @_specialize(exported: true, where F == FirstStageFormat)
    @_specialize(exported: true, where F == FirstStageDMAFormat)
    @_specialize(exported: true, where F == ArmStage1Format)
    @_specialize(exported: true, where F == ArmStage2Format)
    public func unmap(iova: UInt64, size: UInt64, gather: inout UnmapGather, freeTables: Bool = true) throws(PageTableError) -> UInt64 {
        guard size > 0, (iova | size) & 0xFFF == 0 else { throw .misaligned }
        guard iova < inputLimit, inputLimit - iova >= size else { throw .outOfRange }
        if size == 0x1000, let done = unmapOne4K(iova, gather: &gather) { return done }
        var outcome = ClearOutcome()
        clear(table: root, level: levels, tableBase: 0, start: iova, end: iova + size,
              gather: &gather, freeTables: freeTables, outcome: &outcome)
        if outcome.outOfMemory && outcome.unmapped == 0 { throw .outOfMemory }
        return outcome.unmapped
    }

    /// The common DMA case, one 4 KiB page mapped by a level-1 leaf: a straight descent and
    /// one store. Nil when the page is not mapped that way (the general path decides).
    @inline(__always)
    private func unmapOne4K(_ iova: UInt64, gather: inout UnmapGather) -> UInt64? {
        guard let slot = leafSlot4K(iova), let raw = try? memory.load64(slot),
              F.decode(raw, level: 1, addressMask: addressMask).present else { return nil }
        try? memory.store64(slot, 0)
        gather.add(range: iova, iova + 0x1000, pageSize: 0x1000)
        return 0x1000
    }

    /// The address of the level-1 entry for `iova` when every level above it holds a
    /// table (the common case for 4 KiB DMA mappings), else nil: the general paths make
    /// missing tables, split superpages and report errors. Wrapping arithmetic, one range
    /// check per level.
    @inline(__always)
    private func leafSlot4K(_ iova: UInt64) -> UInt64? {
        let region = iova >> 21
        let leafIndex = ((iova >> 12) & 511) &* 8
        let hint = leafHints.map { $0 + Int(truncatingIfNeeded: region) & (Self.leafHintCount - 1) }
        if let hint {
            let h = hint.pointee.load(ordering: .acquiring)
            if h >> 28 == region &+ 1 { return ((h & ((1 << 28) - 1)) << 12) &+ leafIndex }
        }
        var table = root
        var level = levels
        var shift = PageTableGeometry.shift(level: levels)
        while level > 1 {
            guard let raw = try? memory.load64(table &+ ((iova &>> shift) & 511) &* 8) else { return nil }
            let e = F.decode(raw, level: level, addressMask: addressMask)
            guard e.present, !e.leaf else { return nil }
            table = e.address
            level &-= 1
            shift &-= 9
        }
        hint?.pointee.store((region &+ 1) << 28 | table >> 12, ordering: .releasing)
        return table &+ leafIndex
    }

    private struct ClearOutcome {
        var unmapped: UInt64 = 0
        var stopped = false
        var outOfMemory = false
    }

    private func clear(table: UInt64, level: Int, tableBase: UInt64, start: UInt64, end: UInt64,
                       gather: inout UnmapGather, freeTables: Bool, outcome: inout ClearOutcome) {
        let span = PageTableGeometry.span(level: level)
        var entryBase = tableBase + PageTableGeometry.index(start, level: level) * span
        while entryBase < end && !outcome.stopped {
            let entryEnd = entryBase + span
            let lo = max(start, entryBase), hi = min(end, entryEnd)
            let slot = table + PageTableGeometry.index(entryBase, level: level) * 8
            let raw = (try? memory.load64(slot)) ?? 0
            var e = F.decode(raw, level: level, addressMask: addressMask)
            guard e.present else { outcome.stopped = true; return }
            let whole = lo == entryBase && hi == entryEnd
            if e.leaf && whole {
                try? memory.store64(slot, 0)
                outcome.unmapped += span
                gather.add(range: entryBase, entryEnd, pageSize: span)
            } else {
                if e.leaf {
                    // Split the superpage: an equivalent table first, then one 64-bit swap.
                    guard let child = split(raw: raw, decoded: e, level: level) else {
                        outcome.outOfMemory = true; outcome.stopped = true; return
                    }
                    try? memory.store64(slot, F.table(address: child))
                    // The old superpage may be cached: the whole of it must be flushed.
                    gather.add(range: entryBase, entryEnd, pageSize: span)
                    e.address = child
                }
                clear(table: e.address, level: level - 1, tableBase: entryBase, start: lo, end: hi,
                      gather: &gather, freeTables: freeTables, outcome: &outcome)
                if whole && freeTables && !outcome.stopped {
                    clearLeafHints()
                    try? memory.store64(slot, 0)
                    if freesUnlinkedTablesAtOnce { try? frames.free(e.address) } else { gather.freedTables.append(e.address) }
                    tablePageCount.subtract(1, ordering: .relaxed)
                }
            }
            entryBase = entryEnd
        }
    }

    /// Builds a table at `level - 1` that maps what the superpage `raw` maps.
    private func split(raw: UInt64, decoded e: DecodedPTE, level: Int) -> UInt64? {
        guard let child = try? frames.allocate(.pageTable, owner: ownerTag) else { return nil }
        tablePageCount.add(1, ordering: .relaxed)
        for i in 0..<UInt64(512) {
            try? memory.store64(child + i * 8, F.splitLeaf(raw, decoded: e, level: level, index: i))
        }
        return child
    }

    // MARK: Lookup and teardown

    /// Software iova-to-phys: the output address and rights, or nil when unmapped.
    @_specialize(exported: true, where F == SecondStageFormat)
    @_specialize(exported: true, where F == FirstStageFormat)
    @_specialize(exported: true, where F == FirstStageDMAFormat)
    @_specialize(exported: true, where F == ArmStage1Format)
    @_specialize(exported: true, where F == ArmStage2Format)
    public func translate(_ iova: UInt64) -> (physical: UInt64, pageSize: UInt64, permissions: PagePermissions)? {
        guard iova < inputLimit else { return nil }
        guard let r = try? PageTableWalker.walk(F.self, memory: memory, root: root, levels: levels,
                                                input: iova, addressMask: addressMask) else { return nil }
        return (r.output(for: iova), 1 << r.pageShift, r.permissions)
    }

    /// Clears everything and hands every table page, the root included, to `gather`.
    /// The table must not be used afterwards.
    public func destroy(into gather: inout UnmapGather) {
        clearLeafHints()
        collect(table: root, level: levels, into: &gather)
        gather.add(range: 0, inputLimit, pageSize: PageTableGeometry.span(level: levels))
        tablePageCount.store(0, ordering: .relaxed)
    }

    private func collect(table: UInt64, level: Int, into gather: inout UnmapGather) {
        if level > 1 {
            for i in 0..<UInt64(512) {
                // An all-zero entry is not present in any format (VT-d R/W, x86 P, Arm valid
                // bit 0): most of a sparse table, skipped without decoding.
                let raw = (try? memory.load64(table + i * 8)) ?? 0
                if raw == 0 { continue }
                let e = F.decode(raw, level: level, addressMask: addressMask)
                if e.present && !e.leaf { collect(table: e.address, level: level - 1, into: &gather) }
            }
        }
        gather.freedTables.append(table)
    }
}
