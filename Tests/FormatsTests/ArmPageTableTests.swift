import Testing
import Platform
@testable import Formats

private let KiB4: UInt64 = 4096
private let MiB2: UInt64 = 2 << 20
private let GiB1: UInt64 = 1 << 30
private let mask48 = PageTableGeometry.addressMask(width: 48)

/// The two Arm formats at both depths the 4 KiB granule uses without concatenation.
enum ArmLayout: String, CaseIterable, Sendable, CustomStringConvertible {
    case stage1L4, stage1L3, stage2L4, stage2L3
    var levels: Int { self == .stage1L4 || self == .stage2L4 ? 4 : 3 }
    var description: String { rawValue }
}

private func withTable<R>(_ layout: ArmLayout, memory: UInt64 = 64 << 20,
                          _ body: (PlatformContext, any ArmTableBox) throws -> R) throws -> R {
    let ctx = try PlatformContext(memorySize: memory, seed: 3)
    switch layout {
    case .stage1L4, .stage1L3:
        return try body(ctx, Box(try IOPageTable<ArmStage1Format>(memory: ctx.memory, frames: ctx.frames, levels: layout.levels, addressWidth: 48)))
    case .stage2L4, .stage2L3:
        return try body(ctx, Box(try IOPageTable<ArmStage2Format>(memory: ctx.memory, frames: ctx.frames, levels: layout.levels, addressWidth: 48)))
    }
}

/// Erases the format so one test body runs over both.
protocol ArmTableBox {
    var levels: Int { get }
    var root: UInt64 { get }
    var memory: PhysicalMemory { get }
    func map(_ iova: UInt64, _ pa: UInt64, _ size: UInt64, _ p: PagePermissions) throws
    func unmap(_ iova: UInt64, _ size: UInt64) throws -> UInt64
    func translate(_ iova: UInt64) -> (physical: UInt64, pageSize: UInt64, permissions: PagePermissions)?
    func walk(_ iova: UInt64) throws(WalkFault) -> WalkResult
    func dirty(clear: Bool) -> [UInt64]
    func isDirty(_ raw: UInt64) -> Bool
    func isWritableClean(_ raw: UInt64) -> Bool
    func dirtied(_ raw: UInt64) -> UInt64
}

struct Box<F: PageTableFormat>: ArmTableBox {
    let t: IOPageTable<F>
    init(_ t: IOPageTable<F>) { self.t = t }
    var levels: Int { t.levels }
    var root: UInt64 { t.root }
    var memory: PhysicalMemory { t.memory }
    func map(_ iova: UInt64, _ pa: UInt64, _ size: UInt64, _ p: PagePermissions) throws {
        try t.map(iova: iova, physical: pa, size: size, permissions: p)
    }
    func unmap(_ iova: UInt64, _ size: UInt64) throws -> UInt64 {
        var g = UnmapGather()
        return try t.unmap(iova: iova, size: size, gather: &g)
    }
    func translate(_ iova: UInt64) -> (physical: UInt64, pageSize: UInt64, permissions: PagePermissions)? { t.translate(iova) }
    func walk(_ iova: UInt64) throws(WalkFault) -> WalkResult {
        try PageTableWalker.walk(F.self, memory: t.memory, root: t.root, levels: t.levels, input: iova, addressMask: t.addressMask)
    }
    func dirty(clear: Bool) -> [UInt64] {
        var out: [UInt64] = []
        t.readAndClearDirty(start: 0, end: 1 << 48, clear: clear) { base, _ in out.append(base) }
        return out
    }
    func isDirty(_ raw: UInt64) -> Bool { F.isDirty(raw) }
    func isWritableClean(_ raw: UInt64) -> Bool { F.isWritableClean(raw) }
    func dirtied(_ raw: UInt64) -> UInt64 { F.dirtied(raw) }
}

@Suite("VMSAv8-64 stage 1 and stage 2 formats, 4 KiB granule")
struct ArmPageTableTests {
    // MARK: Descriptor bits

    @Test("stage 1 page as Linux writes it for READ|WRITE|CACHE|NOEXEC: type 0b11, AttrIndx 1 (4:2), AP[1] 6, SH 0b11 (9:8), AF 10, nG 11, DBM 51, PXN 53, UXN 54")
    func stage1PageGolden() {
        let v = ArmStage1Format.leaf(address: 0x1234_5000, permissions: [.read, .write, .user], level: 1)
        #expect(v == 0x0068_0000_1234_5F47)
        let d = ArmStage1Format.decode(v, level: 1, addressMask: mask48)
        #expect(d == DecodedPTE(present: true, leaf: true, reserved: false, address: 0x1234_5000, permissions: [.read, .write, .user]))
        // Read-only, privileged, executable 1 GiB block: AP[2] 7 set, no DBM, type 0b01.
        let b = ArmStage1Format.leaf(address: 0x4000_0000, permissions: [.read, .execute], level: 3)
        let block: UInt64 = 0x4000_0000 | 0x1 | 0x4 | 0x80 | 0x300 | 0x400 | 0x800
        #expect(b == block)
        #expect(ArmStage1Format.decode(b, level: 3, addressMask: mask48).permissions == [.read, .execute])
        #expect(ArmStage1Format.table(address: 0x8_7654_3000) == 0x8_7654_3003)
    }

    @Test("stage 2 block as Linux writes it for READ|WRITE|CACHE|NOEXEC: MemAttr 0xF (5:2), S2AP 0b11 (7:6), SH 9:8, AF 10, DBM 51, XN 54:53")
    func stage2BlockGolden() {
        let v = ArmStage2Format.leaf(address: 0x4020_0000, permissions: .readWrite, level: 2)
        #expect(v == 0x0068_0000_4020_07FD)
        #expect(ArmStage2Format.decode(v, level: 2, addressMask: mask48).permissions == [.read, .write, .user])
        let wo = ArmStage2Format.leaf(address: 0x1000, permissions: [.write, .execute], level: 1)
        let writeOnly: UInt64 = 0x1000 | 0x3 | 0x3C | 0x80 | 0x300 | 0x400 | 1 << 51
        #expect(wo == writeOnly)
        #expect(ArmStage2Format.decode(wo, level: 1, addressMask: mask48).permissions == [.write, .execute, .user])
        // S2AP 0b00 is a valid leaf granting nothing (a Permission fault, not a Translation fault).
        let none = ArmStage2Format.decode(0x1000 | 0x3 | 0x400, level: 1, addressMask: mask48)
        #expect(none.present && none.permissions == [.user, .execute])
    }

    @Test("descriptor types by level: 0b01 is a block only at levels 2 and 3; at 1 and 4 it is invalid; bit 0 clear is invalid")
    func descriptorTypes() {
        for level in 1...4 {
            let block = ArmStage1Format.decode(0x4000_0000 | 1, level: level, addressMask: mask48)
            #expect(block.present == (level == 2 || level == 3), "level \(level)")
            #expect(block.leaf == (level <= 3))
            let tableOrPage = ArmStage2Format.decode(0x4000_0000 | 3, level: level, addressMask: mask48)
            #expect(tableOrPage.present && tableOrPage.leaf == (level == 1))
            #expect(!ArmStage1Format.decode(0x4000_0002, level: level, addressMask: mask48).present)
        }
    }

    @Test("an output or table address above the IPS/PS is reserved (F_ADDR_SIZE); bits 51:48 are not address bits")
    func addressSize() {
        let mask40 = PageTableGeometry.addressMask(width: 40)
        #expect(ArmStage1Format.decode(1 << 40 | 3, level: 2, addressMask: mask40).reserved)
        #expect(!ArmStage1Format.decode(1 << 40 | 3, level: 2, addressMask: mask48).reserved)
        #expect(ArmStage2Format.decode((1 << 47) | 3, level: 1, addressMask: mask40).reserved)
        let high = ArmStage1Format.decode(0xF << 48 | 0x5000 | 3, level: 1, addressMask: mask48)
        #expect(!high.reserved && high.address == 0x5000)
    }

    @Test("stage 1 table descriptors limit the levels below: APTable[1] 62 no write, APTable[0] 61 no EL0, UXNTable 60 / PXNTable 59 no execute")
    func hierarchicalAttributes() throws {
        let ctx = try PlatformContext(memorySize: 16 << 20, seed: 4)
        let root = try ctx.frames.allocate(.pageTable), l3 = try ctx.frames.allocate(.pageTable)
        let l2 = try ctx.frames.allocate(.pageTable), l1 = try ctx.frames.allocate(.pageTable)
        try ctx.memory.store64(root, ArmStage1Format.table(address: l3) | ArmStage1Format.apTableReadOnly)
        try ctx.memory.store64(l3, ArmStage1Format.table(address: l2) | ArmStage1Format.apTableNoEL0)
        try ctx.memory.store64(l2, ArmStage1Format.table(address: l1) | ArmStage1Format.uxnTable)
        try ctx.memory.store64(l1, ArmStage1Format.leaf(address: 0x9000, permissions: .all, level: 1))
        let r = try PageTableWalker.walk(ArmStage1Format.self, memory: ctx.memory, root: root, levels: 4, input: 0, addressMask: mask48)
        #expect(r.permissions == [.read])
        #expect(r.pageBase == 0x9000 && r.level == 1 && r.leafEntryAddress == l1)
    }

    // MARK: Walker and IOPageTable

    @Test("map, walk and unmap 4 KiB pages, 2 MiB and 1 GiB blocks", arguments: ArmLayout.allCases)
    func mapWalkUnmap(layout: ArmLayout) throws {
        try withTable(layout) { _, t in
            try t.map(0x1000, 0x20_3000, KiB4, .readWrite)
            try t.map(0x4000_0000, 0x8020_0000, MiB2, [.read])
            try t.map(0x8000_0000, 0x1_0000_0000, GiB1, .readWrite)
            let page = try t.walk(0x1ABC)
            #expect(page.level == 1 && page.pageShift == 12 && page.output(for: 0x1ABC) == 0x20_3ABC)
            let block = try t.walk(0x4012_3456)
            #expect(block.level == 2 && block.pageShift == 21 && block.output(for: 0x4012_3456) == 0x8032_3456)
            #expect(!block.permissions.contains(.write) && block.permissions.contains(.read))
            let huge = try t.walk(0xBFFF_FFFF)
            #expect(huge.level == 3 && huge.pageShift == 30 && huge.output(for: 0xBFFF_FFFF) == 0x1_3FFF_FFFF)
            #expect(t.translate(0x2000) == nil)
            #expect(throws: WalkFault.self) { _ = try t.walk(0x2000) }
            #expect(try t.unmap(0x1000, KiB4) == KiB4)
            #expect(try t.unmap(0x4000_0000, MiB2) == MiB2)
            #expect(try t.unmap(0x8000_0000, GiB1) == GiB1)
            for a in [UInt64(0x1000), 0x4000_0000, 0x8000_0000] { #expect(t.translate(a) == nil) }
        }
    }

    @Test("unmapping 4 KiB inside a 2 MiB block splits it, keeping every attribute of the block", arguments: ArmLayout.allCases)
    func splitKeepsAttributes(layout: ArmLayout) throws {
        try withTable(layout) { _, t in
            try t.map(0x20_0000, 0x60_0000, MiB2, .readWrite)
            let blockRaw = try t.memory.load64(try t.walk(0x20_0000).leafEntryAddress)
            #expect(try t.unmap(0x20_1000, KiB4) == KiB4)
            #expect(t.translate(0x20_1000) == nil)
            let p = try t.walk(0x20_2000)
            #expect(p.level == 1 && p.output(for: 0x20_2345) == 0x60_2345 && p.permissions.contains(.write))
            let pageRaw = try t.memory.load64(p.leafEntryAddress)
            // Same attributes as the block, page type (bit 1), the page's own address.
            #expect(pageRaw & ~0x0000_FFFF_FFFF_F002 == blockRaw & ~0x0000_FFFF_FFFF_F002)
            #expect(pageRaw & 0x0000_FFFF_FFFF_F000 == 0x60_2000 && pageRaw & 2 != 0)
        }
    }

    // MARK: Dirty state

    @Test("stage 1 dirty state: a writable leaf is mapped writable-dirty (DBM, AP[2] clear); cleaning sets AP[2]; a write with HD clears it again")
    func stage1Dirty() throws {
        try withTable(.stage1L4) { _, t in
            try t.map(0x1000, 0x5000, KiB4, .readWrite)
            try t.map(0x2000, 0x6000, KiB4, [.read])
            try t.map(0x40_0000, 0x80_0000, MiB2, .readWrite)
            #expect(t.dirty(clear: false) == [0x1000, 0x40_0000])
            #expect(t.dirty(clear: true) == [0x1000, 0x40_0000])
            #expect(t.dirty(clear: false) == [])
            let w = try t.walk(0x1000)
            var raw = try t.memory.load64(w.leafEntryAddress)
            #expect(raw & ArmStage1Format.apReadOnly != 0 && raw & ArmStage1Format.dbm != 0)
            #expect(t.isWritableClean(raw) && !t.isDirty(raw))
            #expect(!w.permissions.contains(.write))    // without HD the page is read-only now
            raw = t.dirtied(raw)                          // the hardware's update on a write with CD.HD
            try t.memory.store64(w.leafEntryAddress, raw)
            #expect(raw & ArmStage1Format.apReadOnly == 0 && t.isDirty(raw))
            #expect(try t.walk(0x1000).permissions.contains(.write))
            #expect(t.dirty(clear: true) == [0x1000])
            // A read-only leaf has no DBM: it is never dirty and cleaning leaves it alone.
            let ro = try t.memory.load64(try t.walk(0x2000).leafEntryAddress)
            #expect(!t.isDirty(ro) && !t.isWritableClean(ro) && ArmStage1Format.cleaned(ro) == ro && t.dirtied(ro) == ro)
        }
    }

    @Test("stage 2 dirty state: DBM with S2AP[1] set is dirty; cleaning clears S2AP[1]; a write with S2HD sets it")
    func stage2Dirty() throws {
        try withTable(.stage2L4) { _, t in
            try t.map(0x1000, 0x5000, KiB4, .readWrite)
            #expect(t.dirty(clear: true) == [0x1000])
            let w = try t.walk(0x1000)
            var raw = try t.memory.load64(w.leafEntryAddress)
            #expect(raw & ArmStage2Format.s2apWrite == 0 && t.isWritableClean(raw))
            #expect(w.permissions == [.read, .user])
            raw = t.dirtied(raw)
            #expect(raw & ArmStage2Format.s2apWrite != 0 && t.isDirty(raw))
            try t.memory.store64(w.leafEntryAddress, raw)
            #expect(t.dirty(clear: false) == [0x1000])
        }
    }

    @Test("a split of a writable-clean block gives writable-clean pages")
    func splitCleanBlock() throws {
        try withTable(.stage1L3) { _, t in
            try t.map(0x20_0000, 0x60_0000, MiB2, .readWrite)
            _ = t.dirty(clear: true)
            #expect(try t.unmap(0x20_0000, KiB4) == KiB4)
            let raw = try t.memory.load64(try t.walk(0x20_3000).leafEntryAddress)
            #expect(t.isWritableClean(raw))
            #expect(t.dirty(clear: false) == [])
        }
    }

    @Test("the VT-d formats keep their single-bit dirty semantics and their split")
    func vtdUnchanged() {
        let d = SecondStageFormat.leaf(address: 0x1000, permissions: .readWrite, level: 1) | SecondStageFormat.dirtyBit
        #expect(SecondStageFormat.isDirty(d) && SecondStageFormat.cleaned(d) == d & ~SecondStageFormat.dirtyBit)
        #expect(SecondStageFormat.dirtied(d & ~SecondStageFormat.dirtyBit) == d && !SecondStageFormat.isWritableClean(d))
        let block = FirstStageFormat.leaf(address: 0x20_0000, permissions: .all, level: 2)
        let dec = FirstStageFormat.decode(block, level: 2, addressMask: mask48)
        #expect(FirstStageFormat.splitLeaf(block, decoded: dec, level: 2, index: 3)
                == FirstStageFormat.leaf(address: 0x20_3000, permissions: dec.permissions, level: 1))
    }

    @Test("any descriptor decodes at any level without trapping (10^5 random)")
    func randomDecode() {
        var rng = SeededRNG(seed: 0xA4)
        for i in 0..<100_000 {
            let raw = rng.next(), level = 1 + i % 5
            let m = PageTableGeometry.addressMask(width: 32 + i % 21)
            _ = ArmStage1Format.decode(raw, level: level, addressMask: m)
            _ = ArmStage2Format.decode(raw, level: level, addressMask: m)
            _ = (ArmStage1Format.isDirty(raw), ArmStage1Format.cleaned(raw), ArmStage1Format.dirtied(raw))
            _ = (ArmStage2Format.isDirty(raw), ArmStage2Format.cleaned(raw), ArmStage2Format.dirtied(raw))
            if level == 2 || level == 3 {
                let d = ArmStage1Format.decode(raw, level: level, addressMask: m)
                _ = ArmStage1Format.splitLeaf(raw, decoded: d, level: level, index: UInt64(i % 512))
                _ = ArmStage2Format.splitLeaf(raw, decoded: d, level: level, index: UInt64(i % 512))
            }
        }
    }

    @Test("a walk through random table memory ends in a result or a WalkFault, never a trap (2×10^3 random tables)")
    func randomWalks() throws {
        let ctx = try PlatformContext(memorySize: 1 << 20, seed: 5)
        var rng = SeededRNG(seed: 0xA5)
        let frames = (0..<8).map { _ in try! ctx.frames.allocate(.pageTable) }
        // Mostly pointers back into these frames (with random attribute bits), sometimes garbage.
        func entry() -> UInt64 {
            rng.next(below: 4) == 0 ? rng.next() : frames[Int(rng.next(below: 8))] | rng.next(below: 4) | (rng.next() & 0xFFF0_0000_0000_0FFC)
        }
        for f in frames { for i in stride(from: UInt64(0), to: 4096, by: 8) { try ctx.memory.store64(f + i, entry()) } }
        for round in 0..<2_000 {
            for _ in 0..<32 { try ctx.memory.store64(frames[Int(rng.next(below: 8))] + rng.next(below: 512) * 8, entry()) }
            let input = rng.next() & ((1 << 48) - 1)
            _ = try? PageTableWalker.walk(ArmStage1Format.self, memory: ctx.memory, root: frames[round % 8], levels: 4, input: input, addressMask: mask48)
            _ = try? PageTableWalker.walk(ArmStage2Format.self, memory: ctx.memory, root: frames[round % 8], levels: 3, input: input, addressMask: mask48)
        }
    }
}
