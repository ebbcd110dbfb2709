import Testing
import Platform
@testable import Formats

/// The four table shapes under test: both formats, 4 and 5 levels.
enum Layout: String, CaseIterable, Sendable, CustomStringConvertible {
    case secondStage4, secondStage5, firstStage4, firstStage5
    var levels: Int { self == .secondStage4 || self == .firstStage4 ? 4 : 5 }
    var format: any PageTableFormat.Type {
        self == .secondStage4 || self == .secondStage5 ? SecondStageFormat.self : FirstStageFormat.self
    }
    var description: String { rawValue }
}

private let KiB4: UInt64 = 4096
private let MiB2: UInt64 = 2 << 20
private let GiB1: UInt64 = 1 << 30

/// Builds a table of format `F` over a fresh platform.
private func makeTable<F: PageTableFormat>(_: F.Type, levels: Int, maxLeafLevel: Int = 3,
                                           memory: UInt64 = 64 << 20) throws -> (PlatformContext, IOPageTable<F>) {
    let ctx = try PlatformContext(memorySize: memory, seed: 1)
    let t = try IOPageTable<F>(memory: ctx.memory, frames: ctx.frames, levels: levels, maxLeafLevel: maxLeafLevel)
    return (ctx, t)
}

@Suite("IOPageTable")
struct IOPageTableTests {
    // MARK: Leaf-table hints

    @Test("a 4 KiB map into a region whose leaf table was unlinked and its frame reused builds a new table, never writing the old frame")
    func leafHintForgetsUnlinkedTables() throws {
        let (ctx, t) = try makeTable(SecondStageFormat.self, levels: 4, maxLeafLevel: 1)
        let region: UInt64 = 0xFFE0_0000
        // Two 4 KiB maps in one 2 MiB region: the first builds the tables, the second walks
        // them and leaves the hint; then the rest of the region, so an unmap can cover it whole.
        try t.map(iova: region + 5 * KiB4, physical: 0x20_5000, size: KiB4, permissions: .readWrite)
        try t.map(iova: region + 6 * KiB4, physical: 0x20_6000, size: KiB4, permissions: .readWrite)
        try t.map(iova: region, physical: 0x20_0000, size: 5 * KiB4, permissions: .readWrite)
        try t.map(iova: region + 7 * KiB4, physical: 0x20_7000, size: MiB2 - 7 * KiB4, permissions: .readWrite)
        let leaf = try #require(try leafTable(t, region))
        // Unmapping the whole region unlinks its leaf table; the frame goes back and is reused.
        var gather = UnmapGather()
        #expect(try t.unmap(iova: region, size: MiB2, gather: &gather) == MiB2)
        #expect(gather.freedTables.contains(leaf))
        for f in gather.freedTables { try ctx.frames.free(f) }
        var reused: [UInt64] = []
        while reused.count < 64, !reused.contains(leaf) { reused.append(try ctx.frames.allocate()) }
        #expect(reused.contains(leaf))
        for i in 0..<UInt64(512) { try ctx.memory.store64(leaf + i * 8, 0xDEAD_BEEF_0000_0000 | i) }
        try t.map(iova: region + 7 * KiB4, physical: 0x12_0000, size: KiB4, permissions: .read)
        #expect(t.translate(region + 7 * KiB4)?.physical == 0x12_0000)
        #expect(t.translate(region + 5 * KiB4) == nil)
        #expect(try leafTable(t, region) != leaf)
        for i in 0..<UInt64(512) { #expect(try ctx.memory.load64(leaf + i * 8) == 0xDEAD_BEEF_0000_0000 | i) }
        // And a 4 KiB unmap there clears the new table's entry, not the reused frame.
        var g2 = UnmapGather()
        #expect(try t.unmap(iova: region + 7 * KiB4, size: KiB4, gather: &g2) == KiB4)
        #expect(t.translate(region + 7 * KiB4) == nil)
        #expect(try ctx.memory.load64(leaf + 7 * 8) == 0xDEAD_BEEF_0000_0007)
    }

    /// The level-1 table under `iova`, walked by hand.
    private func leafTable(_ t: IOPageTable<SecondStageFormat>, _ iova: UInt64) throws -> UInt64? {
        var table = t.root
        for level in stride(from: t.levels, to: 1, by: -1) {
            let raw = try t.memory.load64(table + PageTableGeometry.index(iova, level: level) * 8)
            let e = SecondStageFormat.decode(raw, level: level, addressMask: t.addressMask)
            guard e.present, !e.leaf else { return nil }
            table = e.address
        }
        return table
    }

    // MARK: Construction

    @Test("a new table owns one zeroed root frame from the allocator", arguments: Layout.allCases)
    func newTable(layout: Layout) throws { try newTable(layout.format, layout.levels) }
    func newTable<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (ctx, t) = try makeTable(f, levels: levels)
        #expect(t.tablePages == 1)
        #expect(ctx.frames.inUse == 1)
        #expect(ctx.frames.inUse(.pageTable) == 1)
        #expect(ctx.frames.isAllocated(t.root))
        #expect(t.inputLimit == 1 << (12 + 9 * UInt64(levels)))
        #expect(t.translate(0) == nil)
    }

    @Test("levels outside 3...5 or a leaf level outside 1...3 are rejected")
    func badShape() throws {
        let ctx = try PlatformContext(memorySize: 64 << 20)
        #expect(throws: PageTableError.outOfRange) {
            _ = try IOPageTable<SecondStageFormat>(memory: ctx.memory, frames: ctx.frames, levels: 6)
        }
        #expect(throws: PageTableError.outOfRange) {
            _ = try IOPageTable<SecondStageFormat>(memory: ctx.memory, frames: ctx.frames, levels: 2)
        }
        #expect(throws: PageTableError.outOfRange) {
            _ = try IOPageTable<FirstStageFormat>(memory: ctx.memory, frames: ctx.frames, levels: 4, maxLeafLevel: 4)
        }
        #expect(ctx.frames.inUse == 0)
    }

    @Test("creating a table with no frame left throws outOfMemory")
    func rootAllocationFails() throws {
        let m = try PhysicalMemory(size: 64 << 20)
        let frames = FrameAllocator(memory: m, firstFrame: 1, endFrame: 1)
        #expect(throws: PageTableError.outOfMemory) {
            _ = try IOPageTable<SecondStageFormat>(memory: m, frames: frames, levels: 4)
        }
    }

    // MARK: Map, translate, unmap

    @Test("every page of a mapped range translates back, then unmapping clears it all", arguments: Layout.allCases)
    func mapWalkUnmap(layout: Layout) throws { try mapWalkUnmap(layout.format, layout.levels) }
    func mapWalkUnmap<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (_, t) = try makeTable(f, levels: levels)
        // Physical address not 2 MiB aligned relative to the IOVA: 4 KiB pages only.
        let iova: UInt64 = 0x7F_FFE0_0000 - 5 * KiB4
        let phys: UInt64 = 0x1_2345_6000
        let size: UInt64 = MiB2 * 2 + 3 * KiB4
        try t.map(iova: iova, physical: phys, size: size, permissions: .readWrite)
        for off in stride(from: UInt64(0), to: size, by: 4096) {
            let r = try #require(t.translate(iova + off), "page at +\(off)")
            #expect(r.physical == phys + off)
            #expect(r.pageSize == KiB4)
            #expect(r.permissions.isSuperset(of: .readWrite))
        }
        // Byte offsets inside a page carry through.
        #expect(t.translate(iova + 0x123)?.physical == phys + 0x123)
        // Neighbours are not mapped.
        #expect(t.translate(iova - KiB4) == nil)
        #expect(t.translate(iova + size) == nil)
        var g = UnmapGather()
        #expect(try t.unmap(iova: iova, size: size, gather: &g) == size)
        #expect(g.start == iova)
        #expect(g.end == iova + size)
        #expect(g.largestPage == KiB4)
        for off in stride(from: UInt64(0), to: size, by: 4096) {
            #expect(t.translate(iova + off) == nil)
        }
    }

    @Test("mapping with neither read nor write is rejected with noAccess and maps nothing", arguments: Layout.allCases)
    func noAccess(layout: Layout) throws { try noAccess(layout.format, layout.levels) }
    func noAccess<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (_, t) = try makeTable(f, levels: levels)
        for perms: PagePermissions in [[], [.execute], [.user]] {
            #expect(throws: PageTableError.noAccess) {
                try t.map(iova: 0x1000, physical: 0x9000, size: KiB4, permissions: perms)
            }
        }
        #expect(t.translate(0x1000) == nil)
        #expect(t.tablePages == 1)
        try t.map(iova: 0x1000, physical: 0x9000, size: KiB4, permissions: .read)
        #expect(t.translate(0x1000)?.physical == 0x9000)
    }

    @Test("read-only mappings translate without write permission", arguments: Layout.allCases)
    func readOnly(layout: Layout) throws { try readOnly(layout.format, layout.levels) }
    func readOnly<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (_, t) = try makeTable(f, levels: levels)
        try t.map(iova: 0x10_0000, physical: 0x20_0000, size: KiB4, permissions: .read)
        let r = try #require(t.translate(0x10_0000))
        #expect(r.permissions.contains(.read))
        #expect(!r.permissions.contains(.write))
    }

    @Test("map uses 2 MiB pages when both addresses are 2 MiB aligned", arguments: Layout.allCases)
    func picks2M(layout: Layout) throws { try picks2M(layout.format, layout.levels) }
    func picks2M<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (_, t) = try makeTable(f, levels: levels)
        let iova: UInt64 = 0x4020_0000, phys: UInt64 = 0x8060_0000
        try t.map(iova: iova, physical: phys, size: 3 * MiB2 + KiB4, permissions: .readWrite)
        for i in UInt64(0)..<3 {
            let r = try #require(t.translate(iova + i * MiB2 + 0x1_2345))
            #expect(r.pageSize == MiB2)
            #expect(r.physical == phys + i * MiB2 + 0x1_2345)
        }
        // The tail that is smaller than 2 MiB uses a 4 KiB page.
        let tail = try #require(t.translate(iova + 3 * MiB2))
        #expect(tail.pageSize == KiB4)
        #expect(tail.physical == phys + 3 * MiB2)
        #expect(t.translate(iova + 3 * MiB2 + KiB4) == nil)
        // root + one table per level down to level 2, + one level-1 table for the tail.
        #expect(t.tablePages == levels - 1 + 1)
    }

    @Test("map uses a 1 GiB page when both addresses are 1 GiB aligned", arguments: Layout.allCases)
    func picks1G(layout: Layout) throws { try picks1G(layout.format, layout.levels) }
    func picks1G<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (_, t) = try makeTable(f, levels: levels)
        try t.map(iova: 3 * GiB1, physical: 5 * GiB1, size: GiB1, permissions: .readWrite)
        let r = try #require(t.translate(3 * GiB1 + 0x1234_5678))
        #expect(r.pageSize == GiB1)
        #expect(r.physical == 5 * GiB1 + 0x1234_5678)
        #expect(t.tablePages == levels - 2)
    }

    @Test("map uses 4 KiB pages when the physical address is not aligned like the IOVA", arguments: Layout.allCases)
    func misalignedPhysicalUses4K(layout: Layout) throws { try misalignedPhysicalUses4K(layout.format, layout.levels) }
    func misalignedPhysicalUses4K<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (_, t) = try makeTable(f, levels: levels)
        try t.map(iova: GiB1, physical: GiB1 + KiB4, size: MiB2, permissions: .readWrite)
        let r = try #require(t.translate(GiB1))
        #expect(r.pageSize == KiB4)
        #expect(t.translate(GiB1 + MiB2 - 1)?.physical == GiB1 + KiB4 + MiB2 - 1)
    }

    @Test("maxLeafLevel 1 maps only 4 KiB pages even when aligned")
    func maxLeafLevelOne() throws {
        let (_, t) = try makeTable(SecondStageFormat.self, levels: 4, maxLeafLevel: 1)
        try t.map(iova: 0, physical: 0, size: MiB2, permissions: .readWrite)
        #expect(t.translate(0)?.pageSize == KiB4)
        #expect(t.translate(MiB2 - KiB4)?.physical == MiB2 - KiB4)
    }

    @Test("mapping over an existing mapping throws alreadyMapped and keeps the old mapping", arguments: Layout.allCases)
    func alreadyMapped(layout: Layout) throws { try alreadyMapped(layout.format, layout.levels) }
    func alreadyMapped<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (_, t) = try makeTable(f, levels: levels)
        let a: UInt64 = 0x10_0000
        try t.map(iova: a, physical: 0xA_0000, size: 2 * KiB4, permissions: .readWrite)
        // Exactly the same page.
        #expect(throws: PageTableError.alreadyMapped(iova: a)) {
            try t.map(iova: a, physical: 0xF_0000, size: KiB4, permissions: .read)
        }
        // A range starting before it: the part mapped first is rolled back.
        #expect(throws: PageTableError.alreadyMapped(iova: a)) {
            try t.map(iova: a - 2 * KiB4, physical: 0xC_0000, size: 3 * KiB4, permissions: .readWrite)
        }
        #expect(t.translate(a - 2 * KiB4) == nil)
        #expect(t.translate(a - KiB4) == nil)
        #expect(t.translate(a)?.physical == 0xA_0000)
        #expect(t.translate(a + KiB4)?.physical == 0xA_1000)
        #expect(t.translate(a)?.permissions.contains(.write) == true)
    }

    @Test("a 4 KiB map over an entry that is not present but not zero maps it through the general path", arguments: Layout.allCases)
    func mapOverNonZeroAbsentEntry(layout: Layout) throws { try mapOverNonZeroAbsentEntry(layout.format, layout.levels) }
    func mapOverNonZeroAbsentEntry<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (ctx, t) = try makeTable(f, levels: levels)
        let a: UInt64 = 0x4020_3000
        // Two pages, so the second map finds the tables built (the one-step fast path).
        try t.map(iova: a - KiB4, physical: 0xB_0000, size: KiB4, permissions: .readWrite)
        var table = t.root
        for level in stride(from: levels, to: 1, by: -1) {
            let e = F.decode(try ctx.memory.load64(table + PageTableGeometry.index(a, level: level) * 8), level: level, addressMask: t.addressMask)
            table = e.address
        }
        let slot = table + PageTableGeometry.index(a, level: 1) * 8
        // Software-available bits and an address, but no permission: not present.
        let stale: UInt64 = 0x1234_5000
        #expect(!F.decode(stale, level: 1, addressMask: t.addressMask).present)
        try ctx.memory.store64(slot, stale)
        #expect(t.translate(a) == nil)
        try t.map(iova: a, physical: 0xC_0000, size: KiB4, permissions: .read)
        #expect(t.translate(a)?.physical == 0xC_0000)
        #expect(throws: PageTableError.alreadyMapped(iova: a)) {
            try t.map(iova: a, physical: 0xD_0000, size: KiB4, permissions: .readWrite)
        }
        #expect(t.translate(a)?.physical == 0xC_0000, "the present entry is kept")
    }

    @Test("a 2 MiB mapping over a table holding 4 KiB pages throws alreadyMapped and keeps them", arguments: Layout.allCases)
    func superpageOverTable(layout: Layout) throws { try superpageOverTable(layout.format, layout.levels) }
    func superpageOverTable<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (_, t) = try makeTable(f, levels: levels)
        let base: UInt64 = 0x60_0000
        try t.map(iova: base + 5 * KiB4, physical: 0x5000, size: KiB4, permissions: .readWrite)
        #expect(throws: PageTableError.alreadyMapped(iova: base + 5 * KiB4)) {
            try t.map(iova: base, physical: 0x80_0000, size: MiB2, permissions: .readWrite)
        }
        #expect(t.translate(base) == nil)
        #expect(t.translate(base + 4 * KiB4) == nil)
        #expect(t.translate(base + 5 * KiB4)?.physical == 0x5000)
    }

    @Test("a 4 KiB mapping inside an existing 2 MiB page throws alreadyMapped", arguments: Layout.allCases)
    func pageInsideSuperpage(layout: Layout) throws { try pageInsideSuperpage(layout.format, layout.levels) }
    func pageInsideSuperpage<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (_, t) = try makeTable(f, levels: levels)
        try t.map(iova: MiB2, physical: 4 * MiB2, size: MiB2, permissions: .readWrite)
        #expect(throws: PageTableError.alreadyMapped(iova: MiB2 + 3 * KiB4)) {
            try t.map(iova: MiB2 + 3 * KiB4, physical: 0x1000, size: KiB4, permissions: .readWrite)
        }
        #expect(t.translate(MiB2 + 3 * KiB4)?.physical == 4 * MiB2 + 3 * KiB4)
        #expect(t.translate(MiB2)?.pageSize == MiB2)
    }

    @Test("map and unmap reject misaligned addresses and zero sizes")
    func misaligned() throws {
        let (_, t) = try makeTable(SecondStageFormat.self, levels: 4)
        #expect(throws: PageTableError.misaligned) { try t.map(iova: 0x800, physical: 0, size: KiB4, permissions: .read) }
        #expect(throws: PageTableError.misaligned) { try t.map(iova: 0, physical: 0x10, size: KiB4, permissions: .read) }
        #expect(throws: PageTableError.misaligned) { try t.map(iova: 0, physical: 0, size: 100, permissions: .read) }
        #expect(throws: PageTableError.misaligned) { try t.map(iova: 0, physical: 0, size: 0, permissions: .read) }
        var g = UnmapGather()
        #expect(throws: PageTableError.misaligned) { try t.unmap(iova: 0x10, size: KiB4, gather: &g) }
        #expect(throws: PageTableError.misaligned) { try t.unmap(iova: 0, size: 0, gather: &g) }
        #expect(throws: PageTableError.misaligned) { try t.unmap(iova: 0, size: 0x1800, gather: &g) }
        #expect(g.isEmpty)
        #expect(t.tablePages == 1)
        #expect(t.translate(0) == nil)
    }

    @Test("IOVAs beyond the input width and physical addresses beyond the address width are out of range")
    func outOfRange() throws {
        let (_, t) = try makeTable(SecondStageFormat.self, levels: 4)
        #expect(throws: PageTableError.outOfRange) {
            try t.map(iova: 1 << 48, physical: 0, size: KiB4, permissions: .read)
        }
        #expect(throws: PageTableError.outOfRange) {
            try t.map(iova: (1 << 48) - KiB4, physical: 0, size: 2 * KiB4, permissions: .read)
        }
        #expect(throws: PageTableError.outOfRange) {
            try t.map(iova: 0, physical: 1 << 52, size: KiB4, permissions: .read)
        }
        var g = UnmapGather()
        #expect(throws: PageTableError.outOfRange) { try t.unmap(iova: 1 << 48, size: KiB4, gather: &g) }
        #expect(t.translate(1 << 48) == nil)
        #expect(t.tablePages == 1)
    }

    @Test("unmap returns the bytes unmapped and stops at the first hole", arguments: Layout.allCases)
    func unmapStopsAtHole(layout: Layout) throws { try unmapStopsAtHole(layout.format, layout.levels) }
    func unmapStopsAtHole<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (_, t) = try makeTable(f, levels: levels)
        let a: UInt64 = 0x100_0000
        try t.map(iova: a, physical: 0x10_0000, size: 4 * KiB4, permissions: .readWrite)
        try t.map(iova: a + 5 * KiB4, physical: 0x20_0000, size: 3 * KiB4, permissions: .readWrite)
        var g = UnmapGather()
        #expect(try t.unmap(iova: a, size: 8 * KiB4, gather: &g) == 4 * KiB4)
        #expect(g.start == a)
        #expect(g.end == a + 4 * KiB4)
        #expect(t.translate(a + 3 * KiB4) == nil)
        // Past the hole nothing was touched.
        #expect(t.translate(a + 5 * KiB4)?.physical == 0x20_0000)
        #expect(t.translate(a + 7 * KiB4)?.physical == 0x20_2000)
        // Starting at a hole unmaps nothing.
        var g2 = UnmapGather()
        #expect(try t.unmap(iova: a + 4 * KiB4, size: 4 * KiB4, gather: &g2) == 0)
        #expect(g2.isEmpty)
        #expect(t.translate(a + 5 * KiB4) != nil)
        // Unmapping a region whose upper tables do not exist unmaps nothing.
        var g3 = UnmapGather()
        #expect(try t.unmap(iova: 0x7000_0000_0000 & (t.inputLimit - 1), size: KiB4, gather: &g3) == 0)
    }

    @Test("unmapping part of a 2 MiB page splits it and keeps the rest mapped to the same addresses",
          arguments: Layout.allCases)
    func splitSuperpage(layout: Layout) throws { try splitSuperpage(layout.format, layout.levels) }
    func splitSuperpage<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (ctx, t) = try makeTable(f, levels: levels)
        let iova: UInt64 = 0x20_0000 * 9, phys: UInt64 = 0x4000_0000 + MiB2 * 3
        try t.map(iova: iova, physical: phys, size: MiB2, permissions: [.read, .write, .execute])
        let pagesBefore = t.tablePages
        let permsBefore = try #require(t.translate(iova)).permissions
        var g = UnmapGather()
        let hole = iova + 7 * KiB4
        #expect(try t.unmap(iova: hole, size: 2 * KiB4, gather: &g) == 2 * KiB4)
        // The whole former superpage must be flushed.
        #expect(g.start == iova)
        #expect(g.end == iova + MiB2)
        #expect(g.largestPage == MiB2)
        #expect(g.freedTables.isEmpty)
        #expect(t.tablePages == pagesBefore + 1)
        #expect(ctx.frames.inUse == t.tablePages)
        for off in stride(from: UInt64(0), to: MiB2, by: 4096) {
            let r = t.translate(iova + off)
            if off == 7 * KiB4 || off == 8 * KiB4 {
                #expect(r == nil, "unmapped page at +\(off)")
            } else {
                #expect(r?.physical == phys + off, "page at +\(off)")
                #expect(r?.pageSize == KiB4)
                #expect(r?.permissions == permsBefore)
            }
        }
    }

    @Test("unmapping part of a 1 GiB page splits it into 2 MiB pages where possible", arguments: Layout.allCases)
    func split1G(layout: Layout) throws { try split1G(layout.format, layout.levels) }
    func split1G<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (_, t) = try makeTable(f, levels: levels)
        try t.map(iova: GiB1, physical: 2 * GiB1, size: GiB1, permissions: .readWrite)
        var g = UnmapGather()
        #expect(try t.unmap(iova: GiB1 + MiB2, size: KiB4, gather: &g) == KiB4)
        #expect(g.start == GiB1)
        #expect(g.end == 2 * GiB1)
        #expect(g.largestPage == GiB1)
        #expect(t.translate(GiB1)?.pageSize == MiB2)
        #expect(t.translate(GiB1)?.physical == 2 * GiB1)
        #expect(t.translate(GiB1 + MiB2) == nil)
        #expect(t.translate(GiB1 + MiB2 + KiB4)?.pageSize == KiB4)
        #expect(t.translate(GiB1 + MiB2 + KiB4)?.physical == 2 * GiB1 + MiB2 + KiB4)
        #expect(t.translate(2 * GiB1 - 1)?.physical == 3 * GiB1 - 1)
        #expect(t.translate(2 * GiB1 - 1)?.pageSize == MiB2)
    }

    @Test("unmapping whole tables hands their pages to the gather without freeing them", arguments: Layout.allCases)
    func unmapFreesTables(layout: Layout) throws { try unmapFreesTables(layout.format, layout.levels) }
    func unmapFreesTables<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (ctx, t) = try makeTable(f, levels: levels)
        let iova = 4 * GiB1
        // Two full level-1 tables of 4 KiB pages (physical misaligned against 2 MiB).
        try t.map(iova: iova, physical: 0x10_1000, size: 2 * MiB2, permissions: .readWrite)
        let before = t.tablePages
        #expect(before == (levels - 1) + 2)
        var g = UnmapGather()
        #expect(try t.unmap(iova: iova, size: 2 * MiB2, gather: &g) == 2 * MiB2)
        #expect(g.freedTables.count == 2)
        #expect(Set(g.freedTables).count == 2)
        #expect(!g.freedTables.contains(t.root))
        #expect(t.tablePages == before - 2)
        for pa in g.freedTables {
            #expect(ctx.frames.isAllocated(pa), "the table must not free pages before the flush")
            #expect(ctx.memory.isBacked(frame: pa >> 12))
        }
        #expect(ctx.frames.inUse == before)
        #expect(t.translate(iova) == nil)
        // The range can be mapped again.
        try t.map(iova: iova, physical: 0x10_1000, size: KiB4, permissions: .read)
        #expect(t.translate(iova)?.physical == 0x10_1000)
    }

    @Test("unmapping a whole 1 GiB span of 2 MiB pages frees the level-2 table too")
    func unmapFreesLevel2() throws {
        let (ctx, t) = try makeTable(SecondStageFormat.self, levels: 4, maxLeafLevel: 2)
        try t.map(iova: GiB1, physical: 0, size: GiB1, permissions: .readWrite)
        #expect(t.translate(GiB1)?.pageSize == MiB2)
        #expect(t.tablePages == 3)
        var g = UnmapGather()
        #expect(try t.unmap(iova: GiB1, size: GiB1, gather: &g) == GiB1)
        #expect(g.freedTables.count == 1)
        #expect(g.largestPage == MiB2)
        #expect(t.tablePages == 2)
        #expect(ctx.frames.isAllocated(g.freedTables[0]))
    }

    @Test("unmap with freeTables false keeps empty tables linked")
    func unmapKeepsTables() throws {
        let (_, t) = try makeTable(FirstStageFormat.self, levels: 4)
        try t.map(iova: 0, physical: 0x1000, size: MiB2, permissions: .readWrite)
        let before = t.tablePages
        var g = UnmapGather()
        #expect(try t.unmap(iova: 0, size: MiB2, gather: &g, freeTables: false) == MiB2)
        #expect(g.freedTables.isEmpty)
        #expect(t.tablePages == before)
        #expect(t.translate(0) == nil)
    }

    @Test("destroy hands every table page, the root included, to the gather", arguments: Layout.allCases)
    func destroy(layout: Layout) throws { try destroy(layout.format, layout.levels) }
    func destroy<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (ctx, t) = try makeTable(f, levels: levels)
        try t.map(iova: 0, physical: 0x1000, size: 3 * MiB2, permissions: .readWrite)
        try t.map(iova: 7 * GiB1, physical: 7 * GiB1, size: GiB1 + MiB2, permissions: .read)
        try t.map(iova: (t.inputLimit - MiB2), physical: 0, size: MiB2, permissions: .read)
        let pages = t.tablePages
        #expect(ctx.frames.inUse == pages)
        var g = UnmapGather()
        t.destroy(into: &g)
        #expect(g.freedTables.count == pages)
        #expect(Set(g.freedTables).count == pages)
        #expect(g.freedTables.contains(t.root))
        #expect(g.start == 0)
        #expect(g.end == t.inputLimit)
        #expect(t.tablePages == 0)
        for pa in g.freedTables { try ctx.frames.free(pa) }
        #expect(ctx.frames.inUse == 0)
    }

    @Test("5-level tables map and unmap IOVAs above 2^48", arguments: [Layout.secondStage5, .firstStage5])
    func highIOVA(layout: Layout) throws { try highIOVA(layout.format, layout.levels) }
    func highIOVA<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (_, t) = try makeTable(f, levels: levels)
        #expect(t.inputLimit == 1 << 57)
        let hi: UInt64 = (1 << 56) | (0x1AB << 39) | (3 << 21)
        try t.map(iova: hi, physical: 0x3000, size: 3 * KiB4, permissions: .readWrite)
        try t.map(iova: (1 << 57) - GiB1, physical: 9 * GiB1, size: GiB1, permissions: .readWrite)
        #expect(t.translate(hi + KiB4 + 5)?.physical == 0x4005)
        #expect(t.translate((1 << 57) - 1)?.physical == 10 * GiB1 - 1)
        #expect(t.translate((1 << 57) - 1)?.pageSize == GiB1)
        // The same low 48 bits are a different IOVA.
        #expect(t.translate(hi & ((1 << 48) - 1)) == nil)
        #expect(t.translate(1 << 57) == nil)
        var g = UnmapGather()
        #expect(try t.unmap(iova: hi, size: 3 * KiB4, gather: &g) == 3 * KiB4)
        #expect(t.translate(hi) == nil)
    }

    @Test("4-level tables reject IOVAs at or above 2^48", arguments: [Layout.secondStage4, .firstStage4])
    func fourLevelLimit(layout: Layout) throws { try fourLevelLimit(layout.format, layout.levels) }
    func fourLevelLimit<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (_, t) = try makeTable(f, levels: levels)
        #expect(t.inputLimit == 1 << 48)
        #expect(throws: PageTableError.outOfRange) { try t.map(iova: 1 << 56, physical: 0, size: KiB4, permissions: .read) }
        try t.map(iova: (1 << 48) - KiB4, physical: 0x5000, size: KiB4, permissions: .read)
        #expect(t.translate((1 << 48) - KiB4)?.physical == 0x5000)
    }

    // MARK: Out of memory

    @Test("a map that runs out of frames throws outOfMemory and leaves nothing mapped", arguments: Layout.allCases)
    func mapOutOfFrames(layout: Layout) throws { try mapOutOfFrames(layout.format, layout.levels) }
    func mapOutOfFrames<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let m = try PhysicalMemory(size: 64 << 20)
        // Root + one table per lower level: enough for the first 2 MiB only.
        let frames = FrameAllocator(memory: m, firstFrame: 1, endFrame: UInt64(1 + levels))
        let t = try IOPageTable<F>(memory: m, frames: frames, levels: levels)
        let iova: UInt64 = 0x80_0000
        #expect(throws: PageTableError.outOfMemory) {
            try t.map(iova: iova, physical: 0x1000, size: 2 * MiB2, permissions: .readWrite)
        }
        for off in stride(from: UInt64(0), to: 2 * MiB2, by: 4096) {
            #expect(t.translate(iova + off) == nil)
        }
        #expect(frames.inUse == t.tablePages)
    }

    @Test("a map whose table allocation is made to fail throws outOfMemory and leaves nothing mapped",
          arguments: Layout.allCases)
    func mapInjectedFailure(layout: Layout) throws { try mapInjectedFailure(layout.format, layout.levels) }
    func mapInjectedFailure<F: PageTableFormat>(_ f: F.Type, _ levels: Int) throws {
        let (ctx, t) = try makeTable(f, levels: levels)
        // levels-1 tables for the first 2 MiB, then the level-1 table after the boundary fails.
        ctx.faults.mode = .failNth(levels, only: .frameAlloc)
        let iova: UInt64 = 0x80_0000
        #expect(throws: PageTableError.outOfMemory) {
            try t.map(iova: iova, physical: 0x1000, size: 2 * MiB2, permissions: .readWrite)
        }
        #expect(ctx.faults.fired.count == 1)
        for off in stride(from: UInt64(0), to: 2 * MiB2, by: 4096) {
            #expect(t.translate(iova + off) == nil)
        }
        // With the injector off, the same map succeeds.
        ctx.faults.mode = .off
        try t.map(iova: iova, physical: 0x1000, size: 2 * MiB2, permissions: .readWrite)
        #expect(t.translate(iova + MiB2)?.physical == 0x1000 + MiB2)
    }

    @Test("a split that gets no frame leaves the superpage mapped and reports outOfMemory")
    func splitOutOfMemory() throws {
        let (ctx, t) = try makeTable(SecondStageFormat.self, levels: 4)
        try t.map(iova: MiB2, physical: MiB2, size: MiB2, permissions: .readWrite)
        ctx.faults.mode = .failNth(1, only: .frameAlloc)
        var g = UnmapGather()
        #expect(throws: PageTableError.outOfMemory) { try t.unmap(iova: MiB2, size: KiB4, gather: &g) }
        #expect(t.translate(MiB2)?.pageSize == MiB2)
        #expect(t.translate(MiB2)?.physical == MiB2)
    }
}
