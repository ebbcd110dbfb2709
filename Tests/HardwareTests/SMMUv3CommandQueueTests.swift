import Testing
import Platform
import Formats
@testable import Hardware

@Suite("SMMUv3 command queue in virtual time")
struct SMMUv3CommandQueueTests {
    @Test("commands are consumed one per step at their latency; CMD_SYNC's MSI write comes last")
    func syncWithMSI() throws {
        var config = SMMUv3Configuration()
        config.latency.tlbiNs = 1_000
        config.latency.syncNs = 100
        let rig = try SMMUv3Rig(configuration: config)
        let s = rig.platform.scheduler
        let start = s.now
        let status = rig.bench.statusPage + 64
        try rig.bench.submit([.tlbiNHAll(vmid: 0), .tlbiNSNHAll,
                              .sync(CommandSync(signal: .irq, msiAddress: status, msiData: 0xABCD))])
        s.run(until: start + 1_500)
        #expect(try rig.memory.load32(status) == 0)
        #expect(rig.unit.read32(SMMUv3Register.cmdqCons) & 0xFFFFF == 1)
        try rig.bench.wait { (try? rig.memory.load32(status)) == 0xABCD }
        #expect(s.now - start == 2_100)
        #expect(rig.unit.read32(SMMUv3Register.cmdqCons) & 0xFFFFF == 3)
        #expect(rig.unit.counters.syncsCompleted == 1)
    }

    @Test("CMD_SYNC with SIG_SEV wakes a waiter; SIG_NONE only moves CONS")
    func syncSignals() throws {
        let rig = try SMMUv3Rig()
        var woken = 0
        rig.unit.onSEV = { woken += 1 }
        try rig.bench.submit([.sync(.linux(msiAddress: nil))])
        rig.platform.scheduler.runUntilIdle()
        #expect(woken == 1)
        try rig.bench.submit([.sync(CommandSync(signal: .none))])
        rig.platform.scheduler.runUntilIdle()
        #expect(woken == 1 && rig.unit.counters.syncsCompleted == 2)
    }

    @Test("an illegal command stops the queue with CERROR_ILL and GERROR.CMDQ_ERR; Linux's skip (rewrite as CMD_SYNC, ack GERRORN) restarts it")
    func illegalCommandStopAndRestart() throws {
        let rig = try SMMUv3Rig()
        var gerrors = 0
        rig.unit.onGlobalErrorInterrupt = { gerrors += 1 }
        try rig.bench.submitRaw([SMMUCommand.tlbiNSNHAll.encode(), RawCommand(0xFF, 0), SMMUCommand.cfgiAll.encode()])
        rig.platform.scheduler.runUntilIdle()
        let cons = rig.unit.read32(SMMUv3Register.cmdqCons)
        #expect(cons & 0xFFFFF == 1)
        #expect((cons >> 24) & 0x7F == UInt32(CERROR.ill.rawValue))
        let gerror = rig.unit.read32(SMMUv3Register.gerror)
        #expect((gerror ^ rig.unit.read32(SMMUv3Register.gerrorn)) & SMMUv3Bits.gerrorCMDQ != 0)
        #expect(gerrors == 1)
        // More commands do not move the stopped queue.
        try rig.bench.submit([.tlbiNSNHAll])
        rig.platform.scheduler.runUntilIdle()
        #expect(rig.unit.read32(SMMUv3Register.cmdqCons) & 0xFFFFF == 1)
        // arm_smmu_cmdq_skip_err: overwrite the bad command with a CMD_SYNC, then acknowledge.
        let sync = SMMUCommand.sync(CommandSync(signal: .none)).encode()
        try rig.memory.store64(rig.bench.commandQueue + 16, sync.w0)
        try rig.memory.store64(rig.bench.commandQueue + 24, sync.w1)
        rig.unit.write32(SMMUv3Register.gerrorn, gerror)
        try rig.bench.sync()
        #expect(rig.unit.counters.commandErrors == 1)
        #expect(rig.unit.counters.commandsByOpcode[Int(SMMUCommandOpcode.cfgiSTERange.rawValue)] == 1)
    }

    @Test("acknowledging without fixing the command stops the queue on it again; moving CONS while disabled skips it")
    func illegalAgainThenSkipByCons() throws {
        let rig = try SMMUv3Rig()
        try rig.bench.submitRaw([RawCommand(0x46 | 3 << 12, 0)])          // CMD_SYNC with CS = 0b11
        rig.platform.scheduler.runUntilIdle()
        rig.unit.write32(SMMUv3Register.gerrorn, rig.unit.read32(SMMUv3Register.gerror))
        rig.platform.scheduler.runUntilIdle()
        #expect(rig.unit.counters.commandErrors == 2)
        // Disable the queue, move CONS past the command, acknowledge and re-enable.
        try rig.bench.writeCR0(rig.unit.read32(SMMUv3Register.cr0) & ~SMMUv3Bits.cr0CMDQEN)
        rig.unit.write32(SMMUv3Register.cmdqCons, 1)
        rig.unit.write32(SMMUv3Register.gerrorn, rig.unit.read32(SMMUv3Register.gerror))
        try rig.bench.writeCR0(rig.unit.read32(SMMUv3Register.cr0) | SMMUv3Bits.cr0CMDQEN)
        try rig.bench.sync()
        #expect(rig.unit.counters.syncsCompleted == 1)
    }

    @Test("a command fetch outside memory gives CERROR_ABT")
    func fetchAbort() throws {
        let rig = try SMMUv3Rig(enable: false)
        rig.unit.write64(SMMUv3Register.cmdqBase, rig.unbackedFrame | 4)
        try rig.bench.writeCR0(SMMUv3Bits.cr0CMDQEN)
        rig.unit.write32(SMMUv3Register.cmdqProd, 1)
        rig.platform.scheduler.runUntilIdle()
        #expect((rig.unit.read32(SMMUv3Register.cmdqCons) >> 24) & 0x7F == UInt32(CERROR.abt.rawValue))
    }

    @Test("CMD_SYNC waits for outstanding ATC invalidations, and times out with CERROR_ATC_INV_SYNC")
    func syncWaitsForATC() throws {
        var config = SMMUv3Configuration()
        config.latency.atcInvalidationTimeoutNs = 50_000
        let rig = try SMMUv3Rig(configuration: config)
        let ep = RecordingEndpoint(streamID: rig.sid, scheduler: rig.platform.scheduler, atcDelayNs: 10_000)
        rig.unit.connect(ep)
        let start = rig.platform.scheduler.now
        try rig.bench.sync([.atcInv(sid: rig.sid, ssid: nil, global: false, address: 0x4000, size: 0)])
        #expect(ep.atcInvalidations.count == 1)
        #expect(rig.platform.scheduler.now - start >= 10_000)
        #expect(rig.unit.counters.atcInvalidationsCompleted == 1)
        // An endpoint that never answers: the CMD_SYNC fails after the timeout.
        ep.atcDelayNs = nil
        try rig.bench.submit([.atcInv(sid: rig.sid, ssid: 5, global: false, address: 0, size: 52), .sync(CommandSync(signal: .none))])
        rig.platform.scheduler.runUntilIdle()
        let cons = rig.unit.read32(SMMUv3Register.cmdqCons)
        #expect((cons >> 24) & 0x7F == UInt32(CERROR.atcInvSync.rawValue))
        #expect(cons & 0xFFFFF == 3)                                     // on the CMD_SYNC
        #expect(rig.unit.counters.syncTimeouts == 1)
    }
}
