/// The SMMUv3 Stream Table Entry, 64 bytes (IHI 0070 §5.2; Linux
/// drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.h `struct arm_smmu_ste { __le64 data[8]; }` and
/// the `STRTAB_STE_*` field masks).
///
/// Bit positions, by word (bit N of the structure is bit N % 64 of `data[N / 64]`):
/// - data[0]: `V` 0, `Config` 3:1, `S1Fmt` 5:4, `S1ContextPtr` 51:6, `S1CDMax` 63:59.
/// - data[1]: `S1DSS` 1:0, `S1CIR` 3:2, `S1COR` 5:4, `S1CSH` 7:6, `DRE` 12, `CONT` 16:13,
///   `DCP` 17, `PPAR` 18, `MEV` 19, `S2FWB` 25, `S1STALLD` 27, `EATS` 29:28, `STRW` 31:30,
///   `MemAttr` 35:32, `MTCFG` 36, `ALLOCCFG` 40:37, `SHCFG` 45:44, `NSCFG` 47:46,
///   `PRIVCFG` 49:48, `INSTCFG` 51:50.
/// - data[2]: `S2VMID` 15:0, VTCR 50:32 (`S2T0SZ` 37:32, `S2SL0` 39:38, `S2IR0` 41:40,
///   `S2OR0` 43:42, `S2SH0` 45:44, `S2TG` 47:46, `S2PS` 50:48), `S2AA64` 51, `S2ENDI` 52,
///   `S2AFFD` 53, `S2PTW` 54, `S2HD` 55, `S2HA` 56, `S2S` 57, `S2R` 58.
/// - data[3]: `S2TTB` 51:4.
/// - data[4]…data[7]: Secure, MPAM and Realm fields this model does not implement.
///
/// Any 64 bytes decode without trapping: every accessor masks its field. Whether the entry may
/// be used is `validity(features:)` (StreamTableEntry+Validity.swift).
public struct StreamTableEntry: Equatable, Sendable {
    /// The eight 64-bit words, data[0] lowest. Inline storage: decoding allocates nothing.
    public var data: InlineArray<8, UInt64>
    public static let size: UInt64 = 64

    @inlinable public init() { data = InlineArray(repeating: 0) }

    /// An entry from raw words (missing words are zero, extra words ignored).
    @inlinable
    public init(words: [UInt64]) {
        data = InlineArray(repeating: 0)
        for i in 0..<min(8, words.count) { data[i] = words[i] }
    }

    public var words: [UInt64] { (0..<8).map { data[$0] } }

    @inlinable
    public static func == (a: Self, b: Self) -> Bool {
        for i in 0..<8 where a.data[i] != b.data[i] { return false }
        return true
    }

    // MARK: Typed field values

    /// STE.Config (bits 3:1). 0b001–0b011 are reserved and behave as abort (§5.2).
    public enum Config: UInt8, Sendable, CaseIterable {
        /// Linux `STRTAB_STE_0_CFG_ABORT`: traffic is silently aborted, no event.
        case abort = 0
        /// `STRTAB_STE_0_CFG_BYPASS`: both stages bypass.
        case bypass = 4
        /// `STRTAB_STE_0_CFG_S1_TRANS`: stage 1 translates, stage 2 bypasses.
        case s1Trans = 5
        /// `STRTAB_STE_0_CFG_S2_TRANS`: stage 1 bypasses, stage 2 translates.
        case s2Trans = 6
        /// `STRTAB_STE_0_CFG_NESTED`: both stages translate.
        case nested = 7
    }

    /// STE.S1Fmt (bits 5:4); 0b11 is reserved and behaves as linear.
    public enum S1Fmt: UInt8, Sendable, CaseIterable {
        /// `STRTAB_STE_0_S1FMT_LINEAR`.
        case linear = 0
        /// 2-level table with 4 KiB leaf tables of 64 CDs.
        case twoLevel4K = 1
        /// `STRTAB_STE_0_S1FMT_64K_L2`: 2-level with 64 KiB leaf tables of 1024 CDs.
        case twoLevel64K = 2
    }

    /// STE.S1DSS (bits 65:64): what a transaction without a SubstreamID does when substreams
    /// are enabled; 0b11 is reserved and behaves as terminate.
    public enum S1DSS: UInt8, Sendable, CaseIterable {
        /// Abort and record F_STREAM_DISABLED (`STRTAB_STE_1_S1DSS_TERMINATE`).
        case terminate = 0
        /// Bypass stage 1 (`STRTAB_STE_1_S1DSS_BYPASS`).
        case bypass = 1
        /// Use CD 0; SubstreamID 0 itself is then terminated (`STRTAB_STE_1_S1DSS_SSID0`).
        case ssid0 = 2
    }

    /// STE.EATS (bits 93:92).
    public enum EATS: UInt8, Sendable, CaseIterable {
        /// ATS Translation Requests get UR and F_BAD_ATS_TREQ (`STRTAB_STE_1_EATS_ABT`).
        case abort = 0
        /// Full ATS (`STRTAB_STE_1_EATS_TRANS`).
        case translate = 1
        /// Split-stage ATS (`STRTAB_STE_1_EATS_S1CHK`).
        case s1Check = 2
        /// Full ATS with DPT checks; behaves as `abort` without SMMU_IDR3.DPT.
        case dpt = 3
    }

    /// STE.STRW (bits 95:94) for a Non-secure STE: 0bx1 is reserved and ILLEGAL when used.
    public enum STRW: UInt8, Sendable, CaseIterable {
        /// `STRTAB_STE_1_STRW_NSEL1`.
        case nsEL1 = 0
        /// `STRTAB_STE_1_STRW_EL2`: NS-EL2, or NS-EL2-E2H when SMMU_CR2.E2H == 1.
        case el2 = 2
    }

    /// The translation regime whose TLB tags a stream's stage 1 translations use (§3.3.3).
    public enum StreamWorld: Sendable, Equatable {
        case nsEL1
        case el2
        case el2E2H
    }

    /// Stage 2 translation controls (the VTCR field of data[2], bits 50:32), encoded as Linux
    /// `arm_smmu_make_s2_domain_ste` takes them from `io_pgtable_cfg.arm_lpae_s2_cfg.vtcr`.
    public struct S2Translation: Equatable, Sendable {
        /// S2T0SZ: the IPA size is 64 − t0sz bits.
        public var t0sz: UInt8
        /// S2SL0, VTCR_EL2.SL0 encoding (4 KiB: 0b00 → level 2, 0b01 → 1, 0b10 → 0).
        public var sl0: UInt8
        /// S2IR0 / S2OR0 / S2SH0: cacheability and shareability of table walks.
        public var ir0: UInt8 = 1
        public var or0: UInt8 = 1
        public var sh0: UInt8 = 3
        public var granule: TranslationGranule = .size4K
        /// S2PS: output address size encoding (`AddressSize`).
        public var ps: UInt8

        public init(t0sz: UInt8, sl0: UInt8, ir0: UInt8 = 1, or0: UInt8 = 1, sh0: UInt8 = 3,
                    granule: TranslationGranule = .size4K, ps: UInt8) {
            self.t0sz = t0sz; self.sl0 = sl0; self.ir0 = ir0; self.or0 = or0; self.sh0 = sh0
            self.granule = granule; self.ps = ps
        }

        /// The controls for a 4 KiB-granule table of `levels` levels (3: 39-bit IPA starting at
        /// level 1, 4: 48-bit starting at level 0) and output size `outputBits`, as Linux's
        /// io-pgtable computes them (`sl = ~(start_level + 1) & 3` for 4 KiB).
        public static func granule4K(levels: Int, outputBits: Int) -> S2Translation {
            let start = 4 - levels
            return S2Translation(t0sz: UInt8(64 - (12 + 9 * levels)), sl0: UInt8(~(start + 1) & 3),
                                 ps: AddressSize.code(bits: outputBits))
        }
    }

    // MARK: data[0]

    @inlinable public var valid: Bool {
        get { BitField.bit(data[0], 0) }
        set { data[0] = BitField.set(data[0], 0, newValue) }
    }
    /// The raw Config field (0–7).
    @inlinable public var rawConfig: UInt8 {
        get { UInt8(BitField.get(data[0], 1, 3)) }
        set { data[0] = BitField.set(data[0], 1, 3, UInt64(newValue)) }
    }
    /// Config, nil for the reserved values 0b001–0b011.
    @inlinable public var config: Config? { Config(rawValue: rawConfig) }
    /// Config as it behaves: reserved values act as `abort`.
    @inlinable public var effectiveConfig: Config { config ?? .abort }
    /// Config[0] with Config[2]: stage 1 translates (0b1x1).
    @inlinable public var stage1Translates: Bool { rawConfig & 0b101 == 0b101 }
    /// Config[1] with Config[2]: stage 2 translates (0b11x).
    @inlinable public var stage2Translates: Bool { rawConfig & 0b110 == 0b110 }
    @inlinable public var rawS1Fmt: UInt8 {
        get { UInt8(BitField.get(data[0], 4, 2)) }
        set { data[0] = BitField.set(data[0], 4, 2, UInt64(newValue)) }
    }
    /// S1Fmt as it behaves (0b11 acts as linear).
    @inlinable public var s1Fmt: S1Fmt { S1Fmt(rawValue: rawS1Fmt) ?? .linear }
    /// S1ContextPtr: bits 51:6 of the CD (or L1CD table) address; an IPA when stage 2 translates.
    @inlinable public var s1ContextPointer: UInt64 {
        get { data[0] & Self.s1ContextPointerMask }
        set { data[0] = (data[0] & ~Self.s1ContextPointerMask) | (newValue & Self.s1ContextPointerMask) }
    }
    /// S1CDMax: log2 of the number of CDs; 0 disables substreams.
    @inlinable public var s1CDMax: UInt8 {
        get { UInt8(BitField.get(data[0], 59, 5)) }
        set { data[0] = BitField.set(data[0], 59, 5, UInt64(newValue)) }
    }
    /// `STRTAB_STE_0_S1CTXPTR_MASK`.
    @inlinable public static var s1ContextPointerMask: UInt64 { BitField.genmask(51, 6) }

    // MARK: data[1]

    @inlinable public var rawS1DSS: UInt8 {
        get { UInt8(BitField.get(data[1], 0, 2)) }
        set { data[1] = BitField.set(data[1], 0, 2, UInt64(newValue)) }
    }
    /// S1DSS as it behaves (0b11 acts as terminate).
    @inlinable public var s1DSS: S1DSS { S1DSS(rawValue: rawS1DSS) ?? .terminate }
    /// S1CIR / S1COR / S1CSH: CD and L1CD fetch attributes.
    @inlinable public var s1CIR: UInt8 {
        get { UInt8(BitField.get(data[1], 2, 2)) }
        set { data[1] = BitField.set(data[1], 2, 2, UInt64(newValue)) }
    }
    @inlinable public var s1COR: UInt8 {
        get { UInt8(BitField.get(data[1], 4, 2)) }
        set { data[1] = BitField.set(data[1], 4, 2, UInt64(newValue)) }
    }
    @inlinable public var s1CSH: UInt8 {
        get { UInt8(BitField.get(data[1], 6, 2)) }
        set { data[1] = BitField.set(data[1], 6, 2, UInt64(newValue)) }
    }
    /// PPAR: PRG responses to PASID-tagged requests carry the PASID.
    @inlinable public var ppar: Bool {
        get { BitField.bit(data[1], 18) }
        set { data[1] = BitField.set(data[1], 18, newValue) }
    }
    /// MEV: the SMMU may merge identical events (Linux sets it on nested STEs).
    @inlinable public var mev: Bool {
        get { BitField.bit(data[1], 19) }
        set { data[1] = BitField.set(data[1], 19, newValue) }
    }
    /// S2FWB: stage 2 forced write-back.
    @inlinable public var s2FWB: Bool {
        get { BitField.bit(data[1], 25) }
        set { data[1] = BitField.set(data[1], 25, newValue) }
    }
    /// S1STALLD: CDs reached through this STE may not select the stall model.
    @inlinable public var s1StallDisable: Bool {
        get { BitField.bit(data[1], 27) }
        set { data[1] = BitField.set(data[1], 27, newValue) }
    }
    @inlinable public var rawEATS: UInt8 {
        get { UInt8(BitField.get(data[1], 28, 2)) }
        set { data[1] = BitField.set(data[1], 28, 2, UInt64(newValue)) }
    }
    @inlinable public var eats: EATS { EATS(rawValue: rawEATS) ?? .abort }
    @inlinable public var rawSTRW: UInt8 {
        get { UInt8(BitField.get(data[1], 30, 2)) }
        set { data[1] = BitField.set(data[1], 30, 2, UInt64(newValue)) }
    }
    /// MemAttr / MTCFG / ALLOCCFG: memory-type overrides for bypass traffic.
    @inlinable public var memAttr: UInt8 {
        get { UInt8(BitField.get(data[1], 32, 4)) }
        set { data[1] = BitField.set(data[1], 32, 4, UInt64(newValue)) }
    }
    @inlinable public var mtcfg: Bool {
        get { BitField.bit(data[1], 36) }
        set { data[1] = BitField.set(data[1], 36, newValue) }
    }
    @inlinable public var allocCfg: UInt8 {
        get { UInt8(BitField.get(data[1], 37, 4)) }
        set { data[1] = BitField.set(data[1], 37, 4, UInt64(newValue)) }
    }
    /// SHCFG: 0b01 uses the incoming shareability (`STRTAB_STE_1_SHCFG_INCOMING`).
    @inlinable public var shcfg: UInt8 {
        get { UInt8(BitField.get(data[1], 44, 2)) }
        set { data[1] = BitField.set(data[1], 44, 2, UInt64(newValue)) }
    }
    /// PRIVCFG / INSTCFG: privilege and instruction/data overrides.
    @inlinable public var privCfg: UInt8 {
        get { UInt8(BitField.get(data[1], 48, 2)) }
        set { data[1] = BitField.set(data[1], 48, 2, UInt64(newValue)) }
    }
    @inlinable public var instCfg: UInt8 {
        get { UInt8(BitField.get(data[1], 50, 2)) }
        set { data[1] = BitField.set(data[1], 50, 2, UInt64(newValue)) }
    }

    // MARK: data[2], data[3]

    /// S2VMID: tags stage 2 (and NS-EL1 stage 1) TLB entries.
    @inlinable public var s2VMID: UInt16 {
        get { UInt16(truncatingIfNeeded: data[2]) }
        set { data[2] = BitField.set(data[2], 0, 16, UInt64(newValue)) }
    }
    @inlinable public var s2T0SZ: UInt8 {
        get { UInt8(BitField.get(data[2], 32, 6)) }
        set { data[2] = BitField.set(data[2], 32, 6, UInt64(newValue)) }
    }
    @inlinable public var s2SL0: UInt8 {
        get { UInt8(BitField.get(data[2], 38, 2)) }
        set { data[2] = BitField.set(data[2], 38, 2, UInt64(newValue)) }
    }
    @inlinable public var s2IR0: UInt8 {
        get { UInt8(BitField.get(data[2], 40, 2)) }
        set { data[2] = BitField.set(data[2], 40, 2, UInt64(newValue)) }
    }
    @inlinable public var s2OR0: UInt8 {
        get { UInt8(BitField.get(data[2], 42, 2)) }
        set { data[2] = BitField.set(data[2], 42, 2, UInt64(newValue)) }
    }
    @inlinable public var s2SH0: UInt8 {
        get { UInt8(BitField.get(data[2], 44, 2)) }
        set { data[2] = BitField.set(data[2], 44, 2, UInt64(newValue)) }
    }
    @inlinable public var rawS2TG: UInt8 {
        get { UInt8(BitField.get(data[2], 46, 2)) }
        set { data[2] = BitField.set(data[2], 46, 2, UInt64(newValue)) }
    }
    /// S2TG, nil for the reserved 0b11.
    @inlinable public var s2Granule: TranslationGranule? { TranslationGranule(rawValue: rawS2TG) }
    @inlinable public var s2PS: UInt8 {
        get { UInt8(BitField.get(data[2], 48, 3)) }
        set { data[2] = BitField.set(data[2], 48, 3, UInt64(newValue)) }
    }
    /// S2AA64: VMSAv8-64 stage 2 tables (0 selects VMSAv8-32 LPAE).
    @inlinable public var s2AA64: Bool {
        get { BitField.bit(data[2], 51) }
        set { data[2] = BitField.set(data[2], 51, newValue) }
    }
    @inlinable public var s2ENDI: Bool {
        get { BitField.bit(data[2], 52) }
        set { data[2] = BitField.set(data[2], 52, newValue) }
    }
    /// S2AFFD: AF == 0 in a stage 2 descriptor never faults (when S2HA == 0).
    @inlinable public var s2AFFD: Bool {
        get { BitField.bit(data[2], 53) }
        set { data[2] = BitField.set(data[2], 53, newValue) }
    }
    /// S2PTW: CD fetches and stage 1 walks to Device memory at stage 2 fault.
    @inlinable public var s2PTW: Bool {
        get { BitField.bit(data[2], 54) }
        set { data[2] = BitField.set(data[2], 54, newValue) }
    }
    /// S2HD / S2HA: hardware update of stage 2 dirty state and Access flag.
    @inlinable public var s2HD: Bool {
        get { BitField.bit(data[2], 55) }
        set { data[2] = BitField.set(data[2], 55, newValue) }
    }
    @inlinable public var s2HA: Bool {
        get { BitField.bit(data[2], 56) }
        set { data[2] = BitField.set(data[2], 56, newValue) }
    }
    /// S2S / S2R: stage 2 faults stall / are recorded.
    @inlinable public var s2S: Bool {
        get { BitField.bit(data[2], 57) }
        set { data[2] = BitField.set(data[2], 57, newValue) }
    }
    @inlinable public var s2R: Bool {
        get { BitField.bit(data[2], 58) }
        set { data[2] = BitField.set(data[2], 58, newValue) }
    }
    /// S2TTB: stage 2 table base, bits 51:4 (`STRTAB_STE_3_S2TTB_MASK`).
    @inlinable public var s2TTB: UInt64 {
        get { data[3] & Self.s2TTBMask }
        set { data[3] = (data[3] & ~Self.s2TTBMask) | (newValue & Self.s2TTBMask) }
    }
    @inlinable public static var s2TTBMask: UInt64 { BitField.genmask(51, 4) }

    /// The VTCR fields of data[2] together.
    @inlinable public var s2Translation: S2Translation {
        S2Translation(t0sz: s2T0SZ, sl0: s2SL0, ir0: s2IR0, or0: s2OR0, sh0: s2SH0,
                      granule: s2Granule ?? .size4K, ps: s2PS)
    }

    /// The StreamWorld (§5.2 STRW) given SMMU_CR2.E2H: STRW is used only with Config ==
    /// stage 1 only on an SMMU with EL2 support; otherwise the stream is NS-EL1.
    @inlinable
    public func streamWorld(e2h: Bool, features: SMMUv3Features) -> StreamWorld {
        guard rawConfig == Config.s1Trans.rawValue, features.stage1, features.hyp,
              rawSTRW == STRW.el2.rawValue else { return .nsEL1 }
        return e2h ? .el2E2H : .el2
    }
}

// MARK: Constructors (the entries Linux's arm-smmu-v3.c `arm_smmu_make_*_ste` builds)

extension StreamTableEntry {
    /// `arm_smmu_make_abort_ste`: V = 1, Config = abort. Traffic is aborted without an event.
    public static func abort() -> StreamTableEntry {
        var e = StreamTableEntry()
        e.valid = true
        e.rawConfig = Config.abort.rawValue
        return e
    }

    /// `arm_smmu_make_bypass_ste`: V = 1, Config = bypass; SHCFG = incoming when the SMMU
    /// has SMMU_IDR1.ATTR_TYPES_OVR.
    public static func bypass(shcfgIncoming: Bool = false) -> StreamTableEntry {
        var e = StreamTableEntry()
        e.valid = true
        e.rawConfig = Config.bypass.rawValue
        if shcfgIncoming { e.shcfg = 1 }
        return e
    }

    /// `arm_smmu_make_cdtable_ste`: stage 1 through the CD table at `contextPointer` with
    /// 2^`s1CDMax` CDs. CD fetches are write-back read-allocate inner shareable; S1STALLD is
    /// set for masters that may not stall; StreamWorld is EL2 on an E2H host, else NS-EL1
    /// with VMID 0 (Linux reserves VMID 0 for these STEs).
    public static func cdTable(contextPointer: UInt64, format: S1Fmt, s1CDMax: UInt8, s1DSS: S1DSS,
                               ats: Bool = false, stallDisable: Bool = false, el2: Bool = false,
                               shcfgIncoming: Bool = false) -> StreamTableEntry {
        var e = StreamTableEntry()
        e.valid = true
        e.rawConfig = Config.s1Trans.rawValue
        e.rawS1Fmt = format.rawValue
        e.s1ContextPointer = contextPointer
        e.s1CDMax = s1CDMax
        e.rawS1DSS = s1DSS.rawValue
        e.s1CIR = 1; e.s1COR = 1; e.s1CSH = 3
        e.s1StallDisable = stallDisable
        e.rawEATS = ats ? EATS.translate.rawValue : EATS.abort.rawValue
        if shcfgIncoming && s1DSS == .bypass { e.shcfg = 1 }
        e.rawSTRW = el2 ? STRW.el2.rawValue : STRW.nsEL1.rawValue
        return e
    }

    /// `arm_smmu_make_s2_domain_ste`: stage 2 only, VMSAv8-64 tables at `ttb`, S2PTW and S2R
    /// set, S2S for masters that stall.
    public static func s2Domain(vmid: UInt16, translation: S2Translation, ttb: UInt64, ats: Bool = false,
                                stall: Bool = false, forcedWriteBack: Bool = false,
                                shcfgIncoming: Bool = false) -> StreamTableEntry {
        var e = StreamTableEntry()
        e.valid = true
        e.rawConfig = Config.s2Trans.rawValue
        e.rawEATS = ats ? EATS.translate.rawValue : EATS.abort.rawValue
        e.s2FWB = forcedWriteBack
        if shcfgIncoming { e.shcfg = 1 }
        e.s2VMID = vmid
        e.s2T0SZ = translation.t0sz; e.s2SL0 = translation.sl0
        e.s2IR0 = translation.ir0; e.s2OR0 = translation.or0; e.s2SH0 = translation.sh0
        e.rawS2TG = translation.granule.rawValue; e.s2PS = translation.ps
        e.s2AA64 = true
        e.s2PTW = true
        e.s2S = stall
        e.s2R = true
        e.s2TTB = ttb
        return e
    }

    /// Bits of data[0] and data[1] a user-space vSTE may set for a nested domain
    /// (`STRTAB_STE_0_NESTING_ALLOWED`, `STRTAB_STE_1_NESTING_ALLOWED`): V, Config, S1Fmt,
    /// S1ContextPtr, S1CDMax; S1DSS, S1CIR, S1COR, S1CSH, S1STALLD, EATS.
    @inlinable public static var nestingAllowed0: UInt64 { 0xF | BitField.genmask(5, 4) | s1ContextPointerMask | BitField.genmask(63, 59) }
    @inlinable public static var nestingAllowed1: UInt64 { BitField.genmask(7, 0) | (1 << 27) | BitField.genmask(29, 28) }

    /// `arm_smmu_make_nested_cd_table_ste`: the stage 2 entry `stage2` with Config = nested,
    /// the stage 1 words of the guest's vSTE (`vste0`, `vste1`, limited to the nesting-allowed
    /// bits) and MEV set, so a guest cannot flood the event queue.
    public static func nested(stage2: StreamTableEntry, vste0: UInt64, vste1: UInt64) -> StreamTableEntry {
        var e = stage2
        e.data[0] = 1 | UInt64(Config.nested.rawValue) << 1 | (vste0 & nestingAllowed0 & ~0xF)
        e.data[1] |= vste1 & nestingAllowed1
        e.mev = true
        return e
    }
}
