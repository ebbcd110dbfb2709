import Testing
import Platform
import Formats
import Hardware
@testable import Kernel
import IOMMUFD
@testable import Simulation

/// The guest's commands through IOMMU_HWPT_INVALIDATE on an SMMUv3 vIOMMU (6.17
/// `arm_vsmmu_cache_invalidate`), the host's unmaps of the nest parent, guest events through
/// the vEVENTQ, and teardown.
@Suite struct SMMUv3NestedInvalidateTests {
    /// Without a TLBI the unit keeps the combined entry; the guest's TLBI_NH_VA (VMID 0 as the
    /// guest wrote it, replaced by the vIOMMU's) drops it.
    @Test func guestTLBIDropsTheTranslation() throws {
        let vmm = try ArmNestedVMM()
        let (v, _, _) = try vmm.nestedSetup()
        let vsmmu = try #require((vmm.ctx.object(v) as? VIOMMUObject)?.viommu as? ArmVSMMU)
        #expect(vmm.dmaReaches(page: 0, value: 1))
        vmm.setGuestPTE(page: 0, present: false)
        // The cache really holds it: the DMA still lands.
        #expect(vmm.unit.cachedTLBEntries(asid: ArmNestedVMM.guestASID, vmid: vsmmu.vmid) > 0)
        #expect(vmm.dmaReaches(page: 0, value: 2))
        let before = vmm.unit.counters.commandsByOpcode[0x12]
        let r = vmm.invalidate(v, [ArmNestedVMM.tlbiNHVA(address: ArmNestedVMM.gva)])
        #expect(r.rc == 0 && r.done == 1)
        #expect(vmm.unit.counters.commandsByOpcode[0x12] == before + 1)
        #expect(!vmm.dmaReaches(page: 0, value: 3))
        // The other pages still translate.
        #expect(vmm.dmaReaches(page: 1, value: 4))
    }

    /// TLBI_NSNH_ALL becomes TLBI_NH_ALL of the VMID; TLBI_NH_ASID keeps the guest's ASID.
    @Test func nsnhAllAndASID() throws {
        let vmm = try ArmNestedVMM()
        let (v, _, _) = try vmm.nestedSetup()
        #expect(vmm.dmaReaches(page: 0, value: 1) && vmm.dmaReaches(page: 1, value: 1))
        vmm.setGuestPTE(page: 0, present: false)
        let nh = vmm.unit.counters.commandsByOpcode[0x10], nsnh = vmm.unit.counters.commandsByOpcode[0x30]
        #expect(vmm.invalidate(v, [[0x30, 0xFFFF]]).rc == 0)
        #expect(vmm.unit.counters.commandsByOpcode[0x10] == nh + 1)
        #expect(vmm.unit.counters.commandsByOpcode[0x30] == nsnh)
        #expect(!vmm.dmaReaches(page: 0, value: 2))
        #expect(vmm.dmaReaches(page: 1, value: 2))
        vmm.setGuestPTE(page: 1, present: false)
        #expect(vmm.dmaReaches(page: 1, value: 3))
        #expect(vmm.invalidate(v, [[0x11 | UInt64(ArmNestedVMM.guestASID) << 48, 0]]).rc == 0)
        #expect(!vmm.dmaReaches(page: 1, value: 4))
    }

    /// Anything but TLBI_NH_*, NSNH_ALL, ATC_INV and CFGI_CD(_ALL) is EIO with `entry_num` the
    /// failing index; commands converted before it in the same batch are counted done but
    /// never issued (6.17 jumps out before `arm_smmu_cmdq_issue_cmdlist`).
    @Test(arguments: [UInt64(0x03) /* CFGI_STE */, 0x28 /* TLBI_S12_VMALL */, 0x2A /* TLBI_S2_IPA */, 0x20 /* TLBI_EL2_ALL */,
                      0x46 /* CMD_SYNC */, 0x44 /* RESUME */, 0x41 /* PRI_RESP */, 0x04 /* CFGI_ALL */, 0x7F])
    func refusedOpcodes(op: UInt64) throws {
        let vmm = try ArmNestedVMM()
        let (v, _, _) = try vmm.nestedSetup()
        #expect(vmm.dmaReaches(page: 0, value: 1))
        vmm.setGuestPTE(page: 0, present: false)
        let issued = vmm.unit.counters.commands
        let r = vmm.invalidate(v, [ArmNestedVMM.tlbiNHVA(address: ArmNestedVMM.gva), [op | UInt64(ArmNestedVMM.vsid) << 32, 0],
                                   [0x10, 0]])
        #expect(r.rc == -Errno.EIO)
        #expect(r.done == 1)
        // Nothing reached the queue: the stale translation stays.
        vmm.machine.scheduler.runUntilIdle()
        #expect(vmm.unit.counters.commands == issued)
        #expect(vmm.dmaReaches(page: 0, value: 2))
    }

    /// ATC_INV / CFGI_CD / CFGI_CD_ALL name the guest's vSID: the vDEVICE's gives the physical
    /// StreamID; one with no vDEVICE is EIO.
    @Test func vsidTranslation() throws {
        let vmm = try ArmNestedVMM()
        let (v, vdev, _) = try vmm.nestedSetup()
        #expect(vmm.dmaReaches(page: 0, value: 1))
        let cdBefore = vmm.unit.counters.commandsByOpcode[0x05]
        #expect(vmm.invalidate(v, [[0x05 | ArmNestedVMM.vsid << 32, 1], [0x06 | ArmNestedVMM.vsid << 32, 0]]).rc == 0)
        #expect(vmm.unit.counters.commandsByOpcode[0x05] == cdBefore + 1)
        let r = vmm.invalidate(v, [[0x06 | ArmNestedVMM.vsid << 32, 0], [0x05 | UInt64(0x99) << 32, 1]])
        #expect(r.rc == -Errno.EIO && r.done == 1)
        // The guest's CD changes are seen once CFGI_CD names them: a new ASID in CD 0.
        var cd = ContextDescriptor.s1(asid: 9, ttb: ArmNestedVMM.tableGPA(level: 0))
        vmm.write(vmm.tableVA, ArmNestedVMM.bytes((0..<8).map { cd.data[$0] }))
        #expect(vmm.invalidate(v, [[0x05 | ArmNestedVMM.vsid << 32, 1], [0x10, 0]]).rc == 0)
        #expect(vmm.dmaReaches(page: 2, value: 5))
        #expect(vmm.unit.cachedTLBEntries(asid: 9) > 0)
        cd.valid = false
        // Once the vDEVICE is gone its vSID means nothing (after the device left the nested domain).
        _ = try vmm.ctx.replace(vmm.devID, with: vmm.parent)
        #expect(vmm.destroy(try #require(vdev)) == 0)
        #expect(vmm.invalidate(v, [[0x06 | ArmNestedVMM.vsid << 32, 0]]).rc == -Errno.EIO)
    }

    /// What the driver forwards is the guest's own business beyond the VMID/SID: a command
    /// the unit finds illegal (reserved bits) is refused with CERROR_ILL and skipped as
    /// Linux's `arm_smmu_cmdq_skip_err` does, and the call still succeeds; an ATC_INV to a
    /// device without ATS completes.
    @Test func illegalFieldsAreTheUnits() throws {
        let vmm = try ArmNestedVMM()
        let (v, _, _) = try vmm.nestedSetup()
        let errors = vmm.unit.counters.commandErrors
        let r = vmm.invalidate(v, [[0x12 | UInt64(0xFFFF) << 16, ~0], [0x40 | ArmNestedVMM.vsid << 32, 52]])
        #expect(r.rc == 0 && r.done == 2)
        #expect(vmm.unit.counters.commandErrors == errors + 1)
        #expect(vmm.dmaReaches(page: 0, value: 9))
    }

    /// A batch whose CMD_SYNC does not complete: the error, and `entry_num` one less than
    /// the commands converted (6.17 `cur--`). The queue goes on afterwards.
    @Test func failedIssueReportsOneLess() throws {
        let vmm = try ArmNestedVMM()
        let (v, _, _) = try vmm.nestedSetup()
        let q = vmm.driver.units[0].cmdq
        let saved = q.timeoutNs
        q.timeoutNs = 1
        let r = vmm.invalidate(v, [[0x10, 0], [0x10, 0], [0x10, 0]])
        q.timeoutNs = saved
        #expect(r.rc == -110 && r.done == 2)
        #expect(vmm.invalidate(v, [[0x10, 0]]).rc == 0)
        #expect(vmm.dmaReaches(page: 0, value: 3))
    }

    @Test func arrayChecks() throws {
        let vmm = try ArmNestedVMM()
        let (v, _, _) = try vmm.nestedSetup()
        #expect(vmm.invalidate(v, [ArmNestedVMM.tlbiNHVA(address: 0)], dataType: UAPI.invalidateDataVTdS1).rc == -Errno.EINVAL)
        // Shorter entries are zero-extended, longer ones need a zero tail.
        #expect(vmm.invalidate(v, [[0x10]], entryLength: 8).rc == 0)
        #expect(vmm.invalidate(v, [[0x10, 0, 0]], entryLength: 24).rc == 0)
        #expect(vmm.invalidate(v, [[0x10, 0, 1]], entryLength: 24).rc == -Errno.E2BIG)
        // More than a batch (63 commands per CMD_SYNC).
        let syncs = vmm.unit.counters.syncsCompleted
        #expect(vmm.invalidate(v, Array(repeating: [0x10, 0], count: 130)).done == 130)
        #expect(vmm.unit.counters.syncsCompleted - syncs == 3)
    }

    /// The host unmaps guest RAM under a nested master: TLBI_S2_IPA, then TLBI_NH_ALL of the
    /// VMID (6.17 `arm_smmu_tlb_inv_range_domain` with `nest_parent`), so no combined entry
    /// survives.
    @Test func hostUnmapDropsNestedEntries() throws {
        let vmm = try ArmNestedVMM()
        _ = try vmm.nestedSetup()
        #expect(vmm.dmaReaches(page: 0, value: 1))
        let nhAll = vmm.unit.counters.commandsByOpcode[0x10], s2ipa = vmm.unit.counters.commandsByOpcode[0x2A]
        #expect(vmm.unmap(iova: ArmNestedVMM.dataGPA, length: ArmNestedVMM.regionSize) == 0)
        #expect(vmm.unit.counters.commandsByOpcode[0x2A] > s2ipa)
        #expect(vmm.unit.counters.commandsByOpcode[0x10] == nhAll + 1)
        #expect(vmm.dmaWrite(ArmNestedVMM.gva)?.fault != nil)
        #expect(vmm.machine.oracle.violations.isEmpty)
    }

    /// A stage 1 fault of the nested master is a guest event: the record with the vSID in
    /// its StreamID field, on the vEVENTQ.
    @Test func guestEventsReachTheVEventQueue() throws {
        let vmm = try ArmNestedVMM()
        let (v, _, _) = try vmm.nestedSetup()
        let q = vmm.veventqAlloc(v)
        try #require(q.rc == 0)
        vmm.setGuestPTE(page: 3, present: false)
        #expect(vmm.dmaWrite(ArmNestedVMM.gva + 3 * 4096)?.fault != nil)
        vmm.machine.scheduler.runUntilIdle()
        let queue = try #require(vmm.ctx.object(q.id) as? VEventQueueObject)
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = buffer.withUnsafeMutableBytes { queue.read(into: $0) }
        try #require(n == 8 + 32)
        let w0 = (0..<8).reduce(UInt64(0)) { $0 | UInt64(buffer[8 + $1]) << (8 * UInt64($1)) }
        #expect(UInt8(truncatingIfNeeded: w0) == SMMUEventID.fTranslation.rawValue)
        #expect(w0 >> 32 == ArmNestedVMM.vsid)
        let w2 = (0..<8).reduce(UInt64(0)) { $0 | UInt64(buffer[24 + $1]) << (8 * UInt64($1)) }
        #expect(w2 & ~0xFFF == ArmNestedVMM.gva + 3 * 4096)
        #expect(vmm.driver.units[0].guestEventsReported == 1)
    }

    /// The guest's SubstreamIDs are its CD table's (S1CDMax in the vSTE): DMA with PASID 1
    /// goes through the guest's CD 1; once the guest clears CD 1 and sends CFGI_CD for its
    /// vSID and SSID 1 (converted to the StreamID), the unit reports C_BAD_CD, which reaches
    /// the vEVENTQ with the vSID and the SSID.
    @Test func guestSubstreams() throws {
        let vmm = try ArmNestedVMM(pasids: 16)
        let v = vmm.viommuAlloc()
        try #require(v.rc == 0)
        try #require(vmm.vdeviceAlloc(v.id).rc == 0)
        vmm.buildGuestTables()
        let cd1 = ContextDescriptor.s1(asid: 8, ttb: ArmNestedVMM.tableGPA(level: 0))
        vmm.write(vmm.tableVA + 64, ArmNestedVMM.bytes((0..<8).map { cd1.data[$0] }))
        let n = vmm.allocNested(v.id, ste: ArmNestedVMM.vSTE(extra0: 1 << 59))
        try #require(n.rc == 0)
        _ = try vmm.ctx.attach(vmm.devID, to: n.id)
        let q = vmm.veventqAlloc(v.id)
        try #require(q.rc == 0)
        let pasid = PASID(truncating: 1)
        #expect(vmm.dmaWrite(ArmNestedVMM.gva, value: 0x61, pasid: pasid)?.fault == nil)
        #expect(vmm.read(va: vmm.dataVA, count: 4) == [0x61, 0x61, 0x61, 0x61])
        #expect(vmm.unit.cachedTLBEntries(asid: 8) > 0)
        vmm.write(vmm.tableVA + 64, [UInt8](repeating: 0, count: 64))
        #expect(vmm.invalidate(v.id, [[0x05 | ArmNestedVMM.vsid << 32 | 1 << 12, 1], [0x11 | 8 << 48, 0]]).rc == 0)
        #expect(vmm.dmaWrite(ArmNestedVMM.gva, value: 0x62, pasid: pasid)?.fault != nil)
        vmm.machine.scheduler.runUntilIdle()
        let queue = try #require(vmm.ctx.object(q.id) as? VEventQueueObject)
        var buffer = [UInt8](repeating: 0, count: 64)
        let got = buffer.withUnsafeMutableBytes { queue.read(into: $0) }
        try #require(got == 40)
        let w0 = (0..<8).reduce(UInt64(0)) { $0 | UInt64(buffer[8 + $1]) << (8 * UInt64($1)) }
        #expect(UInt8(truncatingIfNeeded: w0) == SMMUEventID.cBadCD.rawValue)
        #expect(w0 >> 32 == ArmNestedVMM.vsid)
        #expect((w0 >> 12) & 0xFFFFF == 1, "SSID 1")
    }

    /// Without a vEVENTQ the event stays the host's (Linux dumps it); a stage 2 fault (the
    /// host unmapped guest RAM) is never the guest's (`!event->s2`).
    @Test func hostEventsStayTheHosts() throws {
        let vmm = try ArmNestedVMM()
        let (v, _, _) = try vmm.nestedSetup()
        vmm.setGuestPTE(page: 3, present: false)
        #expect(vmm.dmaWrite(ArmNestedVMM.gva + 3 * 4096)?.fault != nil)
        vmm.machine.scheduler.runUntilIdle()
        #expect(vmm.driver.units[0].guestEventsReported == 0)
        #expect(vmm.driver.units[0].eventsHandled > 0)
        let q = vmm.veventqAlloc(v)
        try #require(q.rc == 0)
        #expect(vmm.unmap(iova: ArmNestedVMM.dataGPA, length: ArmNestedVMM.regionSize) == 0)
        #expect(vmm.dmaWrite(ArmNestedVMM.gva)?.fault != nil)
        vmm.machine.scheduler.runUntilIdle()
        #expect(vmm.driver.units[0].guestEventsReported == 0)
        #expect(try #require(vmm.ctx.object(q.id) as? VEventQueueObject).readableBytes == 0)
    }

    /// Detach, then every object in order: no frame, VMID or ASID is left behind.
    @Test func teardownLeavesNothing() throws {
        let vmm = try ArmNestedVMM()
        let frames = vmm.machine.platform.frames
        let tables = frames.inUse(.pageTable), cds = frames.inUse(.pasidTable)
        let smmu = vmm.driver.units[0]
        let vmids = smmu.vmids.allocated, asids = vmm.driver.asids.allocated
        let (v, vdev, nested) = try vmm.nestedSetup()
        let q = vmm.veventqAlloc(v)
        #expect(vmm.dmaReaches(page: 0, value: 1))
        #expect(vmm.invalidate(v, [[0x10, 0]]).rc == 0)
        // Nothing new: the vIOMMU uses the parent's VMID and the guest's ASIDs are its own.
        #expect(smmu.vmids.allocated == vmids && vmm.driver.asids.allocated == asids)
        #expect(vmm.destroy(v) == -Errno.EBUSY)
        #expect(vmm.destroy(nested) == -Errno.EBUSY)
        try vmm.ctx.detach(vmm.devID)
        // The vEVENTQ's file holds it until closed.
        let queue = try #require(vmm.ctx.object(q.id) as? VEventQueueObject)
        #expect(vmm.destroy(q.id) == -Errno.EBUSY)
        queue.closeFile()
        for id in [nested, try #require(vdev), q.id, v] { #expect(vmm.destroy(id) == 0) }
        #expect(vmm.destroy(vmm.parent) == 0)
        #expect(smmu.vmids.allocated == vmids - 1)
        #expect(smmu.vmids.quarantined.isEmpty)
        #expect(frames.inUse(.pageTable) < tables)
        #expect(frames.inUse(.pasidTable) == cds)
        try vmm.ctx.unbind(vmm.devID)
        vmm.ctx.close()
        #expect(vmm.machine.oracle.violations.isEmpty)
    }
}
