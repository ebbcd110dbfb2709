/// Stream table geometry: SMMU_STRTAB_BASE / SMMU_STRTAB_BASE_CFG (IHI 0070 §6.3.24, §6.3.25)
/// and the level 1 stream table descriptor, L1STD (§5.1). Linux: arm-smmu-v3.h
/// `STRTAB_BASE_*`, `STRTAB_L1_DESC_SPAN`, `STRTAB_L1_DESC_L2PTR_MASK`, `STRTAB_SPLIT` (8).
///
/// A linear table holds 2^LOG2SIZE STEs. A 2-level table holds MAX(1, 2^(LOG2SIZE − SPLIT))
/// L1STDs indexed by StreamID[LOG2SIZE−1:SPLIT]; each points at an array of 2^(Span−1) STEs
/// indexed by StreamID[SPLIT−1:0]. Linux uses SPLIT = 8 and writes Span = SPLIT + 1.

/// A level 1 stream table descriptor, 8 bytes: `Span` 4:0, `L2Ptr` 51:6.
public struct L1StreamTableDescriptor: Equatable, Sendable {
    public var raw: UInt64
    public static let size: UInt64 = 8

    @inlinable public init(raw: UInt64) { self.raw = raw }

    /// `arm_smmu_write_strtab_l1_desc`: an array of 2^(span−1) STEs at `l2Pointer`.
    @inlinable
    public init(l2Pointer: UInt64, span: UInt8) {
        raw = (l2Pointer & Self.l2PointerMask) | UInt64(span & 0x1F)
    }

    /// An invalid descriptor (Span == 0).
    public static let invalid = L1StreamTableDescriptor(raw: 0)

    @inlinable public var span: UInt8 { UInt8(raw & 0x1F) }
    @inlinable public var l2Pointer: UInt64 { raw & Self.l2PointerMask }
    @inlinable public static var l2PointerMask: UInt64 { BitField.genmask(51, 6) }

    /// Number of STEs in the level 2 array, nil when the descriptor selects no STEs: Span 0,
    /// a reserved Span (12–31), or a Span larger than `split` + 1 (§5.1.1).
    @inlinable
    public func entries(split: UInt8) -> UInt32? {
        let s = span
        guard s >= 1, s <= 11, s - 1 <= split else { return nil }
        return 1 << UInt32(s - 1)
    }

    /// The effective level 2 array base: L2Ptr[5 + (Span − 1):0] are treated as zero, so the
    /// array is aligned to its size.
    @inlinable
    public func l2Base(split: UInt8) -> UInt64? {
        guard entries(split: split) != nil else { return nil }
        return l2Pointer & ~((UInt64(64) << UInt64(span - 1)) - 1)
    }
}

/// Where an STE (or the L1STD leading to it) is, or why the StreamID selects nothing.
public enum StreamTableLookup: Equatable, Sendable {
    /// The STE is at this address.
    case ste(UInt64)
    /// Read the L1STD at `address`; the STE is entry `index` of the array it points at.
    case l1Descriptor(address: UInt64, index: UInt32)
    /// StreamID ≥ 2^LOG2SIZE: C_BAD_STREAMID.
    case outOfRange
}

/// The stream table configuration registers.
public struct StreamTableConfig: Equatable, Sendable {
    /// STRTAB_BASE_CFG.FMT.
    public enum Format: UInt8, Sendable, CaseIterable {
        case linear = 0
        case twoLevel = 1
    }

    /// SMMU_STRTAB_BASE as written (ADDR 51:6, RA 62).
    public var base: UInt64
    /// SMMU_STRTAB_BASE_CFG as written (FMT 17:16, SPLIT 10:6, LOG2SIZE 5:0).
    public var cfg: UInt32

    @inlinable public init(base: UInt64, cfg: UInt32) { self.base = base; self.cfg = cfg }

    /// The register values Linux writes (`arm_smmu_init_strtab_linear/_2lvl`, `STRTAB_BASE_RA`).
    public static func make(address: UInt64, format: Format, log2Size: UInt8, split: UInt8 = 8,
                            readAllocate: Bool = true) -> StreamTableConfig {
        var c = UInt32(log2Size & 0x3F) | UInt32(format.rawValue) << 16
        if format == .twoLevel { c |= UInt32(split & 0x1F) << 6 }
        return StreamTableConfig(base: (address & addressMask) | (readAllocate ? 1 << 62 : 0), cfg: c)
    }

    @inlinable public static var addressMask: UInt64 { BitField.genmask(51, 6) }
    /// FMT, with the reserved values 0b10/0b11 behaving as linear.
    @inlinable public var format: Format { Format(rawValue: UInt8((cfg >> 16) & 3)) ?? .linear }
    @inlinable public var rawLog2Size: UInt8 { UInt8(cfg & 0x3F) }
    @inlinable public var rawSplit: UInt8 { UInt8((cfg >> 6) & 0x1F) }
    /// SPLIT as it behaves: 6, 8 or 10; other values act as 6.
    @inlinable public var split: UInt8 { rawSplit == 6 || rawSplit == 8 || rawSplit == 10 ? rawSplit : 6 }
    @inlinable public var readAllocate: Bool { base & (1 << 62) != 0 }

    /// Effective LOG2SIZE: MIN(LOG2SIZE, SMMU_IDR1.SIDSIZE).
    @inlinable
    public func log2Size(sidBits: Int) -> UInt8 { UInt8(min(Int(rawLog2Size), sidBits)) }

    /// The table base the SMMU uses: ADDR aligned to the table size (linear) or to the larger
    /// of 64 bytes and the L1 table size (2-level), using the written LOG2SIZE (§6.3.24).
    @inlinable
    public var effectiveBase: UInt64 {
        let a = base & Self.addressMask
        let log2 = Int(rawLog2Size)
        let alignBits: Int
        switch format {
        case .linear: alignBits = log2 + 6
        case .twoLevel: alignBits = max(6, log2 - Int(split) + 3)
        }
        return alignBits >= 64 ? 0 : a & ~((1 << UInt64(alignBits)) - 1)
    }

    /// Number of STEs (linear) or L1STDs (2-level).
    @inlinable
    public func entries(sidBits: Int) -> UInt64 {
        let log2 = Int(log2Size(sidBits: sidBits))
        switch format {
        case .linear: return 1 << UInt64(log2)
        case .twoLevel: return 1 << UInt64(max(0, log2 - Int(split)))
        }
    }

    /// Where the STE for `sid` is.
    /// - Complexity: O(1).
    @inlinable
    public func lookup(sid: UInt32, sidBits: Int) -> StreamTableLookup {
        let log2 = UInt64(log2Size(sidBits: sidBits))
        guard log2 >= 32 || UInt64(sid) >> log2 == 0 else { return .outOfRange }
        let b = effectiveBase
        switch format {
        case .linear:
            return .ste(b &+ UInt64(sid) &* StreamTableEntry.size)
        case .twoLevel:
            let s = UInt32(split)
            return .l1Descriptor(address: b &+ UInt64(sid >> s) &* L1StreamTableDescriptor.size,
                                 index: sid & ((1 << s) - 1))
        }
    }

    /// The STE address for entry `index` under `l1`, nil when the L1STD is invalid or the
    /// index is beyond its span (C_BAD_STREAMID).
    @inlinable
    public func steAddress(l1: L1StreamTableDescriptor, index: UInt32) -> UInt64? {
        guard let n = l1.entries(split: split), index < n, let base = l1.l2Base(split: split) else { return nil }
        return base &+ UInt64(index) &* StreamTableEntry.size
    }
}
