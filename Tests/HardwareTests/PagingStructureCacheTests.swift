import Testing
import Platform
import Formats
@testable import Hardware

/// Address of the entry at `level` for `va` in a table of `F` rooted at `root`.
func entryAddress<F: PageTableFormat>(_: F.Type, _ memory: PhysicalMemory, root: UInt64, levels: Int = 4, _ va: UInt64,
                                      level: Int) throws -> UInt64 {
    var table = root
    var l = levels
    while l > level {
        table = try memory.load64(table + PageTableGeometry.index(va, level: l) * 8) & 0x000F_FFFF_FFFF_F000
        l -= 1
    }
    return table + PageTableGeometry.index(va, level: level) * 8
}

@Suite("paging-structure caches keep non-leaf entries until an invalidation that covers them")
struct PagingStructureCacheTests {
    /// A table of `F` (second stage: DID 5 on RID_PASID 0; first stage: DID 1, PASID 3)
    /// mapping 0x1000 → 0x9000, translated once (so the caches hold its PML4E, PDPE, PDE).
    /// Then software moves the page's leaf table: the PDE now points at a new table mapping
    /// 0x1000 → 0xA000, and the old leaf table page is rewritten to map 0x1000 → 0xB000.
    /// A walk through the cached PDE reads 0xB000; a walk from the root reads 0xA000.
    struct Moved {
        let rig: Rig
        let oldLeafTable: UInt64
    }

    static func moveLeafTable<F: PageTableFormat>(_ format: F.Type, configuration: VTdConfiguration = VTdConfiguration()) throws -> Moved {
        let rig = try Rig(configuration: configuration)
        let perms: PagePermissions = F.self == SecondStageFormat.self ? .readWrite : [.read, .write, .user]
        let t = try IOPageTable<F>(memory: rig.memory, frames: rig.platform.frames, levels: 4, maxLeafLevel: 3,
                                   addressWidth: rig.unit.configuration.hostAddressWidth)
        try t.map(iova: 0x1000, physical: 0x9000, size: 0x1000, permissions: perms)
        let pasid: UInt32?
        if F.self == SecondStageFormat.self {
            try rig.bench.setContext(rig.rid)
            try rig.bench.setPASIDEntry(rig.rid, pasid: 0, .make(pgtt: .secondStage, did: DomainID(5), secondStageTable: t.root))
            pasid = nil
        } else {
            try rig.bench.setContext(rig.rid)
            try rig.bench.setPASIDEntry(rig.rid, pasid: 3, .make(pgtt: .firstStage, did: DomainID(1), firstStageTable: t.root))
            pasid = 3
        }
        #expect(rig.physical(0x1000, pasid: pasid) == 0x9000)
        let pde = try entryAddress(F.self, rig.memory, root: t.root, 0x1000, level: 2)
        let oldLeafTable = try rig.memory.load64(pde) & 0x000F_FFFF_FFFF_F000
        let newLeafTable = try rig.platform.frames.allocate(.pageTable)
        let slot = PageTableGeometry.index(0x1000, level: 1) * 8
        try rig.memory.store64(newLeafTable + slot, F.leaf(address: 0xA000, permissions: perms, level: 1))
        try rig.memory.store64(pde, F.table(address: newLeafTable))
        try rig.memory.store64(oldLeafTable + slot, F.leaf(address: 0xB000, permissions: perms, level: 1))
        return Moved(rig: rig, oldLeafTable: oldLeafTable)
    }

    static let ss = DomainID(5)
    static let fsDID = DomainID(1), fsPASID = PASID(truncating: 3)

    @Test("after a type-2 PSI with IH=1 the walk still goes through the old leaf-table page the cached PDE names")
    func secondStageIH1KeepsOldTable() throws {
        let m = try Self.moveLeafTable(SecondStageFormat.self)
        try m.rig.bench.invalidate([.iotlb(.page(Self.ss, address: 0x1000, addressMask: 0, invalidationHint: true))])
        #expect(m.rig.physical(0x1000) == 0xB000)
        #expect(m.rig.unit.counters.pagingStructureCacheHits >= 1)
    }

    @Test("a type-2 PSI with IH=0 drops the cached PDE, so the walk reads the new tables")
    func secondStageIH0WalksNewTables() throws {
        let m = try Self.moveLeafTable(SecondStageFormat.self)
        try m.rig.bench.invalidate([.iotlb(.page(Self.ss, address: 0x1000, addressMask: 0, invalidationHint: false))])
        #expect(m.rig.physical(0x1000) == 0xA000)
    }

    @Test("a type-2 PSI with IH=0 for another range or another DID keeps the cached PDE")
    func secondStageIH0OtherRangeKeeps() throws {
        let m = try Self.moveLeafTable(SecondStageFormat.self)
        try m.rig.bench.invalidate([.iotlb(.page(Self.ss, address: 0x40_0000, addressMask: 0, invalidationHint: false)),
                                    .iotlb(.page(DomainID(6), address: 0x1000, addressMask: 0, invalidationHint: false)),
                                    .iotlb(.page(Self.ss, address: 0x1000, addressMask: 0, invalidationHint: true))])
        #expect(m.rig.physical(0x1000) == 0xB000)
    }

    @Test("domain-selective and global type-2 invalidations drop second-stage cached entries")
    func secondStageDomainAndGlobalClear() throws {
        for d: InvalidationDescriptor in [.iotlb(.domain(Self.ss)), .iotlb(.global)] {
            let m = try Self.moveLeafTable(SecondStageFormat.self)
            try m.rig.bench.invalidate([d])
            #expect(m.rig.physical(0x1000) == 0xA000, "\(d)")
            #expect(m.rig.unit.pagingStructureCacheOccupancy.pde == 1, "refilled by the new walk only")
        }
    }

    @Test("a PASID-based IOTLB invalidation does not remove second-stage cached entries")
    func pasidIOTLBKeepsSecondStage() throws {
        let m = try Self.moveLeafTable(SecondStageFormat.self)
        try m.rig.bench.invalidate([.iotlb(.page(Self.ss, address: 0x1000, addressMask: 0, invalidationHint: true)),
                                    .pasidIOTLB(Self.ss, PASID(truncating: 0), .pasid),
                                    .pasidIOTLB(Self.ss, PASID(truncating: 0), .page(address: 0x1000, addressMask: 0, invalidationHint: false))])
        #expect(m.rig.physical(0x1000) == 0xB000)
    }

    @Test("after a PASID-based PSI with IH=1 the first-stage walk still goes through the old leaf-table page")
    func firstStageIH1KeepsOldTable() throws {
        let m = try Self.moveLeafTable(FirstStageFormat.self)
        try m.rig.bench.invalidate([.pasidIOTLB(Self.fsDID, Self.fsPASID, .page(address: 0x1000, addressMask: 0, invalidationHint: true))])
        #expect(m.rig.physical(0x1000, pasid: 3) == 0xB000)
    }

    @Test("a PASID-based PSI with IH=0, or a PASID-selective one, makes the first-stage walk read the new tables")
    func firstStageIH0AndPASIDSelectiveClear() throws {
        for g: PASIDIOTLBGranularity in [.page(address: 0x1000, addressMask: 0, invalidationHint: false), .pasid] {
            let m = try Self.moveLeafTable(FirstStageFormat.self)
            try m.rig.bench.invalidate([.pasidIOTLB(Self.fsDID, PASID(truncating: 4), g)])
            try m.rig.bench.invalidate([.pasidIOTLB(Self.fsDID, Self.fsPASID, .page(address: 0x1000, addressMask: 0, invalidationHint: true))])
            #expect(m.rig.physical(0x1000, pasid: 3) == 0xB000, "another PASID's invalidation keeps them (\(g))")
            try m.rig.bench.invalidate([.pasidIOTLB(Self.fsDID, Self.fsPASID, g)])
            #expect(m.rig.physical(0x1000, pasid: 3) == 0xA000, "\(g)")
        }
    }

    @Test("type-2 invalidations (PSI with IH=0, domain-selective) do not remove first-stage cached entries")
    func iotlbKeepsFirstStage() throws {
        let m = try Self.moveLeafTable(FirstStageFormat.self)
        try m.rig.bench.invalidate([.iotlb(.page(Self.fsDID, address: 0x1000, addressMask: 0, invalidationHint: false)),
                                    .iotlb(.domain(Self.fsDID)),
                                    .pasidIOTLB(Self.fsDID, Self.fsPASID, .page(address: 0x1000, addressMask: 0, invalidationHint: true))])
        #expect(m.rig.physical(0x1000, pasid: 3) == 0xB000)
    }

    @Test("with the caches disabled (0 entries) every walk starts at the root")
    func disabledWalksFromRoot() throws {
        let m = try Self.moveLeafTable(SecondStageFormat.self, configuration: VTdConfiguration(pagingStructureCacheEntries: 0))
        try m.rig.bench.invalidate([.iotlb(.page(Self.ss, address: 0x1000, addressMask: 0, invalidationHint: true))])
        #expect(m.rig.physical(0x1000) == 0xA000)
        #expect(m.rig.unit.counters.pagingStructureCacheHits == 0 && m.rig.unit.counters.pagingStructureCacheMisses == 0)
        #expect(m.rig.unit.pagingStructureCacheOccupancy == (0, 0, 0, 0))
    }

    @Test("a cached PDE naming a freed table page makes the walk fault on the unbacked page")
    func freedTablePageFaults() throws {
        let m = try Self.moveLeafTable(SecondStageFormat.self)
        try m.rig.platform.frames.free(m.oldLeafTable)
        try m.rig.bench.invalidate([.iotlb(.page(Self.ss, address: 0x1000, addressMask: 0, invalidationHint: true))])
        #expect(m.rig.fault(0x1000) == .smSecondStageAccessError)
    }

    @Test("a miss below a cached PDE reads only the leaf table, and the counters show the hit")
    func deepestEntryShortensWalk() throws {
        let rig = try Rig()
        let t = try rig.secondStage()
        try t.map(iova: 0x1000, physical: 0x9000, size: 0x2000, permissions: .readWrite)
        try rig.attachSecondStage(t)
        _ = rig.physical(0x1000)
        #expect(rig.unit.counters.walkMemoryAccesses == 4)
        #expect(rig.unit.counters.pagingStructureCacheMisses == 1)
        #expect(rig.unit.pagingStructureCacheOccupancy == (1, 1, 1, 0))
        #expect(rig.physical(0x2000) == 0xA000)
        #expect(rig.unit.counters.walkMemoryAccesses == 5)
        #expect(rig.unit.counters.pagingStructureCacheHits == 1)
    }

    @Test("a type-2 PSI, even with IH=1, drops nested cached entries of its DID (they hold second-stage outputs)")
    func iotlbPSIDropsNested() throws {
        let rig = try Rig()
        let n = try NestedRig(rig)
        let data = try n.page()
        try n.map(0x1000, to: data)
        try n.map(0x2000, to: data)
        try n.attach()
        #expect(rig.physical(0x1000, pasid: 9) == n.hpa(data))
        #expect(rig.unit.pagingStructureCacheOccupancy.pde == 2, "one nested PDE and one second-stage PDE")
        let hits = rig.unit.counters.pagingStructureCacheHits, misses = rig.unit.counters.pagingStructureCacheMisses
        try rig.bench.invalidate([.iotlb(.page(DomainID(8), address: 0x7000_0000, addressMask: 0, invalidationHint: true))])
        _ = rig.physical(0x2000, pasid: 9)
        // The nested walk missed; its second-stage walks hit the second-stage PDE (kept: IH=1).
        #expect(rig.unit.counters.pagingStructureCacheMisses == misses + 1)
        #expect(rig.unit.counters.pagingStructureCacheHits > hits)
        try rig.bench.invalidate([.pasidIOTLB(DomainID(8), PASID(truncating: 9), .pasid)])
        #expect(rig.unit.cachedPagingStructureEntries(taggedWith: DomainID(8)) > 0, "second-stage entries stay")
        try rig.bench.invalidate([.iotlb(.domain(DomainID(8)))])
        #expect(rig.unit.cachedPagingStructureEntries(taggedWith: DomainID(8)) == 0)
    }
}
