import Testing
import Platform
import Formats
@testable import Hardware

/// The table pages a walk of `F` from `root` for `va` reads, root first.
func tablePath<F: PageTableFormat>(_ f: F.Type, _ memory: PhysicalMemory, root: UInt64, _ va: UInt64) throws -> [UInt64] {
    try (1...4).reversed().map { try entryAddress(F.self, memory, root: root, va, level: $0) & ~0xFFF }
}

@Suite("nested walks: A/D through the second stage, fault reasons, the table-read hook")
struct NestedWalkTests {
    static let a = FirstStageFormat.accessedBit, d = FirstStageFormat.dirtyBit
    static let ssA = SecondStageFormat.accessedBit, ssD = SecondStageFormat.dirtyBit

    func entries(_ n: NestedRig, _ va: UInt64) throws -> [UInt64] {
        try (1...4).reversed().map { try n.rig.memory.load64(try n.entryHPA(va, level: $0)) }
    }

    @Test("a nested read sets A in every first-stage entry used and D in none; a later write walks again and sets D in the leaf")
    func firstStageAccessedDirty() throws {
        let rig = try Rig()
        let n = try NestedRig(rig)
        let data = try n.page()
        try n.map(0x5000, to: data)
        try n.attach()
        #expect(try entries(n, 0x5000).allSatisfy { $0 & Self.a == 0 })
        #expect(rig.physical(0x5008, pasid: 9) == n.hpa(data) + 8)
        let afterRead = try entries(n, 0x5000)
        #expect(afterRead.allSatisfy { $0 & Self.a != 0 && $0 & Self.d == 0 })
        #expect(afterRead.allSatisfy { $0 & VTdUnit.extendedAccessedBit == 0 }, "EA only with EAFE")
        let walks = rig.unit.counters.walks
        #expect(rig.physical(0x5008, pasid: 9, .write) == n.hpa(data) + 8)
        #expect(rig.unit.counters.walks == walks + 1, "the cached translation's D was clear, so the write walks")
        #expect(try entries(n, 0x5000).last! & Self.d != 0)
        #expect(try entries(n, 0x5000).dropLast().allSatisfy { $0 & Self.d == 0 }, "D only in the leaf")
        #expect(rig.physical(0x5010, pasid: 9, .write) == n.hpa(data) + 0x10)
        #expect(rig.unit.counters.walks == walks + 1, "now the write hits the IOTLB")
    }

    @Test("with EAFE the nested walk also sets the extended-accessed bit in each first-stage entry")
    func extendedAccessed() throws {
        let rig = try Rig()
        let n = try NestedRig(rig)
        try n.map(0x5000, to: try n.page())
        try n.attach(eafe: true)
        _ = rig.physical(0x5000, pasid: 9)
        #expect(try entries(n, 0x5000).allSatisfy { $0 & VTdUnit.extendedAccessedBit != 0 && $0 & Self.a != 0 })
    }

    @Test("with SSADE the output's second-stage leaf gets A on a read and D on a write; table pages written for A/D get A and D")
    func secondStageADWithSSADE() throws {
        let rig = try Rig()
        let n = try NestedRig(rig)
        let data = try n.page()
        try n.map(0x5000, to: data)
        try n.attach(ssade: true)
        let dataLeaf = try entryAddress(SecondStageFormat.self, rig.memory, root: n.s2.root, data, level: 1)
        let rootLeaf = try entryAddress(SecondStageFormat.self, rig.memory, root: n.s2.root, n.root, level: 1)
        _ = rig.physical(0x5000, pasid: 9)
        #expect(try rig.memory.load64(dataLeaf) & (Self.ssA | Self.ssD) == Self.ssA)
        #expect(try rig.memory.load64(rootLeaf) & (Self.ssA | Self.ssD) == Self.ssA | Self.ssD, "the PML4E's A was written")
        _ = rig.physical(0x5000, pasid: 9, .write)
        #expect(try rig.memory.load64(dataLeaf) & Self.ssD != 0)
    }

    @Test("without SSADE the nested walk sets no second-stage A/D bits")
    func noSecondStageADWithoutSSADE() throws {
        let rig = try Rig()
        let n = try NestedRig(rig)
        let data = try n.page()
        try n.map(0x5000, to: data)
        try n.attach()
        _ = rig.physical(0x5000, pasid: 9, .write)
        for gpa in [data, n.root] {
            #expect(try rig.memory.load64(try entryAddress(SecondStageFormat.self, rig.memory, root: n.s2.root, gpa, level: 1))
                    & (Self.ssA | Self.ssD) == 0)
        }
    }

    @Test("over guest tables the second stage maps read-only: reads work once A is set, a write needing D faults 0x77")
    func readOnlyTablesFaultOnDirtyUpdate() throws {
        let rig = try Rig()
        let n = try NestedRig(rig, tablePermissions: .read)
        try n.map(0x5000, to: try n.page())
        try n.attach()
        #expect(rig.fault(0x5000, pasid: 9) == .smNestedFirstStageWriteError, "A clear in the PML4E")
        for level in 1...4 {
            let e = try n.entryHPA(0x5000, level: level)
            try rig.memory.store64(e, try rig.memory.load64(e) | Self.a)
        }
        #expect(rig.physical(0x5000, pasid: 9) != nil)
        #expect(rig.fault(0x5000, pasid: 9, .write) == .smNestedFirstStageWriteError)
    }

    /// Builds a nested walk for 0x5000 whose first-stage entry at `level` is replaced by
    /// `entry(gpaOfFreshPage)`; returns the fault for a read.
    func nestedFault(level: Int, _ entry: (NestedRig, UInt64) throws -> UInt64) throws -> VTdFaultReason? {
        let rig = try Rig()
        let n = try NestedRig(rig)
        try n.map(0x5000, to: try n.page())
        let slot = try n.entryHPA(0x5000, level: level)
        try rig.memory.store64(slot, try entry(n, try n.page()))
        try n.attach()
        return rig.fault(0x5000, pasid: 9)
    }

    @Test("nested walks report the first-stage reasons: 0x70 unbacked table, 0x71 not present, 0x72 reserved, 0x74 beyond the second stage's width")
    func nestedFirstStageReasons() throws {
        // A PDE pointing at a guest page the second stage maps to an unbacked host frame.
        #expect(try nestedFault(level: 2) { n, _ in
            let gpa: UInt64 = 0x2000_0000
            try n.s2.map(iova: gpa, physical: n.rig.unbackedFrame, size: 0x1000, permissions: .readWrite)
            return FirstStageFormat.table(address: gpa)
        } == .smFirstStageAccessError)
        #expect(try nestedFault(level: 3) { _, _ in 0 } == .smFirstStageNotPresent)
        #expect(try nestedFault(level: 4) { _, page in FirstStageFormat.table(address: page) | FirstStageFormat.ps } == .smFirstStageReserved)
        #expect(try nestedFault(level: 1) { _, _ in FirstStageFormat.leaf(address: 1 << 45, permissions: [.read, .user], level: 1) }
                == .smSecondStagePermission, "inside the width but unmapped by the second stage")
        let wide = try Rig(configuration: VTdConfiguration(hostAddressWidth: 52), memory: 256 << 20)
        let n = try NestedRig(wide)
        try n.map(0x5000, to: try n.page())
        try wide.memory.store64(try n.entryHPA(0x5000, level: 1), FirstStageFormat.leaf(address: 1 << 49, permissions: [.read, .user], level: 1))
        try n.attach()
        #expect(wide.fault(0x5000, pasid: 9) == .smNestedFirstStageBeyondMGAW)
    }

    @Test("the table-read hook sees a second-stage walk's pages root first, and only the leaf table below a cached PDE")
    func hookSecondStage() throws {
        let rig = try Rig()
        let t = try rig.secondStage()
        try t.map(iova: 0x1000, physical: 0x9000, size: 0x2000, permissions: .readWrite)
        try rig.attachSecondStage(t)
        var reads: [UInt64] = []
        rig.unit.onTableRead = { reads.append($0) }
        _ = rig.physical(0x1000)
        let path = try tablePath(SecondStageFormat.self, rig.memory, root: t.root, 0x1000)
        #expect(reads == path)
        reads = []
        _ = rig.physical(0x1000)
        #expect(reads.isEmpty, "an IOTLB hit reads no table")
        _ = rig.physical(0x2000)
        #expect(reads == [path[3]])
    }

    @Test("the table-read hook sees every page of a nested walk: stage-2 tables for each pointer, host-physical first-stage tables")
    func hookNested() throws {
        let rig = try Rig(configuration: VTdConfiguration(pagingStructureCacheEntries: 0))
        let n = try NestedRig(rig)
        let data = try n.page()
        try n.map(0x5000, to: data)
        try n.attach()
        var reads: [UInt64] = []
        rig.unit.onTableRead = { reads.append($0) }
        #expect(rig.physical(0x5000, pasid: 9) == n.hpa(data))
        var expected: [UInt64] = []
        var gpa = n.root
        for level in (1...4).reversed() {
            expected += try tablePath(SecondStageFormat.self, rig.memory, root: n.s2.root, gpa)
            expected.append(n.hpa(gpa))
            gpa = try rig.memory.load64(try n.entryHPA(0x5000, level: level)) & 0x000F_FFFF_FFFF_F000
        }
        expected += try tablePath(SecondStageFormat.self, rig.memory, root: n.s2.root, data)
        #expect(reads.count == 24)
        #expect(reads == expected)
    }

    @Test("guest first-stage tables full of seeded random bytes give translations into guest pages or faults, never a trap")
    func randomGuestTables() throws {
        let rig = try Rig()
        let n = try NestedRig(rig)
        var rng = SeededRNG(seed: 7)
        var pages = [n.root]
        for i in 0..<63 { pages.append(try n.page(i % 9 == 0 ? .read : i % 13 == 0 ? .write : .readWrite)) }
        for p in pages {
            for slot in 0..<UInt64(512) {
                var v = rng.next()
                let target = pages[Int(rng.next(below: UInt64(pages.count)))] & ~0xFFF
                switch rng.next(below: 8) {
                case 0...4:
                    // A present user pointer into guest memory, other flags random (R/W, A, D, PS, XD ...).
                    v = target | (v & 0x8000_0000_0000_0FFF) | FirstStageFormat.p | FirstStageFormat.us
                case 5:
                    // A pointer with every flag random.
                    v = target | (v & 0x8000_0000_0000_0FFF)
                case 6: v &= 0x000F_FFFF_FFFF_FFFF
                default: break
                }
                try rig.memory.store64(n.hpa(p) + slot * 8, v)
            }
        }
        try n.attach(pasid: 9, ssade: true, eafe: true)
        let allowed = Set(pages.map { n.hpa($0) })
        var translated = 0, faults = 0
        for i in 0..<4000 {
            var va = rng.next()
            if rng.next(below: 2) == 0 { va &= 0x0000_7FFF_FFFF_FFFF }
            let access: DMAAccess = [[.read], [.write], [.read, .write], [.read, .execute]][Int(rng.next(below: 4))]
            switch rig.translate(va, pasid: 9, access) {
            case .translated(let pa, _, _):
                translated += 1
                #expect(allowed.contains(pa & ~0xFFF), "output \(pa) outside the guest's pages")
            case .fault: faults += 1
            }
            if i % 97 == 0 { try rig.bench.invalidate([.pasidIOTLB(DomainID(8), PASID(truncating: 9), .pasid)]) }
        }
        #expect(translated + faults == 4000)
        #expect(faults > 0)
        #expect(translated > 0, "some walks must reach a leaf, or the test exercises little")
    }
}
