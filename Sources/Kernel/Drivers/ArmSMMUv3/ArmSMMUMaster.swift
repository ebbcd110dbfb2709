import Platform
import Formats
import Hardware

/// Per-device state of the SMMUv3 driver (Linux `struct arm_smmu_master` with its one
/// `arm_smmu_stream`): the StreamID, where its STE is and what it holds, and its CD table.
///
/// The StreamID is the device's requester ID, as Linux's `iommu-map` gives for PCI. The CD
/// table (Linux `arm_smmu_ctx_desc_cfg`) is made on the first stage 1 attach of the RID or a
/// PASID (`arm_smmu_alloc_cd_tables`): 2^`ssidBits` CDs, linear, or 2-level with 64 KiB
/// leaves of 1024 CDs made on demand when the unit has 2-level CD tables and the SSID space
/// exceeds one leaf.
final class ArmSMMUMaster {
    /// What the RID is attached to (the STE's form follows it and whether PASIDs are in use).
    enum RID { case blocked, identity, s1, s2, nested }

    /// The core's device (it outlives this state, which goes at release).
    unowned(unsafe) let device: Device
    let sid: UInt32
    let unitIndex: Int
    let steAddress: UInt64
    /// The STE words as last written (the entry writer's `current`).
    var ste: [UInt64]
    /// SubstreamID bits (Linux `master->ssid_bits`: min of the unit's SSIDSIZE and the device's).
    var ssidBits = 0
    var rid: RID = .blocked
    /// The CD table: its root (0: none yet; the linear table or the L1CD table), frames,
    /// format and S1CDMax; level 2 leaves by L1 index; the CDs as last written by SSID.
    var cdTable: UInt64 = 0
    var cdTableFrames = 0
    var cdFormat: StreamTableEntry.S1Fmt = .linear
    var s1CDMax: UInt8 = 0
    var cdLeaves: [UInt32: UInt64] = [:]
    var cds: [UInt32: [UInt64]] = [:]
    /// Valid CDs at SSIDs other than 0 (Linux `cd_table.used_ssids`).
    var pasidsInUse = 0
    /// Linux `arm_smmu_ats_supported`: the unit has IDR0.ATS and the device an ATS capability.
    var atsSupported = false
    /// Linux `master->ats_enabled`: the STE in force has EATS = translate and the device's
    /// ATC may hold translations (ATC invalidations go to it).
    var atsEnabled = false
    /// The device's own ATS Enable bit as the driver last set it (`pci_enable_ats` /
    /// `pci_disable_ats`); turned off before an STE without EATS is written.
    var deviceATSEnabled = false
    /// Linux `master->stall_enabled`: the unit has a stall model and the device can stall
    /// (or stalls are forced); its CDs set S, its STEs leave S1STALLD clear.
    var stallEnabled = false
    /// The device's page requests reach the PRI queue (device PRI and IDR0.PRI).
    var priEnabled = false
    /// The domains (paging, SVA) attached by SSID (0: the RID), each holding a
    /// `ArmSMMUMasterDomain` for this master (Linux `smmu_domain->devices`).
    var domains: [UInt32: ArmSMMUDomain] = [:]

    static let leafCDs: UInt32 = 1024
    static let leafFrames = 16

    init(device: Device, sid: UInt32, unitIndex: Int, steAddress: UInt64, ste: [UInt64]) {
        self.device = device; self.sid = sid; self.unitIndex = unitIndex; self.steAddress = steAddress; self.ste = ste
    }

    /// CD 0 as last written.
    var cd0: [UInt64] { cd(0) }
    func cd(_ ssid: UInt32) -> [UInt64] { cds[ssid] ?? [UInt64](repeating: 0, count: 8) }
    func cdValid(_ ssid: UInt32) -> Bool { cd(ssid)[0] & SMMUEntryWriter.Kind.cd.validBit != 0 }

    /// The master reports recoverable faults (PRI or stalls) through the core's fault queue.
    var reportsIOPF: Bool { priEnabled || stallEnabled }

    /// Whether the STE in force translates at stage 1 through the driver's CD table (V,
    /// Config 0b101; a nested STE, 0b111, names the guest's CD table instead).
    var steUsesCDTable: Bool { ste[0] & 1 != 0 && (ste[0] >> 1) & 7 == 0b101 }
    /// The vIOMMU and virtual StreamID of a master attached to a nested domain with a
    /// vDEVICE (Linux `master->vmaster`): its stage 1 events go to the vIOMMU's vEVENTQ.
    var vmaster: ArmVMaster?
}

extension ArmSMMUDevice {
    /// Linux `arm_smmu_probe_device` for one PCI stream: the StreamID is checked against the
    /// table, its level 2 array made (2-level tables, `arm_smmu_init_sid_strtab`) and the
    /// STE read back (abort, as the table was made).
    func probe(_ device: Device) throws(IOMMUError) -> ArmSMMUMaster {
        let sid = UInt32(device.requesterID.rawValue)
        guard masters[sid] == nil else { throw .exists("StreamID 0x\(String(sid, radix: 16)) is already probed on \(name)") }
        guard let address = try steAddress(sid, create: true) else { throw .noMemory("stream table for \(device)") }
        var words = [UInt64](repeating: 0, count: 8)
        for i in 0..<8 { words[i] = try load(address + UInt64(i) * 8) }
        let master = ArmSMMUMaster(device: device, sid: sid, unitIndex: index, steAddress: address, ste: words)
        // Whatever the STE held (nothing should), it aborts now.
        _ = try writeSTE(master, .abort())
        masters[sid] = master
        device.driverData = master
        return master
    }

    /// Linux `arm_smmu_release_device`: the core already attached the blocked domain (abort
    /// STE, which no longer names the CD table; its CFGI_STE dropped every CD cached through
    /// it; ATS is off), so the master leaves the fault queue and the CD table can go.
    func release(_ master: ArmSMMUMaster) {
        if master.reportsIOPF {
            // Linux `arm_smmu_disable_iopf` → `iopf_queue_remove_device`: what the queues
            // already hold for the master reaches the core first, then the core answers
            // every pending group (stalled transactions get CMD_RESUME abort). Linux never
            // issues CMD_STALL_TERM: every stall has its event, so every one is answered.
            if master.priEnabled { handlePRIQueue() }
            if master.stallEnabled { handleEventQueue() }
            driver?.core?.iopfRemoveDevice(master.device)
        }
        forgetMaster(master)
        if master.ste[0] != StreamTableEntry.abort().data[0] { _ = try? writeSTE(master, .abort()) }
        freeCDTable(master)
        masters[master.sid] = nil
        master.device.driverData = nil
    }

    /// Linux `arm_smmu_alloc_cd_tables`: the master's CD table, made (zeroed: every CD
    /// invalid) on first use. Linear with 2^ssidBits CDs, or, when the unit has 2-level CD
    /// tables and more than 1024 CDs are needed, an L1CD table whose leaves come later.
    func ensureCDTable(_ master: ArmSMMUMaster) throws(IOMMUError) -> UInt64 {
        if master.cdTable != 0 { return master.cdTable }
        let (format, cdMax, bytes) = CDTableLayout.linuxGeometry(ssidBits: master.ssidBits, twoLevelSupported: features.twoLevelCDTable)
        let frames = Int(max(1, (bytes + 4095) / 4096))
        do { master.cdTable = try platform.frames.allocateContiguous(frames, .pasidTable, alignment: frames) } catch {
            throw .noMemory("CD table for \(master.device)")
        }
        master.cdTableFrames = frames
        master.cdFormat = format
        master.s1CDMax = cdMax
        master.cds = [:]
        return master.cdTable
    }

    /// Frees the CD table and its leaves (no STE may name it any more).
    func freeCDTable(_ master: ArmSMMUMaster) {
        guard master.cdTable != 0 else { return }
        for (_, leaf) in master.cdLeaves { for i in 0..<ArmSMMUMaster.leafFrames { try? platform.frames.free(leaf + UInt64(i) * 4096) } }
        for i in 0..<master.cdTableFrames { try? platform.frames.free(master.cdTable + UInt64(i) * 4096) }
        master.cdLeaves = [:]
        master.cds = [:]
        master.cdTable = 0
        master.cdTableFrames = 0
        master.pasidsInUse = 0
    }

    /// Linux `arm_smmu_alloc_cd_ptr`: the address of CD `ssid`, its 64 KiB leaf made (and the
    /// L1CD written, then CFGI_CD leaf = false and CMD_SYNC) if needed and `create`.
    func cdAddress(_ master: ArmSMMUMaster, ssid: UInt32, create: Bool) throws(IOMMUError) -> UInt64? {
        guard master.cdTable != 0 else { return nil }
        guard UInt64(ssid) >> UInt64(master.s1CDMax) == 0 else { throw .invalidArgument("SSID \(ssid) beyond \(master.s1CDMax) bits") }
        guard master.cdFormat != .linear else { return master.cdTable + UInt64(ssid) * ContextDescriptor.size }
        let l1 = ssid / ArmSMMUMaster.leafCDs
        let offset = UInt64(ssid % ArmSMMUMaster.leafCDs) * ContextDescriptor.size
        if let leaf = master.cdLeaves[l1] { return leaf + offset }
        guard create else { return nil }
        let leaf: UInt64
        do { leaf = try platform.frames.allocateContiguous(ArmSMMUMaster.leafFrames, .pasidTable, alignment: ArmSMMUMaster.leafFrames) } catch {
            throw .noMemory("CD table leaf for \(master.device)")
        }
        do {
            try store(master.cdTable + UInt64(l1) * L1ContextDescriptor.size, L1ContextDescriptor(l2Pointer: leaf).raw)
            let sid = master.sid
            try platform.withHardware { () throws(IOMMUError) in try cmdq.issueAndSync(.cfgiCD(sid: sid, ssid: ssid, leaf: false)) }
        } catch {
            try? store(master.cdTable + UInt64(l1) * L1ContextDescriptor.size, 0)
            for i in 0..<ArmSMMUMaster.leafFrames { try? platform.frames.free(leaf + UInt64(i) * 4096) }
            throw error
        }
        master.cdLeaves[l1] = leaf
        return leaf + offset
    }

    /// `arm_smmu_make_cdtable_ste` for `master`'s table: EATS = translate with `ats`,
    /// S1STALLD where the unit has stalls but the master may not stall.
    func cdTableSTE(_ master: ArmSMMUMaster, s1DSS: StreamTableEntry.S1DSS, ats: Bool) -> StreamTableEntry {
        .cdTable(contextPointer: master.cdTable, format: master.cdFormat, s1CDMax: master.s1CDMax, s1DSS: s1DSS,
                 ats: ats, stallDisable: features.stallModel != .terminateOnly && !master.stallEnabled)
    }
}
