import Testing
@testable import Platform

@Suite("FrameAllocator")
struct FrameAllocatorTests {
    func make(firstFrame: UInt64 = 1, endFrame: UInt64? = nil, faults: FaultInjector? = nil) throws -> (PhysicalMemory, FrameAllocator) {
        let m = try PhysicalMemory(size: 64 << 20)
        return (m, FrameAllocator(memory: m, firstFrame: firstFrame, endFrame: endFrame, faults: faults))
    }

    @Test("allocated frames are 4 KiB aligned, distinct, inside the region, backed and zeroed")
    func allocateProperties() throws {
        let (m, a) = try make(firstFrame: 16, endFrame: 256)
        var seen = Set<UInt64>()
        for _ in 0..<100 {
            let pa = try a.allocate()
            #expect(pa & 0xFFF == 0)
            #expect(pa >> 12 >= 16 && pa >> 12 < 256)
            #expect(seen.insert(pa).inserted)
            #expect(m.isBacked(frame: pa >> 12))
            #expect(a.isAllocated(pa))
            // A device may fetch it straight away, and it reads zero throughout.
            #expect(try m.deviceLoad(pa, as: UInt64.self) == 0)
            #expect(try m.load64(pa + 4088) == 0)
        }
        #expect(m.backedFrameCount == 100)
        #expect(a.inUse == 100)
        #expect(a.available == 240 - 100)
    }

    @Test("frame 0 is never handed out by a default allocator")
    func defaultSkipsFrameZero() throws {
        let (_, a) = try make()
        #expect(a.firstFrame == 1)
        let pa = try a.allocate()
        #expect(pa != 0)
        #expect(!a.isAllocated(0))
    }

    @Test("inUse, peak, totals and per-purpose counts follow allocations and frees")
    func accounting() throws {
        let (_, a) = try make()
        let t1 = try a.allocate(.pageTable)
        let t2 = try a.allocate(.pageTable)
        let q = try a.allocate(.queue)
        #expect(a.inUse == 3)
        #expect(a.peak == 3)
        #expect(a.inUse(.pageTable) == 2)
        #expect(a.inUse(.queue) == 1)
        #expect(a.inUse(.dmaBuffer) == 0)
        try a.free(t1)
        #expect(a.inUse == 2)
        #expect(a.peak == 3)
        #expect(a.inUse(.pageTable) == 1)
        try a.free(q)
        #expect(a.inUse(.queue) == 0)
        _ = try a.allocate(.dmaBuffer)
        #expect(a.inUse == 2)
        #expect(a.peak == 3)
        #expect(a.inUse(.dmaBuffer) == 1)
        #expect(a.totalAllocations == 4)
        #expect(a.totalFrees == 2)
        try a.free(t2)
        #expect(a.inUse(.pageTable) == 0)
    }

    @Test("a freed frame is zeroed, unbacked, and handed out again")
    func freeThenReuse() throws {
        let (m, a) = try make(firstFrame: 10, endFrame: 11)
        let pa = try a.allocate()
        try m.store64(pa + 16, 0xDEAD)
        try a.free(pa)
        #expect(!a.isAllocated(pa))
        #expect(!m.isBacked(frame: pa >> 12))
        #expect(throws: MemoryError.unbacked(address: pa)) { _ = try m.deviceLoad(pa, as: UInt64.self) }
        let again = try a.allocate()
        #expect(again == pa)
        #expect(try m.load64(pa + 16) == 0)
        #expect(m.isBacked(frame: pa >> 12))
    }

    @Test("freeing a frame twice throws notAllocated and changes no count")
    func doubleFree() throws {
        let (m, a) = try make()
        let keep = try a.allocate()
        let pa = try a.allocate()
        try m.store64(keep, 99)
        try a.free(pa)
        let (inUse, frees, avail) = (a.inUse, a.totalFrees, a.available)
        #expect(throws: FrameError.notAllocated(address: pa)) { try a.free(pa) }
        #expect(a.inUse == inUse)
        #expect(a.totalFrees == frees)
        #expect(a.available == avail)
        #expect(a.isAllocated(keep))
        #expect(try m.load64(keep) == 99)
        // The frame is not on the free list twice: two allocations give two distinct frames.
        let x = try a.allocate(), y = try a.allocate()
        #expect(x != y)
    }

    @Test("freeing an address the allocator does not own throws notAllocated and changes nothing",
          arguments: [UInt64(0), 0x1008, 9 << 12, 200 << 12, 1 << 40, UInt64.max])
    func foreignFree(address: UInt64) throws {
        let (m, a) = try make(firstFrame: 1, endFrame: 100)
        let pa = try a.allocate()   // frame 1
        try m.store64(pa, 5)
        #expect(throws: FrameError.notAllocated(address: address)) { try a.free(address) }
        #expect(a.inUse == 1)
        #expect(a.totalFrees == 0)
        #expect(a.isAllocated(pa))
        #expect(try m.load64(pa) == 5)
    }

    @Test("a misaligned address inside an allocated frame is not accepted by free")
    func misalignedFree() throws {
        let (_, a) = try make()
        let pa = try a.allocate()
        #expect(throws: FrameError.notAllocated(address: pa + 8)) { try a.free(pa + 8) }
        #expect(a.isAllocated(pa))
        #expect(a.inUse == 1)
    }

    @Test("allocation fails with outOfMemory once the region is exhausted, and succeeds again after a free")
    func exhaustion() throws {
        let (_, a) = try make(firstFrame: 20, endFrame: 23)
        let f = try (0..<3).map { _ in try a.allocate() }
        #expect(Set(f) == [20 << 12, 21 << 12, 22 << 12])
        #expect(a.available == 0)
        #expect(throws: FrameError.outOfMemory) { _ = try a.allocate() }
        #expect(a.inUse == 3)
        #expect(a.totalAllocations == 3)
        try a.free(f[1])
        #expect(try a.allocate() == f[1])
        #expect(throws: FrameError.outOfMemory) { _ = try a.allocate() }
    }

    @Test("an end frame past the memory is clamped to the memory's size")
    func clampsToMemory() throws {
        let m = try PhysicalMemory(size: 8 * 4096)
        let a = FrameAllocator(memory: m, firstFrame: 6, endFrame: 1000)
        #expect(a.endFrame == 8)
        _ = try a.allocate(); _ = try a.allocate()
        #expect(throws: FrameError.outOfMemory) { _ = try a.allocate() }
    }

    @Test("with failNth(2, only: frameAlloc) exactly the second allocation throws injected")
    func injectedSecondAllocation() throws {
        let faults = FaultInjector(mode: .failNth(2, only: .frameAlloc))
        let (_, a) = try make(faults: faults)
        var results: [Result<UInt64, FrameError>] = []
        for _ in 0..<5 {
            do { results.append(.success(try a.allocate())) } catch { results.append(.failure(error)) }
        }
        #expect(results[1] == .failure(.injected))
        for i in [0, 2, 3, 4] {
            #expect((try? results[i].get()) != nil, "allocation \(i + 1) should succeed")
        }
        #expect(a.inUse == 4)
        #expect(a.totalAllocations == 4)
        #expect(faults.fired.count == 1)
        #expect(faults.fired.first?.point == .frameAlloc)
        #expect(faults.fired.first?.hit == 2)
    }

    @Test("an injected failure consumes no frame")
    func injectedConsumesNothing() throws {
        let faults = FaultInjector(mode: .failNth(1))
        let (m, a) = try make(firstFrame: 5, endFrame: 6, faults: faults)
        #expect(throws: FrameError.injected) { _ = try a.allocate() }
        #expect(a.available == 1)
        #expect(m.backedFrameCount == 0)
        #expect(try a.allocate() == 5 << 12)
    }

    @Test("owner tags are unique, reported at allocation and at free, and a frame never published is freed without its owner")
    func ownerTags() throws {
        let (_, a) = try make()
        let t1 = a.makeOwnerTag(), t2 = a.makeOwnerTag()
        #expect(t1 != 0 && t2 != 0 && t1 != t2)
        var allocated: [(UInt64, UInt32)] = []
        var freed: [(UInt64, UInt32)] = []
        a.ownedAllocationObserver = { addr, purpose, owner in if purpose == .pageTable { allocated.append((addr, owner)) } }
        a.freeObserver = { addr, _, owner in freed.append((addr, owner)) }
        let untagged = try a.allocate(.pageTable)
        let x = try a.allocate(.pageTable, owner: t1)
        let y = try a.allocate(.pageTable, owner: t2)
        #expect(allocated.map(\.0) == [x, y] && allocated.map(\.1) == [t1, t2], "only tagged frames are reported")
        try a.free(x)
        try a.free(y, neverPublished: true)
        try a.free(untagged)
        #expect(freed.map(\.1) == [t1, 0, 0])
        // A reused frame does not inherit its previous owner.
        let z = try a.allocate(.pageTable)
        try a.free(z)
        #expect(freed.last?.1 == 0)
    }
}
