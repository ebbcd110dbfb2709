import Testing
import Platform
import Formats
@testable import Hardware

@Suite("caches keep stale entries until the matching invalidation")
struct CacheInvalidationTests {
    /// Maps 0x1000 → 0x9000 in a second-stage table (DID 5), fills the IOTLB, then repoints
    /// the PTE at 0xA000 behind the hardware's back.
    func staleSecondStage() throws -> (Rig, IOPageTable<SecondStageFormat>) {
        let rig = try Rig()
        let t = try rig.secondStage()
        try t.map(iova: 0x1000, physical: 0x9000, size: 0x1000, permissions: .readWrite)
        try t.map(iova: 0x40_0000, physical: 0x20_0000, size: 0x20_0000, permissions: .readWrite)
        try rig.attachSecondStage(t)
        #expect(rig.physical(0x1000) == 0x9000)
        var g = UnmapGather()
        try t.unmap(iova: 0x1000, size: 0x1000, gather: &g)
        try t.map(iova: 0x1000, physical: 0xA000, size: 0x1000, permissions: .readWrite)
        return (rig, t)
    }

    @Test("a stale IOTLB entry survives a PTE change until a page-selective invalidation of its DID and page")
    func staleUntilPSI() throws {
        let (rig, _) = try staleSecondStage()
        #expect(rig.physical(0x1000) == 0x9000, "cached translation must still be used")
        try rig.bench.invalidate([.iotlb(.page(DomainID(6), address: 0x1000, addressMask: 0, invalidationHint: false))])
        #expect(rig.physical(0x1000) == 0x9000, "another DID's invalidation must not drop it")
        try rig.bench.invalidate([.iotlb(.page(DomainID(5), address: 0x2000, addressMask: 0, invalidationHint: false))])
        #expect(rig.physical(0x1000) == 0x9000, "another page's invalidation must not drop it")
        try rig.bench.invalidate([.iotlb(.page(DomainID(5), address: 0x1000, addressMask: 0, invalidationHint: false))])
        #expect(rig.physical(0x1000) == 0xA000)
    }

    @Test("the address mask widens a page-selective invalidation to 2^AM pages, aligned down")
    func addressMask() throws {
        let (rig, _) = try staleSecondStage()
        try rig.bench.invalidate([.iotlb(.page(DomainID(5), address: 0x3000, addressMask: 1, invalidationHint: false))])
        #expect(rig.physical(0x1000) == 0x9000, "0x2000-0x3FFF does not cover 0x1000")
        try rig.bench.invalidate([.iotlb(.page(DomainID(5), address: 0x3000, addressMask: 2, invalidationHint: false))])
        #expect(rig.physical(0x1000) == 0xA000, "0x0-0x3FFF covers 0x1000")
    }

    @Test("a page-selective invalidation inside a cached 2 MiB translation drops that translation")
    func superpageOverlap() throws {
        let (rig, t) = try staleSecondStage()
        #expect(rig.physical(0x45_6000) == 0x25_6000)
        var g = UnmapGather()
        try t.unmap(iova: 0x40_0000, size: 0x20_0000, gather: &g)
        try t.map(iova: 0x40_0000, physical: 0x60_0000, size: 0x20_0000, permissions: .readWrite)
        #expect(rig.physical(0x45_6000) == 0x25_6000)
        try rig.bench.invalidate([.iotlb(.page(DomainID(5), address: 0x45_6000, addressMask: 0, invalidationHint: false))])
        #expect(rig.physical(0x45_6000) == 0x65_6000)
    }

    @Test("domain-selective and global IOTLB invalidations drop every entry of the DID, and only of it")
    func domainAndGlobal() throws {
        let (rig, _) = try staleSecondStage()
        let other = RequesterID(bus: 0, device: 4, function: 0)
        let t2 = try rig.secondStage()
        try t2.map(iova: 0x1000, physical: 0xB000, size: 0x1000, permissions: .read)
        try rig.bench.setContext(other)
        try rig.bench.setPASIDEntry(other, pasid: 0, .make(pgtt: .secondStage, did: DomainID(7), secondStageTable: t2.root))
        #expect(rig.unit.translate(source: other, pasid: nil, address: 0x1000, access: .read) == .translated(physical: 0xB000, pageShift: 12, permissions: [.read, .user]))
        try rig.memory.store64(try #require(try PageTableWalker.walk(SecondStageFormat.self, memory: rig.memory, root: t2.root, levels: 4,
                                                                   input: 0x1000, addressMask: t2.addressMask)).leafEntryAddress,
                               SecondStageFormat.leaf(address: 0xC000, permissions: .read, level: 1))
        try rig.bench.invalidate([.iotlb(.domain(DomainID(5)))])
        #expect(rig.physical(0x1000) == 0xA000)
        if case .translated(let pa, _, _) = rig.unit.translate(source: other, pasid: nil, address: 0x1000, access: .read) {
            #expect(pa == 0xB000, "DID 7 entry must survive a DID 5 invalidation")
        } else { Issue.record("expected translation") }
        try rig.bench.invalidate([.iotlb(.global)])
        if case .translated(let pa, _, _) = rig.unit.translate(source: other, pasid: nil, address: 0x1000, access: .read) {
            #expect(pa == 0xC000)
        } else { Issue.record("expected translation") }
    }

    @Test("PASID-based IOTLB invalidation drops first-stage entries of its PASID only")
    func pasidIOTLB() throws {
        let rig = try Rig()
        let t = try rig.firstStage()
        try t.map(iova: 0x1000, physical: 0x9000, size: 0x1000, permissions: [.read, .user])
        try rig.bench.setContext(rig.rid)
        for p: UInt32 in [3, 4] {
            try rig.bench.setPASIDEntry(rig.rid, pasid: p, .make(pgtt: .firstStage, did: DomainID(1), firstStageTable: t.root))
            #expect(rig.physical(0x1000, pasid: p) == 0x9000)
        }
        var g = UnmapGather()
        try t.unmap(iova: 0x1000, size: 0x1000, gather: &g)
        try t.map(iova: 0x1000, physical: 0xA000, size: 0x1000, permissions: [.read, .user])
        try rig.bench.invalidate([.iotlb(.domain(DomainID(1)))])
        #expect(rig.physical(0x1000, pasid: 3) == 0x9000, "type-2 invalidation does not reach first-stage entries")
        try rig.bench.invalidate([.pasidIOTLB(DomainID(1), PASID(truncating: 3), .page(address: 0x1000, addressMask: 0, invalidationHint: false))])
        #expect(rig.physical(0x1000, pasid: 3) == 0xA000)
        #expect(rig.physical(0x1000, pasid: 4) == 0x9000)
        try rig.bench.invalidate([.pasidIOTLB(DomainID(1), PASID(truncating: 4), .pasid)])
        #expect(rig.physical(0x1000, pasid: 4) == 0xA000)
    }

    @Test("a cached PASID entry is used until a PASID-cache invalidation with its DID and PASID")
    func pasidCache() throws {
        let rig = try Rig()
        let a = try rig.secondStage(), b = try rig.secondStage()
        try a.map(iova: 0x1000, physical: 0x9000, size: 0x1000, permissions: .read)
        try b.map(iova: 0x1000, physical: 0xA000, size: 0x1000, permissions: .read)
        try rig.attachSecondStage(a, did: 5)
        #expect(rig.physical(0x1000) == 0x9000)
        try rig.bench.setPASIDEntry(rig.rid, pasid: 0, .make(pgtt: .secondStage, did: DomainID(6), secondStageTable: b.root))
        try rig.bench.invalidate([.iotlb(.global)])
        #expect(rig.physical(0x1000) == 0x9000, "stale PASID-cache entry still points at table A")
        try rig.bench.invalidate([.pasidCache(.pasid(DomainID(6), PASID(truncating: 0))), .iotlb(.global)])
        #expect(rig.physical(0x1000) == 0x9000, "the cached entry is tagged with the old DID 5")
        try rig.bench.invalidate([.pasidCache(.pasid(DomainID(5), PASID(truncating: 0))), .iotlb(.global)])
        #expect(rig.physical(0x1000) == 0xA000)
    }

    @Test("a cached context entry is used until a context-cache invalidation covering its source-id")
    func contextCache() throws {
        let rig = try Rig()
        let t = try rig.secondStage()
        try t.map(iova: 0x1000, physical: 0x9000, size: 0x1000, permissions: .read)
        try rig.attachSecondStage(t)
        #expect(rig.physical(0x1000) == 0x9000)
        try rig.memory.store64(rig.bench.contextEntryAddress(rig.rid), 0) // clear present
        try rig.bench.invalidate([.pasidCache(.global), .iotlb(.global)])
        #expect(rig.physical(0x1000) == 0x9000, "context cache still holds the entry")
        try rig.bench.invalidate([.contextCache(.device(DomainID(0), RequesterID(bus: 0, device: 2, function: 1), functionMask: 1))])
        #expect(rig.physical(0x1000) == 0x9000, "function 1 with FM=1 (bit 2 masked) does not cover function 0")
        try rig.bench.invalidate([.contextCache(.device(DomainID(0), RequesterID(bus: 0, device: 2, function: 1), functionMask: 3))])
        #expect(rig.fault(0x1000) == .smContextEntryNotPresent, "FM=3 masks function bits 2:0, covering function 0")
    }

    @Test("capacity evicts the least recently used IOTLB entry")
    func lruEviction() throws {
        let rig = try Rig(configuration: VTdConfiguration(iotlbEntries: 4, iotlbWays: 4))
        let t = try rig.secondStage()
        try t.map(iova: 0, physical: 0x10_0000, size: 0x5000, permissions: .read)
        try rig.attachSecondStage(t)
        for page: UInt64 in 0..<4 { _ = rig.physical(page << 12) }
        _ = rig.physical(0) // page 0 becomes most recent; page 1 is now LRU
        _ = rig.physical(4 << 12) // evicts page 1
        let misses = rig.unit.counters.iotlbMisses
        _ = rig.physical(0); _ = rig.physical(2 << 12); _ = rig.physical(3 << 12)
        #expect(rig.unit.counters.iotlbMisses == misses)
        _ = rig.physical(1 << 12)
        #expect(rig.unit.counters.iotlbMisses == misses + 1)
    }

    @Test("a dropped IOTLB descriptor leaves the stale translation in place (fault-injection mode)")
    func droppedDescriptor() throws {
        let (rig, _) = try staleSecondStage()
        rig.unit.descriptorFaults[InvalidationDescriptor.iotlbType] = .drop
        try rig.bench.invalidate([.iotlb(.page(DomainID(5), address: 0x1000, addressMask: 0, invalidationHint: false))])
        #expect(rig.physical(0x1000) == 0x9000)
        #expect(rig.unit.counters.descriptorsDropped == 1)
    }

    @Test("a delayed IOTLB descriptor takes effect only after its delay")
    func delayedDescriptor() throws {
        let (rig, _) = try staleSecondStage()
        rig.unit.descriptorFaults[InvalidationDescriptor.iotlbType] = .delay(50_000)
        try rig.bench.submit([.iotlb(.page(DomainID(5), address: 0x1000, addressMask: 0, invalidationHint: false))])
        rig.platform.scheduler.run(until: rig.platform.scheduler.now + 40_000)
        #expect(rig.physical(0x1000) == 0x9000)
        rig.platform.scheduler.run(until: rig.platform.scheduler.now + 20_000)
        #expect(rig.physical(0x1000) == 0xA000)
    }
}
