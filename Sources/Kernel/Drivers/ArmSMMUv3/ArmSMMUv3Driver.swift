import Platform
import Formats
import Hardware

/// The Arm SMMUv3 driver (the counterpart of drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c):
/// one instance manages a set of SMMUv3 units, programming them only through their
/// registers and structures in physical memory.
///
/// This slice: bring-up, streams (StreamID = requester ID) with 2-level or linear stream
/// tables, stage 1 and stage 2 paging domains with ASIDs/VMIDs, identity and blocked
/// domains, STE/CD updates through `SMMUEntryWriter`, TLB maintenance with RIL, and the event
/// queue reported as the core's faults, SubstreamIDs (PASIDs) of stage 1 domains through linear
/// or 2-level CD tables, ATS with ATC invalidation, IO page faults from the PRI queue and from
/// stalls, SVA domains, nesting through the vIOMMU (`ArmVSMMU`, `ArmSMMUNestedDomain`), and
/// dirty tracking on stage 1 with HTTU (`ArmSMMUPagingDomain+Dirty.swift`).
public final class ArmSMMUv3Driver: IOMMUDriver, @unchecked Sendable {
    public let name: String
    public let platform: PlatformContext
    public let units: [ArmSMMUDevice]
    /// The core this driver is registered with (it owns the driver; not counted).
    public private(set) unowned(unsafe) var core: IOMMUCore?
    /// ASIDs, shared by every unit (Linux `arm_smmu_asid_xa` is global, since SVA shares
    /// ASIDs with the CPU); each allocation is bounded by its unit's ASID bits.
    public internal(set) var asids = ArmSMMUIDAllocator(bits: 16)
    /// The stage DMA and unmanaged domains use where the flags allow both: nil follows Linux
    /// (stage 1 where the unit has it, "Prefer S1 if available"); `.s2` forces stage 2.
    public var preferredStage: ArmSMMUStage?
    /// Called when the driver sets or clears a device's PCIe ATS Enable bit (`pci_enable_ats`,
    /// `pci_disable_ats`); tests watch the order against the STE.
    public var onDeviceATSControl: ((Device, Bool) -> Void)?
    /// Report invalidations as expensive so DMA domains use one large flush queue (Linux's
    /// s390 `shadow_on_flush`; a knob for `bench dma-map --mode single-queue`, as on VT-d).
    public var shadowOnFlush = false
    private lazy var blocked = ArmSMMUBlockedDomain(driver: self)
    private lazy var identity = ArmSMMUIdentityDomain(driver: self)

    /// Brings up `hardware` (Linux `arm_smmu_device_probe` → `arm_smmu_device_reset`).
    public init(name: String = "arm-smmu-v3", platform: PlatformContext, hardware: [SMMUv3Unit]) throws(IOMMUError) {
        self.name = name
        self.platform = platform
        var made: [ArmSMMUDevice] = []
        for (i, u) in hardware.enumerated() {
            do {
                let d = try ArmSMMUDevice(index: i, unit: u, platform: platform)
                made.append(d)
                try d.reset()
            } catch {
                for m in made { m.shutdown() }
                throw error
            }
        }
        units = made
        for u in units { u.driver = self }
    }

    /// Turns every unit off and frees its tables and queues (after all devices are released).
    public func shutdown() {
        for u in units { u.shutdown() }
    }

    public var unitCount: Int { units.count }

    /// Invalidates every configuration and TLB entry of every unit, as the reset does
    /// (Linux `arm_smmu_device_reset`: CMD_CFGI_ALL, CMD_TLBI_EL2_ALL, CMD_TLBI_NSNH_ALL).
    public func flushAllCaches() throws(IOMMUError) {
        for u in units {
            try u.cmdq.issueAndSync(.cfgiAll)
            if u.features.hyp { try u.cmdq.issue(.tlbiEL2All) }
            try u.cmdq.issueAndSync(.tlbiNSNHAll)
        }
    }

    /// Issues commands given as raw words to unit `index`'s command queue, then a CMD_SYNC
    /// (Linux `arm_smmu_cmdq_issue_cmdlist`); an illegal one is skipped as
    /// `arm_smmu_cmdq_skip_err` does.
    public func submitRawCommands(_ commands: [(UInt64, UInt64)], unit index: Int) throws(IOMMUError) {
        guard units.indices.contains(index) else { throw .invalidArgument("no unit \(index)") }
        for (w0, w1) in commands { try units[index].cmdq.issueRaw(w0, w1) }
        try units[index].cmdq.sync()
    }
    public var blockedDomain: IOMMUDomain { blocked }
    public var identityDomain: IOMMUDomain? { identity }

    /// Also makes each unit's fault queue (Linux `iopf_queue_alloc` at probe of the unit).
    public func register(with core: IOMMUCore) {
        self.core = core
        for u in units where u.iopfQueue == nil { u.iopfQueue = core.allocIOPFQueue(name: "iopf-\(u.name)") }
    }

    public func invalidationsAreExpensive(_ device: Device) -> Bool { shadowOnFlush }

    func unit(for device: Device) throws(IOMMUError) -> ArmSMMUDevice {
        guard device.driver === self, device.unit >= 0, device.unit < units.count else {
            throw .incompatible("\(device) is not behind \(name)")
        }
        return units[device.unit]
    }

    /// The unit and master state of a probed device.
    func lookup(_ device: Device) throws(IOMMUError) -> (ArmSMMUDevice, ArmSMMUMaster) {
        let u = try unit(for: device)
        guard let m = device.driverData as? ArmSMMUMaster else { throw .noDevice("\(device) is not probed on \(u.name)") }
        return (u, m)
    }

    /// The StreamID the driver gave `device` (its requester ID), while probed.
    public func streamID(of device: Device) -> UInt32? { (device.driverData as? ArmSMMUMaster)?.sid }

    /// The ASID (stage 1) or VMID (stage 2) of a paging domain.
    public func context(of domain: IOMMUDomain) -> (stage: ArmSMMUStage, id: UInt16)? {
        (domain as? ArmSMMUPagingDomain).map { ($0.stage, $0.tag) }
    }

    /// Linux `arm_smmu_probe_device`: the stream is set up with an aborting STE. The PASID
    /// limit is 2^ssid_bits, `master->ssid_bits` = min(SSIDSIZE, the device's own PASID bits);
    /// 0 when either has none.
    public func probeDevice(_ device: Device) throws(IOMMUError) -> UInt32 {
        let u = try unit(for: device)
        let master = try u.probe(device)
        let own = device.maxPASIDs > 1 ? 31 - device.maxPASIDs.leadingZeroBitCount : 0
        master.ssidBits = min(u.features.ssidBits, own, 20)
        // `arm_smmu_ats_supported`; `stall_enabled` with `dma-can-stall` on a unit with stalls,
        // or always where stalls are forced (ARM_SMMU_FEAT_STALL_FORCE); PRI where both have it.
        master.atsSupported = device.ats && u.features.ats
        master.stallEnabled = (device.canStall && u.features.stallModel == .stallOrTerminate) || u.features.stallModel == .stallForced
        master.priEnabled = device.pri && u.features.pri && !master.stallEnabled
        if master.reportsIOPF, let core, let q = u.iopfQueue {
            do { try core.iopfAddDevice(device, to: q) } catch {
                u.release(master)
                throw error
            }
        }
        return master.ssidBits > 0 ? 1 << UInt32(master.ssidBits) : 0
    }

    public func releaseDevice(_ device: Device) {
        guard let (u, m) = try? lookup(device) else { return }
        u.release(m)
    }

    /// Linux `arm_smmu_capable`: coherent walks (IDR0.COHACC), deferred flush always, dirty
    /// tracking where the unit updates dirty state in hardware (`arm_smmu_dbm_capable`).
    public func capable(_ device: Device, _ capability: DriverCapability) -> Bool {
        guard let u = try? unit(for: device) else { return false }
        switch capability {
        case .cacheCoherency, .deferredFlush: return true
        case .dirtyTracking: return u.features.httu == .accessFlagAndDirty
        }
    }

    public var supportsPageResponse: Bool { true }

    /// A stall-enabled master is reset: CMD_STALL_TERM + CMD_SYNC terminate every transaction
    /// the unit holds for its StreamID (IHI 0070 §4.6.3, the command for a device that will
    /// not wait for its stalled transactions). Their faults may still be answered later; a
    /// CMD_RESUME for a STAG no longer held has no effect. Linux has no such path (it never
    /// resets a stalling platform device under the SMMU's feet), so this is the model's.
    public func deviceReset(_ device: Device) {
        guard let (u, m) = try? lookup(device), m.stallEnabled else { return }
        u.terminateStalls(sid: m.sid)
    }

    /// Linux `arm_smmu_page_response`: a stall-enabled master's transaction is resumed by
    /// its StreamID and STAG (the fault's PRG index) — retry on Success, abort otherwise;
    /// a PRI master gets CMD_PRI_RESP with the PCIe code (Success, Invalid Request, Response
    /// Failure; the SSID when the request had one). No CMD_SYNC follows (Linux: "it doesn't
    /// do anything for RESUME or PRI_RESP"). A STAG the unit does not hold is ignored by it.
    public func pageResponse(_ device: Device, to fault: PageFault, code: PageResponseCode) {
        guard let (u, m) = try? lookup(device) else { return }
        if m.stallEnabled {
            u.sendResume(sid: m.sid, stag: fault.groupIndex, retry: code == .success)
        } else if m.priEnabled {
            let response: PRIResponse
            switch code {
            case .success: response = .success
            case .invalidRequest: response = .invalidRequest
            case .responseFailure: response = .responseFailure
            }
            u.sendPRIResponse(sid: m.sid, ssid: fault.flags.contains(.needsPASID) ? fault.requestPASID?.rawValue : nil,
                              groupIndex: fault.groupIndex, response)
        }
    }

    /// Linux `arm_smmu_get_resv_regions`: the software MSI window at `MSI_IOVA_BASE`.
    /// `IOMMU_HW_INFO_TYPE_ARM_SMMUV3` (2) and `struct iommu_hw_info_arm_smmuv3` {flags,
    /// __reserved, idr[6], iidr, aidr} = 40 bytes, the registers as read from the unit (Linux
    /// arm-smmu-v3-iommufd.c `arm_smmu_hw_info`).
    public func hardwareInfo(_ device: Device) -> (type: UInt32, payload: [UInt8])? {
        guard let u = try? unit(for: device) else { return nil }
        var payload = [UInt8](repeating: 0, count: 40)
        func put(_ at: Int, _ v: UInt32) { for i in 0..<4 { payload[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
        let idrs = [SMMUv3Register.idr0, SMMUv3Register.idr1, SMMUv3Register.idr2, SMMUv3Register.idr3, SMMUv3Register.idr4, SMMUv3Register.idr5]
        for (i, r) in idrs.enumerated() { put(8 + 4 * i, u.unit.read32(r)) }
        put(32, u.unit.read32(SMMUv3Register.iidr))
        put(36, u.unit.read32(SMMUv3Register.aidr))
        return (2, payload)
    }

    public func reservedRegions(for device: Device) -> [ReservedRegion] {
        [ReservedRegion(start: 0x0800_0000, last: 0x080F_FFFF, kind: .softwareMSI)]
    }

    /// Linux 6.17 `arm_smmu_domain_alloc_paging_flags` + `arm_smmu_domain_finalise`: stage 1
    /// when the flags are at most PASID and the unit has it ("Prefer S1 if available"); stage
    /// 1 for DIRTY_TRACKING (with or without PASID; the unit needs stage 1 and HTTU with dirty
    /// state, `arm_smmu_dbm_capable`); stage 2 for NEST_PARENT alone (the unit needs both
    /// stages); any other mix, NEST_PARENT | DIRTY_TRACKING included, EOPNOTSUPP (stage 2
    /// never tracks dirty pages: `arm_smmu_domain_finalise` returns EOPNOTSUPP for S2 with
    /// `enable_dirty`). The page table is made first, then the ASID or VMID; a failure of the
    /// second frees the first.
    public func allocPagingDomain(for device: Device, type: DomainType, flags: DomainFlags) throws(IOMMUError) -> IOMMUDomain {
        let u = try unit(for: device)
        guard type.isPaging else { throw .invalidArgument("\(type) is not a paging type") }
        guard flags.isSubset(of: [.pasid, .nestParent, .dirtyTracking]) else { throw .notSupported("flags \(flags)") }
        let stage: ArmSMMUStage
        if flags.isSubset(of: .pasid) {
            guard u.features.stage1 || u.features.stage2 else { throw .notSupported("\(u.name) translates at no stage") }
            stage = u.features.stage1 && preferredStage != .s2 ? .s1 : .s2
            if stage == .s2 && !u.features.stage2 { throw .notSupported("\(u.name) has no stage 2") }
        } else if flags == .nestParent {
            guard u.features.stage1 && u.features.stage2 else { throw .notSupported("\(u.name) cannot nest") }
            stage = .s2
        } else if flags.isSubset(of: [.dirtyTracking, .pasid]) {
            guard u.features.stage1 else { throw .notSupported("\(u.name) has no stage 1") }
            // IO_PGTABLE_QUIRK_ARM_HD needs ARM_SMMU_FEAT_HD (iommufd checks
            // IOMMU_CAP_DIRTY_TRACKING first; the driver refuses it on its own too).
            guard u.features.httu == .accessFlagAndDirty else { throw .notSupported("\(u.name) cannot track dirty pages") }
            stage = .s1
        } else {
            throw .notSupported("flags \(flags): stage 2 does not track dirty pages")
        }
        let oas = u.features.outputAddressBits
        let owner = platform.frames.makeOwnerTag()
        switch stage {
        case .s1:
            let table: IOPageTable<ArmStage1Format>
            do { table = try IOPageTable(memory: platform.memory, frames: platform.frames, levels: 4, addressWidth: oas, ownerTag: owner) } catch {
                throw .noMemory("page-table root")
            }
            // IO_PGTABLE_QUIRK_ARM_HD only with DIRTY_TRACKING: DBM on writable leaves.
            if !flags.contains(.dirtyTracking) { table.clearedLeafBits = ArmStage1Format.dbm }
            let asid: UInt16
            do { asid = try allocateASID(on: u) } catch {
                core?.observer?.unfinishedDomainTablesFreed(ownerTag: owner)
                table.domainFree()
                throw error
            }
            return ArmSMMUS1Domain(driver: self, smmu: u, asid: asid, pageTable: table, type: type, flags: flags)
        case .s2:
            let table: IOPageTable<ArmStage2Format>
            do { table = try IOPageTable(memory: platform.memory, frames: platform.frames, levels: 4, addressWidth: oas, ownerTag: owner) } catch {
                throw .noMemory("page-table root")
            }
            // Stage 2 leaves never carry DBM (no S2 dirty tracking in Linux 6.17).
            table.clearedLeafBits = ArmStage2Format.dbm
            let vmid: UInt16
            do { vmid = try u.allocateVMID() } catch {
                core?.observer?.unfinishedDomainTablesFreed(ownerTag: owner)
                table.domainFree()
                throw error
            }
            return ArmSMMUS2Domain(driver: self, smmu: u, vmid: vmid, pageTable: table, type: type, flags: flags)
        }
    }

    /// Deliberately broken behaviour for oracle-strength runs (never set otherwise).
    var bugs: InjectedBugs { core?.injectedBugs ?? [] }

    // MARK: ASIDs

    /// Linux `arm_smmu_domain_finalise_s1`: `xa_alloc(&arm_smmu_asid_xa, …, XA_LIMIT(1,
    /// (1 << asid_bits) - 1))`, EBUSY when the space is full.
    func allocateASID(on u: ArmSMMUDevice) throws(IOMMUError) -> UInt16 {
        if platform.faults.shouldFail(.didAlloc) { throw .busy("ASID (injected)") }
        guard let a = asids.allocate(below: 1 << u.asidBits) else { throw .busy("no free ASID") }
        core?.observer?.tlbTagAllocated(driver: self, unit: nil, tag: .asid(a))
        return a
    }

    /// Gives an ASID back once the TLBI by it completed; quarantined otherwise.
    func releaseASID(_ asid: UInt16, invalidated: Bool) {
        if invalidated {
            core?.observer?.tlbTagReleased(driver: self, unit: nil, tag: .asid(asid))
            _ = asids.free(asid)
        } else {
            asids.quarantine(asid)
        }
    }
}
