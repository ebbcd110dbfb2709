import Testing
import Platform
import Formats
import Hardware
@testable import Kernel

/// The SMMUv3 driver's bring-up, command queue and streams.
@Suite("SMMUv3 driver: bring-up, command queue, streams")
struct ArmSMMUv3DriverTests {
    @Test("bring-up follows arm_smmu_device_reset: tables and CMDQ, invalidate all, EVTQ, PRIQ, ATSCHK, IRQs, SMMUEN")
    func bringUpOrder() throws {
        let rig = try ArmSMMUv3Rig(trace: true)
        let writes = rig.platform.trace.events.filter { $0.kind == .registerWrite && $0.track == rig.unit.trackID }
        let offsets = writes.map { UInt32($0.a) }
        let cr0Values = writes.filter { UInt32($0.a) == SMMUv3Register.cr0 }.map { UInt32($0.b) }
        typealias B = SMMUv3Bits
        #expect(cr0Values == [0, B.cr0CMDQEN, B.cr0CMDQEN | B.cr0EVTQEN, B.cr0CMDQEN | B.cr0EVTQEN | B.cr0PRIQEN,
                              B.cr0CMDQEN | B.cr0EVTQEN | B.cr0PRIQEN | B.cr0ATSCHK,
                              B.cr0CMDQEN | B.cr0EVTQEN | B.cr0PRIQEN | B.cr0ATSCHK | B.cr0SMMUEN])
        func first(_ o: UInt32) -> Int { offsets.firstIndex(of: o) ?? -1 }
        func cr0Write(_ v: UInt32) -> Int { writes.firstIndex { UInt32($0.a) == SMMUv3Register.cr0 && UInt32($0.b) == v } ?? -1 }
        let cmdqOn = cr0Write(B.cr0CMDQEN), evtqOn = cr0Write(B.cr0CMDQEN | B.cr0EVTQEN)
        #expect(first(SMMUv3Register.strtabBase) < cmdqOn && first(SMMUv3Register.strtabBaseCfg) < cmdqOn)
        #expect(first(SMMUv3Register.cmdqBase) < cmdqOn)
        // The invalidate-all batch is published (CMDQ_PROD moves) between CMDQEN and EVTQEN.
        let prodMoves = writes.indices.filter { UInt32(writes[$0].a) == SMMUv3Register.cmdqProd && writes[$0].b != 0 }
        #expect(prodMoves.count == 2 && prodMoves.allSatisfy { $0 > cmdqOn && $0 < evtqOn })
        #expect(first(SMMUv3Register.evtqBase) < evtqOn && first(SMMUv3Register.evtqBase) > cmdqOn)
        let irqOn = writes.lastIndex { UInt32($0.a) == SMMUv3Register.irqCtrl } ?? -1
        #expect(irqOn > evtqOn && irqOn < cr0Write(cr0Values.last!))
        #expect(rig.commands(.cfgiSTERange) == 1 && rig.commands(.tlbiEL2All) == 1 && rig.commands(.tlbiNSNHAll) == 1)
        #expect(rig.unit.read32(SMMUv3Register.cr0ack) == cr0Values.last!)
        #expect(rig.unit.read32(SMMUv3Register.irqCtrlAck) == B.irqGERROR | B.irqEVTQ | B.irqPRIQ)
        #expect(StreamTableConfig(base: 0, cfg: rig.unit.read32(SMMUv3Register.strtabBaseCfg)).format == .twoLevel)
        #expect(rig.smmu.twoLevelStreamTable && rig.smmu.asidBits == 16 && rig.smmu.vmidBits == 16)
    }

    @Test("a unit without 2-level tables, HYP or PRI gets a linear stream table and no TLBI_EL2_ALL or PRIQ")
    func linearBringUp() throws {
        var f = SMMUv3Features()
        f.twoLevelStreamTable = false; f.hyp = false; f.pri = false; f.ats = false; f.sidBits = 8
        let rig = try ArmSMMUv3Rig(features: f)
        #expect(!rig.smmu.twoLevelStreamTable)
        #expect(StreamTableConfig(base: 0, cfg: rig.unit.read32(SMMUv3Register.strtabBaseCfg)).format == .linear)
        #expect(rig.commands(.tlbiEL2All) == 0 && rig.commands(.tlbiNSNHAll) == 1)
        #expect(rig.unit.read32(SMMUv3Register.cr0ack) == SMMUv3Bits.cr0CMDQEN | SMMUv3Bits.cr0EVTQEN | SMMUv3Bits.cr0SMMUEN)
        let a = try rig.add("a", dev: 3)
        let d = try rig.ownedDomain(for: a)
        let pa = try rig.buffer()
        try rig.core.map(d, iova: 0x4000, physical: pa, size: 4096, permissions: .readWrite)
        #expect(rig.physical(a, 0x4000) == pa, "\(rig.translate(a, 0x4000))")
    }

    @Test("probe makes the level 2 array of the stream with aborting STEs; release returns the STE to abort and frees the CD table")
    func probeAndRelease() throws {
        let rig = try ArmSMMUv3Rig()
        let before = rig.smmu.l2Tables.count
        let a = try rig.add("a", bus: 3, dev: 1)
        #expect(rig.smmu.l2Tables.count == before + 1)
        #expect(rig.driver.streamID(of: a) == UInt32(a.requesterID.rawValue))
        // A neighbour in the same array that was never probed aborts silently.
        #expect(rig.unit.translate(streamID: rig.sid(a) + 1, address: 0x1000, access: .read) == .terminated(nil))
        // The default DMA domain is stage 1: a CD table exists.
        let master = try #require(a.driverData as? ArmSMMUMaster)
        #expect(master.cdTable != 0 && master.steUsesCDTable)
        let framesBefore = rig.platform.frames.inUse
        try rig.core.release(a)
        #expect(master.ste == StreamTableEntry.abort().words)
        #expect(rig.platform.frames.inUse < framesBefore)
        #expect(rig.unit.translate(streamID: master.sid, address: 0x1000, access: .read) == .terminated(nil))
        #expect(rig.smmu.masters.isEmpty)
    }

    @Test("a full command queue is waited for, and every command reaches the unit")
    func fullQueue() throws {
        let rig = try ArmSMMUv3Rig()
        let q = rig.smmu.cmdq
        let before = rig.commands(.tlbiNHASID)
        for i in 0..<600 { try q.issue(.tlbiNHASID(vmid: 0, asid: UInt16(1 + i % 7))) }
        try q.sync()
        #expect(q.fullWaits > 0)
        #expect(rig.commands(.tlbiNHASID) == before + 600)
    }

    @Test("an illegal command is skipped Linux's way (rewritten as CMD_SYNC, GERRORN acknowledged) and the sync completes")
    func illegalCommandSkipped() throws {
        let rig = try ArmSMMUv3Rig()
        let q = rig.smmu.cmdq
        // A range TLBI with TG set and NUM = SCALE = TTL = 0 is CERROR_ILL.
        try q.issue(.tlbiNHVA(vmid: 0, asid: 1, TLBIAddress(address: 0x1000, leaf: true, granule: .size4K)))
        try q.issue(.tlbiNHASID(vmid: 0, asid: 2))
        try q.sync()
        #expect(q.errorsSkipped == 1)
        #expect(rig.unit.counters.commandErrors == 1)
        let gerror = rig.unit.read32(SMMUv3Register.gerror), gerrorn = rig.unit.read32(SMMUv3Register.gerrorn)
        #expect((gerror ^ gerrorn) & SMMUv3Bits.gerrorCMDQ == 0)
        #expect(rig.commands(.tlbiNHASID) == 1)
        // The queue keeps working.
        try q.issueAndSync(.tlbiNHASID(vmid: 0, asid: 3))
        #expect(rig.commands(.tlbiNHASID) == 2)
    }

    @Test("a sync that does not complete in time is ETIMEDOUT, and the queue works afterwards")
    func syncTimeout() throws {
        let rig = try ArmSMMUv3Rig()
        let q = rig.smmu.cmdq
        q.timeoutNs = 10
        #expect(throws: IOMMUError.self) { try q.issueAndSync(.tlbiNHASID(vmid: 0, asid: 1)) }
        q.timeoutNs = 1_000_000
        try q.issueAndSync(.tlbiNHASID(vmid: 0, asid: 2))
        #expect(q.timeouts == 1)
    }
}

/// GET_HW_INFO's SMMUv3 payload comes from the unit's registers (Linux `arm_smmu_hw_info`).
@Suite("SMMUv3 driver: hw_info")
struct ArmSMMUv3HWInfoTests {
    @Test("hw_info is type 2 with IDR0..5, IIDR and AIDR read from the unit, 40 bytes")
    func hwInfoCarriesTheIDRegisters() throws {
        let rig = try ArmSMMUv3Rig()
        let a = try rig.add("a", dev: 3)
        let info = try #require(rig.driver.hardwareInfo(a))
        #expect(info.type == 2 && info.payload.count == 40)
        func word(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(info.payload[at + $1]) << (8 * UInt32($1)) } }
        #expect(word(0) == 0 && word(4) == 0, "flags and __reserved")
        #expect(word(8) == rig.unit.read32(SMMUv3Register.idr0) && word(8) != 0)
        #expect(word(12) == rig.unit.read32(SMMUv3Register.idr1) && word(28) == rig.unit.read32(SMMUv3Register.idr5))
        #expect(word(32) == rig.unit.read32(SMMUv3Register.iidr) && word(36) == rig.unit.read32(SMMUv3Register.aidr))
    }
}
