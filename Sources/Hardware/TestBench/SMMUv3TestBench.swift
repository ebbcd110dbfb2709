// A test bench for the SMMUv3 unit (IHI 0070 §3.3 stream tables, §5 STE/CD, §3.5 queues,
// §6.3 registers): writes tables and queues into physical memory and programs registers the
// way Linux's arm_smmu_device_reset does, without any driver policy.
import Platform
import Formats

/// Drives an `SMMUv3Unit` as a hardware verification bench does: it builds stream tables,
/// CD tables and Arm page tables in physical memory, enables the queues, submits commands and
/// runs the scheduler. It is not a driver (no ASID/VMID management, no entry-update rules).
public final class SMMUv3TestBench: @unchecked Sendable {
    public enum BenchError: Error, Equatable {
        case frames(FrameError)
        case memory(MemoryError)
        case pageTable
        case queueFull
        case timedOut
    }

    /// Where a CD table is and how an STE names it.
    public struct CDTable: Equatable, Sendable {
        public var pointer: UInt64
        public var format: StreamTableEntry.S1Fmt
        public var s1CDMax: UInt8
    }

    public let platform: PlatformContext
    public let unit: SMMUv3Unit
    public let streamTableLog2: UInt8
    public let twoLevel: Bool
    public let streamTable: UInt64
    public let commandQueue: UInt64, eventQueue: UInt64, priQueue: UInt64, statusPage: UInt64
    public let commandQueueLog2: UInt8, eventQueueLog2: UInt8, priQueueLog2: UInt8
    private var syncSequence: UInt32 = 0

    var memory: PhysicalMemory { platform.memory }

    public init(platform: PlatformContext, unit: SMMUv3Unit, streamTableLog2: UInt8 = 8, twoLevel: Bool = false,
                commandQueueLog2: UInt8 = 8, eventQueueLog2: UInt8 = 7, priQueueLog2: UInt8 = 8) throws(BenchError) {
        self.platform = platform
        self.unit = unit
        self.streamTableLog2 = streamTableLog2
        self.twoLevel = twoLevel
        self.commandQueueLog2 = commandQueueLog2; self.eventQueueLog2 = eventQueueLog2; self.priQueueLog2 = priQueueLog2
        func pages(_ bytes: UInt64) throws(BenchError) -> UInt64 {
            let n = Int(max(1, (bytes + 4095) / 4096))
            do { return try platform.frames.allocateContiguous(n, .queue, alignment: n) } catch { throw .frames(error) }
        }
        let tableBytes = twoLevel ? max(64, (UInt64(1) << UInt64(max(0, Int(streamTableLog2) - 8))) * 8)
                                  : (UInt64(1) << UInt64(streamTableLog2)) * StreamTableEntry.size
        streamTable = try pages(tableBytes)
        commandQueue = try pages(RawCommand.size << UInt64(commandQueueLog2))
        eventQueue = try pages(RawEvent.size << UInt64(eventQueueLog2))
        priQueue = try pages(PRIQEntry.size << UInt64(priQueueLog2))
        statusPage = try pages(4096)
    }

    private func store(_ pa: UInt64, _ v: UInt64) throws(BenchError) {
        do { try memory.store64(pa, v) } catch { throw .memory(error) }
    }

    private func load(_ pa: UInt64) throws(BenchError) -> UInt64 {
        do { return try memory.load64(pa) } catch { throw .memory(error) }
    }

    /// Waits (running hardware) until `condition` holds.
    public func wait(timeoutNs: UInt64 = 1_000_000, _ condition: () -> Bool) throws(BenchError) {
        do { try platform.scheduler.wait(until: condition, timeoutNs: timeoutNs) } catch { throw .timedOut }
    }

    /// Writes CR0 and waits for CR0ACK to match (Linux `arm_smmu_write_reg_sync`).
    public func writeCR0(_ value: UInt32) throws(BenchError) {
        unit.write32(SMMUv3Register.cr0, value)
        try wait { self.unit.read32(SMMUv3Register.cr0ack) == value }
    }

    /// Programs the stream table, the three queues and their interrupts, then enables the
    /// queues and (with `translation`) SMMUEN, in Linux's order.
    public func enable(translation: Bool = true, interrupts: Bool = true) throws(BenchError) {
        try writeCR0(0)
        unit.write32(SMMUv3Register.cr1, 0xD75)      // queues and tables WB, inner shareable
        unit.write32(SMMUv3Register.cr2, SMMUv3Bits.cr2PTM | SMMUv3Bits.cr2RECINVSID)
        unit.write64(SMMUv3Register.strtabBase, StreamTableConfig.make(address: streamTable, format: twoLevel ? .twoLevel : .linear,
                                                                        log2Size: streamTableLog2).base)
        unit.write32(SMMUv3Register.strtabBaseCfg, StreamTableConfig.make(address: streamTable, format: twoLevel ? .twoLevel : .linear,
                                                                           log2Size: streamTableLog2).cfg)
        unit.write64(SMMUv3Register.cmdqBase, 1 << 62 | commandQueue | UInt64(commandQueueLog2))
        unit.write32(SMMUv3Register.cmdqProd, 0)
        unit.write32(SMMUv3Register.cmdqCons, 0)
        var enables = SMMUv3Bits.cr0CMDQEN
        try writeCR0(enables)
        unit.write64(SMMUv3Register.evtqBase, 1 << 62 | eventQueue | UInt64(eventQueueLog2))
        unit.write32(SMMUv3Register.evtqProd, 0)
        unit.write32(SMMUv3Register.evtqCons, 0)
        enables |= SMMUv3Bits.cr0EVTQEN
        try writeCR0(enables)
        if unit.features.pri {
            unit.write64(SMMUv3Register.priqBase, 1 << 62 | priQueue | UInt64(priQueueLog2))
            unit.write32(SMMUv3Register.priqProd, 0)
            unit.write32(SMMUv3Register.priqCons, 0)
            enables |= SMMUv3Bits.cr0PRIQEN
            try writeCR0(enables)
        }
        if interrupts {
            let irqs = SMMUv3Bits.irqGERROR | SMMUv3Bits.irqEVTQ | (unit.features.pri ? SMMUv3Bits.irqPRIQ : 0)
            unit.write32(SMMUv3Register.irqCtrl, irqs)
            try wait { self.unit.read32(SMMUv3Register.irqCtrlAck) == irqs }
        }
        if unit.features.ats { enables |= SMMUv3Bits.cr0ATSCHK }
        if translation { enables |= SMMUv3Bits.cr0SMMUEN }
        try writeCR0(enables)
    }

    // MARK: Stream table

    /// The address of the STE of `sid`, creating its level 2 array (2-level tables) if asked.
    public func steAddress(_ sid: UInt32, create: Bool = true) throws(BenchError) -> UInt64 {
        guard twoLevel else { return streamTable + UInt64(sid) * StreamTableEntry.size }
        let l1Address = streamTable + UInt64(sid >> 8) * 8
        var l1 = L1StreamTableDescriptor(raw: try load(l1Address))
        if l1.span == 0 {
            guard create else { throw .memory(.unbacked(address: l1Address)) }
            let l2: UInt64
            do { l2 = try platform.frames.allocateContiguous(4, .contextTable, alignment: 4) } catch { throw .frames(error) }
            l1 = L1StreamTableDescriptor(l2Pointer: l2, span: 9)
            try store(l1Address, l1.raw)
        }
        return l1.l2Pointer + UInt64(sid & 0xFF) * StreamTableEntry.size
    }

    /// Writes `ste` as the STE of `sid`, word 0 (with V) last.
    public func setSTE(_ sid: UInt32, _ ste: StreamTableEntry) throws(BenchError) {
        let a = try steAddress(sid)
        for i in stride(from: 7, through: 1, by: -1) { try store(a + UInt64(i) * 8, ste.data[i]) }
        try store(a, ste.data[0])
    }

    // MARK: CD tables

    /// A CD table for 2^`ssidBits` SubstreamIDs (0: a single CD): linear, or 2-level with
    /// 4 KiB leaf tables of 64 CDs (level 2 tables made on demand by `setCD`).
    public func makeCDTable(ssidBits: UInt8 = 0, twoLevel: Bool = false) throws(BenchError) -> CDTable {
        let bytes: UInt64 = twoLevel ? max(64, (UInt64(1) << UInt64(max(0, Int(ssidBits) - 6))) * 8)
                                     : (UInt64(1) << UInt64(ssidBits)) * ContextDescriptor.size
        let n = Int((bytes + 4095) / 4096)
        let p: UInt64
        do { p = try platform.frames.allocateContiguous(n, .pasidTable, alignment: n) } catch { throw .frames(error) }
        return CDTable(pointer: p, format: twoLevel ? .twoLevel4K : .linear, s1CDMax: ssidBits)
    }

    /// The address of CD `ssid` of `table`, creating its level 2 table if asked.
    public func cdAddress(_ table: CDTable, ssid: UInt32, create: Bool = true) throws(BenchError) -> UInt64 {
        guard table.format == .twoLevel4K else { return table.pointer + UInt64(ssid) * ContextDescriptor.size }
        let l1Address = table.pointer + UInt64(ssid >> 6) * 8
        var l1 = L1ContextDescriptor(raw: try load(l1Address))
        if !l1.valid {
            guard create else { throw .memory(.unbacked(address: l1Address)) }
            let l2: UInt64
            do { l2 = try platform.frames.allocate(.pasidTable) } catch { throw .frames(error) }
            l1 = L1ContextDescriptor(l2Pointer: l2)
            try store(l1Address, l1.raw)
        }
        return l1.l2Pointer + UInt64(ssid & 63) * ContextDescriptor.size
    }

    /// Writes `cd` as CD `ssid` of `table`, word 0 (with V) last.
    public func setCD(_ table: CDTable, ssid: UInt32 = 0, _ cd: ContextDescriptor) throws(BenchError) {
        let a = try cdAddress(table, ssid: ssid)
        for i in stride(from: 7, through: 1, by: -1) { try store(a + UInt64(i) * 8, cd.data[i]) }
        try store(a, cd.data[0])
    }

    /// The STE that translates `sid` at stage 1 through `table`.
    public func stage1STE(_ table: CDTable, s1DSS: StreamTableEntry.S1DSS = .ssid0, stallDisable: Bool = false) -> StreamTableEntry {
        .cdTable(contextPointer: table.pointer, format: table.format, s1CDMax: table.s1CDMax, s1DSS: s1DSS, stallDisable: stallDisable)
    }

    // MARK: Page tables

    public func stage1Table(levels: Int = 4) throws(BenchError) -> IOPageTable<ArmStage1Format> {
        do {
            return try IOPageTable<ArmStage1Format>(memory: memory, frames: platform.frames, levels: levels,
                                                    addressWidth: unit.features.outputAddressBits)
        } catch { throw .pageTable }
    }

    public func stage2Table(levels: Int = 4) throws(BenchError) -> IOPageTable<ArmStage2Format> {
        do {
            return try IOPageTable<ArmStage2Format>(memory: memory, frames: platform.frames, levels: levels,
                                                    addressWidth: unit.features.outputAddressBits)
        } catch { throw .pageTable }
    }

    // MARK: Command queue

    /// Writes raw commands at PROD and moves PROD (without waiting).
    public func submitRaw(_ commands: [RawCommand]) throws(BenchError) {
        let mask: UInt32 = (1 << (UInt32(commandQueueLog2) + 1)) - 1
        var prod = unit.read32(SMMUv3Register.cmdqProd) & mask
        for c in commands {
            let cons = unit.read32(SMMUv3Register.cmdqCons) & mask
            guard (prod ^ cons) & mask != 1 << UInt32(commandQueueLog2) else { throw .queueFull }
            let slot = commandQueue + UInt64(prod & ((1 << UInt32(commandQueueLog2)) - 1)) * RawCommand.size
            try store(slot, c.w0)
            try store(slot + 8, c.w1)
            prod = (prod + 1) & mask
        }
        unit.write32(SMMUv3Register.cmdqProd, prod)
    }

    public func submit(_ commands: [SMMUCommand]) throws(BenchError) { try submitRaw(commands.map { $0.encode() }) }

    /// Submits `commands` and a CMD_SYNC that writes a fresh value to the status page by MSI,
    /// then runs hardware until that value is there.
    public func sync(_ commands: [SMMUCommand] = [], timeoutNs: UInt64 = 10_000_000) throws(BenchError) {
        syncSequence &+= 1
        let data = syncSequence
        try submit(commands + [.sync(CommandSync(signal: .irq, msiAddress: statusPage, msiData: data, msiAttr: 0xF, msh: 3))])
        try wait(timeoutNs: timeoutNs) { (try? self.memory.load32(self.statusPage)) == data }
    }

    // MARK: Event and PRI queues

    /// Reads every event between CONS and PROD, moves CONS past them and acknowledges an
    /// overflow (Linux `arm_smmu_evtq_thread`). Returns the events and whether PROD showed an
    /// overflow.
    public func drainEvents() throws(BenchError) -> (events: [SMMUEventRecord], overflow: Bool) {
        let mask: UInt32 = (1 << (UInt32(eventQueueLog2) + 1)) - 1
        let prodReg = unit.read32(SMMUv3Register.evtqProd)
        var cons = unit.read32(SMMUv3Register.evtqCons)
        let overflow = (prodReg ^ cons) & SMMUv3Bits.queueOverflow != 0
        var out: [SMMUEventRecord] = []
        while (cons ^ prodReg) & mask != 0 {
            let slot = eventQueue + UInt64(cons & ((1 << UInt32(eventQueueLog2)) - 1)) * RawEvent.size
            out.append(.decode(RawEvent(try load(slot), try load(slot + 8), try load(slot + 16), try load(slot + 24))))
            cons = (cons & SMMUv3Bits.queueOverflow) | ((cons + 1) & mask)
        }
        cons = (cons & mask) | (prodReg & SMMUv3Bits.queueOverflow)
        unit.write32(SMMUv3Register.evtqCons, cons)
        return (out, overflow)
    }

    /// Reads every PRI queue entry, as `drainEvents` does.
    public func drainPRI() throws(BenchError) -> (entries: [PRIQEntry], overflow: Bool) {
        let mask: UInt32 = (1 << (UInt32(priQueueLog2) + 1)) - 1
        let prodReg = unit.read32(SMMUv3Register.priqProd)
        var cons = unit.read32(SMMUv3Register.priqCons)
        let overflow = (prodReg ^ cons) & SMMUv3Bits.queueOverflow != 0
        var out: [PRIQEntry] = []
        while (cons ^ prodReg) & mask != 0 {
            let slot = priQueue + UInt64(cons & ((1 << UInt32(priQueueLog2)) - 1)) * PRIQEntry.size
            out.append(.decode(RawCommand(try load(slot), try load(slot + 8))))
            cons = (cons + 1) & mask
        }
        cons = (cons & mask) | (prodReg & SMMUv3Bits.queueOverflow)
        unit.write32(SMMUv3Register.priqCons, cons)
        return (out, overflow)
    }
}
