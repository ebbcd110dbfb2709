/// PASID granular translation type (VT-d §9.6, PASID-table entry bits 8:6).
public enum PGTT: UInt8, Sendable, CaseIterable {
    case firstStage = 1
    case secondStage = 2
    case nested = 3
    case passThrough = 4
}

/// VT-d scalable-mode PASID-table entry, 512 bits (VT-d spec §9.6; Linux
/// drivers/iommu/intel/pasid.h `struct pasid_entry { u64 val[8]; }`).
///
/// - val[0]: `P` 0, `FPD` 1, `AW` 4:2 (second-stage width: 1 = 39-bit/3-level,
///   2 = 48-bit/4-level, 3 = 57-bit/5-level), `SSEE` 5, `PGTT` 8:6, `SSADE` 9 (second-stage
///   accessed/dirty enable), bits 11:10 reserved, `SSPTPTR` 63:12.
/// - val[1]: `DID` 15:0, bits 22:16 reserved, `PWSNP` 23, `PGSNP` 24, `CD` 25, `EMTE` 26,
///   `EMT` 29:27, `PWT` 30, `PCD` 31, `PAT` 63:32.
/// - val[2]: `SRE` 0 (supervisor requests), `ERE` 1 (execute requests), `FSPM` 3:2
///   (0 = 4-level, 1 = 5-level first stage), `WPE` 4, bits 6:5 reserved, `EAFE` 7,
///   bits 11:8 reserved, `FSPTPTR` 63:12.
/// - val[3]…val[7]: reserved.
///
/// Fields a PGTT does not use are ignored by hardware (so their pointer bits are not checked).
public struct PASIDEntry: Equatable, Sendable {
    /// The eight quadwords, val[0] lowest. Fixed-size inline storage: decoding allocates nothing.
    public var val: InlineArray<8, UInt64>
    public static let size: UInt64 = 64

    public init() { val = InlineArray(repeating: 0) }
    public init(words: [UInt64]) {
        val = InlineArray(repeating: 0)
        for i in 0..<min(8, words.count) { val[i] = words[i] }
    }

    public static func == (a: Self, b: Self) -> Bool {
        for i in 0..<8 where a.val[i] != b.val[i] { return false }
        return true
    }

    public var words: [UInt64] { (0..<8).map { val[$0] } }

    /// A present entry. `secondStageLevels` 3/4/5 is encoded as AW 1/2/3.
    public static func make(pgtt: PGTT, did: DomainID, secondStageTable: UInt64 = 0, secondStageLevels: Int = 4,
                            firstStageTable: UInt64 = 0, firstStageLevels: Int = 4, fpd: Bool = false,
                            supervisorRequests: Bool = false, executeRequests: Bool = false,
                            secondStageAD: Bool = false, pageWalkSnoop: Bool = false,
                            writeProtect: Bool = false, extendedAccessedFlag: Bool = false) -> PASIDEntry {
        var e = PASIDEntry()
        var v0: UInt64 = 1 | (UInt64(pgtt.rawValue) << 6)
        if fpd { v0 |= 2 }
        v0 |= UInt64(max(0, min(7, secondStageLevels - 2))) << 2
        if secondStageAD { v0 |= 1 << 9 }
        v0 |= secondStageTable & ~0xFFF
        var v1 = UInt64(did.rawValue)
        if pageWalkSnoop { v1 |= 1 << 23 }
        var v2: UInt64 = firstStageTable & ~0xFFF
        if supervisorRequests { v2 |= 1 }
        if executeRequests { v2 |= 2 }
        if firstStageLevels == 5 { v2 |= 1 << 2 }
        if writeProtect { v2 |= 1 << 4 }
        if extendedAccessedFlag { v2 |= 1 << 7 }
        e.val[0] = v0; e.val[1] = v1; e.val[2] = v2
        return e
    }

    public var present: Bool { val[0] & 1 != 0 }
    public var faultProcessingDisable: Bool { val[0] & 2 != 0 }
    public var aw: UInt8 { UInt8((val[0] >> 2) & 7) }
    /// Second-stage levels from AW (1→3, 2→4, 3→5), nil for other values.
    public var secondStageLevels: Int? { (1...3).contains(aw) ? Int(aw) + 2 : nil }
    public var rawPGTT: UInt8 { UInt8((val[0] >> 6) & 7) }
    public var pgtt: PGTT? { PGTT(rawValue: rawPGTT) }
    public var secondStageAD: Bool { val[0] & (1 << 9) != 0 }
    public var secondStageTable: UInt64 { val[0] & ~0xFFF }
    public var did: DomainID { DomainID(UInt16(truncatingIfNeeded: val[1])) }
    public var supervisorRequests: Bool { val[2] & 1 != 0 }
    public var executeRequests: Bool { val[2] & 2 != 0 }
    /// EAFE (val[2] bit 7): hardware also sets the extended-accessed bit (bit 10) of the
    /// first-stage entries it uses (VT-d §3.6.2).
    public var extendedAccessedFlag: Bool { val[2] & (1 << 7) != 0 }
    /// WPE (val[2] bit 4): write protection applies to supervisor requests.
    public var writeProtect: Bool { val[2] & (1 << 4) != 0 }
    public var fspm: UInt8 { UInt8((val[2] >> 2) & 3) }
    /// First-stage levels from FSPM (0→4, 1→5), nil for reserved values.
    public var firstStageLevels: Int? { fspm == 0 ? 4 : fspm == 1 ? 5 : nil }
    public var firstStageTable: UInt64 { val[2] & ~0xFFF }

    /// Reserved bits for the entry's PGTT (pointer bits above the address width are checked
    /// only for the stages the PGTT uses).
    public func reservedBitsSet(addressMask: UInt64) -> Bool {
        let above = 0xFFFF_FFFF_FFFF_F000 & ~addressMask
        var r0: UInt64 = 0xC00
        var r2: UInt64 = 0xF60
        switch pgtt {
        case .secondStage?: r0 |= above
        case .firstStage?: r2 |= above
        case .nested?: r0 |= above; r2 |= above
        default: break
        }
        if val[0] & r0 != 0 || val[1] & 0x7F_0000 != 0 || val[2] & r2 != 0 { return true }
        for i in 3..<8 where val[i] != 0 { return true }
        return false
    }

    /// Low and high quadword pairs as hardware may fetch them (128-bit chunks).
    public var quadwordPairs: [(UInt64, UInt64)] { stride(from: 0, to: 8, by: 2).map { (val[$0], val[$0 + 1]) } }
}
