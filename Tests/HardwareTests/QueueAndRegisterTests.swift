import Testing
import Platform
import Formats
@testable import Hardware

@Suite("invalidation queue, registers, fault recording and bad input")
struct QueueAndRegisterTests {
    @Test("an invalidation wait descriptor writes its status only after the queued work's latency in virtual time")
    func waitCompletesInVirtualTime() throws {
        var latency = VTdLatency.uniform(0)
        latency.descriptorNs[Int(InvalidationDescriptor.iotlbType)] = 1_500
        latency.descriptorNs[Int(InvalidationDescriptor.waitType)] = 300
        let rig = try Rig(configuration: VTdConfiguration(latency: latency))
        let start = rig.platform.scheduler.now
        try rig.bench.submit([.iotlb(.global), .wait(InvalidationWait(statusWrite: true, statusData: 0xABCD, statusAddress: rig.bench.statusPage))])
        #expect(try rig.memory.load32(rig.bench.statusPage) == 0)
        rig.platform.scheduler.run(until: start + 1_700)
        #expect(try rig.memory.load32(rig.bench.statusPage) == 0)
        rig.platform.scheduler.run(until: start + 1_800)
        #expect(try rig.memory.load32(rig.bench.statusPage) == 0xABCD)
        #expect(rig.unit.read64(VTdRegister.invalidationQueueHead) == rig.unit.read64(VTdRegister.invalidationQueueTail))
        #expect(rig.unit.counters.descriptorsByType[Int(InvalidationDescriptor.iotlbType)] == 1)
        #expect(rig.unit.counters.waitsCompleted == 1)
    }

    @Test("a wait with IF sets ICS.IWC and raises the invalidation event once unmasked")
    func waitInterrupt() throws {
        let rig = try Rig()
        var events = 0
        rig.unit.onInvalidationEvent = { events += 1 }
        try rig.bench.submit([.wait(InvalidationWait(interrupt: true, statusWrite: false))])
        rig.platform.scheduler.runUntilIdle()
        #expect(rig.unit.read32(VTdRegister.invalidationCompletionStatus) & 1 == 1)
        #expect(events == 0, "IECTL.IM is set at reset")
        rig.unit.write32(VTdRegister.invalidationEventControl, 0)
        rig.platform.scheduler.runUntilIdle()
        #expect(events == 1)
        rig.unit.write32(VTdRegister.invalidationCompletionStatus, 1)
        #expect(rig.unit.read32(VTdRegister.invalidationCompletionStatus) & 1 == 0)
    }

    @Test("a tail beyond the queue is an invalidation queue error (IQEI 1) and translation keeps working")
    func tailBeyondQueue() throws {
        let rig = try Rig()
        let t = try rig.secondStage()
        try t.map(iova: 0x1000, physical: 0x9000, size: 0x1000, permissions: .read)
        try rig.attachSecondStage(t)
        rig.unit.write64(VTdRegister.invalidationQueueTail, 0x4_0000)
        rig.platform.scheduler.runUntilIdle()
        #expect(rig.unit.read32(VTdRegister.faultStatus) & VTdFaultStatus.invalidationQueueError != 0)
        #expect(rig.unit.read64(VTdRegister.invalidationQueueErrorRecord) & 0xF == UInt64(InvalidationQueueErrorCode.invalidTail.rawValue))
        #expect(rig.physical(0x1000) == 0x9000)
        #expect(rig.unit.counters.invalidationQueueErrors == 1)
    }

    @Test("a descriptor with reserved bits stops the queue on it; after software fixes it and clears IQE the queue resumes")
    func reservedBitsThenRecover() throws {
        let rig = try Rig()
        let bad = InvalidationDescriptor.iotlb(.global).encode()
        try rig.memory.store64(rig.bench.queue, bad.qw0 | 1 << 40) // reserved bit in qw0
        try rig.memory.store64(rig.bench.queue + 8, bad.qw1)
        rig.unit.write64(VTdRegister.invalidationQueueTail, 32)
        rig.platform.scheduler.runUntilIdle()
        #expect(rig.unit.read32(VTdRegister.faultStatus) & VTdFaultStatus.invalidationQueueError != 0)
        #expect(rig.unit.read64(VTdRegister.invalidationQueueErrorRecord) & 0xF == UInt64(InvalidationQueueErrorCode.reservedBits.rawValue))
        #expect(rig.unit.read64(VTdRegister.invalidationQueueHead) == 0, "head stays on the bad descriptor")
        try rig.memory.store64(rig.bench.queue, bad.qw0)
        rig.unit.write32(VTdRegister.faultStatus, VTdFaultStatus.invalidationQueueError)
        rig.platform.scheduler.runUntilIdle()
        #expect(rig.unit.read64(VTdRegister.invalidationQueueHead) == 32)
        #expect(rig.unit.counters.descriptors == 1)
    }

    @Test("unknown descriptor types, PASID descriptors in a 128-bit queue and bad wait addresses raise their IQEI codes",
          arguments: [(UInt8(0xF), InvalidationQueueErrorCode.invalidType), (UInt8(4), .invalidType)])
    func invalidTypes(_ type: UInt8, _ code: InvalidationQueueErrorCode) throws {
        let rig = try Rig()
        try rig.memory.store64(rig.bench.queue, UInt64(type))
        rig.unit.write64(VTdRegister.invalidationQueueTail, 32)
        rig.platform.scheduler.runUntilIdle()
        #expect(rig.unit.read64(VTdRegister.invalidationQueueErrorRecord) & 0xF == UInt64(code.rawValue))
    }

    @Test("PASID-based descriptors in a 128-bit queue are rejected with IQEI 5")
    func narrowQueue() throws {
        let rig = try Rig(enable: false)
        let q = try rig.platform.frames.allocate(.queue)
        rig.unit.write64(VTdRegister.invalidationQueueAddress, VTdQueueAddress.make(base: q, sizeOrder: 0, wide: false))
        rig.unit.write32(VTdRegister.globalCommand, VTdGlobal.queuedInvalidationEnable)
        let d = InvalidationDescriptor.pasidCache(.global).encode()
        try rig.memory.store64(q, d.qw0)
        rig.unit.write64(VTdRegister.invalidationQueueTail, 16)
        rig.platform.scheduler.runUntilIdle()
        #expect(rig.unit.read64(VTdRegister.invalidationQueueErrorRecord) & 0xF == UInt64(InvalidationQueueErrorCode.needsWideDescriptors.rawValue))
    }

    @Test("a wait descriptor whose status address is outside memory is an invalidation queue error, not a trap")
    func badWaitAddress() throws {
        let rig = try Rig()
        try rig.bench.submit([.wait(InvalidationWait(statusWrite: true, statusData: 1, statusAddress: 1 << 44))])
        rig.platform.scheduler.runUntilIdle()
        #expect(rig.unit.read64(VTdRegister.invalidationQueueErrorRecord) & 0xF == UInt64(InvalidationQueueErrorCode.invalidWaitAddress.rawValue))
    }

    @Test("IQA cannot be changed while queued invalidation is enabled; GSTS reflects TE, RTPS and QIES")
    func registers() throws {
        let rig = try Rig()
        let before = rig.unit.read64(VTdRegister.invalidationQueueAddress)
        rig.unit.write64(VTdRegister.invalidationQueueAddress, 0x1234_5000)
        #expect(rig.unit.read64(VTdRegister.invalidationQueueAddress) == before)
        let gsts = rig.unit.read32(VTdRegister.globalStatus)
        #expect(gsts & VTdGlobal.translationEnable != 0)
        #expect(gsts & VTdGlobal.setRootTablePointer != 0)
        #expect(gsts & VTdGlobal.queuedInvalidationEnable != 0)
        #expect(rig.unit.read64(VTdRegister.capability) == rig.unit.configuration.capability.raw)
        #expect(rig.unit.read32(VTdRegister.capability + 4) == UInt32(rig.unit.configuration.capability.raw >> 32))
        #expect(VTdExtendedCapability(raw: rig.unit.read64(VTdRegister.extendedCapability)).scalableMode)
        #expect(rig.unit.read32(VTdRegister.version) == 0x60)
    }

    @Test("accesses to unknown register offsets, up to the top of the offset space, read zero and change nothing")
    func unknownOffsets() throws {
        let rig = try Rig()
        let gsts = rig.unit.read32(VTdRegister.globalStatus)
        for offset: UInt32 in [0x300, 0xFFFF_FFF8, 0xFFFF_FFFC, 0xFFFF_FFFF] {
            #expect(rig.unit.read64(offset) == 0)
            rig.unit.write64(offset, .max)
            rig.unit.write32(offset, .max)
        }
        #expect(rig.unit.read32(VTdRegister.globalStatus) == gsts)
    }

    @Test("fault records keep the first faults, set PFO when full, and resume after software clears them")
    func faultOverflow() throws {
        let rig = try Rig(configuration: VTdConfiguration(capability: .make(faultRecords: 2)))
        var interrupts = 0
        rig.unit.onFaultEvent = { interrupts += 1 }
        rig.unit.write32(VTdRegister.faultEventControl, 0)
        for a: UInt64 in [0x1000, 0x2000, 0x3000] { _ = rig.translate(a, .write) }
        rig.platform.scheduler.runUntilIdle()
        let fsts = rig.unit.read32(VTdRegister.faultStatus)
        #expect(fsts & VTdFaultStatus.primaryFaultOverflow != 0)
        #expect(fsts & VTdFaultStatus.primaryPendingFault != 0)
        #expect(VTdFaultStatus.faultRecordIndex(fsts) == 0)
        #expect(rig.unit.pendingFaultRecords.map(\.record.address) == [0x1000, 0x2000])
        #expect(rig.unit.pendingFaultRecords.first?.record.isRead == false)
        #expect(interrupts == 1)
        #expect(rig.unit.counters.faultsLostToOverflow == 1)
        // Software services: clear F in each record (RW1C on the top dword), then PFO.
        let fro = rig.unit.configuration.capability.faultRecordingOffset
        rig.unit.write32(fro + 12, 1 << 31)
        rig.unit.write32(fro + 16 + 12, 1 << 31)
        rig.unit.write32(VTdRegister.faultStatus, VTdFaultStatus.primaryFaultOverflow)
        #expect(rig.unit.read32(VTdRegister.faultStatus) & (VTdFaultStatus.primaryFaultOverflow | VTdFaultStatus.primaryPendingFault) == 0)
        _ = rig.translate(0x4000)
        #expect(rig.unit.pendingFaultRecords.map(\.record.address) == [0x4000])
        rig.platform.scheduler.runUntilIdle()
        #expect(interrupts == 2)
    }

    @Test("FPD in the context entry suppresses recording, but the request still faults")
    func faultProcessingDisable() throws {
        let rig = try Rig()
        try rig.bench.setContext(rig.rid, fpd: true)
        #expect(rig.fault(0x1000) == .smPASIDDirectoryNotPresent)
        #expect(rig.unit.pendingFaultRecords.isEmpty)
        #expect(rig.unit.counters.faultsSuppressedByFPD == 1)
    }

    @Test("random garbage in every table and queue slot yields translations or faults, never a trap")
    func garbageTables() throws {
        let rig = try Rig(memory: 64 << 20)
        var rng = SeededRNG(seed: 99)
        let t = try rig.secondStage()
        try t.map(iova: 0, physical: 0x10_0000, size: 0x10_0000, permissions: .readWrite)
        try rig.attachSecondStage(t)
        let dir = try rig.bench.pasidEntryAddress(rig.rid, pasid: 0)
        let ca = rig.bench.contextEntryAddress(rig.rid)
        var translated = 0, faulted = 0
        for round in 0..<2_000 {
            // Scribble over one word of a live structure, then invalidate everything.
            let targets: [UInt64] = [rig.bench.rootTable, ca, ca + 8, dir, dir + 8, dir + 16, t.root, rig.bench.queue + 32]
            let target = targets[Int(rng.next(below: UInt64(targets.count)))]
            let value = round % 3 == 0 ? rng.next() : rng.next() & 0x0000_0000_3FFF_FFFF
            try rig.memory.store64(target, value)
            try? rig.bench.invalidate([.contextCache(.global), .pasidCache(.global), .iotlb(.global)], timeoutNs: 10_000)
            if rig.unit.read32(VTdRegister.faultStatus) & VTdFaultStatus.invalidationQueueError != 0 {
                rig.unit.write32(VTdRegister.faultStatus, VTdFaultStatus.invalidationQueueError)
            }
            let pasid: UInt32? = round % 2 == 0 ? nil : UInt32(rng.next(below: 1 << 20))
            switch rig.translate(rng.next(below: 1 << 40), pasid: pasid, [.read, .write]) {
            case .translated: translated += 1
            case .fault: faulted += 1
            }
            for i in 0..<2 {
                let fro = rig.unit.configuration.capability.faultRecordingOffset
                rig.unit.write32(fro + UInt32(i) * 16 + 12, 1 << 31)
            }
            rig.unit.write32(VTdRegister.faultStatus, VTdFaultStatus.primaryFaultOverflow)
        }
        #expect(translated + faulted == 2_000)
        #expect(faulted > 0)
    }
}
