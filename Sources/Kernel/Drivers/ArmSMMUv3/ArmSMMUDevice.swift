import Platform
import Formats
import Hardware

/// One SMMUv3 unit as the driver sees it (Linux `struct arm_smmu_device`): its features as
/// the ID registers report them, the stream table, the command, event and PRI queues, the
/// VMIDs, and the masters behind it by StreamID. All access to the hardware goes through
/// registers and memory.
public final class ArmSMMUDevice: @unchecked Sendable {
    public let index: Int
    public let unit: SMMUv3Unit
    let platform: PlatformContext
    /// What the ID registers say (Linux `arm_smmu_device_hw_probe`).
    public let features: SMMUv3Features
    /// ASID bits (IDR0.ASID16: 16, else 8) and VMID bits (IDR0.VMID16: 16, else 8).
    public let asidBits: Int
    public let vmidBits: Int
    /// StreamID bits the stream table covers: IDR1.SIDSIZE, at most 16 (every StreamID here
    /// is a PCI requester ID, as Linux's `iommu-map` gives for PCI).
    public let sidBits: Int
    /// The stream table: 2-level (Linux `arm_smmu_init_strtab_2lvl`, SPLIT 8, level 2 arrays
    /// of 256 STEs made on demand) when IDR0.ST_LEVEL allows, else linear.
    public let twoLevelStreamTable: Bool
    let streamTable: UInt64
    let streamTableFrames: Int
    /// Level 2 arrays by L1 index (4 frames each).
    var l2Tables: [UInt32: UInt64] = [:]
    let cmdq: ArmSMMUCommandQueue
    let cmdqFrame: UInt64
    let evtqFrame: UInt64, evtqLog2: UInt32
    let priqFrame: UInt64, priqLog2: UInt32
    public internal(set) var vmids: ArmSMMUIDAllocator
    /// Probed masters by StreamID (Linux `smmu->streams`, an rb-tree).
    var masters: [UInt32: ArmSMMUMaster] = [:]
    /// The driver (set once at bring-up; not counted).
    unowned(unsafe) var driver: ArmSMMUv3Driver?
    /// The core's fault queue for this unit's masters that report recoverable faults.
    public internal(set) var iopfQueue: IOPFQueue?
    public private(set) var isEnabled = false
    /// Event queue handling: records read, overflows acknowledged, records of StreamIDs no
    /// master has.
    public internal(set) var eventsHandled = 0
    public internal(set) var eventOverflows = 0
    public internal(set) var unknownStreamEvents = 0
    /// Global errors handled (Linux `arm_smmu_gerror_handler`).
    public internal(set) var globalErrors = 0
    /// PRI queue handling: entries read, stop markers dropped, requests answered without
    /// reaching the core (unknown StreamID, no PRI, no fault queue), overflows acknowledged.
    public internal(set) var pageRequestsHandled = 0
    public internal(set) var stopMarkersDropped = 0
    public internal(set) var badPageRequests = 0
    public internal(set) var priQueueOverflows = 0
    /// Stall events reported to the core as page faults.
    public internal(set) var stallFaultsReported = 0
    /// Stall events of masters whose stalls the driver never enabled (garbage in their STE
    /// or CD set CD.S), terminated at once instead of being reported as page requests.
    public internal(set) var strayStallsTerminated = 0
    /// Events of nested masters reported to their vIOMMU's vEVENTQ.
    public internal(set) var guestEventsReported = 0
    /// CMD_PRI_RESP / CMD_RESUME that could not be written to the command queue.
    public internal(set) var responsesLost = 0
    /// PASID page-request drains, and those whose invalidation or sync failed.
    public internal(set) var pageRequestDrains = 0
    public internal(set) var pageRequestDrainErrors = 0
    /// CMD_STALL_TERMs issued for device resets.
    public internal(set) var stallTerminations = 0

    /// What interrupt handlers hold instead of a weak reference (cleared in deinit).
    let ref = PlatformContext.BackRef<ArmSMMUDevice>()

    /// Entries per level 2 stream table array (STRTAB_SPLIT = 8).
    static let split: UInt32 = 8
    static let commandQueueLog2: UInt32 = 8
    static let eventQueueLog2: UInt32 = 7
    static let priQueueLog2: UInt32 = 8

    deinit { ref.target = nil }

    init(index: Int, unit: SMMUv3Unit, platform: PlatformContext) throws(IOMMUError) {
        self.index = index
        self.unit = unit
        self.platform = platform
        let f = Self.probeFeatures(unit)
        features = f
        guard f.granule4K, f.stage1 || f.stage2 else { throw .noDevice("\(unit.configuration.name): no 4 KiB granule or no translation stage") }
        asidBits = f.asid16 ? 16 : 8
        vmidBits = f.vmid16 ? 16 : 8
        vmids = ArmSMMUIDAllocator(bits: vmidBits)
        sidBits = min(16, f.sidBits)
        twoLevelStreamTable = f.twoLevelStreamTable && sidBits > Int(Self.split)
        let idr1 = unit.read32(SMMUv3Register.idr1)
        let cmdqLog2 = min(Self.commandQueueLog2, (idr1 >> 21) & 0x1F)
        evtqLog2 = min(Self.eventQueueLog2, (idr1 >> 16) & 0x1F)
        priqLog2 = min(Self.priQueueLog2, (idr1 >> 11) & 0x1F)
        let tableBytes: UInt64 = twoLevelStreamTable ? (UInt64(1) << UInt64(sidBits - Int(Self.split))) * L1StreamTableDescriptor.size
                                                     : (UInt64(1) << UInt64(sidBits)) * StreamTableEntry.size
        streamTableFrames = Int(max(1, (tableBytes + 4095) / 4096))
        var got: [(UInt64, Int)] = []
        func contiguous(_ n: Int, _ purpose: FrameAllocator.Purpose) throws(IOMMUError) -> UInt64 {
            do {
                let a = try platform.frames.allocateContiguous(n, purpose, alignment: n)
                got.append((a, n))
                return a
            } catch {
                for (a, n) in got { for i in 0..<n { try? platform.frames.free(a + UInt64(i) * 4096) } }
                throw .noMemory("\(unit.configuration.name) tables and queues")
            }
        }
        streamTable = try contiguous(streamTableFrames, .rootTable)
        cmdqFrame = try contiguous(1, .queue)
        evtqFrame = try contiguous(1, .queue)
        priqFrame = f.pri ? try contiguous(1, .queue) : 0
        cmdq = ArmSMMUCommandQueue(unit: unit, platform: platform, base: cmdqFrame, log2: cmdqLog2)
        ref.target = self
        // A linear table starts with every STE aborting (Linux `arm_smmu_init_initial_stes`
        // with disable_bypass); level 2 arrays get the same when they are made.
        if !twoLevelStreamTable {
            do { try fillAbort(streamTable, count: 1 << sidBits) } catch { freeOwnFrames(); throw error }
        }
    }

    var name: String { unit.configuration.name }
    var memory: PhysicalMemory { platform.memory }

    /// Linux `arm_smmu_device_hw_probe`: the fields of IDR0, IDR1, IDR3 and IDR5 it reads.
    static func probeFeatures(_ unit: SMMUv3Unit) -> SMMUv3Features {
        let idr0 = unit.read32(SMMUv3Register.idr0), idr1 = unit.read32(SMMUv3Register.idr1)
        let idr3 = unit.read32(SMMUv3Register.idr3), idr5 = unit.read32(SMMUv3Register.idr5)
        var f = SMMUv3Features()
        f.stage2 = idr0 & 1 != 0
        f.stage1 = idr0 & 2 != 0
        f.httu = SMMUv3Features.HTTU(rawValue: UInt8((idr0 >> 6) & 3)) ?? .none
        f.hyp = idr0 & (1 << 9) != 0
        f.ats = idr0 & (1 << 10) != 0
        f.asid16 = idr0 & (1 << 12) != 0
        f.msi = idr0 & (1 << 13) != 0
        f.sev = idr0 & (1 << 14) != 0
        f.pri = idr0 & (1 << 16) != 0
        f.vmid16 = idr0 & (1 << 18) != 0
        f.twoLevelCDTable = idr0 & (1 << 19) != 0
        f.stallModel = SMMUv3Features.StallModel(rawValue: UInt8((idr0 >> 24) & 3)) ?? .terminateOnly
        f.twoLevelStreamTable = (idr0 >> 27) & 3 == 1
        f.sidBits = Int(idr1 & 0x3F)
        f.ssidBits = Int((idr1 >> 6) & 0x1F)
        f.rangeInvalidation = idr3 & (1 << 10) != 0
        f.smallTranslationTables = idr3 & (1 << 9) != 0
        f.s2FWB = idr3 & (1 << 8) != 0
        f.outputAddressBits = AddressSize.bits(UInt8(idr5 & 7))
        f.granule4K = idr5 & (1 << 4) != 0
        f.granule16K = idr5 & (1 << 5) != 0
        f.granule64K = idr5 & (1 << 6) != 0
        return f
    }

    // MARK: Memory

    func load(_ pa: UInt64) throws(IOMMUError) -> UInt64 {
        do { return try memory.load64(pa) } catch { throw .ioError("table read at 0x\(String(pa, radix: 16)): \(error)") }
    }

    func store(_ pa: UInt64, _ v: UInt64) throws(IOMMUError) {
        do { try memory.store64(pa, v) } catch { throw .ioError("table write at 0x\(String(pa, radix: 16)): \(error)") }
    }

    private func fillAbort(_ at: UInt64, count: Int) throws(IOMMUError) {
        let abort = StreamTableEntry.abort()
        for i in 0..<count {
            let a = at + UInt64(i) * StreamTableEntry.size
            for w in 1..<8 { try store(a + UInt64(w) * 8, abort.data[w]) }
            try store(a, abort.data[0])
        }
    }

    private func freeOwnFrames() {
        for i in 0..<streamTableFrames { try? platform.frames.free(streamTable + UInt64(i) * 4096) }
        for f in [cmdqFrame, evtqFrame, priqFrame] where f != 0 { try? platform.frames.free(f) }
    }

    // MARK: Bring-up (Linux `arm_smmu_device_reset`)

    /// Writes CR0 and waits for CR0ACK to match (Linux `arm_smmu_write_reg_sync`).
    func writeCR0(_ value: UInt32) throws(IOMMUError) {
        unit.write32(SMMUv3Register.cr0, value)
        do { try platform.scheduler.wait(until: { unit.read32(SMMUv3Register.cr0ack) == value }, timeoutNs: 1_000_000) } catch {
            throw .timedOut("\(name): CR0ACK did not follow CR0 = 0x\(String(value, radix: 16))")
        }
    }

    private func writeIRQCtrl(_ value: UInt32) throws(IOMMUError) {
        unit.write32(SMMUv3Register.irqCtrl, value)
        do { try platform.scheduler.wait(until: { unit.read32(SMMUv3Register.irqCtrlAck) == value }, timeoutNs: 1_000_000) } catch {
            throw .timedOut("\(name): IRQ_CTRLACK did not follow IRQ_CTRL")
        }
    }

    /// Sets GBPA fields through UPDATE (Linux `arm_smmu_update_gbpa`).
    private func updateGBPA(set: UInt32, clear: UInt32) throws(IOMMUError) {
        let wait: () throws(IOMMUError) -> Void = { [self] () throws(IOMMUError) in
            do {
                try platform.scheduler.wait(until: { unit.read32(SMMUv3Register.gbpa) & SMMUv3Bits.gbpaUpdate == 0 }, timeoutNs: 1_000_000)
            } catch { throw .timedOut("\(name): GBPA.UPDATE stuck") }
        }
        try wait()
        let v = (unit.read32(SMMUv3Register.gbpa) & ~clear) | set
        unit.write32(SMMUv3Register.gbpa, v | SMMUv3Bits.gbpaUpdate)
        try wait()
    }

    /// Linux `arm_smmu_device_reset`, in its order: (abort incoming traffic if the unit was
    /// left enabled), disable, CR1/CR2, stream table, command queue + CMDQEN, invalidate all
    /// (CFGI_ALL; TLBI_EL2_ALL when the unit has HYP; TLBI_NSNH_ALL), event queue + EVTQEN,
    /// PRI queue + PRIQEN, ATSCHK, interrupts (IRQ_CTRL off, then GERROR|EVTQ|PRIQ on), SMMUEN.
    /// Each CR0 write waits for CR0ACK.
    func reset() throws(IOMMUError) {
        if unit.read32(SMMUv3Register.cr0) & SMMUv3Bits.cr0SMMUEN != 0 {
            try updateGBPA(set: SMMUv3Bits.gbpaAbort, clear: 0)
        }
        try writeCR0(0)
        // CR1: table and queue walks inner shareable, write-back (Linux `CR1_TABLE_*`, `CR1_QUEUE_*`).
        unit.write32(SMMUv3Register.cr1, 0xD75)
        unit.write32(SMMUv3Register.cr2, SMMUv3Bits.cr2PTM | SMMUv3Bits.cr2RECINVSID)
        let cfg = StreamTableConfig.make(address: streamTable, format: twoLevelStreamTable ? .twoLevel : .linear,
                                         log2Size: UInt8(sidBits), split: UInt8(Self.split))
        unit.write64(SMMUv3Register.strtabBase, cfg.base)
        unit.write32(SMMUv3Register.strtabBaseCfg, cfg.cfg)
        unit.write64(SMMUv3Register.cmdqBase, cmdq.baseRegister)
        unit.write32(SMMUv3Register.cmdqProd, 0)
        unit.write32(SMMUv3Register.cmdqCons, 0)
        var enables = SMMUv3Bits.cr0CMDQEN
        try writeCR0(enables)
        try cmdq.issueAndSync(.cfgiAll)
        if features.hyp { try cmdq.issue(.tlbiEL2All) }
        try cmdq.issueAndSync(.tlbiNSNHAll)
        unit.write64(SMMUv3Register.evtqBase, 1 << 62 | evtqFrame | UInt64(evtqLog2))
        unit.write32(SMMUv3Register.evtqProd, 0)
        unit.write32(SMMUv3Register.evtqCons, 0)
        enables |= SMMUv3Bits.cr0EVTQEN
        try writeCR0(enables)
        if features.pri {
            unit.write64(SMMUv3Register.priqBase, 1 << 62 | priqFrame | UInt64(priqLog2))
            unit.write32(SMMUv3Register.priqProd, 0)
            unit.write32(SMMUv3Register.priqCons, 0)
            enables |= SMMUv3Bits.cr0PRIQEN
            try writeCR0(enables)
        }
        if features.ats {
            enables |= SMMUv3Bits.cr0ATSCHK
            try writeCR0(enables)
        }
        // Linux `arm_smmu_setup_irqs`: interrupts off, handlers in place, then on.
        try writeIRQCtrl(0)
        unit.onEventQueueInterrupt = { [ref] in ref.target?.handleEventQueue() }
        unit.onGlobalErrorInterrupt = { [ref] in ref.target?.handleGlobalError() }
        if features.pri { unit.onPRIQueueInterrupt = { [ref] in ref.target?.handlePRIQueue() } }
        try writeIRQCtrl(SMMUv3Bits.irqGERROR | SMMUv3Bits.irqEVTQ | (features.pri ? SMMUv3Bits.irqPRIQ : 0))
        enables |= SMMUv3Bits.cr0SMMUEN
        try writeCR0(enables)
        isEnabled = true
    }

    /// Turns the unit off (Linux `arm_smmu_device_shutdown` → `arm_smmu_device_disable`),
    /// then frees the stream table, the level 2 arrays and the queues.
    func shutdown() {
        guard isEnabled else { return }
        try? writeCR0(0)
        unit.write32(SMMUv3Register.irqCtrl, 0)
        unit.onEventQueueInterrupt = nil
        unit.onGlobalErrorInterrupt = nil
        unit.onPRIQueueInterrupt = nil
        for (_, l2) in l2Tables { for i in 0..<4 { try? platform.frames.free(l2 + UInt64(i) * 4096) } }
        l2Tables = [:]
        freeOwnFrames()
        isEnabled = false
    }

    // MARK: Stream table

    /// The address of the STE of `sid`; with a 2-level table its level 2 array is made first
    /// if needed (Linux `arm_smmu_init_l2_strtab`: 256 aborting STEs, then the L1 descriptor
    /// with SPAN = SPLIT + 1).
    func steAddress(_ sid: UInt32, create: Bool) throws(IOMMUError) -> UInt64? {
        guard sid >> UInt32(sidBits) == 0 else { throw .noDevice("StreamID 0x\(String(sid, radix: 16)) beyond \(sidBits) bits on \(name)") }
        guard twoLevelStreamTable else { return streamTable + UInt64(sid) * StreamTableEntry.size }
        let l1Index = sid >> Self.split
        if let l2 = l2Tables[l1Index] { return l2 + UInt64(sid & ((1 << Self.split) - 1)) * StreamTableEntry.size }
        guard create else { return nil }
        let l2: UInt64
        do { l2 = try platform.frames.allocateContiguous(4, .contextTable, alignment: 4) } catch {
            throw .noMemory("level 2 stream table on \(name)")
        }
        do {
            try fillAbort(l2, count: 1 << Int(Self.split))
            try store(streamTable + UInt64(l1Index) * L1StreamTableDescriptor.size,
                      L1StreamTableDescriptor(l2Pointer: l2, span: UInt8(Self.split + 1)).raw)
        } catch {
            for i in 0..<4 { try? platform.frames.free(l2 + UInt64(i) * 4096) }
            throw error
        }
        l2Tables[l1Index] = l2
        return l2 + UInt64(sid & ((1 << Self.split) - 1)) * StreamTableEntry.size
    }

    /// Changes `master`'s live STE to `target` through the entry writer, each step followed
    /// by CFGI_STE (leaf) and CMD_SYNC (Linux `arm_smmu_write_ste` → `arm_smmu_sync_ste_for_sid`).
    func writeSTE(_ master: ArmSMMUMaster, _ target: StreamTableEntry) throws(IOMMUError) -> UpdatePath {
        let words = target.words
        let address = master.steAddress
        let sid = master.sid
        let path = try SMMUEntryWriter.write(current: master.ste, target: words, kind: .ste, store: { [self] (i, v) throws(IOMMUError) in
            try store(address + UInt64(i) * 8, v)
            master.ste[i] = v
            platform.scheduler.yieldPoint(KernelYield.betweenEntryWords)
        }, sync: { [self] () throws(IOMMUError) in
            try platform.withHardware { () throws(IOMMUError) in try cmdq.issueAndSync(.cfgiSTE(sid: sid, leaf: true)) }
        })
        return reported(path)
    }

    /// Broken reporting for oracle-strength runs: an update through V = 0 called hitless.
    private func reported(_ path: UpdatePath) -> UpdatePath {
        path == .teardownSetup && (driver?.bugs.contains(.replaceThroughNonPresent) ?? false) ? .singleWord : path
    }

    /// Changes CD `ssid` of `master`'s CD table through the entry writer, each step followed
    /// by CFGI_CD (leaf) and CMD_SYNC (Linux `arm_smmu_write_cd_entry` → `arm_smmu_sync_cd`).
    /// The CD's leaf is made first if needed (`arm_smmu_alloc_cd_ptr`). Counts the valid CDs
    /// at SSIDs other than 0 (Linux `used_ssids`).
    func writeCD(_ master: ArmSMMUMaster, ssid: UInt32 = 0, _ target: ContextDescriptor) throws(IOMMUError) -> UpdatePath {
        guard master.cdTable != 0 else { throw .invalidArgument("\(master.device) has no CD table") }
        let words = target.words
        let valid = SMMUEntryWriter.Kind.cd.validBit
        guard let address = try cdAddress(master, ssid: ssid, create: words[0] & valid != 0) else { return .unchanged }
        let sid = master.sid
        let wasValid = master.cdValid(ssid)
        var current = master.cd(ssid)
        defer {
            master.cds[ssid] = current
            if ssid != 0, wasValid != (current[0] & valid != 0) { master.pasidsInUse += wasValid ? -1 : 1 }
        }
        // Broken for oracle-strength runs: a PASID's CD cleared without CFGI_CD.
        let skipCFGI = ssid != 0 && words[0] & valid == 0 && (driver?.bugs.contains(.skipPASIDCacheInvalidation) ?? false)
        return reported(try SMMUEntryWriter.write(current: current, target: words, kind: .cd, store: { [self] (i, v) throws(IOMMUError) in
            try store(address + UInt64(i) * 8, v)
            current[i] = v
            platform.scheduler.yieldPoint(KernelYield.betweenEntryWords)
        }, sync: { [self] () throws(IOMMUError) in
            guard !skipCFGI else { return }
            try platform.withHardware { () throws(IOMMUError) in try cmdq.issueAndSync(.cfgiCD(sid: sid, ssid: ssid, leaf: true)) }
        }))
    }

    // MARK: VMIDs

    /// A VMID for a stage 2 domain (Linux `arm_smmu_domain_finalise_s2`: `ida_alloc_range(1,
    /// (1 << vmid_bits) - 1)`, ENOSPC when none is left).
    func allocateVMID() throws(IOMMUError) -> UInt16 {
        if platform.faults.shouldFail(.didAlloc) { throw .noSpace("VMID on \(name) (injected)") }
        guard let v = vmids.allocate() else { throw .noSpace("no free VMID on \(name)") }
        if let d = driver { d.core?.observer?.tlbTagAllocated(driver: d, unit: index, tag: .vmid(v)) }
        return v
    }

    /// Gives a VMID back after TLBI_S12_VMALL by it completed; else it is quarantined.
    func releaseVMID(_ vmid: UInt16, invalidated: Bool) {
        if invalidated {
            if let d = driver { d.core?.observer?.tlbTagReleased(driver: d, unit: index, tag: .vmid(vmid)) }
            _ = vmids.free(vmid)
        } else {
            vmids.quarantine(vmid)
        }
    }
}
