/// Whether an STE may be used: the ILLEGAL conditions of IHI 0070 §5.2 (field descriptions)
/// in the order of the `SteIllegal()` pseudocode of §5.2.2, for a Non-secure STE on an
/// SMMUv3.1-or-later implementation. A transaction through an invalid or ILLEGAL STE is
/// aborted and records C_BAD_STE; `validity` says which rule failed.
///
/// Not ILLEGAL, by the architecture (and so not reported here):
/// - Config 0b001–0b011: reserved values behave as abort (no event).
/// - S1Fmt 0b11, S1DSS 0b11: reserved values behave as linear / terminate.
/// - S1ContextPtr bits below the table size (RES0 by S1CDMax): CONSTRAINED UNPREDICTABLE;
///   the model treats them as zero (`CDTableLayout`).
/// - S2TTB bits below the start table's alignment: treated as zero by the SMMU.
/// - EATS 0b11 without DPT: behaves as 0b00.
/// - An out-of-range S2PS: capped to the OAS.
public enum BadSTEReason: Equatable, Sendable, CustomStringConvertible {
    /// V == 0.
    case invalid
    /// Config enables stage 1 and SMMU_IDR0.S1P == 0.
    case stage1NotImplemented
    /// Config enables stage 2 and SMMU_IDR0.S2P == 0.
    case stage2NotImplemented
    /// EATS == 0b10 (split-stage ATS) without Config == 0b111 and S2S == 0.
    case splitStageATSNotAllowed
    /// EATS == 0b01 with stage 2 translating and S2S == 1.
    case fullATSWithStage2Stall
    /// STRW == 0bx1 while STRW is used.
    case reservedStreamWorld
    /// S1STALLD == 1 when SMMU_IDR0.STALL_MODEL != 0b00.
    case stallDisableNotConfigurable
    /// S1CDMax greater than SMMU_IDR1.SSIDSIZE.
    case s1CDMaxTooLarge(UInt8)
    /// S1Fmt selects a 2-level CD table and SMMU_IDR0.CD2L == 0.
    case twoLevelCDTableNotSupported
    /// S1ContextPtr beyond the IAS (stage 2 translates) or the OAS.
    case contextPointerOutOfRange
    /// S2S == 1 when SMMU_IDR0.STALL_MODEL == 0b01.
    case stage2StallNotSupported
    /// S2S == 0 when SMMU_IDR0.STALL_MODEL == 0b10.
    case stage2StallForced
    /// S2AA64 == 0 (VMSAv8-32 LPAE) without SMMU_IDR0.TTF[0].
    case stage2AArch32NotSupported
    /// S2HA or S2HD beyond what SMMU_IDR0.HTTU supports.
    case stage2HTTUNotSupported
    /// S2TG reserved (0b11) or not supported by SMMU_IDR5.
    case stage2GranuleNotSupported(UInt8)
    /// S2TTB beyond the effective S2PS, or beyond 48 bits with a 4 or 16 KiB granule.
    case stage2TableOutOfRange
    /// S2T0SZ outside [MAX(16, 64 − IAS), 39] (4/16 KiB) or [MAX(12, 64 − IAS), 39] (64 KiB).
    case s2T0SZOutOfRange(UInt8)
    /// S2SL0 inconsistent with S2T0SZ and S2TG (VMSAv8-64 `S2InconsistentSL`).
    case stage2WalkInconsistent
    /// S2ENDI selects an endianness SMMU_IDR0.TTENDIAN does not implement.
    case stage2EndiannessNotSupported
    /// S2VMID[15:8] non-zero with SMMU_IDR0.VMID16 == 0.
    case vmidTooWide

    public var description: String {
        switch self {
        case .invalid: return "STE.V == 0"
        case .stage1NotImplemented: return "stage 1 enabled but not implemented"
        case .stage2NotImplemented: return "stage 2 enabled but not implemented"
        case .splitStageATSNotAllowed: return "split-stage ATS needs Config 0b111 and S2S 0"
        case .fullATSWithStage2Stall: return "full ATS with stage 2 stalling"
        case .reservedStreamWorld: return "reserved STRW"
        case .stallDisableNotConfigurable: return "S1STALLD set but the stall model is not configurable"
        case .s1CDMaxTooLarge(let v): return "S1CDMax \(v) beyond SSIDSIZE"
        case .twoLevelCDTableNotSupported: return "2-level CD table without CD2L"
        case .contextPointerOutOfRange: return "S1ContextPtr out of range"
        case .stage2StallNotSupported: return "S2S set but stalls are not supported"
        case .stage2StallForced: return "S2S clear but stalls are forced"
        case .stage2AArch32NotSupported: return "VMSAv8-32 stage 2 not supported"
        case .stage2HTTUNotSupported: return "S2HA/S2HD beyond HTTU"
        case .stage2GranuleNotSupported(let g): return "S2TG \(g) not supported"
        case .stage2TableOutOfRange: return "S2TTB out of range"
        case .s2T0SZOutOfRange(let v): return "S2T0SZ \(v) out of range"
        case .stage2WalkInconsistent: return "S2SL0 inconsistent with S2T0SZ/S2TG"
        case .stage2EndiannessNotSupported: return "S2ENDI not implemented"
        case .vmidTooWide: return "16-bit S2VMID on an 8-bit VMID SMMU"
        }
    }
}

extension StreamTableEntry {
    /// Nil when the STE may be used (it may still abort: Config == abort), else the reason a
    /// transaction through it records C_BAD_STE.
    /// - Complexity: O(1), no allocation.
    public func validity(features f: SMMUv3Features) -> BadSTEReason? {
        guard valid else { return .invalid }
        let cfg = rawConfig
        guard cfg & 0b100 != 0 else { return nil }          // 0b0xx: abort, not ILLEGAL
        if stage1Translates && !f.stage1 { return .stage1NotImplemented }
        if stage2Translates && !f.stage2 { return .stage2NotImplemented }
        if f.ats && cfg & 0b011 != 0 {
            if rawEATS == EATS.s1Check.rawValue && (cfg != Config.nested.rawValue || s2S) { return .splitStageATSNotAllowed }
            if rawEATS == EATS.translate.rawValue && s2S && stage2Translates { return .fullATSWithStage2Stall }
        }
        let strwUsed = cfg == Config.s1Trans.rawValue && f.stage1 && f.hyp
        if strwUsed && rawSTRW & 1 != 0 { return .reservedStreamWorld }
        if stage1Translates {
            if s1StallDisable && f.stallModel != .stallOrTerminate { return .stallDisableNotConfigurable }
            if f.ssidBits != 0 {
                if Int(s1CDMax) > f.ssidBits { return .s1CDMaxTooLarge(s1CDMax) }
                if s1CDMax != 0 && !f.twoLevelCDTable && (rawS1Fmt == 1 || rawS1Fmt == 2) { return .twoLevelCDTableNotSupported }
            }
            let range = stage2Translates ? f.inputAddressBits : f.outputAddressBits
            if AddressSize.exceeds(s1ContextPointer, bits: range) { return .contextPointerOutOfRange }
        }
        if stage2Translates {
            if s2S && f.stallModel == .terminateOnly { return .stage2StallNotSupported }
            if !s2S && f.stallModel == .stallForced { return .stage2StallForced }
            if !s2AA64 {
                // VMSAv8-32 LPAE stage 2: not modelled beyond its own ILLEGAL cases.
                if !f.aarch32Tables { return .stage2AArch32NotSupported }
                if s2HA || s2HD { return .stage2HTTUNotSupported }
            } else {
                if (s2HA || s2HD) && f.httu == .none { return .stage2HTTUNotSupported }
                if s2HD && f.httu == .accessFlag { return .stage2HTTUNotSupported }
                guard let tg = s2Granule, f.supports(tg) else { return .stage2GranuleNotSupported(rawS2TG) }
                let ps = AddressSize.effectiveBits(s2PS, oas: f.outputAddressBits)
                if AddressSize.exceeds(s2TTB, bits: tg == .size64K ? ps : min(ps, 48)) { return .stage2TableOutOfRange }
                if !Self.s2T0SZInRange(s2T0SZ, granule: tg, features: f) { return .s2T0SZOutOfRange(s2T0SZ) }
                guard Self.s2WalkConsistent(t0sz: s2T0SZ, sl0: s2SL0, granule: tg, features: f) else { return .stage2WalkInconsistent }
            }
            if f.endianness == .little && s2ENDI { return .stage2EndiannessNotSupported }
            if f.endianness == .big && !s2ENDI { return .stage2EndiannessNotSupported }
        }
        let vmidIgnored = !f.stage2 || cfg == Config.bypass.rawValue || (strwUsed && rawSTRW != 0)
        if !vmidIgnored && !f.vmid16 && s2VMID >> 8 != 0 { return .vmidTooWide }
        return nil
    }

    /// S2T0SZ range for VMSAv8-64 (`STES2T0SZInvalid`, DS == 0).
    @inlinable
    public static func s2T0SZInRange(_ t0sz: UInt8, granule: TranslationGranule, features f: SMMUv3Features) -> Bool {
        let lowest = granule == .size64K ? 12 : 16
        let minimum = max(lowest, 64 - f.inputAddressBits)
        let maximum = f.smallTranslationTables ? (granule == .size64K ? 47 : 48) : 39
        return (minimum...maximum).contains(Int(t0sz))
    }

    /// The stage 2 start level VTCR_EL2.SL0 selects for `granule` (SL2 == 0), nil for an
    /// encoding that is reserved (4 KiB 0b11 selects level 3 only with SMMU_IDR3.STT).
    @inlinable
    public static func s2StartLevel(sl0: UInt8, granule: TranslationGranule, features f: SMMUv3Features) -> Int? {
        switch (granule, sl0 & 3) {
        case (.size4K, 0): return 2
        case (.size4K, 1): return 1
        case (.size4K, 2): return 0
        case (.size4K, _): return f.smallTranslationTables ? 3 : nil
        case (_, 0): return 3
        case (_, 1): return 2
        case (_, 2): return 1
        default: return nil
        }
    }

    /// VMSAv8-64 `S2InconsistentSL` inverted: the IPA size 64 − T0SZ needs at least one bit at
    /// the start level and at most a full level plus 16 concatenated tables.
    @inlinable
    public static func s2WalkConsistent(t0sz: UInt8, sl0: UInt8, granule: TranslationGranule,
                                        features f: SMMUv3Features) -> Bool {
        guard let start = s2StartLevel(sl0: sl0, granule: granule, features: f) else { return false }
        let levels = 3 - start
        let minIA = levels * granule.stride + granule.shift + 1
        let maxIA = minIA + (granule.stride - 1) + 4
        let ia = 64 - Int(t0sz & 0x3F)
        return ia >= minIA && ia <= maxIA
    }

    /// Number of tables concatenated at the stage 2 start level (1 when none), nil when the
    /// walk configuration is inconsistent.
    @inlinable
    public static func s2ConcatenatedTables(t0sz: UInt8, sl0: UInt8, granule: TranslationGranule,
                                            features f: SMMUv3Features) -> Int? {
        guard s2WalkConsistent(t0sz: t0sz, sl0: sl0, granule: granule, features: f),
              let start = s2StartLevel(sl0: sl0, granule: granule, features: f) else { return nil }
        let bitsAtStart = (64 - Int(t0sz & 0x3F)) - ((3 - start) * granule.stride + granule.shift)
        return bitsAtStart > granule.stride ? 1 << (bitsAtStart - granule.stride) : 1
    }
}
