// The SMMUv3 unit: state, interrupts, endpoints (IHI 0070 chapter 3 "Operation", §3.18
// interrupts, chapter 6 "Memory map and registers"). Registers are in SMMUv3Unit+Registers.swift,
// the command queue in +CommandQueue.swift, translation in +Translate.swift and +Walk.swift,
// the event queue in +Events.swift, the PRI queue in +PRI.swift and stalls in +Stall.swift.
import Platform
import Formats

/// The outcome of one transaction through an SMMUv3 unit.
public enum SMMUv3TranslationResult: Equatable, Sendable {
    case translated(physical: UInt64, pageShift: UInt8, permissions: PagePermissions)
    /// Terminated (aborted, or RAZ/WI when CD.A == 0). `event` names the fault or
    /// configuration error; nil for a silent abort (STE.Config == abort, GBPA.ABORT) or a
    /// fault whose recording was off. Whether an event was written is in the event queue.
    case terminated(SMMUEventID?)
    /// Held by the stall model until CMD_RESUME or CMD_STALL_TERM (IHI 0070 §3.12.2); the
    /// resolution is reported to `onStallResolved`.
    case stalled(stag: UInt16)
}

/// Something that receives what an SMMUv3 unit forwards to an endpoint: ATC invalidations
/// (CMD_ATC_INV) and PRI responses (CMD_PRI_RESP). The counterpart of `VTdEndpointPort`.
public protocol SMMUv3EndpointPort: AnyObject {
    var streamID: UInt32 { get }
    /// An ATC invalidation of 4096 × 2^`size` bytes at `address` (size 52: everything);
    /// the endpoint calls `completion` when its ATC no longer holds them.
    func receiveATCInvalidation(ssid: UInt32?, global: Bool, address: UInt64, size: UInt8, completion: @escaping () -> Void)
    /// A PRG response for page request group `groupIndex`.
    func receivePRIResponse(ssid: UInt32?, groupIndex: UInt16, response: PageResponseCode)
    /// The fabric between the endpoint and the unit, nil to use the unit's `linkNs`.
    var smmuLink: PCIeLink? { get }
    /// A transaction of this endpoint held by the stall model under `stag` was resumed
    /// (`result` is its new translation, or `.stalled` with a new STAG when it faulted and
    /// stalled again; `translatedAgain`) or terminated by software (CMD_RESUME abort,
    /// CMD_STALL_TERM: `result` is `.terminated` with the fault it stalled on).
    func stallResolved(stag: UInt16, result: SMMUv3TranslationResult, translatedAgain: Bool)
}

extension SMMUv3EndpointPort {
    public func stallResolved(stag: UInt16, result: SMMUv3TranslationResult, translatedAgain: Bool) {}
}

/// Architected register offsets (IHI 0070 §6.2; Linux arm-smmu-v3.h `ARM_SMMU_*`). The
/// event and PRI queue PROD/CONS are in register page 1 (offset 0x10000 up).
public enum SMMUv3Register {
    public static let idr0: UInt32 = 0x00, idr1: UInt32 = 0x04, idr2: UInt32 = 0x08, idr3: UInt32 = 0x0C
    public static let idr4: UInt32 = 0x10, idr5: UInt32 = 0x14, iidr: UInt32 = 0x18, aidr: UInt32 = 0x1C
    public static let cr0: UInt32 = 0x20, cr0ack: UInt32 = 0x24, cr1: UInt32 = 0x28, cr2: UInt32 = 0x2C
    public static let statusr: UInt32 = 0x40, gbpa: UInt32 = 0x44, agbpa: UInt32 = 0x48
    public static let irqCtrl: UInt32 = 0x50, irqCtrlAck: UInt32 = 0x54
    public static let gerror: UInt32 = 0x60, gerrorn: UInt32 = 0x64
    public static let gerrorIRQCfg0: UInt32 = 0x68, gerrorIRQCfg1: UInt32 = 0x70, gerrorIRQCfg2: UInt32 = 0x74
    public static let strtabBase: UInt32 = 0x80, strtabBaseCfg: UInt32 = 0x88
    public static let cmdqBase: UInt32 = 0x90, cmdqProd: UInt32 = 0x98, cmdqCons: UInt32 = 0x9C
    public static let evtqBase: UInt32 = 0xA0, evtqProd: UInt32 = 0x100A8, evtqCons: UInt32 = 0x100AC
    public static let evtqIRQCfg0: UInt32 = 0xB0, evtqIRQCfg1: UInt32 = 0xB8, evtqIRQCfg2: UInt32 = 0xBC
    public static let priqBase: UInt32 = 0xC0, priqProd: UInt32 = 0x100C8, priqCons: UInt32 = 0x100CC
    public static let priqIRQCfg0: UInt32 = 0xD0, priqIRQCfg1: UInt32 = 0xD8, priqIRQCfg2: UInt32 = 0xDC
}

/// Register fields (IHI 0070 §6.3; Linux `CR0_*`, `GBPA_*`, `IRQ_CTRL_*`, `GERROR_*`, `Q_*`).
public enum SMMUv3Bits {
    public static let cr0SMMUEN: UInt32 = 1 << 0, cr0PRIQEN: UInt32 = 1 << 1, cr0EVTQEN: UInt32 = 1 << 2
    public static let cr0CMDQEN: UInt32 = 1 << 3, cr0ATSCHK: UInt32 = 1 << 4
    public static let cr0Mask: UInt32 = 0x1F
    public static let cr2E2H: UInt32 = 1 << 0, cr2RECINVSID: UInt32 = 1 << 1, cr2PTM: UInt32 = 1 << 2
    public static let gbpaUpdate: UInt32 = 1 << 31, gbpaAbort: UInt32 = 1 << 20
    /// MemAttr 3:0, MTCFG 4, ALLOCCFG 11:8, SHCFG 13:12, PRIVCFG 17:16, INSTCFG 19:18, ABORT 20.
    public static let gbpaFields: UInt32 = 0x1F_3F1F
    public static let irqGERROR: UInt32 = 1 << 0, irqPRIQ: UInt32 = 1 << 1, irqEVTQ: UInt32 = 1 << 2
    public static let gerrorCMDQ: UInt32 = 1 << 0, gerrorEVTQAbort: UInt32 = 1 << 2, gerrorPRIQAbort: UInt32 = 1 << 3
    public static let gerrorMSICMDQAbort: UInt32 = 1 << 4, gerrorMSIEVTQAbort: UInt32 = 1 << 5
    public static let gerrorMSIPRIQAbort: UInt32 = 1 << 6, gerrorMSIGERRORAbort: UInt32 = 1 << 7
    public static let gerrorSFM: UInt32 = 1 << 8
    public static let gerrorMask: UInt32 = 0x1FD
    /// Queue base: RWA 62, ADDR 51:5, LOG2SIZE 4:0 (`Q_BASE_*`).
    public static let queueBaseMask: UInt64 = (1 << 62) | 0x000F_FFFF_FFFF_FFE0 | 0x1F
    /// PROD/CONS: the overflow flag (EVTQ/PRIQ PROD.OVFLG, CONS.OVACKFLG).
    public static let queueOverflow: UInt32 = 1 << 31
    /// CMDQ_CONS.ERR 30:24.
    public static let cmdqConsErrShift: UInt32 = 24
    /// MSI configuration: ADDR 51:2 (`MSI_CFG0_ADDR_MASK`).
    public static let msiAddressMask: UInt64 = 0x000F_FFFF_FFFF_FFFC
}

/// One of the unit's circular queues in memory (IHI 0070 §3.5): base register, PROD, CONS and
/// the queue's size as the unit uses it.
struct SMMUv3Queue {
    var base: UInt64 = 0
    var prod: UInt32 = 0
    var cons: UInt32 = 0
    /// Entry size in bytes (16 or 32) and the IDR1 limit on LOG2SIZE.
    let entryBytes: UInt64
    let maxLog2: UInt32

    init(entryBytes: UInt64, maxLog2: Int) { self.entryBytes = entryBytes; self.maxLog2 = UInt32(maxLog2) }

    /// Effective LOG2SIZE: MIN(LOG2SIZE, IDR1.xQS).
    var log2: UInt32 { min(UInt32(base & 0x1F), maxLog2) }
    /// Index and wrap bits of PROD/CONS.
    var pointerMask: UInt32 { (1 << (log2 + 1)) - 1 }
    var indexMask: UInt32 { (1 << log2) - 1 }
    /// The base address, aligned to the queue size (bits below are treated as zero).
    var address: UInt64 {
        let align = max(UInt64(32), entryBytes << UInt64(log2))
        return base & 0x000F_FFFF_FFFF_FFE0 & ~(align - 1)
    }
    func entryAddress(_ pointer: UInt32) -> UInt64 { address + UInt64(pointer & indexMask) * entryBytes }
    var isEmpty: Bool { prod & pointerMask == cons & pointerMask }
    var isFull: Bool { (prod ^ cons) & pointerMask == 1 << log2 }
    func next(_ pointer: UInt32) -> UInt32 { (pointer &+ 1) & pointerMask }
}

/// An emulated Arm SMMUv3 (IHI 0070), Non-secure programming interface.
///
/// Software reaches it only through its registers (`read32/read64/write32/write64` at the
/// architected offsets), structures in physical memory (stream tables, CD tables, translation
/// tables, the command, event and PRI queues) and interrupts (`onEventQueueInterrupt`,
/// `onPRIQueueInterrupt`, `onGlobalErrorInterrupt`, run as scheduled software events; or MSI
/// writes when the IRQ_CFG registers hold an address). Its configuration cache (STEs, CDs)
/// and TLB behave like hardware caches: tagged as the architecture tags them, fixed capacity
/// with LRU eviction, emptied only by the CFGI_* and TLBI_* commands software issues.
public final class SMMUv3Unit: @unchecked Sendable {
    public let configuration: SMMUv3Configuration
    public let features: SMMUv3Features
    public let platform: PlatformContext
    let memory: PhysicalMemory
    unowned(unsafe) let scheduler: Scheduler
    public let trackID: UInt32

    // Registers (IHI 0070 §6.3).
    @exclusivity(unchecked) var cr0: UInt32 = 0
    @exclusivity(unchecked) var cr0ack: UInt32 = 0
    @exclusivity(unchecked) var cr1: UInt32 = 0
    @exclusivity(unchecked) var cr2: UInt32 = 0
    @exclusivity(unchecked) var gbpa: UInt32
    @exclusivity(unchecked) var irqCtrl: UInt32 = 0
    @exclusivity(unchecked) var irqCtrlAck: UInt32 = 0
    @exclusivity(unchecked) var gerror: UInt32 = 0
    @exclusivity(unchecked) var gerrorn: UInt32 = 0
    @exclusivity(unchecked) var gerrorIRQCfg: (UInt64, UInt32, UInt32) = (0, 0, 0)
    @exclusivity(unchecked) var evtqIRQCfg: (UInt64, UInt32, UInt32) = (0, 0, 0)
    @exclusivity(unchecked) var priqIRQCfg: (UInt64, UInt32, UInt32) = (0, 0, 0)
    @exclusivity(unchecked) var strtabBase: UInt64 = 0
    @exclusivity(unchecked) var strtabBaseCfg: UInt32 = 0
    @exclusivity(unchecked) var cmdq: SMMUv3Queue
    @exclusivity(unchecked) var evtq: SMMUv3Queue
    @exclusivity(unchecked) var priq: SMMUv3Queue
    /// CMDQ_CONS.ERR.
    @exclusivity(unchecked) var cmdqError: CERROR = .none
    /// Pending acknowledgement events (a later write supersedes an earlier one).
    @exclusivity(unchecked) var cr0Generation: UInt64 = 0
    @exclusivity(unchecked) var irqGeneration: UInt64 = 0

    // Command queue state.
    @exclusivity(unchecked) var commandStepScheduled = false
    /// Real-thread runs: commands are being consumed inline (`drainCommandQueueInline`).
    @exclusivity(unchecked) var drainingInline = false
    /// A CMD_SYNC waiting for ATC invalidations (its deadline), nil when none is parked.
    @exclusivity(unchecked) var parkedSync: ParkedSync?
    @exclusivity(unchecked) var pendingATCInvalidations = 0

    /// Interrupts waiting to be delivered (coalesced until the handler is scheduled).
    @exclusivity(unchecked) var evtqInterruptPending = false
    @exclusivity(unchecked) var priqInterruptPending = false

    // Stall model.
    @exclusivity(unchecked) var stalled: [StalledTransaction] = []
    @exclusivity(unchecked) var nextSTAG: UInt16 = 1

    // Caches.
    let steCache: TaggedCache<STECacheEntry>
    let cdCache: TaggedCache<CDCacheEntry>
    let tlb: TaggedCache<SMMUTLBEntry>
    /// TLB entries by size class (2 MiB, 1 GiB) inserted since the TLB was last empty of them.
    @exclusivity(unchecked) var superpageEntries: UInt64 = 0

    let countersStorage: UnsafeMutablePointer<SMMUv3Counters>

    /// Interrupt handlers (software side), run as scheduled software events.
    public var onEventQueueInterrupt: (() -> Void)?
    public var onPRIQueueInterrupt: (() -> Void)?
    public var onGlobalErrorInterrupt: (() -> Void)?
    /// A CMD_SYNC with CS = SIG_SEV completed (the WFE wake-up a polling CPU sees).
    public var onSEV: (() -> Void)?
    /// A stalled transaction was resolved: (StreamID, STAG, outcome). The device side.
    public var onStallResolved: ((UInt32, UInt16, SMMUv3TranslationResult) -> Void)?
    /// Endpoints reachable through this unit, by StreamID.
    var endpoints: [UInt32: any SMMUv3EndpointPort] = [:]
    /// Told of every translation-table page a walk reads (stage 1 every level, stage 2 the
    /// leaf's table): the oracle checks none was freed by software.
    @exclusivity(unchecked) public var onTableRead: ((UInt64) -> Void)?
    /// Test-only broken hardware: TLBI commands complete without invalidating anything.
    /// Oracle-strength runs only.
    public var dropsTLBInvalidations = false
    /// The checker (the simulator's oracle, unretained) and observer of every access.
    @exclusivity(unchecked) public var accessWatch = DMAAccessWatch()
    /// Sees every access the unit performed or refused (after the checker).
    public var accessObserver: ((DMAAccessRecord) -> Void)? {
        get { accessWatch.observer }
        set { accessWatch.observer = newValue }
    }
    /// An ATS Translation Request is being answered: translation faults are not recorded and
    /// nothing stalls (IHI 0070 §3.9.1).
    @exclusivity(unchecked) var answeringTranslationRequest = false

    public init(configuration: SMMUv3Configuration = SMMUv3Configuration(), platform: PlatformContext) {
        self.configuration = configuration
        self.features = configuration.features
        self.platform = platform
        self.memory = platform.memory
        self.scheduler = platform.scheduler
        self.trackID = platform.trace.track(named: configuration.name)
        gbpa = configuration.gbpaAbortAtReset ? SMMUv3Bits.gbpaAbort : 0
        cmdq = SMMUv3Queue(entryBytes: RawCommand.size, maxLog2: configuration.commandQueueMaxLog2)
        evtq = SMMUv3Queue(entryBytes: RawEvent.size, maxLog2: configuration.eventQueueMaxLog2)
        priq = SMMUv3Queue(entryBytes: PRIQEntry.size, maxLog2: configuration.priQueueMaxLog2)
        steCache = TaggedCache(capacity: configuration.steCacheEntries, ways: configuration.steCacheWays, empty: .empty)
        cdCache = TaggedCache(capacity: configuration.cdCacheEntries, ways: configuration.cdCacheWays, empty: .empty)
        tlb = TaggedCache(capacity: configuration.tlbEntries, ways: configuration.tlbWays, empty: .empty)
        countersStorage = .allocate(capacity: 1)
        countersStorage.initialize(to: SMMUv3Counters())
        ref.target = self
    }

    /// What this unit's scheduled events hold (cleared when the unit goes).
    let ref = PlatformContext.BackRef<SMMUv3Unit>()

    deinit {
        ref.target = nil
        countersStorage.deinitialize(count: 1)
        countersStorage.deallocate()
    }

    public var counters: SMMUv3Counters { countersStorage.pointee }
    public func resetCounters() { countersStorage.pointee = SMMUv3Counters() }

    /// Entries currently held by each cache.
    public var cacheOccupancy: (ste: Int, cd: Int, tlb: Int) { (steCache.count, cdCache.count, tlb.count) }

    /// Connects an endpoint so ATC invalidations and PRI responses reach it.
    public func connect(_ endpoint: any SMMUv3EndpointPort) { endpoints[endpoint.streamID] = endpoint }

    /// Forgets every connected endpoint (they may hold the unit: the machine breaks the cycle).
    public func disconnectAll() { endpoints = [:] }

    // MARK: Enables as acknowledged (the unit acts on CR0ACK, not on CR0)

    @inline(__always) var smmuEnabled: Bool { cr0ack & SMMUv3Bits.cr0SMMUEN != 0 }
    @inline(__always) var commandQueueEnabled: Bool { cr0ack & SMMUv3Bits.cr0CMDQEN != 0 }
    @inline(__always) var eventQueueEnabled: Bool { cr0ack & SMMUv3Bits.cr0EVTQEN != 0 }
    @inline(__always) var priQueueEnabled: Bool { cr0ack & SMMUv3Bits.cr0PRIQEN != 0 }
    /// Whether a global error is active (GERROR and GERRORN differ in that bit).
    @inline(__always) func globalErrorActive(_ bit: UInt32) -> Bool { (gerror ^ gerrorn) & bit != 0 }

    // MARK: Interrupts (IHI 0070 §3.18)

    /// Runs `handler` as a software event after the interrupt latency; with an MSI address
    /// configured (`cfg.0`) and IDR0.MSI, first writes `cfg.1` there (32 bits). Returns false
    /// when the MSI write aborted (then `msiAbortBit` becomes active in GERROR instead).
    @discardableResult
    func signal(_ cfg: (UInt64, UInt32, UInt32), msiAbortBit: UInt32, handler: @escaping () -> Void) -> Bool {
        let c = countersStorage
        c.pointee.interrupts &+= 1
        platform.trace.record(TraceEvent(time: scheduler.now, kind: .interrupt, track: trackID, a: UInt64(msiAbortBit)))
        let address = cfg.0 & SMMUv3Bits.msiAddressMask
        if features.msi && address != 0 {
            do {
                try memory.deviceStore(address, cfg.1)
                c.pointee.msiWrites &+= 1
            } catch {
                raiseGlobalError(msiAbortBit)
                return false
            }
        }
        scheduler.schedule(after: configuration.latency.interruptNs, kind: .software, handler)
        return true
    }

    /// Toggles `bit` of GERROR to make it active (if it is not already) and signals the
    /// global error interrupt when IRQ_CTRL.GERROR_IRQEN is acknowledged.
    func raiseGlobalError(_ bit: UInt32) {
        guard !globalErrorActive(bit) else { return }
        gerror ^= bit
        guard irqCtrlAck & SMMUv3Bits.irqGERROR != 0 else { return }
        signal(gerrorIRQCfg, msiAbortBit: SMMUv3Bits.gerrorMSIGERRORAbort) { [ref] in ref.target?.onGlobalErrorInterrupt?() }
    }

    /// Delivers a message to an endpoint through its link (or after `linkNs`).
    func toEndpoint(_ port: any SMMUv3EndpointPort, pageResponse: Bool = false, _ deliver: @escaping () -> Void) {
        if let link = port.smmuLink {
            link.down(pageResponse: pageResponse, deliver)
        } else {
            scheduler.schedule(after: configuration.latency.linkNs, kind: .hardware, deliver)
        }
    }

    /// Delivers a message from an endpoint to the unit through its link (or after `linkNs`).
    func fromEndpoint(_ port: any SMMUv3EndpointPort, _ deliver: @escaping () -> Void) {
        if let link = port.smmuLink {
            link.up(deliver)
        } else {
            scheduler.schedule(after: configuration.latency.linkNs, kind: .hardware, deliver)
        }
    }
}

/// A CMD_SYNC held until outstanding ATC invalidations complete (or its deadline passes).
struct ParkedSync {
    var sync: CommandSync
    var deadline: UInt64
    var timeout: EventID
}
