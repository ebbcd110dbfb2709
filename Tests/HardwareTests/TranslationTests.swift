import Testing
import Platform
import Formats
@testable import Hardware

@Suite("VT-d translation through hand-built tables")
struct TranslationTests {
    @Test("second-stage 4-level table translates RID_PASID requests to the mapped page and offset")
    func secondStageTranslates() throws {
        let rig = try Rig()
        let t = try rig.secondStage()
        try t.map(iova: 0x1234_5000, physical: 0x0200_0000, size: 0x2000, permissions: .readWrite)
        try rig.attachSecondStage(t)
        #expect(rig.physical(0x1234_5678) == 0x0200_0678)
        #expect(rig.physical(0x1234_6FF8, .write) == 0x0200_1FF8)
        #expect(rig.fault(0x1234_7000) == .smSecondStagePermission)
    }

    @Test("5-level second stage and 2 MiB / 1 GiB superpages translate")
    func fiveLevelAndSuperpages() throws {
        let rig = try Rig(memory: 4 << 30)
        let t = try rig.secondStage(levels: 5)
        try t.map(iova: 1 << 50, physical: 1 << 30, size: 1 << 30, permissions: .readWrite)
        try t.map(iova: 0x4020_0000, physical: 0x0060_0000, size: 0x20_0000, permissions: .read)
        try rig.attachSecondStage(t)
        #expect(rig.physical((1 << 50) + 0x1234_5678) == (1 << 30) + 0x1234_5678)
        #expect(rig.physical(0x4021_2345) == 0x0061_2345)
        #expect(rig.fault(0x4021_2345, .write) == .smSecondStagePermission)
    }

    @Test("first-stage table translates requests with a PASID, with U/S, R/W and XD honoured")
    func firstStageTranslates() throws {
        let rig = try Rig()
        let t = try rig.firstStage()
        try t.map(iova: 0x7000_0000, physical: 0x0300_0000, size: 0x1000, permissions: [.read, .write, .user])
        try t.map(iova: 0x7000_1000, physical: 0x0300_1000, size: 0x1000, permissions: [.read, .user, .execute])
        try t.map(iova: 0x7000_2000, physical: 0x0300_2000, size: 0x1000, permissions: [.read, .write])
        try rig.bench.setContext(rig.rid)
        try rig.bench.setPASIDEntry(rig.rid, pasid: 7, .make(pgtt: .firstStage, did: DomainID(1), firstStageTable: t.root,
                                                              supervisorRequests: true, executeRequests: true))
        #expect(rig.physical(0x7000_0010, pasid: 7, .write) == 0x0300_0010)
        #expect(rig.fault(0x7000_1000, pasid: 7, .write) == .smNoWrite)
        #expect(rig.physical(0x7000_1000, pasid: 7, [.read, .execute]) == 0x0300_1000)
        #expect(rig.fault(0x7000_0000, pasid: 7, [.read, .execute]) == .smNoExecute)
        #expect(rig.fault(0x7000_2000, pasid: 7, .read) == .smUserSupervisor)
        #expect(rig.physical(0x7000_2000, pasid: 7, [.read, .privileged]) == 0x0300_2000)
    }

    @Test("hardware sets the first-stage accessed bit, and the dirty bit on a write")
    func firstStageAccessedDirty() throws {
        let rig = try Rig()
        let t = try rig.firstStage()
        try t.map(iova: 0x1000, physical: 0x5000, size: 0x1000, permissions: [.read, .write, .user])
        try rig.bench.setContext(rig.rid)
        try rig.bench.setPASIDEntry(rig.rid, pasid: 3, .make(pgtt: .firstStage, did: DomainID(1), firstStageTable: t.root))
        let leaf = try #require(try PageTableWalker.walk(FirstStageFormat.self, memory: rig.memory, root: t.root, levels: 4,
                                                         input: 0x1000, addressMask: t.addressMask)).leafEntryAddress
        #expect(try rig.memory.load64(leaf) & (FirstStageFormat.accessedBit | FirstStageFormat.dirtyBit) == 0)
        _ = rig.physical(0x1000, pasid: 3, .read)
        #expect(try rig.memory.load64(leaf) & FirstStageFormat.accessedBit != 0)
        #expect(try rig.memory.load64(leaf) & FirstStageFormat.dirtyBit == 0)
        _ = rig.physical(0x1000, pasid: 3, .write)
        #expect(try rig.memory.load64(leaf) & FirstStageFormat.dirtyBit != 0)
    }

    @Test("pass-through PASID entry returns the input address")
    func passThrough() throws {
        let rig = try Rig()
        try rig.bench.setContext(rig.rid)
        try rig.bench.setPASIDEntry(rig.rid, pasid: 0, .make(pgtt: .passThrough, did: DomainID(1)))
        #expect(rig.physical(0xABC_D123) == 0xABC_D123)
    }

    @Test("nested translation runs every first-stage pointer and the output through the second stage")
    func nested() throws {
        let rig = try Rig()
        // Guest physical 0x1000_0000.. maps to host 0x0400_0000.. (identity-offset second stage).
        let s2 = try rig.secondStage()
        try s2.map(iova: 0x1000_0000, physical: 0x0400_0000, size: 0x40_0000, permissions: .readWrite)
        // The first-stage tables live in guest memory: build them in host frames and map them.
        let fs = try rig.firstStage()
        try fs.map(iova: 0x8000, physical: 0x1000_3000, size: 0x1000, permissions: [.read, .write, .user])
        // Relocate: make the second stage map each first-stage table's GPA (= its HPA + 0x2000_0000) to itself.
        var tables: [UInt64] = []
        var level = 4, table = fs.root
        while level >= 1 {
            tables.append(table)
            if level == 1 { break }
            let raw = try rig.memory.load64(table + PageTableGeometry.index(0x8000, level: level) * 8)
            table = raw & 0x000F_FFFF_FFFF_F000
            level -= 1
        }
        // Writable: hardware sets A/D in them through the second stage.
        for tbl in tables { try s2.map(iova: tbl + 0x2000_0000, physical: tbl, size: 0x1000, permissions: .readWrite) }
        // Rewrite the first-stage pointers as guest-physical addresses.
        for (i, tbl) in tables.dropLast().enumerated() {
            let slot = tbl + PageTableGeometry.index(0x8000, level: 4 - i) * 8
            let raw = try rig.memory.load64(slot)
            try rig.memory.store64(slot, raw + 0x2000_0000)
        }
        try rig.bench.setContext(rig.rid)
        try rig.bench.setPASIDEntry(rig.rid, pasid: 9, .make(pgtt: .nested, did: DomainID(8), secondStageTable: s2.root,
                                                              firstStageTable: fs.root + 0x2000_0000))
        #expect(rig.physical(0x8123, pasid: 9, .write) == 0x0400_3123)
    }

    @Test("endpoint DMA copies payloads through the translation and stops at the first faulting page")
    func endpointDMA() throws {
        let rig = try Rig()
        let t = try rig.secondStage()
        let buffer = try rig.platform.frames.allocate(.dmaBuffer)
        try t.map(iova: 0x10_0000, physical: buffer, size: 0x1000, permissions: .readWrite)
        try rig.attachSecondStage(t)
        let device = PCIeEndpoint(name: "nic", requesterID: rig.rid, unit: rig.unit)
        var completions: [PCIeEndpoint.Completion] = []
        device.submit(.write(0x10_0FF0, Array(0..<32))) { completions.append($0) }
        rig.platform.scheduler.runUntilIdle()
        let c = try #require(completions.first)
        #expect(c.transferred == 16)
        #expect(c.fault?.address == 0x10_1000)
        #expect(c.fault?.reason == .smSecondStagePermission)
        #expect(try rig.memory.load8(buffer + 0xFF0) == 0 && rig.memory.load8(buffer + 0xFFF) == 15)
        device.submit(.read(0x10_0FF8, length: 8)) { completions.append($0) }
        rig.platform.scheduler.runUntilIdle()
        #expect(completions.last?.data == [8, 9, 10, 11, 12, 13, 14, 15])
        #expect(device.counters.faulted == 1)
        #expect(rig.unit.pendingFaultRecords.first?.record.address == 0x10_1000)
    }

    @Test("translation disabled passes DMA through untranslated")
    func translationDisabled() throws {
        let rig = try Rig(enable: false)
        #expect(rig.physical(0x1234_5000) == 0x1234_5000)
    }
}
