import Platform
import Formats
import Hardware

extension TranslateBenchmark {
    /// The nested measurement's device: RID_PASID 1 → a nested PASID entry (DID 6) whose
    /// 4-level first stage maps `pages` 4 KiB pages at `base` to guest-physical 4 GiB.., over
    /// a 4-level second stage that maps that range to host 3 GiB.. and every first-stage
    /// table page to itself (guest tables live at GPA = HPA). Returns the address stream:
    /// every page once, in a fixed random order, so with 16× the IOTLB's capacity every
    /// translation misses and walks 4 first-stage levels, each pointer and the output
    /// through a 4-level second-stage walk (24 table reads).
    static func setUpNested(platform: PlatformContext, bench: VTdTestBench, rid: RequesterID, addressWidth: Int,
                            base: UInt64, pages: Int, rng: inout SeededRNG) throws -> [UInt64] {
        try bench.setContext(rid, ridPASID: 1)
        let guestData: UInt64 = 4 << 30
        let fs = try IOPageTable<FirstStageFormat>(memory: platform.memory, frames: platform.frames, levels: 4,
                                                  maxLeafLevel: 1, addressWidth: addressWidth)
        try fs.map(iova: base, physical: guestData, size: UInt64(pages) << 12, permissions: [.read, .write, .user])
        let ss = try IOPageTable<SecondStageFormat>(memory: platform.memory, frames: platform.frames, levels: 4,
                                                   maxLeafLevel: 1, addressWidth: addressWidth)
        try ss.map(iova: guestData, physical: 3 << 30, size: UInt64(pages) << 12, permissions: .readWrite)
        // Every first-stage table page the walks use, identity-mapped (writable: A/D updates).
        var tables = Set<UInt64>()
        for page in stride(from: 0, to: pages, by: 512) {
            var table = fs.root
            for level in stride(from: 4, through: 1, by: -1) {
                tables.insert(table)
                if level == 1 { break }
                let va = base + UInt64(page) << 12
                table = try platform.memory.load64(table + PageTableGeometry.index(va, level: level) * 8) & 0x000F_FFFF_FFFF_F000
            }
        }
        for t in tables.sorted() { try ss.map(iova: t, physical: t, size: 4096, permissions: .readWrite) }
        try bench.setPASIDEntry(rid, pasid: 1, .make(pgtt: .nested, did: DomainID(6), secondStageTable: ss.root,
                                                     secondStageLevels: 4, firstStageTable: fs.root, firstStageLevels: 4))
        var order = Array(0..<pages)
        for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next(below: UInt64(i + 1)))) }
        return order.map { base + UInt64($0) << 12 + 16 }
    }
}
