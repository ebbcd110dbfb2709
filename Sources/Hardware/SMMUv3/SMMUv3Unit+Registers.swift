// SMMUv3 register file (IHI 0070 chapter 6: §6.3.1–§6.3.8 ID registers, §6.3.9–§6.3.12
// CR0/CR0ACK/CR1/CR2, §6.3.14 GBPA, §6.3.16–17 IRQ_CTRL/ACK, §6.3.18–§6.3.21 GERROR,
// GERRORN and GERROR_IRQ_CFGn, §6.3.23–§6.3.24 STRTAB_BASE/_CFG, §6.3.25–§6.3.35 the queue
// registers). Fields change only as the architecture lets them: queue and stream table
// bases are ignored while their enable (or its acknowledgement) is set, the SMMU-owned
// pointers (CMDQ_CONS, EVTQ_PROD, PRIQ_PROD) are writable only while their queue is off,
// GBPA changes only through UPDATE, and CR0/IRQ_CTRL take effect when acknowledged.
import Platform
import Formats

extension SMMUv3Unit {
    // MARK: 32-bit access

    /// A 32-bit MMIO read at `offset`. Reserved offsets read as zero.
    public func read32(_ offset: UInt32) -> UInt32 {
        typealias R = SMMUv3Register
        switch offset {
        case R.idr0: return configuration.idr0
        case R.idr1: return configuration.idr1
        case R.idr2, R.idr4: return 0
        case R.idr3: return configuration.idr3
        case R.idr5: return configuration.idr5
        case R.iidr: return configuration.iidr
        case R.aidr: return SMMUv3Configuration.aidr
        case R.cr0: return cr0
        case R.cr0ack: return cr0ack
        case R.cr1: return cr1
        case R.cr2: return cr2
        case R.statusr: return 0
        case R.gbpa: return gbpa
        case R.agbpa: return 0
        case R.irqCtrl: return irqCtrl
        case R.irqCtrlAck: return irqCtrlAck
        case R.gerror: return gerror
        case R.gerrorn: return gerrorn
        case R.gerrorIRQCfg0: return UInt32(truncatingIfNeeded: gerrorIRQCfg.0)
        case R.gerrorIRQCfg0 + 4: return UInt32(truncatingIfNeeded: gerrorIRQCfg.0 >> 32)
        case R.gerrorIRQCfg1: return gerrorIRQCfg.1
        case R.gerrorIRQCfg2: return gerrorIRQCfg.2
        case R.strtabBase: return UInt32(truncatingIfNeeded: strtabBase)
        case R.strtabBase + 4: return UInt32(truncatingIfNeeded: strtabBase >> 32)
        case R.strtabBaseCfg: return strtabBaseCfg
        case R.cmdqBase: return UInt32(truncatingIfNeeded: cmdq.base)
        case R.cmdqBase + 4: return UInt32(truncatingIfNeeded: cmdq.base >> 32)
        case R.cmdqProd: return cmdq.prod
        case R.cmdqCons: return cmdq.cons | UInt32(cmdqError.rawValue) << SMMUv3Bits.cmdqConsErrShift
        case R.evtqBase: return UInt32(truncatingIfNeeded: evtq.base)
        case R.evtqBase + 4: return UInt32(truncatingIfNeeded: evtq.base >> 32)
        case R.evtqProd: return evtq.prod
        case R.evtqCons: return evtq.cons
        case R.evtqIRQCfg0: return UInt32(truncatingIfNeeded: evtqIRQCfg.0)
        case R.evtqIRQCfg0 + 4: return UInt32(truncatingIfNeeded: evtqIRQCfg.0 >> 32)
        case R.evtqIRQCfg1: return evtqIRQCfg.1
        case R.evtqIRQCfg2: return evtqIRQCfg.2
        case R.priqBase: return UInt32(truncatingIfNeeded: priq.base)
        case R.priqBase + 4: return UInt32(truncatingIfNeeded: priq.base >> 32)
        case R.priqProd: return priq.prod
        case R.priqCons: return priq.cons
        case R.priqIRQCfg0: return UInt32(truncatingIfNeeded: priqIRQCfg.0)
        case R.priqIRQCfg0 + 4: return UInt32(truncatingIfNeeded: priqIRQCfg.0 >> 32)
        case R.priqIRQCfg1: return priqIRQCfg.1
        case R.priqIRQCfg2: return priqIRQCfg.2
        default: return 0
        }
    }

    /// A 64-bit MMIO read: the 64-bit registers whole, elsewhere two 32-bit reads.
    public func read64(_ offset: UInt32) -> UInt64 {
        typealias R = SMMUv3Register
        switch offset {
        case R.gerrorIRQCfg0: return gerrorIRQCfg.0
        case R.strtabBase: return strtabBase
        case R.cmdqBase: return cmdq.base
        case R.evtqBase: return evtq.base
        case R.evtqIRQCfg0: return evtqIRQCfg.0
        case R.priqBase: return priq.base
        case R.priqIRQCfg0: return priqIRQCfg.0
        default:
            let high = offset <= UInt32.max - 4 ? read32(offset + 4) : 0
            return UInt64(read32(offset)) | UInt64(high) << 32
        }
    }

    /// A 32-bit MMIO write at `offset`. Read-only and reserved offsets ignore writes.
    public func write32(_ offset: UInt32, _ value: UInt32) {
        typealias R = SMMUv3Register
        trace(offset, UInt64(value))
        switch offset {
        case R.cr0: writeCR0(value & SMMUv3Bits.cr0Mask)
        case R.cr1:
            // Table and queue attributes: only while the tables and queues are unused.
            if cr0 & SMMUv3Bits.cr0Mask == 0 && cr0ack == 0 { cr1 = value & 0xFFF }
        case R.cr2:
            if cr0 & SMMUv3Bits.cr0SMMUEN == 0 && !smmuEnabled { cr2 = value & 0x7 }
        case R.gbpa: writeGBPA(value)
        case R.irqCtrl: writeIRQCtrl(value & 0x7)
        case R.gerrorn: writeGERRORN(value & SMMUv3Bits.gerrorMask)
        case R.gerrorIRQCfg0: writeMSIConfig(&gerrorIRQCfg.0, low: value, enabled: irqEnabled(SMMUv3Bits.irqGERROR))
        case R.gerrorIRQCfg0 + 4: writeMSIConfig(&gerrorIRQCfg.0, high: value, enabled: irqEnabled(SMMUv3Bits.irqGERROR))
        case R.gerrorIRQCfg1: if !irqEnabled(SMMUv3Bits.irqGERROR) { gerrorIRQCfg.1 = value }
        case R.gerrorIRQCfg2: if !irqEnabled(SMMUv3Bits.irqGERROR) { gerrorIRQCfg.2 = value & 0x3F }
        case R.strtabBase, R.strtabBase + 4:
            let v = offset == R.strtabBase ? (strtabBase & ~0xFFFF_FFFF) | UInt64(value)
                                           : (strtabBase & 0xFFFF_FFFF) | UInt64(value) << 32
            writeStreamTableBase(v)
        case R.strtabBaseCfg:
            if !streamTableLocked { strtabBaseCfg = value & 0x3_07FF }
        case R.cmdqBase, R.cmdqBase + 4:
            writeQueueBase(&cmdq, half: offset - R.cmdqBase, value, locked: cr0 & SMMUv3Bits.cr0CMDQEN != 0 || commandQueueEnabled)
        case R.cmdqProd:
            cmdq.prod = value & 0xFFFFF & cmdq.pointerMask
            kickCommandQueue()
        case R.cmdqCons:
            // SMMU-owned: software may set it only while the queue is off (IHI 0070 §6.3.27).
            if cr0 & SMMUv3Bits.cr0CMDQEN == 0 && !commandQueueEnabled { cmdq.cons = value & 0xFFFFF & cmdq.pointerMask }
        case R.evtqBase, R.evtqBase + 4:
            writeQueueBase(&evtq, half: offset - R.evtqBase, value, locked: cr0 & SMMUv3Bits.cr0EVTQEN != 0 || eventQueueEnabled)
        case R.evtqProd:
            if cr0 & SMMUv3Bits.cr0EVTQEN == 0 && !eventQueueEnabled {
                evtq.prod = value & (0xFFFFF & evtq.pointerMask | SMMUv3Bits.queueOverflow)
            }
        case R.evtqCons:
            evtq.cons = value & (0xFFFFF & evtq.pointerMask | SMMUv3Bits.queueOverflow)
        case R.evtqIRQCfg0: writeMSIConfig(&evtqIRQCfg.0, low: value, enabled: irqEnabled(SMMUv3Bits.irqEVTQ))
        case R.evtqIRQCfg0 + 4: writeMSIConfig(&evtqIRQCfg.0, high: value, enabled: irqEnabled(SMMUv3Bits.irqEVTQ))
        case R.evtqIRQCfg1: if !irqEnabled(SMMUv3Bits.irqEVTQ) { evtqIRQCfg.1 = value }
        case R.evtqIRQCfg2: if !irqEnabled(SMMUv3Bits.irqEVTQ) { evtqIRQCfg.2 = value & 0x3F }
        case R.priqBase, R.priqBase + 4:
            writeQueueBase(&priq, half: offset - R.priqBase, value, locked: cr0 & SMMUv3Bits.cr0PRIQEN != 0 || priQueueEnabled)
        case R.priqProd:
            if cr0 & SMMUv3Bits.cr0PRIQEN == 0 && !priQueueEnabled {
                priq.prod = value & (0xFFFFF & priq.pointerMask | SMMUv3Bits.queueOverflow)
            }
        case R.priqCons:
            priq.cons = value & (0xFFFFF & priq.pointerMask | SMMUv3Bits.queueOverflow)
        case R.priqIRQCfg0: writeMSIConfig(&priqIRQCfg.0, low: value, enabled: irqEnabled(SMMUv3Bits.irqPRIQ))
        case R.priqIRQCfg0 + 4: writeMSIConfig(&priqIRQCfg.0, high: value, enabled: irqEnabled(SMMUv3Bits.irqPRIQ))
        case R.priqIRQCfg1: if !irqEnabled(SMMUv3Bits.irqPRIQ) { priqIRQCfg.1 = value }
        case R.priqIRQCfg2: if !irqEnabled(SMMUv3Bits.irqPRIQ) { priqIRQCfg.2 = value & 0x3F }
        default: return
        }
    }

    /// A 64-bit MMIO write: the 64-bit registers whole, elsewhere two 32-bit writes.
    public func write64(_ offset: UInt32, _ value: UInt64) {
        typealias R = SMMUv3Register
        switch offset {
        case R.gerrorIRQCfg0, R.strtabBase, R.cmdqBase, R.evtqBase, R.evtqIRQCfg0, R.priqBase, R.priqIRQCfg0:
            write32(offset, UInt32(truncatingIfNeeded: value))
            write32(offset + 4, UInt32(truncatingIfNeeded: value >> 32))
        default:
            write32(offset, UInt32(truncatingIfNeeded: value))
            if offset <= UInt32.max - 4 { write32(offset + 4, UInt32(truncatingIfNeeded: value >> 32)) }
        }
    }

    // MARK: Field rules

    /// STRTAB_BASE and STRTAB_BASE_CFG are ignored while SMMUEN (or its acknowledgement) is set.
    var streamTableLocked: Bool { cr0 & SMMUv3Bits.cr0SMMUEN != 0 || smmuEnabled }

    func writeStreamTableBase(_ v: UInt64) {
        guard !streamTableLocked else { return }
        strtabBase = v & (StreamTableConfig.addressMask | 1 << 62)
    }

    func writeQueueBase(_ q: inout SMMUv3Queue, half: UInt32, _ value: UInt32, locked: Bool) {
        guard !locked else { return }
        let v = half == 0 ? (q.base & ~0xFFFF_FFFF) | UInt64(value) : (q.base & 0xFFFF_FFFF) | UInt64(value) << 32
        q.base = v & SMMUv3Bits.queueBaseMask
    }

    func irqEnabled(_ bit: UInt32) -> Bool { (irqCtrl | irqCtrlAck) & bit != 0 }

    /// IRQ_CFG0 (ADDR 51:2) is ignored while its interrupt is enabled.
    func writeMSIConfig(_ reg: inout UInt64, low: UInt32? = nil, high: UInt32? = nil, enabled: Bool) {
        guard !enabled else { return }
        if let low { reg = (reg & ~0xFFFF_FFFF) | UInt64(low) }
        if let high { reg = (reg & 0xFFFF_FFFF) | UInt64(high) << 32 }
        reg &= SMMUv3Bits.msiAddressMask
    }

    /// CR0: the new enables take effect, and show in CR0ACK, after `registerAckNs`
    /// (IHI 0070 §6.3.9: software polls CR0ACK, Linux `arm_smmu_write_reg_sync`).
    func writeCR0(_ value: UInt32) {
        cr0 = value
        cr0Generation &+= 1
        let generation = cr0Generation
        scheduler.schedule(after: configuration.latency.registerAckNs, kind: .hardware) { [ref] in
            guard let unit = ref.target, unit.cr0Generation == generation else { return }
            unit.acknowledgeCR0(value)
        }
    }

    func acknowledgeCR0(_ value: UInt32) {
        let old = cr0ack
        cr0ack = value
        let turnedOff = old & ~value
        if turnedOff & SMMUv3Bits.cr0CMDQEN != 0 {
            // A disabled queue stops; a parked CMD_SYNC is abandoned (it completes no more).
            if let p = parkedSync { scheduler.cancel(p.timeout); parkedSync = nil }
        }
        if turnedOff & SMMUv3Bits.cr0SMMUEN != 0 {
            // Stalled transactions cannot outlive translation: they are terminated.
            terminateAllStalls()
        }
        if value & ~old & SMMUv3Bits.cr0CMDQEN != 0 { kickCommandQueue() }
    }

    /// GBPA (IHI 0070 §6.3.14): fields change only by a write with UPDATE = 1; UPDATE reads
    /// 1 until the new fields are in effect. Writes while an update is in progress are ignored.
    func writeGBPA(_ value: UInt32) {
        guard value & SMMUv3Bits.gbpaUpdate != 0, gbpa & SMMUv3Bits.gbpaUpdate == 0 else { return }
        gbpa |= SMMUv3Bits.gbpaUpdate
        let fields = value & SMMUv3Bits.gbpaFields
        scheduler.schedule(after: configuration.latency.registerAckNs, kind: .hardware) { [ref] in
            ref.target?.gbpa = fields
        }
    }

    func writeIRQCtrl(_ value: UInt32) {
        irqCtrl = value
        irqGeneration &+= 1
        let generation = irqGeneration
        scheduler.schedule(after: configuration.latency.registerAckNs, kind: .hardware) { [ref] in
            guard let unit = ref.target, unit.irqGeneration == generation else { return }
            unit.irqCtrlAck = value
        }
    }

    /// GERRORN (IHI 0070 §6.3.19): software acknowledges an error by making its bit equal to
    /// GERROR's. An acknowledged CMDQ_ERR lets the command queue resume at CONS: Linux has by
    /// then rewritten the failed command as a CMD_SYNC (`arm_smmu_cmdq_skip_err`).
    func writeGERRORN(_ value: UInt32) {
        let wasCMDQ = globalErrorActive(SMMUv3Bits.gerrorCMDQ)
        gerrorn = value
        if wasCMDQ && !globalErrorActive(SMMUv3Bits.gerrorCMDQ) { kickCommandQueue() }
    }

    func trace(_ offset: UInt32, _ value: UInt64) {
        platform.trace.record(TraceEvent(time: scheduler.now, kind: .registerWrite, track: trackID, a: UInt64(offset), b: value))
    }
}
