import Testing
import Platform
import Formats
@testable import Hardware

@Suite("SMMUv3 faults and the event queue")
struct SMMUv3FaultTests {
    let urw: PagePermissions = [.read, .write, .user]

    @Test("every fault kind produces its architected event record")
    func everyFaultKind() throws {
        let rig = try SMMUv3Rig()
        let t = try rig.bench.stage1Table()
        try t.map(iova: 0x1000, physical: 0x9000, size: 0x1000, permissions: [.read, .user])
        try rig.attachStage1(t, asid: 5)
        // C_BAD_STREAMID: beyond LOG2SIZE (8).
        #expect(rig.fault(0x1000, sid: 300) == .cBadStreamID)
        // C_BAD_STE: V == 0.
        #expect(rig.fault(0x1000, sid: 1) == .cBadSTE)
        // C_BAD_SUBSTREAMID: an SSID where substreams are disabled.
        #expect(rig.fault(0x1000, ssid: 3) == .cBadSubstreamID)
        // F_TRANSLATION, F_PERMISSION, F_ADDR_SIZE (beyond T0SZ is a translation fault;
        // an output address beyond IPS is an address size fault).
        #expect(rig.fault(0x2000) == .fTranslation)
        #expect(rig.fault(1 << 50) == .fTranslation)
        #expect(rig.fault(0x1000, .write) == .fPermission)
        let wide = try rig.bench.stage1Table()
        try wide.map(iova: 0x1000, physical: 1 << 40, size: 0x1000, permissions: urw)
        var cd = ContextDescriptor.s1(asid: 6, ttb: wide.root, outputBits: 36)
        try rig.attachStage1(wide, cd: cd, sid: 2)
        #expect(rig.fault(0x1000, sid: 2) == .fAddrSize)
        // F_ACCESS: AF clear without HA or AFFD.
        let noAF = try rig.bench.stage1Table()
        try noAF.map(iova: 0x1000, physical: 0x9000, size: 0x1000, permissions: urw)
        try clearAF(rig, noAF, 0x1000)
        try rig.attachStage1(noAF, asid: 7, sid: 3)
        #expect(rig.fault(0x1000, sid: 3) == .fAccess)
        // C_BAD_CD: ASID beyond... a CD with V == 0.
        cd = .s1(asid: 8, ttb: t.root)
        cd.valid = false
        try rig.attachStage1(t, cd: cd, sid: 4)
        #expect(rig.fault(0x1000, sid: 4) == .cBadCD)
        // F_STE_FETCH / F_CD_FETCH / F_WALK_EABT: structures outside memory.
        let cdt = SMMUv3TestBench.CDTable(pointer: rig.unbackedFrame, format: .linear, s1CDMax: 0)
        try rig.bench.setSTE(5, rig.bench.stage1STE(cdt))
        #expect(rig.fault(0x1000, sid: 5) == .fCDFetch)
        let walkAbort = ContextDescriptor.s1(asid: 9, ttb: rig.unbackedFrame)
        try rig.attachStage1(t, cd: walkAbort, sid: 6)
        #expect(rig.fault(0x1000, sid: 6) == .fWalkEABT)
        let ev = try rig.events()
        #expect(ev.map(\.kind) == [.cBadStreamID, .cBadSTE, .cBadSubstreamID, .fTranslation, .fTranslation, .fPermission,
                                   .fAddrSize, .fAccess, .cBadCD, .fCDFetch, .fWalkEABT])
        #expect(ev[0].sid == 300 && ev[2].ssid == 3)
        #expect(ev[5].inputAddress == 0x1000 && !ev[5].read && !ev[5].s2)
        #expect(ev[9].fetchAddress == rig.unbackedFrame)
        #expect(ev[10].fetchAddress & ~0xFFF == rig.unbackedFrame && ev[10].eventClassValue == .tt)
    }

    @Test("F_STE_FETCH when the stream table is outside memory")
    func steFetch() throws {
        let rig = try SMMUv3Rig(enable: false)
        rig.unit.write64(SMMUv3Register.strtabBase, rig.unbackedFrame)
        rig.unit.write32(SMMUv3Register.strtabBaseCfg, 4)
        rig.unit.write64(SMMUv3Register.evtqBase, rig.bench.eventQueue | 7)
        try rig.bench.writeCR0(SMMUv3Bits.cr0EVTQEN | SMMUv3Bits.cr0SMMUEN)
        #expect(rig.fault(0, sid: 3) == .fSTEFetch)
        let ev = try rig.events()
        #expect(ev.first?.kind == .fSTEFetch && ev.first?.fetchAddress == rig.unbackedFrame + 3 * 64)
    }

    @Test("CD.R == 0 terminates stage 1 faults silently; configuration errors are recorded anyway")
    func recordControl() throws {
        let rig = try SMMUv3Rig()
        let t = try rig.bench.stage1Table()
        var cd = ContextDescriptor.s1(asid: 1, ttb: t.root)
        cd.record = false
        try rig.attachStage1(t, cd: cd)
        #expect(rig.fault(0x1000) == .fTranslation)
        #expect(rig.fault(0x1000, ssid: 1) == .cBadSubstreamID)
        #expect(try rig.events().map(\.kind) == [.cBadSubstreamID])
        #expect(rig.unit.counters.faultsNotRecorded == 1)
    }

    @Test("a full event queue drops events and toggles PROD.OVFLG once; CONS.OVACKFLG acknowledges; the interrupt is delivered")
    func overflow() throws {
        let rig = try SMMUv3Rig(eventQueueLog2: 2)                 // 4 entries
        var interrupts = 0
        rig.unit.onEventQueueInterrupt = { interrupts += 1 }
        for i in 0..<10 { _ = rig.fault(0, sid: 1000 + UInt32(i)) }
        #expect(rig.unit.read32(SMMUv3Register.evtqProd) & SMMUv3Bits.queueOverflow != 0)
        #expect(rig.unit.counters.eventsRecorded == 4 && rig.unit.counters.eventsLost == 6)
        #expect(rig.unit.counters.eventQueueOverflows == 1)
        rig.platform.scheduler.runUntilIdle()
        #expect(interrupts == 1)
        let (ev, overflowed) = try rig.bench.drainEvents()
        #expect(overflowed && ev.map(\.sid) == [1000, 1001, 1002, 1003])
        // Acknowledged: the next overflow toggles again.
        for i in 0..<5 { _ = rig.fault(0, sid: 2000 + UInt32(i)) }
        #expect(rig.unit.counters.eventQueueOverflows == 2)
        #expect(try rig.bench.drainEvents().events.count == 4)
    }

    @Test("events with EVTQEN clear are lost; an event queue outside memory raises EVTQ_ABT_ERR")
    func lostAndAbort() throws {
        let rig = try SMMUv3Rig()
        try rig.bench.writeCR0(SMMUv3Bits.cr0SMMUEN | SMMUv3Bits.cr0CMDQEN)
        _ = rig.fault(0, sid: 500)
        #expect(rig.unit.counters.eventsLost == 1)
        rig.unit.write64(SMMUv3Register.evtqBase, rig.unbackedFrame | 2)
        try rig.bench.writeCR0(SMMUv3Bits.cr0SMMUEN | SMMUv3Bits.cr0CMDQEN | SMMUv3Bits.cr0EVTQEN)
        _ = rig.fault(0, sid: 500)
        #expect((rig.unit.read32(SMMUv3Register.gerror) ^ rig.unit.read32(SMMUv3Register.gerrorn)) & SMMUv3Bits.gerrorEVTQAbort != 0)
    }

    @Test("the event interrupt as an MSI write of EVENTQ_IRQ_CFG1 to EVENTQ_IRQ_CFG0")
    func eventMSI() throws {
        let rig = try SMMUv3Rig(enable: false)
        let msi = rig.bench.statusPage + 128
        rig.unit.write64(SMMUv3Register.evtqIRQCfg0, msi)
        rig.unit.write32(SMMUv3Register.evtqIRQCfg1, 0x77)
        try rig.bench.enable()
        _ = rig.fault(0, sid: 600)
        #expect(try rig.memory.load32(msi) == 0x77)
    }

    func clearAF(_ rig: SMMUv3Rig, _ t: IOPageTable<ArmStage1Format>, _ va: UInt64) throws {
        var table = t.root
        for level in stride(from: 4, to: 1, by: -1) {
            table = try rig.memory.load64(table + PageTableGeometry.index(va, level: level) * 8) & ArmStage1Format.outputAddressMask
        }
        let leaf = table + PageTableGeometry.index(va, level: 1) * 8
        try rig.memory.store64(leaf, try rig.memory.load64(leaf) & ~ArmStage1Format.accessedBit)
    }
}
