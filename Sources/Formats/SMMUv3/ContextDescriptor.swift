/// The SMMUv3 Context Descriptor, 64 bytes (IHI 0070 §5.4; Linux arm-smmu-v3.h
/// `struct arm_smmu_cd { __le64 data[8]; }` and the `CTXDESC_CD_*` masks).
///
/// Bit positions, by word:
/// - data[0]: `T0SZ` 5:0, `TG0` 7:6, `IR0` 9:8, `OR0` 11:10, `SH0` 13:12, `EPD0` 14, `ENDI` 15,
///   `T1SZ` 21:16, `TG1` 23:22, `IR1` 25:24, `OR1` 27:26, `SH1` 29:28, `EPD1` 30, `V` 31,
///   `IPS` 34:32, `AFFD` 35, `WXN` 36, `UWXN` 37, `TBI0` 38, `TBI1` 39, `PAN` 40, `AA64` 41,
///   `HD` 42, `HA` 43, `S` 44, `R` 45, `A` 46, `ASET` 47, `ASID` 63:48.
/// - data[1]: `NSCFG0` 0, `HAD0` 1, `E0PD0` 2, `HAFT` 3, `TTB0` 51:4.
/// - data[2]: `NSCFG1` 0, `HAD1` 1, `E0PD1` 2, `TTB1` 51:4.
/// - data[3]: `MAIR` (MAIR0 31:0, MAIR1 63:32, the MAIR_ELx layout).
/// - data[4]: `AMAIR`; data[5]: IMPLEMENTATION DEFINED; data[6], data[7]: MPAM and
///   permission-indirection fields this model does not implement.
///
/// Any 64 bytes decode without trapping. Whether a CD may be used is `validity`
/// (ContextDescriptor+Validity.swift); an invalid or ILLEGAL CD records C_BAD_CD.
public struct ContextDescriptor: Equatable, Sendable {
    /// The eight 64-bit words, data[0] lowest.
    public var data: InlineArray<8, UInt64>
    public static let size: UInt64 = 64

    @inlinable public init() { data = InlineArray(repeating: 0) }

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

    /// The MAIR Linux's io-pgtable programs (`ARM_LPAE_MAIR_ATTR_*`): index 0 Normal
    /// Non-cacheable (0x44), 1 Normal write-back read/write-allocate (0xFF, used for
    /// `IOMMU_CACHE`), 2 Device-nGnRE (0x04), 3 inner Non-cacheable outer write-back (0xF4).
    public static let linuxMAIR: UInt64 = 0xF404_FF44

    // MARK: data[0]

    @inlinable public var t0sz: UInt8 {
        get { UInt8(BitField.get(data[0], 0, 6)) }
        set { data[0] = BitField.set(data[0], 0, 6, UInt64(newValue)) }
    }
    @inlinable public var rawTG0: UInt8 {
        get { UInt8(BitField.get(data[0], 6, 2)) }
        set { data[0] = BitField.set(data[0], 6, 2, UInt64(newValue)) }
    }
    /// TG0, nil for the reserved 0b11.
    @inlinable public var tg0: TranslationGranule? { TranslationGranule(rawValue: rawTG0) }
    @inlinable public var ir0: UInt8 {
        get { UInt8(BitField.get(data[0], 8, 2)) }
        set { data[0] = BitField.set(data[0], 8, 2, UInt64(newValue)) }
    }
    @inlinable public var or0: UInt8 {
        get { UInt8(BitField.get(data[0], 10, 2)) }
        set { data[0] = BitField.set(data[0], 10, 2, UInt64(newValue)) }
    }
    @inlinable public var sh0: UInt8 {
        get { UInt8(BitField.get(data[0], 12, 2)) }
        set { data[0] = BitField.set(data[0], 12, 2, UInt64(newValue)) }
    }
    /// EPD0: no walks through TTB0; T0SZ, TG0, IR0, OR0, SH0 and TTB0 are IGNORED.
    @inlinable public var epd0: Bool {
        get { BitField.bit(data[0], 14) }
        set { data[0] = BitField.set(data[0], 14, newValue) }
    }
    /// ENDI: big-endian translation tables.
    @inlinable public var endi: Bool {
        get { BitField.bit(data[0], 15) }
        set { data[0] = BitField.set(data[0], 15, newValue) }
    }
    @inlinable public var t1sz: UInt8 {
        get { UInt8(BitField.get(data[0], 16, 6)) }
        set { data[0] = BitField.set(data[0], 16, 6, UInt64(newValue)) }
    }
    @inlinable public var rawTG1: UInt8 {
        get { UInt8(BitField.get(data[0], 22, 2)) }
        set { data[0] = BitField.set(data[0], 22, 2, UInt64(newValue)) }
    }
    @inlinable public var tg1: TranslationGranule? { TranslationGranule(rawValue: rawTG1) }
    @inlinable public var epd1: Bool {
        get { BitField.bit(data[0], 30) }
        set { data[0] = BitField.set(data[0], 30, newValue) }
    }
    @inlinable public var valid: Bool {
        get { BitField.bit(data[0], 31) }
        set { data[0] = BitField.set(data[0], 31, newValue) }
    }
    /// IPS: stage 1 output size encoding (`AddressSize`), capped to the OAS.
    @inlinable public var ips: UInt8 {
        get { UInt8(BitField.get(data[0], 32, 3)) }
        set { data[0] = BitField.set(data[0], 32, 3, UInt64(newValue)) }
    }
    /// AFFD: AF == 0 never faults (when HA == 0).
    @inlinable public var affd: Bool {
        get { BitField.bit(data[0], 35) }
        set { data[0] = BitField.set(data[0], 35, newValue) }
    }
    /// WXN / UWXN: writable implies (unprivileged) execute-never.
    @inlinable public var wxn: Bool {
        get { BitField.bit(data[0], 36) }
        set { data[0] = BitField.set(data[0], 36, newValue) }
    }
    @inlinable public var uwxn: Bool {
        get { BitField.bit(data[0], 37) }
        set { data[0] = BitField.set(data[0], 37, newValue) }
    }
    /// TBI0 / TBI1: top byte ignored for TTB0 / TTB1 addresses.
    @inlinable public var tbi0: Bool {
        get { BitField.bit(data[0], 38) }
        set { data[0] = BitField.set(data[0], 38, newValue) }
    }
    @inlinable public var tbi1: Bool {
        get { BitField.bit(data[0], 39) }
        set { data[0] = BitField.set(data[0], 39, newValue) }
    }
    @inlinable public var pan: Bool {
        get { BitField.bit(data[0], 40) }
        set { data[0] = BitField.set(data[0], 40, newValue) }
    }
    /// AA64: VMSAv8-64 tables (0 selects VMSAv8-32 LPAE).
    @inlinable public var aa64: Bool {
        get { BitField.bit(data[0], 41) }
        set { data[0] = BitField.set(data[0], 41, newValue) }
    }
    /// HD / HA: hardware update of dirty state and the Access flag ({HD, HA} = 0b10 is
    /// reserved and behaves as both clear).
    @inlinable public var hd: Bool {
        get { BitField.bit(data[0], 42) }
        set { data[0] = BitField.set(data[0], 42, newValue) }
    }
    @inlinable public var ha: Bool {
        get { BitField.bit(data[0], 43) }
        set { data[0] = BitField.set(data[0], 43, newValue) }
    }
    /// HTTU in effect: (access flag, dirty state).
    @inlinable public var effectiveHTTU: (accessFlag: Bool, dirty: Bool) { ha ? (true, hd) : (false, false) }
    /// S / R / A: stall, record, and abort (vs RAZ/WI) on terminate (§5.5).
    @inlinable public var stall: Bool {
        get { BitField.bit(data[0], 44) }
        set { data[0] = BitField.set(data[0], 44, newValue) }
    }
    @inlinable public var record: Bool {
        get { BitField.bit(data[0], 45) }
        set { data[0] = BitField.set(data[0], 45, newValue) }
    }
    @inlinable public var abort: Bool {
        get { BitField.bit(data[0], 46) }
        set { data[0] = BitField.set(data[0], 46, newValue) }
    }
    /// ASET: the ASID is not shared with the PE (no broadcast invalidation).
    @inlinable public var aset: Bool {
        get { BitField.bit(data[0], 47) }
        set { data[0] = BitField.set(data[0], 47, newValue) }
    }
    @inlinable public var asid: UInt16 {
        get { UInt16(truncatingIfNeeded: data[0] >> 48) }
        set { data[0] = BitField.set(data[0], 48, 16, UInt64(newValue)) }
    }

    // MARK: data[1]…data[3]

    @inlinable public var nscfg0: Bool {
        get { BitField.bit(data[1], 0) }
        set { data[1] = BitField.set(data[1], 0, newValue) }
    }
    /// HAD0 / HAD1: hierarchical attributes (APTable, XNTable, PXNTable) disabled.
    @inlinable public var had0: Bool {
        get { BitField.bit(data[1], 1) }
        set { data[1] = BitField.set(data[1], 1, newValue) }
    }
    @inlinable public var e0pd0: Bool {
        get { BitField.bit(data[1], 2) }
        set { data[1] = BitField.set(data[1], 2, newValue) }
    }
    /// TTB0, bits 51:4 (`CTXDESC_CD_1_TTB0_MASK`).
    @inlinable public var ttb0: UInt64 {
        get { data[1] & Self.ttbMask }
        set { data[1] = (data[1] & ~Self.ttbMask) | (newValue & Self.ttbMask) }
    }
    @inlinable public var nscfg1: Bool {
        get { BitField.bit(data[2], 0) }
        set { data[2] = BitField.set(data[2], 0, newValue) }
    }
    @inlinable public var had1: Bool {
        get { BitField.bit(data[2], 1) }
        set { data[2] = BitField.set(data[2], 1, newValue) }
    }
    @inlinable public var ttb1: UInt64 {
        get { data[2] & Self.ttbMask }
        set { data[2] = (data[2] & ~Self.ttbMask) | (newValue & Self.ttbMask) }
    }
    @inlinable public static var ttbMask: UInt64 { BitField.genmask(51, 4) }
    /// MAIR: eight attribute bytes indexed by a stage 1 descriptor's AttrIndx.
    @inlinable public var mair: UInt64 {
        get { data[3] }
        set { data[3] = newValue }
    }

    /// The attribute byte for AttrIndx `index` (0–7).
    @inlinable public func mairAttribute(_ index: UInt8) -> UInt8 { UInt8(truncatingIfNeeded: mair >> (UInt64(index & 7) * 8)) }
}

// MARK: Constructors (Linux `arm_smmu_make_s1_cd`, `arm_smmu_make_sva_cd`)

extension ContextDescriptor {
    /// `arm_smmu_make_s1_cd` for a stage 1 paging domain: 4 KiB granule, `inputBits`-bit VA
    /// (T0SZ = 64 − inputBits), write-back inner-shareable walks, EPD1, AA64, R, A, ASET,
    /// S for stalling masters, HA|HD when the domain tracks dirty pages.
    public static func s1(asid: UInt16, ttb: UInt64, inputBits: Int = 48, outputBits: Int = 48,
                          mair: UInt64 = linuxMAIR, stall: Bool = false, dirtyTracking: Bool = false) -> ContextDescriptor {
        var cd = ContextDescriptor()
        cd.t0sz = UInt8(64 - inputBits)
        cd.rawTG0 = TranslationGranule.size4K.rawValue
        cd.ir0 = 1; cd.or0 = 1; cd.sh0 = 3
        cd.epd1 = true
        cd.valid = true
        cd.ips = AddressSize.code(bits: outputBits)
        cd.aa64 = true
        cd.stall = stall
        cd.record = true
        cd.abort = true
        cd.aset = true
        cd.asid = asid
        if dirtyTracking { cd.ha = true; cd.hd = true }
        cd.ttb0 = ttb
        cd.mair = mair
        return cd
    }

    /// `arm_smmu_make_sva_cd`: a CD sharing a process's page table (`ttb`, the mm's pgd),
    /// or, with `ttb` nil, the faulting entry Linux installs while an SVA domain has no mm:
    /// EPD0 set, and S and R cleared unless stalls are forced.
    public static func sva(asid: UInt16, ttb: UInt64?, inputBits: Int = 48, outputBits: Int = 48,
                           mair: UInt64 = linuxMAIR, stall: Bool = false, stallForced: Bool = false) -> ContextDescriptor {
        var cd = ContextDescriptor()
        cd.epd1 = true
        cd.valid = true
        cd.ips = AddressSize.code(bits: outputBits)
        cd.aa64 = true
        cd.stall = stall
        cd.record = true
        cd.abort = true
        cd.aset = true
        cd.asid = asid
        if let ttb {
            cd.t0sz = UInt8(64 - inputBits)
            cd.rawTG0 = TranslationGranule.size4K.rawValue
            cd.ir0 = 1; cd.or0 = 1; cd.sh0 = 3
            cd.ttb0 = ttb
        } else {
            cd.epd0 = true
            if !stallForced { cd.stall = false; cd.record = false }
        }
        cd.mair = mair
        return cd
    }
}
