// SMMUv3 unit configuration: ID register contents (IHI 0070 §6.3.1–§6.3.6, SMMU_IDR0–5,
// SMMU_IIDR §6.3.7, SMMU_AIDR §6.3.8), cache geometry and the virtual-time latency model.
import Formats

/// Virtual-time costs of an SMMUv3 unit's work (ns).
public struct SMMUv3Latency: Equatable, Sendable {
    /// Fetch and apply one command, by class.
    public var cfgiNs: UInt64 = 300
    public var tlbiNs: UInt64 = 1_000
    public var syncNs: UInt64 = 100
    /// Every other command (PREFETCH_*, ATC_INV issue, PRI_RESP, RESUME, STALL_TERM).
    public var otherCommandNs: UInt64 = 200
    /// From a write to SMMU_CR0, SMMU_IRQ_CTRL or SMMU_GBPA to its acknowledgement
    /// (CR0ACK, IRQ_CTRLACK, GBPA.UPDATE clearing). Software polls, as Linux's
    /// `arm_smmu_write_reg_sync` does.
    public var registerAckNs: UInt64 = 100
    /// From an interrupt to its handler running.
    public var interruptNs: UInt64 = 500
    /// How long a CMD_SYNC waits for outstanding ATC invalidations before it fails with
    /// CERROR_ATC_INV_SYNC (IHI 0070 §4.7.3, §7.1).
    public var atcInvalidationTimeoutNs: UInt64 = 1_000_000
    /// One way through the fabric to an endpoint that has no `PCIeLink`.
    public var linkNs: UInt64 = 250
    /// An endpoint applying an ATC invalidation (the PCIe device's side of ATC_INV).
    public var atcInvalidationNs: UInt64 = 500

    public init() {}

    /// Every command, acknowledgement and interrupt costs `ns`.
    public static func uniform(_ ns: UInt64) -> SMMUv3Latency {
        var l = SMMUv3Latency()
        l.cfgiNs = ns; l.tlbiNs = ns; l.syncNs = ns; l.otherCommandNs = ns
        l.registerAckNs = ns; l.interruptNs = ns; l.linkNs = ns
        return l
    }

    /// The cost of `opcode`.
    @inlinable
    public func commandLatency(_ opcode: UInt8) -> UInt64 {
        switch opcode {
        case 0x03...0x06: return cfgiNs
        case 0x10...0x30: return tlbiNs
        case 0x46: return syncNs
        default: return otherCommandNs
        }
    }
}

/// What an SMMUv3 unit is built with.
public struct SMMUv3Configuration: Sendable {
    public var name: String
    public var features: SMMUv3Features
    /// IDR1.CMDQS / EVTQS / PRIQS: log2 of the largest queues (at most 19).
    public var commandQueueMaxLog2: Int
    public var eventQueueMaxLog2: Int
    public var priQueueMaxLog2: Int
    /// IDR5.STALL_MAX: stalled transactions the unit can hold at once.
    public var stallMax: Int
    /// The reset value of GBPA.ABORT (IMPLEMENTATION DEFINED): with SMMUEN = 0 incoming
    /// traffic bypasses (false) or is aborted (true).
    public var gbpaAbortAtReset: Bool
    /// STE and CD caches (the configuration cache), and the TLB.
    public var steCacheEntries: Int
    public var steCacheWays: Int
    public var cdCacheEntries: Int
    public var cdCacheWays: Int
    public var tlbEntries: Int
    public var tlbWays: Int
    /// SMMU_IIDR.
    public var iidr: UInt32
    public var latency: SMMUv3Latency

    public init(name: String = "smmu0", features: SMMUv3Features = SMMUv3Features(),
                commandQueueMaxLog2: Int = 19, eventQueueMaxLog2: Int = 19, priQueueMaxLog2: Int = 19,
                stallMax: Int = 64, gbpaAbortAtReset: Bool = false,
                steCacheEntries: Int = 64, steCacheWays: Int = 4, cdCacheEntries: Int = 256, cdCacheWays: Int = 4,
                tlbEntries: Int = 1024, tlbWays: Int = 4, iidr: UInt32 = 0x43B, latency: SMMUv3Latency = SMMUv3Latency()) {
        self.name = name; self.features = features
        self.commandQueueMaxLog2 = min(19, commandQueueMaxLog2)
        self.eventQueueMaxLog2 = min(19, eventQueueMaxLog2)
        self.priQueueMaxLog2 = min(19, priQueueMaxLog2)
        self.stallMax = stallMax; self.gbpaAbortAtReset = gbpaAbortAtReset
        self.steCacheEntries = steCacheEntries; self.steCacheWays = steCacheWays
        self.cdCacheEntries = cdCacheEntries; self.cdCacheWays = cdCacheWays
        self.tlbEntries = tlbEntries; self.tlbWays = tlbWays
        self.iidr = iidr; self.latency = latency
    }

    // MARK: ID registers (IHI 0070 §6.3.1–§6.3.6; Linux `IDR0_*`, `IDR1_*`, `IDR3_*`, `IDR5_*`)

    /// SMMU_IDR0.
    public var idr0: UInt32 {
        let f = features
        var v: UInt32 = 0
        if f.stage2 { v |= 1 << 0 }                          // S2P
        if f.stage1 { v |= 1 << 1 }                          // S1P
        v |= (f.aarch32Tables ? 3 : 2) << 2                  // TTF: AArch64 (and AArch32)
        v |= 1 << 4                                          // COHACC
        v |= UInt32(f.httu.rawValue) << 6                    // HTTU
        if f.hyp { v |= 1 << 9 }
        if f.ats { v |= 1 << 10 }
        if f.asid16 { v |= 1 << 12 }
        if f.msi { v |= 1 << 13 }
        if f.sev { v |= 1 << 14 }
        if f.pri { v |= 1 << 16 }
        if f.vmid16 { v |= 1 << 18 }
        if f.twoLevelCDTable { v |= 1 << 19 }                // CD2L
        v |= UInt32(f.endianness.rawValue) << 21             // TTENDIAN
        v |= UInt32(f.stallModel.rawValue) << 24             // STALL_MODEL
        if f.terminateAbortOnly { v |= 1 << 26 }             // TERM_MODEL
        if f.twoLevelStreamTable { v |= 1 << 27 }            // ST_LEVEL = 0b01
        return v
    }

    /// SMMU_IDR1: queue and table sizes; tables and queues are not preset.
    public var idr1: UInt32 {
        UInt32(commandQueueMaxLog2) << 21 | UInt32(eventQueueMaxLog2) << 16 | UInt32(priQueueMaxLog2) << 11
            | UInt32(min(20, features.ssidBits)) << 6 | UInt32(min(32, features.sidBits))
    }

    /// SMMU_IDR3: FWB 8, STT 9, RIL 10.
    public var idr3: UInt32 {
        (features.s2FWB ? 1 << 8 : 0) | (features.smallTranslationTables ? 1 << 9 : 0) | (features.rangeInvalidation ? 1 << 10 : 0)
    }

    /// SMMU_IDR5: STALL_MAX 31:16, GRAN64K 6, GRAN16K 5, GRAN4K 4, OAS 2:0.
    public var idr5: UInt32 {
        var v = UInt32(min(0xFFFF, stallMax)) << 16 | UInt32(AddressSize.code(bits: features.outputAddressBits))
        if features.granule4K { v |= 1 << 4 }
        if features.granule16K { v |= 1 << 5 }
        if features.granule64K { v |= 1 << 6 }
        return v
    }

    /// SMMU_AIDR: SMMUv3.2 (ArchMajorRev 0, ArchMinorRev 2): range invalidation and STT.
    public static let aidr: UInt32 = 0x02
}

/// Event counters of an SMMUv3 unit.
public struct SMMUv3Counters: Equatable, Sendable {
    public var translations: UInt64 = 0
    public var tlbHits: UInt64 = 0
    public var tlbMisses: UInt64 = 0
    public var steCacheHits: UInt64 = 0
    public var steCacheMisses: UInt64 = 0
    public var cdCacheHits: UInt64 = 0
    public var cdCacheMisses: UInt64 = 0
    public var walks: UInt64 = 0
    public var walkMemoryAccesses: UInt64 = 0
    public var bypassed: UInt64 = 0
    public var aborted: UInt64 = 0
    public var commands: UInt64 = 0
    /// Completed commands by opcode.
    public var commandsByOpcode = [UInt64](repeating: 0, count: 0x50)
    public var commandErrors: UInt64 = 0
    public var syncsCompleted: UInt64 = 0
    public var syncTimeouts: UInt64 = 0
    public var tlbEntriesInvalidated: UInt64 = 0
    public var configEntriesInvalidated: UInt64 = 0
    public var eventsRecorded: UInt64 = 0
    /// Events lost: queue full (overflow), queue disabled, or the write aborted.
    public var eventsLost: UInt64 = 0
    public var eventQueueOverflows: UInt64 = 0
    public var faultsNotRecorded: UInt64 = 0
    public var pageRequests: UInt64 = 0
    public var pageRequestsQueued: UInt64 = 0
    public var pageRequestsLost: UInt64 = 0
    public var priQueueOverflows: UInt64 = 0
    public var priAutoResponses: UInt64 = 0
    public var priResponsesSent: UInt64 = 0
    public var atcInvalidationsSent: UInt64 = 0
    public var atcInvalidationsCompleted: UInt64 = 0
    public var stalls: UInt64 = 0
    /// Bytes endpoints moved through the unit, ATS Translation Requests answered, translated
    /// requests let through and refused.
    public var dmaBytes: UInt64 = 0
    public var atsTranslations: UInt64 = 0
    public var translatedRequests: UInt64 = 0
    public var translatedRequestsRefused: UInt64 = 0
    public var stallsResumed: UInt64 = 0
    public var stallsTerminated: UInt64 = 0
    public var interrupts: UInt64 = 0
    public var msiWrites: UInt64 = 0
    public var sevEvents: UInt64 = 0
    public init() {}
}
