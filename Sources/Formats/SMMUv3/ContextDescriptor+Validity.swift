/// Whether a CD may be used: the ILLEGAL conditions of IHI 0070 §5.4 in the order of the
/// `CdIllegal()` pseudocode of §5.4.2, for a Non-secure stream on an SMMUv3.1-or-later
/// implementation with VMSAv8-64 tables. A transaction through an invalid or ILLEGAL CD is
/// aborted and records C_BAD_CD.
///
/// A CD's validity depends on the STE that located it (StreamWorld, S1STALLD, the stage 2
/// table format), which `CDContext` carries. In StreamWorld EL2 (without E2H) EPD0/EPD1 are
/// IGNORED (effective 0) and TTB1 is unused; in NS-EL1 and EL2-E2H both halves are checked
/// unless their EPDx is set.
public enum BadCDReason: Equatable, Sendable, CustomStringConvertible {
    /// V == 0.
    case invalid
    /// CD.S == 1 under an STE with S1STALLD == 1.
    case stallDisabledByStream
    /// CD.A == 0 when SMMU_IDR0.TERM_MODEL == 1.
    case abortRequired
    /// CD.S == 1 when SMMU_IDR0.STALL_MODEL == 0b01.
    case stallNotSupported
    /// CD.S == 0 when SMMU_IDR0.STALL_MODEL == 0b10.
    case stallForced
    /// ENDI selects an endianness SMMU_IDR0.TTENDIAN does not implement.
    case endiannessNotSupported
    /// AA64 == 0 (VMSAv8-32 LPAE) where it is not supported.
    case aarch32NotSupported
    /// AA64 == 1 under a VMSAv8-32 LPAE stage 2.
    case aarch64UnderAArch32Stage2
    /// HA or HD beyond what SMMU_IDR0.HTTU supports.
    case httuNotSupported
    /// ASID[15:8] non-zero with SMMU_IDR0.ASID16 == 0.
    case asidTooWide
    /// T0SZ (`ttb` 0) or T1SZ (1) outside [16, 39] (48/47 with SMMU_IDR3.STT).
    case txszOutOfRange(ttb: Int, UInt8)
    /// TG0 or TG1 reserved or not supported by SMMU_IDR5.
    case granuleNotSupported(ttb: Int, UInt8)
    /// TTB0 or TTB1 beyond the effective IPS, or beyond 48 bits with a 4 or 16 KiB granule.
    case tableOutOfRange(ttb: Int)

    public var description: String {
        switch self {
        case .invalid: return "CD.V == 0"
        case .stallDisabledByStream: return "CD.S set under STE.S1STALLD"
        case .abortRequired: return "CD.A clear with TERM_MODEL 1"
        case .stallNotSupported: return "CD.S set but stalls are not supported"
        case .stallForced: return "CD.S clear but stalls are forced"
        case .endiannessNotSupported: return "CD.ENDI not implemented"
        case .aarch32NotSupported: return "VMSAv8-32 tables not supported"
        case .aarch64UnderAArch32Stage2: return "VMSAv8-64 CD under a VMSAv8-32 stage 2"
        case .httuNotSupported: return "HA/HD beyond HTTU"
        case .asidTooWide: return "16-bit ASID on an 8-bit ASID SMMU"
        case .txszOutOfRange(let t, let v): return "T\(t)SZ \(v) out of range"
        case .granuleNotSupported(let t, let g): return "TG\(t) \(g) not supported"
        case .tableOutOfRange(let t): return "TTB\(t) out of range"
        }
    }
}

/// What the STE that located a CD contributes to the CD's validity.
public struct CDContext: Equatable, Sendable {
    public var streamWorld: StreamTableEntry.StreamWorld
    /// STE.S1STALLD.
    public var stallDisabled: Bool
    /// The STE translates at stage 2 with VMSAv8-32 LPAE tables (S2AA64 == 0).
    public var aarch32Stage2: Bool

    public init(streamWorld: StreamTableEntry.StreamWorld = .nsEL1, stallDisabled: Bool = false, aarch32Stage2: Bool = false) {
        self.streamWorld = streamWorld; self.stallDisabled = stallDisabled; self.aarch32Stage2 = aarch32Stage2
    }

    /// The context `ste` gives its CDs, with SMMU_CR2.E2H = `e2h`.
    public init(ste: StreamTableEntry, e2h: Bool, features: SMMUv3Features) {
        self.init(streamWorld: ste.streamWorld(e2h: e2h, features: features), stallDisabled: ste.s1StallDisable,
                  aarch32Stage2: ste.stage2Translates && !ste.s2AA64)
    }
}

extension ContextDescriptor {
    /// Nil when the CD may be used, else the reason a transaction through it records C_BAD_CD.
    /// - Complexity: O(1), no allocation.
    public func validity(features f: SMMUv3Features, context c: CDContext = CDContext()) -> BadCDReason? {
        guard valid else { return .invalid }
        if c.stallDisabled && stall { return .stallDisabledByStream }
        if f.terminateAbortOnly && !abort { return .abortRequired }
        if f.stallModel == .terminateOnly && stall { return .stallNotSupported }
        if f.stallModel == .stallForced && !stall { return .stallForced }
        let el2 = c.streamWorld == .el2
        // EPDx are IGNORED (effective 0) in StreamWorld EL2; TTB1 does not exist there.
        let walk0 = el2 || !epd0
        let walk1 = !el2 && !epd1
        if walk0 || walk1 {
            if f.endianness == .little && endi { return .endiannessNotSupported }
            if f.endianness == .big && !endi { return .endiannessNotSupported }
        }
        guard aa64 else {
            return !f.aarch32Tables || c.streamWorld == .el2E2H ? .aarch32NotSupported : nil
        }
        if c.aarch32Stage2 { return .aarch64UnderAArch32Stage2 }
        if (ha || hd) && f.httu == .none { return .httuNotSupported }
        if hd && f.httu == .accessFlag { return .httuNotSupported }
        if c.streamWorld != .el2 && !f.asid16 && asid >> 8 != 0 { return .asidTooWide }
        if walk0 && !Self.txszInRange(t0sz, granule: tg0, features: f) { return .txszOutOfRange(ttb: 0, t0sz) }
        if walk1 && !Self.txszInRange(t1sz, granule: tg1, features: f) { return .txszOutOfRange(ttb: 1, t1sz) }
        let ipsBits = AddressSize.effectiveBits(ips, oas: f.outputAddressBits)
        if walk0 {
            guard let g = tg0, f.supports(g) else { return .granuleNotSupported(ttb: 0, rawTG0) }
            if AddressSize.exceeds(ttb0, bits: g == .size64K ? ipsBits : min(ipsBits, 48)) { return .tableOutOfRange(ttb: 0) }
        }
        if walk1 {
            guard let g = tg1, f.supports(g) else { return .granuleNotSupported(ttb: 1, rawTG1) }
            if AddressSize.exceeds(ttb1, bits: g == .size64K ? ipsBits : min(ipsBits, 48)) { return .tableOutOfRange(ttb: 1) }
        }
        return nil
    }

    /// TxSZ range for VMSAv8-64 without 52-bit VAs (`CDTxSZInvalid`, SMMU_IDR5.VAX == 0).
    @inlinable
    public static func txszInRange(_ txsz: UInt8, granule: TranslationGranule?, features f: SMMUv3Features) -> Bool {
        let maximum = f.smallTranslationTables ? (granule == .size64K ? 47 : 48) : 39
        return (16...maximum).contains(Int(txsz))
    }
}
