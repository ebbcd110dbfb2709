import Testing
import Platform
import Formats
import Hardware
@testable import Kernel
@testable import Simulation

/// One `IOMMUCore.pageSize` case.
struct PageSizeCase: Sendable, CustomTestStringConvertible {
    var name: String
    var bitmap: UInt64
    var iova: UInt64
    var physical: UInt64
    var size: UInt64
    var pageSize: UInt64
    var count: UInt64
    var testDescription: String { name }
}

/// One `VTdDMARDomain.psiRange` case.
struct PSICase: Sendable, CustomTestStringConvertible {
    var name: String
    var start: UInt64
    var end: UInt64
    var address: UInt64
    var mask: UInt8
    var testDescription: String { name }
}

private let k4: UInt64 = 1 << 12, m2: UInt64 = 1 << 21, g1: UInt64 = 1 << 30

@Suite("MapUnmap: page-size choice, superpages, unmap splitting and holes, strict flushing")
struct MapUnmapTests {
    // MARK: Page size

    static let pageSizeCases: [PageSizeCase] = [
        PageSizeCase(name: "4K-only bitmap uses 4K pages for the whole length",
                     bitmap: k4, iova: 0x20_0000, physical: 0x40_0000, size: 0x40_0000, pageSize: k4, count: 0x400),
        PageSizeCase(name: "2M-aligned addresses and a 4M length use two 2M pages",
                     bitmap: k4 | m2 | g1, iova: 0x20_0000, physical: 0x40_0000, size: 0x40_0000, pageSize: m2, count: 2),
        PageSizeCase(name: "a misaligned IOVA uses 4K pages only up to the next 2M boundary",
                     bitmap: k4 | m2 | g1, iova: 0x1F_E000, physical: 0x5F_E000, size: 0x40_0000, pageSize: k4, count: 2),
        PageSizeCase(name: "a misaligned IOVA whose tail cannot hold a 2M page runs to the end in 4K pages",
                     bitmap: k4 | m2 | g1, iova: 0x1F_E000, physical: 0x5F_E000, size: 0x10_0000, pageSize: k4, count: 0x100),
        PageSizeCase(name: "4K-aligned IOVA and physical with a 2M-aligned tail stop at the shared 2M boundary",
                     bitmap: k4 | m2, iova: 0x3F_F000, physical: 0x7F_F000, size: 0x40_1000, pageSize: k4, count: 1),
        PageSizeCase(name: "a 2M-aligned length shorter than 2M uses 4K pages",
                     bitmap: k4 | m2 | g1, iova: 0x20_0000, physical: 0x40_0000, size: 0x1F_F000, pageSize: k4, count: 0x1FF),
        PageSizeCase(name: "a length smaller than the smallest page fits no page",
                     bitmap: k4 | m2, iova: 0, physical: 0x1000, size: 0x800, pageSize: 0, count: 0),
        PageSizeCase(name: "iova | physical == 0 is aligned to every size: 1G pages",
                     bitmap: k4 | m2 | g1, iova: 0, physical: 0, size: 3 * g1, pageSize: g1, count: 3),
        PageSizeCase(name: "iova | physical == 0 with a 1G+4K length: one 1G page first",
                     bitmap: k4 | m2 | g1, iova: 0, physical: 0, size: g1 + k4, pageSize: g1, count: 1),
        PageSizeCase(name: "without 1G in the bitmap a 1G-aligned 1G length uses 512 2M pages",
                     bitmap: k4 | m2, iova: g1, physical: 2 * g1, size: g1, pageSize: m2, count: 512),
        PageSizeCase(name: "2M pages stop where a 1G page could start",
                     bitmap: k4 | m2 | g1, iova: g1 - 2 * m2, physical: g1 - 2 * m2, size: 2 * g1, pageSize: m2, count: 2),
    ]

    @Test("IOMMUCore.pageSize picks the largest fitting page and stops where a larger one could start (iommu_pgsize)",
          arguments: pageSizeCases)
    func pageSize(_ c: PageSizeCase) {
        let r = IOMMUCore.pageSize(c.bitmap, iova: c.iova, physical: c.physical, size: c.size)
        #expect(r.pageSize == c.pageSize)
        #expect(r.count == c.count)
    }

    /// Linux `iommu_pgsize` gives up on a larger page when IOVA and physical address are
    /// offset differently within it (`(iova ^ paddr) & (pgsize_next - 1)`): such a page can
    /// never start, so the whole length is one run of small pages.
    @Test("pageSize does not stop at a larger-page boundary that IOVA and physical address do not share")
    func pageSizeIncongruent() {
        let r = IOMMUCore.pageSize(k4 | m2, iova: 0x20_0000, physical: 0x40_1000, size: 0x40_0000)
        #expect(r.pageSize == k4)
        #expect(r.count == 0x400)
    }

    @Test("a map whose IOVA and physical address are offset differently within 2 MiB still translates every page")
    func incongruentMapTranslates() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic0", dev: 2)
        let domain = try #require(dev.attachedDomain)
        let iova: UInt64 = 0x4000_0000, physical: UInt64 = 0x100_1000
        try rig.core.map(domain, iova: iova, physical: physical, size: 4 << 20, permissions: .readWrite)
        for page in stride(from: UInt64(0), to: 4 << 20, by: 0x1000) {
            #expect(rig.core.iovaToPhys(domain, iova + page) == physical + page)
        }
        #expect((domain as? VTdDMARDomain)?.mappedPageSize(iova + m2) == k4)
        #expect(try rig.core.unmap(domain, iova: iova, size: 4 << 20) == 4 << 20)
        #expect(rig.core.iovaToPhys(domain, iova) == nil)
    }

    // MARK: Superpages

    /// `bytes` of physically contiguous DMA buffer frames starting at an `alignment` boundary.
    func contiguousBuffer(_ rig: KernelRig, bytes: UInt64, alignment: UInt64) throws -> UInt64 {
        var base = try rig.machine.allocateBuffer()
        while base % alignment != 0 { base = try rig.machine.allocateBuffer() }
        var last = base
        for _ in 1..<(bytes / 4096) {
            let next = try rig.machine.allocateBuffer()
            try #require(next == last + 4096, "the frame allocator must hand out fresh frames in order")
            last = next
        }
        return base
    }

    @Test("a 2M-aligned 4 MiB map uses 2 MiB pages: translations are right and one IOTLB fill covers 2 MiB")
    func superpageMap() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("nic0", dev: 2)
        let domain = try #require(dev.attachedDomain)
        let pa = try contiguousBuffer(rig, bytes: 4 << 20, alignment: m2)
        let iova: UInt64 = 0x4000_0000
        let tablesBefore = rig.platform.frames.inUse(.pageTable)
        try rig.core.map(domain, iova: iova, physical: pa, size: 4 << 20, permissions: .readWrite)
        for offset: UInt64 in [0, 0x1000, 0x1234, 0x10_0000, 0x1F_FFF8, 0x20_0000, 0x3F_F000] {
            #expect(rig.core.iovaToPhys(domain, iova + offset) == pa + offset, "offset 0x\(String(offset, radix: 16))")
        }
        #expect(rig.core.iovaToPhys(domain, iova + (4 << 20)) == nil)
        let paging = try #require(domain as? VTdDMARDomain)
        #expect(paging.mappedPageSize(iova) == m2)
        #expect(paging.mappedPageSize(iova + m2) == m2)
        // Tables for levels 3 and 2 only: no leaf (4K) tables.
        #expect(rig.platform.frames.inUse(.pageTable) - tablesBefore <= 2)

        let unit = rig.machine.units[0]
        let misses0 = unit.counters.iotlbMisses
        #expect(rig.dmaWrite(ep, iova + 0x1000, value: 1)?.fault == nil)
        #expect(unit.counters.iotlbMisses == misses0 + 1)
        let hits = unit.counters.iotlbHits
        #expect(rig.dmaWrite(ep, iova + 0x10_1000, value: 2)?.fault == nil, "1 MiB further, inside the same 2 MiB page")
        #expect(unit.counters.iotlbMisses == misses0 + 1, "the 2 MiB IOTLB entry covers it")
        #expect(unit.counters.iotlbHits == hits + 1)
        #expect(rig.dmaWrite(ep, iova + m2 + 0x1000, value: 3)?.fault == nil)
        #expect(unit.counters.iotlbMisses == misses0 + 2, "the second 2 MiB page needs its own fill")
        #expect(try rig.platform.memory.load8(pa + 0x10_1000) == 2)
        #expect(try rig.platform.memory.load8(pa + m2 + 0x1000) == 3)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("unmapping 4 KiB from the middle of a 2 MiB page splits it: the rest still translates, that page faults")
    func unmapSplitsSuperpage() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("nic0", dev: 2)
        let domain = try #require(dev.attachedDomain)
        let pa = try contiguousBuffer(rig, bytes: m2, alignment: m2)
        let iova: UInt64 = 0x4000_0000
        try rig.core.map(domain, iova: iova, physical: pa, size: m2, permissions: .readWrite)
        let paging = try #require(domain as? VTdDMARDomain)
        #expect(paging.mappedPageSize(iova) == m2)
        // Fill the IOTLB with the 2 MiB translation: the split must flush it.
        #expect(rig.dmaWrite(ep, iova + 0x5000, value: 1)?.fault == nil)

        let hole = iova + 0x10_0000
        #expect(try rig.core.unmap(domain, iova: hole, size: 0x1000) == 0x1000)
        #expect(rig.core.iovaToPhys(domain, hole) == nil)
        #expect(rig.core.iovaToPhys(domain, hole - 0x1000) == pa + 0x0F_F000)
        #expect(rig.core.iovaToPhys(domain, hole + 0x1000) == pa + 0x10_1000)
        #expect(rig.core.iovaToPhys(domain, iova) == pa)
        #expect(rig.core.iovaToPhys(domain, iova + m2 - 0x1000) == pa + m2 - 0x1000)
        #expect(paging.mappedPageSize(iova) == 0x1000)

        let faulted = rig.dmaWrite(ep, hole, value: 9)
        #expect(faulted?.fault != nil, "the unmapped page must fault, not hit the old 2 MiB entry")
        #expect(try rig.platform.memory.load8(pa + 0x10_0000) == 0)
        #expect(rig.dmaWrite(ep, hole + 0x1000, value: 2)?.fault == nil)
        #expect(rig.dmaWrite(ep, hole - 0x1000, value: 3)?.fault == nil)
        #expect(rig.dmaWrite(ep, iova + 0x5000, value: 4)?.fault == nil)
        #expect(try rig.platform.memory.load8(pa + 0x10_1000) == 2)
        #expect(try rig.platform.memory.load8(pa + 0x5000) == 4)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("an unmap straddling a 2 MiB page and 4 KiB pages after it splits the superpage and unmaps exactly the range")
    func unmapAcrossSuperpageBoundary() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("nic0", dev: 2)
        let domain = try #require(dev.attachedDomain)
        let pa = try contiguousBuffer(rig, bytes: m2, alignment: m2)
        let iova: UInt64 = 0x4000_0000
        try rig.core.map(domain, iova: iova, physical: pa, size: m2, permissions: .readWrite)
        let tail = try rig.mapBuffers(domain, iova: iova + m2, pages: 4)
        #expect(rig.dmaWrite(ep, iova + 0x1F_F000)?.fault == nil)
        #expect(rig.dmaWrite(ep, iova + m2)?.fault == nil)

        #expect(try rig.core.unmap(domain, iova: iova + 0x1F_E000, size: 0x4000) == 0x4000)
        #expect(rig.core.iovaToPhys(domain, iova + 0x1F_D000) == pa + 0x1F_D000)
        #expect(rig.core.iovaToPhys(domain, iova + 0x1F_E000) == nil)
        #expect(rig.core.iovaToPhys(domain, iova + 0x1F_F000) == nil)
        #expect(rig.core.iovaToPhys(domain, iova + m2) == nil)
        #expect(rig.core.iovaToPhys(domain, iova + m2 + 0x1000) == nil)
        #expect(rig.core.iovaToPhys(domain, iova + m2 + 0x2000) == tail[2])
        #expect(rig.dmaWrite(ep, iova + 0x1F_F000)?.fault != nil)
        #expect(rig.dmaWrite(ep, iova + m2)?.fault != nil)
        #expect(rig.dmaWrite(ep, iova + 0x1F_D000)?.fault == nil)
        #expect(rig.dmaWrite(ep, iova + m2 + 0x2000)?.fault == nil)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    // MARK: Holes

    @Test("unmap stops at the first hole and returns the bytes unmapped; nothing mapped at the start is ENOENT")
    func unmapStopsAtHole() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("nic0", dev: 2)
        let domain = try #require(dev.attachedDomain)
        try rig.mapBuffers(domain, iova: 0x10_0000, pages: 2)
        try rig.mapBuffers(domain, iova: 0x10_3000)
        #expect(rig.dmaWrite(ep, 0x10_3000)?.fault == nil)

        #expect(try rig.core.unmap(domain, iova: 0x10_0000, size: 0x4000) == 0x2000)
        #expect(rig.core.iovaToPhys(domain, 0x10_0000) == nil)
        #expect(rig.core.iovaToPhys(domain, 0x10_1000) == nil)
        #expect(rig.core.iovaToPhys(domain, 0x10_3000) != nil, "the page after the hole stays mapped")
        #expect(rig.dmaWrite(ep, 0x10_3000)?.fault == nil)
        #expect(rig.dmaWrite(ep, 0x10_1000)?.fault != nil)

        do {
            try rig.core.unmap(domain, iova: 0x10_2000, size: 0x2000)
            Issue.record("unmap at a hole must fail")
        } catch {
            #expect(error.errno == 2)
            #expect(error.errnoName == "ENOENT")
        }
        #expect(rig.core.iovaToPhys(domain, 0x10_3000) != nil, "a failed unmap changes nothing")
        #expect(try rig.core.unmap(domain, iova: 0x10_3000, size: 0x1000) == 0x1000)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    // MARK: Strict flush and table freeing

    @Test("strict unmap frees page-table pages after its flush, and keeps them when the flush times out (ETIMEDOUT)")
    func tablesFreedOnlyAfterFlush() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic0", dev: 2)
        let domain = try #require(dev.attachedDomain)
        let unit = rig.machine.units[0]
        let iova: UInt64 = 0x4000_0000
        // A physical address that is 4K- but not 2M-aligned forces 512 4K pages (one leaf table).
        let physical: UInt64 = 0x100_1000

        let before = rig.platform.frames.inUse(.pageTable)
        try rig.core.map(domain, iova: iova, physical: physical, size: m2, permissions: .readWrite)
        let mapped = rig.platform.frames.inUse(.pageTable)
        #expect(mapped > before)
        #expect((domain as? VTdDMARDomain)?.mappedPageSize(iova) == k4)
        #expect(try rig.core.unmap(domain, iova: iova, size: m2) == m2)
        #expect(rig.platform.frames.inUse(.pageTable) == mapped - 1, "the emptied leaf table is freed once the flush completed")

        try rig.core.map(domain, iova: iova, physical: physical, size: m2, permissions: .readWrite)
        let remapped = rig.platform.frames.inUse(.pageTable)
        #expect(remapped == mapped)
        unit.descriptorFaults[InvalidationDescriptor.waitType] = .drop
        do {
            try rig.core.unmap(domain, iova: iova, size: m2)
            Issue.record("unmap must fail when its invalidation wait never completes")
        } catch {
            #expect(error.errno == 110)
        }
        #expect(rig.platform.frames.inUse(.pageTable) == remapped,
                "tables the hardware may still walk must not be freed when the flush did not complete")
        #expect(rig.core.iovaToPhys(domain, iova) == nil)
        unit.descriptorFaults = [:]
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("an injected invalidation time-out also fails strict unmap with ETIMEDOUT and keeps the tables")
    func injectedTimeoutKeepsTables() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic0", dev: 2)
        let domain = try #require(dev.attachedDomain)
        try rig.core.map(domain, iova: 0x4000_0000, physical: 0x100_1000, size: m2, permissions: .readWrite)
        let mapped = rig.platform.frames.inUse(.pageTable)
        rig.platform.faults.mode = .probability(1.0, only: [.invalidationTimeout])
        do {
            try rig.core.unmap(domain, iova: 0x4000_0000, size: m2)
            Issue.record("unmap must fail with an injected wait time-out")
        } catch {
            #expect(error.errno == 110)
        }
        rig.platform.faults.mode = .off
        #expect(rig.platform.frames.inUse(.pageTable) == mapped)
        #expect(rig.platform.faults.fired.contains { $0.point == .invalidationTimeout })
    }

    // MARK: Page-selective invalidation

    static let psiCases: [PSICase] = [
        PSICase(name: "one aligned page: mask 0 at the page", start: 0x5000, end: 0x5FFF, address: 0x5000, mask: 0),
        PSICase(name: "a sub-page range: mask 0 at its page", start: 0x5100, end: 0x51FF, address: 0x5000, mask: 0),
        PSICase(name: "two pages straddling a 2-page boundary: mask 2 at 0", start: 0x1000, end: 0x2FFF, address: 0, mask: 2),
        PSICase(name: "two aligned pages: mask 1", start: 0x2000, end: 0x3FFF, address: 0x2000, mask: 1),
        PSICase(name: "eight aligned pages: mask 3", start: 0x10000, end: 0x17FFF, address: 0x10000, mask: 3),
        PSICase(name: "an aligned 2 MiB range: mask 9", start: 0x20_0000, end: 0x3F_FFFF, address: 0x20_0000, mask: 9),
        PSICase(name: "4 MiB from 0: mask 10", start: 0, end: 0x3F_FFFF, address: 0, mask: 10),
        PSICase(name: "two pages across a 2 MiB boundary: mask 10", start: 0x1F_F000, end: 0x20_0FFF, address: 0, mask: 10),
        PSICase(name: "everything: mask 52", start: 0, end: .max, address: 0, mask: 52),
    ]

    @Test("psiRange gives the smallest naturally aligned power-of-two block of pages covering the range",
          arguments: psiCases)
    func psiRange(_ c: PSICase) {
        let r = VTdDMARDomain.psiRange(start: c.start, end: c.end)
        #expect(r.mask == c.mask)
        #expect(r.address == c.address)
        // The block covers both ends.
        let size: UInt64 = c.mask >= 52 ? .max : (UInt64(1) << (12 + UInt64(c.mask)))
        #expect(r.address <= c.start)
        #expect(c.mask >= 52 || c.end - r.address < size)
    }

    /// Unit 0 accepts page-selective masks up to 2 (16 KiB). Unmapping 4 pages fits a PSI,
    /// which leaves an unrelated cached page alone; unmapping 8 pages needs mask 3, so the
    /// driver must fall back to a domain-selective invalidation (which the hardware would
    /// otherwise refuse with an invalidation-queue error), dropping the unrelated entry too.
    @Test("flushRange falls back to domain-selective invalidation when the PSI mask exceeds the unit's MAMV",
          arguments: [(4, false), (8, true)])
    func flushFallsBackToDSI(pages: Int, domainSelective: Bool) throws {
        for stage in VTdPagingStage.allCases { try flushFallsBackToDSI(pages: pages, domainSelective: domainSelective, stage: stage) }
    }

    func flushFallsBackToDSI(pages: Int, domainSelective: Bool, stage: VTdPagingStage) throws {
        let rig = try KernelRig(units: [VTdConfiguration(name: "dmar0", capability: .make(maxAddressMask: 2)),
                                        VTdConfiguration(name: "dmar1")], stage: stage)
        let (dev, ep) = try rig.add("nic0", dev: 2)
        let domain = try #require(dev.attachedDomain)
        let unit = rig.machine.units[0]
        #expect(rig.driver.units[0].capability.maximumAddressMask == 2)
        try rig.mapBuffers(domain, iova: 0x10_0000, pages: pages)
        try rig.mapBuffers(domain, iova: 0x80_0000)
        for p in 0..<pages { #expect(rig.dmaWrite(ep, 0x10_0000 + UInt64(p) * 4096)?.fault == nil) }
        #expect(rig.dmaWrite(ep, 0x80_0000)?.fault == nil)
        let mask = VTdDMARDomain.psiRange(start: 0x10_0000, end: 0x10_0000 + UInt64(pages) * 4096 - 1).mask
        #expect((mask > 2) == domainSelective)

        let iotlbDescriptors = unit.counters.descriptorsByType[Int(rig.iotlbDescriptorType)]
        #expect(try rig.core.unmap(domain, iova: 0x10_0000, size: UInt64(pages) * 4096) == UInt64(pages) * 4096)
        #expect(unit.counters.descriptorsByType[Int(rig.iotlbDescriptorType)] == iotlbDescriptors + 1,
                "one IOTLB descriptor for the domain's one DID (and PASID)")
        #expect(unit.counters.invalidationQueueErrors == 0, "no descriptor with a mask beyond MAMV was issued")
        for p in 0..<pages { #expect(rig.dmaWrite(ep, 0x10_0000 + UInt64(p) * 4096)?.fault != nil) }

        let misses = unit.counters.iotlbMisses
        #expect(rig.dmaWrite(ep, 0x80_0000)?.fault == nil)
        if domainSelective {
            #expect(unit.counters.iotlbMisses == misses + 1, "a domain-selective flush drops the unrelated entry too")
        } else {
            #expect(unit.counters.iotlbMisses == misses, "a page-selective flush leaves the unrelated entry cached")
        }
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }
}
