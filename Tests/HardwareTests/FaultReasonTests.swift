import Testing
import Platform
import Formats
@testable import Hardware

/// Each case builds tables (or registers) crafted to cause one architectural fault reason.
@Suite("every modelled VT-d fault reason is produced by a table built to cause it")
struct FaultReasonTests {
    struct Case: CustomTestStringConvertible, Sendable {
        let reason: VTdFaultReason
        let build: @Sendable (Rig) throws -> TranslationResult
        var testDescription: String { reason.description }
    }

    /// Device context + second-stage table mapping 0x1000 (R only) and PASID 0 pointing at it.
    static func ss(_ rig: Rig, perms: PagePermissions = .read) throws -> IOPageTable<SecondStageFormat> {
        let t = try rig.secondStage()
        try t.map(iova: 0x1000, physical: 0x9000, size: 0x1000, permissions: perms)
        try rig.attachSecondStage(t)
        return t
    }

    /// Context + first-stage PASID entry for PASID 5.
    static func fs(_ rig: Rig, perms: PagePermissions = [.read, .user], sre: Bool = true, ere: Bool = true) throws -> IOPageTable<FirstStageFormat> {
        let t = try rig.firstStage()
        try t.map(iova: 0x1000, physical: 0x9000, size: 0x1000, permissions: perms)
        try rig.bench.setContext(rig.rid)
        try rig.bench.setPASIDEntry(rig.rid, pasid: 5, .make(pgtt: .firstStage, did: DomainID(1), firstStageTable: t.root,
                                                              supervisorRequests: sre, executeRequests: ere))
        return t
    }

    static func pasidEntryAddress(_ rig: Rig, _ pasid: UInt32 = 0) throws -> UInt64 {
        try rig.bench.pasidEntryAddress(rig.rid, pasid: pasid)
    }

    static let cases: [Case] = [
        Case(reason: .rootTableInvalid) { rig in
            rig.unit.write64(VTdRegister.rootTableAddress, rig.bench.rootTable) // TTM 0: legacy mode is not modelled
            rig.unit.write32(VTdRegister.globalCommand, VTdGlobal.setRootTablePointer | VTdGlobal.translationEnable)
            return rig.translate(0x1000)
        },
        Case(reason: .smRootEntryAccessError) { rig in
            rig.unit.write64(VTdRegister.rootTableAddress, rig.unbackedFrame | VTdRootTableAddress.scalableMode)
            rig.unit.write32(VTdRegister.globalCommand, VTdGlobal.setRootTablePointer | VTdGlobal.translationEnable)
            return rig.translate(0x1000)
        },
        Case(reason: .smRootEntryNotPresent) { rig in rig.translate(0x1000) },
        Case(reason: .smRootEntryReserved) { rig in
            _ = try ss(rig)
            let lo = try rig.memory.load64(rig.bench.rootTable)
            try rig.memory.store64(rig.bench.rootTable, lo | 1 << 5)
            return rig.translate(0x1000)
        },
        Case(reason: .smContextEntryAccessError) { rig in
            try rig.memory.store64(rig.bench.rootTable, rig.unbackedFrame | 1)
            return rig.translate(0x1000)
        },
        Case(reason: .smContextEntryNotPresent) { rig in
            _ = try ss(rig)
            return rig.translate(0x1000, rid: RequesterID(bus: 0, device: 3, function: 0))
        },
        Case(reason: .smContextEntryReserved) { rig in
            _ = try ss(rig)
            let ca = rig.bench.contextEntryAddress(rig.rid)
            try rig.memory.store64(ca + 16, 1)
            return rig.translate(0x1000)
        },
        Case(reason: .smPASIDEnableClear) { rig in
            try rig.bench.setContext(rig.rid, pasidEnable: false)
            return rig.translate(0x1000, pasid: 3)
        },
        Case(reason: .smPASIDTooLarge) { rig in
            try rig.bench.setContext(rig.rid, pdts: 0) // 128 directory entries: PASIDs below 8192
            return rig.translate(0x1000, pasid: 8192)
        },
        Case(reason: .smRIDPASIDError) { rig in
            try rig.bench.setContext(rig.rid, pdts: 0, ridPASID: 9000)
            return rig.translate(0x1000)
        },
        Case(reason: .smPASIDDirectoryAccessError) { rig in
            _ = try ss(rig)
            let ca = rig.bench.contextEntryAddress(rig.rid)
            let v0 = try rig.memory.load64(ca)
            try rig.memory.store64(ca, (v0 & 0xFFF) | rig.unbackedFrame)
            return rig.translate(0x1000)
        },
        Case(reason: .smPASIDDirectoryNotPresent) { rig in
            try rig.bench.setContext(rig.rid)
            return rig.translate(0x1000)
        },
        Case(reason: .smPASIDDirectoryReserved) { rig in
            let dir = try rig.bench.setContext(rig.rid)
            let table = try rig.platform.frames.allocate(.pasidTable)
            try rig.memory.store64(dir, table | 1 | 1 << 4)
            return rig.translate(0x1000)
        },
        Case(reason: .smPASIDEntryAccessError) { rig in
            let dir = try rig.bench.setContext(rig.rid)
            try rig.memory.store64(dir, rig.unbackedFrame | 1)
            return rig.translate(0x1000)
        },
        Case(reason: .smPASIDEntryNotPresent) { rig in
            _ = try ss(rig)
            return rig.translate(0x1000, pasid: 1)
        },
        Case(reason: .smPASIDEntryReserved) { rig in
            _ = try ss(rig)
            try rig.memory.store64(try pasidEntryAddress(rig) + 24, 1)
            return rig.translate(0x1000)
        },
        Case(reason: .smPASIDEntryInvalid) { rig in
            _ = try ss(rig)
            let a = try pasidEntryAddress(rig)
            let v0 = try rig.memory.load64(a)
            try rig.memory.store64(a, (v0 & ~(7 << 6)) | 6 << 6) // PGTT 6 is reserved
            return rig.translate(0x1000)
        },
        Case(reason: .smEREClear) { rig in
            _ = try fs(rig, ere: false)
            return rig.translate(0x1000, pasid: 5, [.read, .execute])
        },
        Case(reason: .smSREClear) { rig in
            _ = try fs(rig, sre: false)
            return rig.translate(0x1000, pasid: 5, [.read, .privileged])
        },
        Case(reason: .smFirstStageAccessError) { rig in
            try rig.bench.setContext(rig.rid)
            try rig.bench.setPASIDEntry(rig.rid, pasid: 5, .make(pgtt: .firstStage, did: DomainID(1), firstStageTable: rig.unbackedFrame))
            return rig.translate(0x1000, pasid: 5)
        },
        Case(reason: .smFirstStageNotPresent) { rig in
            _ = try fs(rig)
            return rig.translate(0x2000, pasid: 5)
        },
        Case(reason: .smFirstStageReserved) { rig in
            let t = try fs(rig)
            let raw = try rig.memory.load64(t.root)
            try rig.memory.store64(t.root, raw | FirstStageFormat.ps) // PS in a PML4 entry is reserved
            return rig.translate(0x1000, pasid: 5)
        },
        Case(reason: .smFirstStagePML4AccessError) { rig in
            let s2 = try rig.secondStage()
            try s2.map(iova: 0x4000_0000, physical: rig.unbackedFrame, size: 0x1000, permissions: .readWrite)
            try rig.bench.setContext(rig.rid)
            try rig.bench.setPASIDEntry(rig.rid, pasid: 5, .make(pgtt: .nested, did: DomainID(9), secondStageTable: s2.root,
                                                                  firstStageTable: 0x4000_0000))
            return rig.translate(0x1000, pasid: 5)
        },
        Case(reason: .smNestedFirstStageBeyondMGAW) { rig in
            let s2 = try rig.secondStage()
            try rig.bench.setContext(rig.rid)
            try rig.bench.setPASIDEntry(rig.rid, pasid: 5, .make(pgtt: .nested, did: DomainID(9), secondStageTable: s2.root,
                                                                  firstStageTable: 1 << 50))
            return rig.translate(0x1000, pasid: 5)
        },
        Case(reason: .smNestedFirstStagePML4ReadError) { rig in
            let s2 = try rig.secondStage()
            let fsRoot = try rig.platform.frames.allocate(.pageTable)
            try s2.map(iova: 0x4000_0000, physical: fsRoot, size: 0x1000, permissions: .write)
            try rig.bench.setContext(rig.rid)
            try rig.bench.setPASIDEntry(rig.rid, pasid: 5, .make(pgtt: .nested, did: DomainID(9), secondStageTable: s2.root,
                                                                  firstStageTable: 0x4000_0000))
            return rig.translate(0x1000, pasid: 5)
        },
        Case(reason: .smNestedFirstStageReadError) { rig in
            let s2 = try rig.secondStage()
            let fsRoot = try rig.platform.frames.allocate(.pageTable)
            let fsNext = try rig.platform.frames.allocate(.pageTable)
            try s2.map(iova: 0x4000_0000, physical: fsRoot, size: 0x1000, permissions: .readWrite)
            try s2.map(iova: 0x4000_1000, physical: fsNext, size: 0x1000, permissions: .write)
            try rig.memory.store64(fsRoot, FirstStageFormat.table(address: 0x4000_1000))
            try rig.bench.setContext(rig.rid)
            try rig.bench.setPASIDEntry(rig.rid, pasid: 5, .make(pgtt: .nested, did: DomainID(9), secondStageTable: s2.root,
                                                                  firstStageTable: 0x4000_0000))
            return rig.translate(0x1000, pasid: 5)
        },
        Case(reason: .smNestedFirstStageWriteError) { rig in
            // The root entry's A bit is clear and the second stage maps its page read-only:
            // hardware cannot set A (VT-d §3.8).
            let s2 = try rig.secondStage()
            let fsRoot = try rig.platform.frames.allocate(.pageTable)
            let fsNext = try rig.platform.frames.allocate(.pageTable)
            try s2.map(iova: 0x4000_0000, physical: fsRoot, size: 0x1000, permissions: .read)
            try s2.map(iova: 0x4000_1000, physical: fsNext, size: 0x1000, permissions: .readWrite)
            try rig.memory.store64(fsRoot, FirstStageFormat.table(address: 0x4000_1000))
            try rig.bench.setContext(rig.rid)
            try rig.bench.setPASIDEntry(rig.rid, pasid: 5, .make(pgtt: .nested, did: DomainID(9), secondStageTable: s2.root,
                                                                  firstStageTable: 0x4000_0000))
            return rig.translate(0x1000, pasid: 5)
        },
        Case(reason: .smSecondStageAccessError) { rig in
            try rig.bench.setContext(rig.rid)
            try rig.bench.setPASIDEntry(rig.rid, pasid: 0, .make(pgtt: .secondStage, did: DomainID(5), secondStageTable: rig.unbackedFrame))
            return rig.translate(0x1000)
        },
        Case(reason: .smSecondStagePermission) { rig in
            _ = try ss(rig)
            return rig.translate(0x1000, .write)
        },
        Case(reason: .smSecondStageReserved) { rig in
            let t = try ss(rig)
            let raw = try rig.memory.load64(t.root)
            try rig.memory.store64(t.root, raw | SecondStageFormat.ps)
            return rig.translate(0x1000)
        },
        Case(reason: .smNonCanonicalAddress) { rig in
            _ = try fs(rig)
            return rig.translate(0x0000_8000_0000_0000, pasid: 5)
        },
        Case(reason: .smUserSupervisor) { rig in
            _ = try fs(rig, perms: [.read])
            return rig.translate(0x1000, pasid: 5)
        },
        Case(reason: .smNoExecute) { rig in
            _ = try fs(rig, perms: [.read, .user])
            return rig.translate(0x1000, pasid: 5, [.read, .execute])
        },
        Case(reason: .smAddressBeyondMax) { rig in
            _ = try ss(rig)
            return rig.translate(1 << 48)
        },
        Case(reason: .smNoWrite) { rig in
            _ = try fs(rig, perms: [.read, .user])
            return rig.translate(0x1000, pasid: 5, .write)
        },
        Case(reason: .smNoRead) { rig in
            // Nested: the first stage allows reads, the second stage maps the page write-only.
            let s2 = try rig.secondStage()
            let fs = try rig.firstStage()
            try fs.map(iova: 0x1000, physical: 0x4000_9000, size: 0x1000, permissions: [.read, .write, .user])
            try s2.map(iova: 0x4000_9000, physical: 0x9000, size: 0x1000, permissions: .write)
            // Identity-map the first-stage tables in the second stage (they are at their own GPAs).
            var table = fs.root, level = 4
            while true {
                try s2.map(iova: table, physical: table, size: 0x1000, permissions: .readWrite)
                if level == 1 { break }
                table = try rig.memory.load64(table + PageTableGeometry.index(0x1000, level: level) * 8) & 0x000F_FFFF_FFFF_F000
                level -= 1
            }
            try rig.bench.setContext(rig.rid)
            try rig.bench.setPASIDEntry(rig.rid, pasid: 5, .make(pgtt: .nested, did: DomainID(9), secondStageTable: s2.root,
                                                                  firstStageTable: fs.root))
            return rig.translate(0x1000, pasid: 5, .read)
        },
    ]

    @Test("the crafted table produces exactly its fault reason, and the fault is recorded", arguments: cases)
    func produces(_ c: Case) throws {
        // A 52-bit host address width lets a nested first-stage pointer lie beyond the 48-bit
        // second-stage input range without first tripping the reserved-bit check.
        let rig = try Rig(configuration: VTdConfiguration(hostAddressWidth: 52), memory: 1 << 30)
        let result = try c.build(rig)
        #expect(result == .fault(c.reason))
        let records = rig.unit.pendingFaultRecords
        #expect(records.count == 1)
        #expect(records.first?.record.reason == c.reason.rawValue)
        #expect(records.first?.record.source == (c.reason == .smContextEntryNotPresent ? RequesterID(bus: 0, device: 3, function: 0) : rig.rid))
        #expect(rig.unit.counters.faults == 1)
    }

    @Test("the cases cover distinct reasons")
    func distinct() {
        #expect(Set(Self.cases.map(\.reason)).count == Self.cases.count)
    }
}
