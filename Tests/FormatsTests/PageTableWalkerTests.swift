import Testing
import Platform
@testable import Formats

@Suite("PageTableWalker")
struct PageTableWalkerTests {
    let mask = PageTableGeometry.addressMask(width: 52)

    func platform() throws -> PlatformContext { try PlatformContext(memorySize: 64 << 20, seed: 2) }

    @Test("a root beyond the end of memory is an access error at the top level, never a trap",
          arguments: [UInt64(64 << 20), 1 << 40, UInt64.max & ~0xFFF])
    func rootOutOfRange(root: UInt64) throws {
        let ctx = try platform()
        let input: UInt64 = 0x1234_5000
        #expect(throws: WalkFault.accessError(level: 4, address: root &+ PageTableGeometry.index(input, level: 4) &* 8)) {
            _ = try PageTableWalker.walk(SecondStageFormat.self, memory: ctx.memory, root: root, levels: 4,
                                         input: input, addressMask: self.mask)
        }
        #expect(throws: WalkFault.self) {
            _ = try PageTableWalker.walk(FirstStageFormat.self, memory: ctx.memory, root: root, levels: 5,
                                         input: UInt64.max, addressMask: self.mask)
        }
    }

    @Test("an unbacked root is an access error with the entry's address")
    func rootUnbacked() throws {
        let ctx = try platform()
        let root: UInt64 = 0x20_0000
        let input: UInt64 = (5 << 39) | 0x1000
        #expect(throws: WalkFault.accessError(level: 4, address: root + 5 * 8)) {
            _ = try PageTableWalker.walk(FirstStageFormat.self, memory: ctx.memory, root: root, levels: 4,
                                         input: input, addressMask: self.mask)
        }
    }

    @Test("a table pointer to an unbacked frame is an access error at the next level")
    func childUnbacked() throws {
        let ctx = try platform()
        let root = try ctx.frames.allocate(.pageTable)
        try ctx.memory.store64(root, SecondStageFormat.table(address: 0x30_0000))
        #expect(throws: WalkFault.accessError(level: 3, address: 0x30_0000)) {
            _ = try PageTableWalker.walk(SecondStageFormat.self, memory: ctx.memory, root: root, levels: 4,
                                         input: 0, addressMask: self.mask)
        }
    }

    @Test("a table freed back to the allocator becomes an access error, not stale data")
    func freedTableIsAccessError() throws {
        let ctx = try platform()
        let t = try IOPageTable<SecondStageFormat>(memory: ctx.memory, frames: ctx.frames, levels: 4)
        try t.map(iova: 0x1000, physical: 0x5000, size: 0x1000, permissions: .readWrite)
        var g = UnmapGather()
        t.destroy(into: &g)
        for pa in g.freedTables { try ctx.frames.free(pa) }
        #expect(throws: WalkFault.accessError(level: 4, address: t.root)) {
            _ = try PageTableWalker.walk(SecondStageFormat.self, memory: ctx.memory, root: t.root, levels: 4,
                                         input: 0x1000, addressMask: self.mask)
        }
    }

    @Test("a non-present entry stops the walk with notPresent at its level", arguments: [4, 5])
    func notPresent(levels: Int) throws {
        let ctx = try platform()
        let t = try IOPageTable<FirstStageFormat>(memory: ctx.memory, frames: ctx.frames, levels: levels)
        #expect(throws: WalkFault.notPresent(level: levels)) {
            _ = try PageTableWalker.walk(FirstStageFormat.self, memory: ctx.memory, root: t.root, levels: levels,
                                         input: 0, addressMask: self.mask)
        }
        try t.map(iova: 0, physical: 0x5000, size: 0x1000, permissions: .readWrite)
        // Same level-1 table, next page.
        #expect(throws: WalkFault.notPresent(level: 1)) {
            _ = try PageTableWalker.walk(FirstStageFormat.self, memory: ctx.memory, root: t.root, levels: levels,
                                         input: 0x1000, addressMask: self.mask)
        }
        // Same level-2 table, next 2 MiB.
        #expect(throws: WalkFault.notPresent(level: 2)) {
            _ = try PageTableWalker.walk(FirstStageFormat.self, memory: ctx.memory, root: t.root, levels: levels,
                                         input: 0x20_0000, addressMask: self.mask)
        }
        // Same level-3 table, next 1 GiB.
        #expect(throws: WalkFault.notPresent(level: 3)) {
            _ = try PageTableWalker.walk(FirstStageFormat.self, memory: ctx.memory, root: t.root, levels: levels,
                                         input: 1 << 30, addressMask: self.mask)
        }
    }

    @Test("a successful walk reports the page, its size, the level and the leaf entry's address")
    func walkResult() throws {
        let ctx = try platform()
        let t = try IOPageTable<SecondStageFormat>(memory: ctx.memory, frames: ctx.frames, levels: 4)
        try t.map(iova: 0x40_0000, physical: 0x1_0000_0000, size: 2 << 20, permissions: .readWrite)
        let r = try PageTableWalker.walk(SecondStageFormat.self, memory: ctx.memory, root: t.root, levels: 4,
                                         input: 0x40_1234, addressMask: mask)
        #expect(r.pageBase == 0x1_0000_0000)
        #expect(r.pageShift == 21)
        #expect(r.level == 2)
        #expect(r.output(for: 0x40_1234) == 0x1_0000_1234)
        let leaf = try ctx.memory.load64(r.leafEntryAddress)
        #expect(leaf & SecondStageFormat.ps != 0)
        #expect(leaf & 0x000F_FFFF_FFFF_F000 == 0x1_0000_0000)
    }

    @Test("reserved bits in an entry stop the walk with reserved at that level")
    func reservedEntry() throws {
        let ctx = try platform()
        let t = try IOPageTable<SecondStageFormat>(memory: ctx.memory, frames: ctx.frames, levels: 4)
        try t.map(iova: 0, physical: 0x5000, size: 0x1000, permissions: .readWrite)
        let r = try PageTableWalker.walk(SecondStageFormat.self, memory: ctx.memory, root: t.root, levels: 4,
                                         input: 0, addressMask: mask)
        try ctx.memory.store64(r.leafEntryAddress, try ctx.memory.load64(r.leafEntryAddress) | SecondStageFormat.snp)
        #expect(throws: WalkFault.reserved(level: 1)) {
            _ = try PageTableWalker.walk(SecondStageFormat.self, memory: ctx.memory, root: t.root, levels: 4,
                                         input: 0, addressMask: self.mask)
        }
        // PS in the level-4 entry.
        try ctx.memory.store64(t.root, try ctx.memory.load64(t.root) | SecondStageFormat.ps)
        #expect(throws: WalkFault.reserved(level: 4)) {
            _ = try PageTableWalker.walk(SecondStageFormat.self, memory: ctx.memory, root: t.root, levels: 4,
                                         input: 0, addressMask: self.mask)
        }
    }

    @Test("a 1 GiB leaf is a reserved-bit fault when the walker supports only 2 MiB leaves")
    func superpageBeyondMaxLeaf() throws {
        let ctx = try platform()
        let t = try IOPageTable<FirstStageFormat>(memory: ctx.memory, frames: ctx.frames, levels: 4)
        try t.map(iova: 1 << 30, physical: 1 << 30, size: 1 << 30, permissions: .readWrite)
        #expect(throws: WalkFault.reserved(level: 3)) {
            _ = try PageTableWalker.walk(FirstStageFormat.self, memory: ctx.memory, root: t.root, levels: 4,
                                         input: 1 << 30, addressMask: self.mask, maxLeafLevel: 2)
        }
        let r = try PageTableWalker.walk(FirstStageFormat.self, memory: ctx.memory, root: t.root, levels: 4,
                                         input: 1 << 30, addressMask: mask, maxLeafLevel: 3)
        #expect(r.pageShift == 30)
    }

    @Test("rights accumulate over the walk: a read-only upper entry removes write")
    func rightsAccumulate() throws {
        let ctx = try platform()
        let t = try IOPageTable<FirstStageFormat>(memory: ctx.memory, frames: ctx.frames, levels: 4)
        try t.map(iova: 0, physical: 0x5000, size: 0x1000, permissions: .all)
        #expect(try PageTableWalker.walk(FirstStageFormat.self, memory: ctx.memory, root: t.root, levels: 4,
                                         input: 0, addressMask: mask).permissions == .all)
        try ctx.memory.store64(t.root, try ctx.memory.load64(t.root) & ~(FirstStageFormat.rw | FirstStageFormat.us))
        let r = try PageTableWalker.walk(FirstStageFormat.self, memory: ctx.memory, root: t.root, levels: 4,
                                         input: 0, addressMask: mask)
        #expect(r.permissions == [.read, .execute])
    }
}
