/// What an SMMUv3 implementation supports, as its ID registers advertise it (IHI 0070 §6.3.1
/// SMMU_IDR0, §6.3.2 IDR1, §6.3.4 IDR3, §6.3.6 IDR5; Linux `arm_smmu_device_hw_probe` reads the
/// same fields into `smmu->features`). Structure validity (C_BAD_STE, C_BAD_CD) and command
/// legality (CERROR_ILL) depend on these, so the checks in this folder take them as input; the
/// hardware model encodes them into the IDR registers.
///
/// The model is an SMMUv3.1-or-later implementation (out-of-range TxSZ is ILLEGAL, not
/// CONSTRAINED UNPREDICTABLE), Non-secure only, with VMSAv8-64 tables (no VMSAv9-128, no
/// FEAT_LPA2/DS, no permission indirection or overlays, no MPAM, no DPT, no Realm state).
public struct SMMUv3Features: Equatable, Sendable {
    /// IDR0.STALL_MODEL.
    public enum StallModel: UInt8, Sendable, CaseIterable {
        /// Stall and Terminate models both supported (0b00).
        case stallOrTerminate = 0
        /// Terminate only: stalls are not supported (0b01).
        case terminateOnly = 1
        /// Stall forced: faults always stall (0b10).
        case stallForced = 2
    }

    /// IDR0.HTTU: hardware update of the Access flag and dirty state.
    public enum HTTU: UInt8, Sendable, CaseIterable {
        case none = 0
        case accessFlag = 1
        case accessFlagAndDirty = 2
    }

    /// IDR0.TTENDIAN: translation-table endianness.
    public enum Endianness: UInt8, Sendable, CaseIterable {
        case mixed = 0
        case little = 2
        case big = 3
    }

    /// IDR0.S1P / IDR0.S2P.
    public var stage1: Bool = true
    public var stage2: Bool = true
    /// IDR0.ST_LEVEL == 0b01: 2-level stream tables.
    public var twoLevelStreamTable: Bool = true
    /// IDR0.CD2L: 2-level CD tables.
    public var twoLevelCDTable: Bool = true
    /// IDR0.HYP: EL2 StreamWorlds and CMD_TLBI_EL2_*.
    public var hyp: Bool = true
    /// IDR0.ATS / IDR0.PRI.
    public var ats: Bool = true
    public var pri: Bool = true
    /// IDR0.SEV / IDR0.MSI.
    public var sev: Bool = true
    public var msi: Bool = true
    /// IDR0.VMID16 / IDR0.ASID16.
    public var vmid16: Bool = true
    public var asid16: Bool = true
    public var httu: HTTU = .accessFlagAndDirty
    public var stallModel: StallModel = .stallOrTerminate
    /// IDR0.TERM_MODEL: 1 = a terminated transaction always aborts (CD.A must be 1).
    public var terminateAbortOnly: Bool = false
    public var endianness: Endianness = .little
    /// IDR0.TTF[0]: VMSAv8-32 LPAE tables. Not modelled; present so validity can reject them.
    public var aarch32Tables: Bool = false
    /// IDR3.RIL: range invalidation and the TTL hint.
    public var rangeInvalidation: Bool = true
    /// IDR3.STT: small translation tables (TxSZ up to 48).
    public var smallTranslationTables: Bool = false
    /// IDR3.FWB: STE.S2FWB may force stage 2 write-back (Linux `ARM_SMMU_FEAT_S2FWB`, one of
    /// the two ways `arm_smmu_get_viommu_size` accepts to keep a guest from bypassing caches).
    public var s2FWB: Bool = false
    /// IDR1.SSIDSIZE / IDR1.SIDSIZE.
    public var ssidBits: Int = 20
    public var sidBits: Int = 32
    /// IDR5.OAS in bits (32, 36, 40, 42, 44, 48, 52).
    public var outputAddressBits: Int = 48
    /// IDR5.GRAN4K / GRAN16K / GRAN64K.
    public var granule4K: Bool = true
    public var granule16K: Bool = false
    public var granule64K: Bool = false

    public init() {}

    /// The input address size of stage 2 (IHI 0070 §3.4): MAX(40, OAS) when VMSAv8-32 LPAE is
    /// implemented, otherwise OAS.
    @inlinable public var inputAddressBits: Int { aarch32Tables ? max(40, outputAddressBits) : outputAddressBits }

    @inlinable
    public func supports(_ granule: TranslationGranule) -> Bool {
        switch granule {
        case .size4K: return granule4K
        case .size16K: return granule16K
        case .size64K: return granule64K
        }
    }
}

/// A translation granule, as TCR.TG0 / VTCR.TG0 (CD.TG0, STE.S2TG) encode it:
/// 0b00 4 KiB, 0b01 64 KiB, 0b10 16 KiB, 0b11 reserved.
public enum TranslationGranule: UInt8, Sendable, CaseIterable {
    case size4K = 0
    case size64K = 1
    case size16K = 2

    /// log2 of the granule size: 12, 14 or 16.
    @inlinable public var shift: Int {
        switch self {
        case .size4K: return 12
        case .size16K: return 14
        case .size64K: return 16
        }
    }

    /// Address bits resolved per level: granule bits − 3.
    @inlinable public var stride: Int { shift - 3 }
}

/// The physical/intermediate address size encodings of CD.IPS and STE.S2PS (IHI 0070 §5.2,
/// §5.4; TCR_ELx.PS). 0b110 is 52 bits from SMMUv3.1; 0b111 is reserved and behaves as 0b110
/// in SMMUv3.1–3.3.
public enum AddressSize {
    @inlinable
    public static func bits(_ code: UInt8) -> Int {
        switch code & 7 {
        case 0: return 32
        case 1: return 36
        case 2: return 40
        case 3: return 42
        case 4: return 44
        case 5: return 48
        default: return 52
        }
    }

    /// The encoding of the smallest size holding `bits` (48 → 0b101).
    @inlinable
    public static func code(bits: Int) -> UInt8 {
        for c in UInt8(0)...6 where Self.bits(c) >= bits { return c }
        return 6
    }

    /// Effective size: the field capped to the OAS (`eff_IPS = MIN(CD.IPS, SMMU_IDR5.OAS)`).
    @inlinable
    public static func effectiveBits(_ code: UInt8, oas: Int) -> Int { min(bits(code), oas) }

    /// True when `address` has a bit set at or above `bits`.
    @inlinable
    public static func exceeds(_ address: UInt64, bits: Int) -> Bool {
        bits < 64 && address >> UInt64(bits) != 0
    }
}
