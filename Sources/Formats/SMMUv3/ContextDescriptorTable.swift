/// CD table geometry: STE.S1Fmt/S1CDMax/S1ContextPtr (IHI 0070 §5.2) and the level 1 context
/// descriptor, L1CD (§5.3). Linux: arm-smmu-v3.h `CTXDESC_L1_DESC_V`,
/// `CTXDESC_L1_DESC_L2PTR_MASK`, `CTXDESC_L2_ENTRIES` (1024), `arm_smmu_alloc_cd_tables`.
///
/// - S1CDMax == 0 (or SMMU_IDR1.SSIDSIZE == 0): S1ContextPtr points at one CD; a transaction
///   with a SubstreamID records C_BAD_SUBSTREAMID.
/// - Linear: 2^S1CDMax CDs indexed by SubstreamID, the table aligned to its size.
/// - 2-level, 4 KiB leaves: L1CDs indexed by SubstreamID[S1CDMax−1:6], each pointing at 64 CDs.
/// - 2-level, 64 KiB leaves: L1CDs indexed by SubstreamID[S1CDMax−1:10], each at 1024 CDs.
///   L1 tables are aligned to their size or 64 bytes, whichever is greater.
/// Pointer bits below these alignments are CONSTRAINED UNPREDICTABLE; the model treats them as
/// zero. A SubstreamID ≥ 2^S1CDMax, or an L1CD with V == 0, records C_BAD_SUBSTREAMID.

/// A level 1 context descriptor, 8 bytes: `V` 0, `L2Ptr` 51:12.
public struct L1ContextDescriptor: Equatable, Sendable {
    public var raw: UInt64
    public static let size: UInt64 = 8

    @inlinable public init(raw: UInt64) { self.raw = raw }

    /// `arm_smmu_write_cd_l1_desc`: valid, pointing at the level 2 table at `l2Pointer`.
    @inlinable
    public init(l2Pointer: UInt64) { raw = (l2Pointer & Self.l2PointerMask) | 1 }

    public static let invalid = L1ContextDescriptor(raw: 0)

    @inlinable public var valid: Bool { raw & 1 != 0 }
    @inlinable public var l2Pointer: UInt64 { raw & Self.l2PointerMask }
    @inlinable public static var l2PointerMask: UInt64 { BitField.genmask(51, 12) }
}

/// Where a CD (or the L1CD leading to it) is, or why the SubstreamID selects nothing.
public enum CDTableLookup: Equatable, Sendable {
    /// The CD is at this address (an IPA when stage 2 translates).
    case cd(UInt64)
    /// Read the L1CD at `address`; the CD is entry `index` of the table it points at.
    case l1Descriptor(address: UInt64, index: UInt32)
    /// C_BAD_SUBSTREAMID: a SubstreamID where substreams are disabled, or one ≥ 2^S1CDMax.
    case badSubstream
}

/// The CD table an STE points at.
public struct CDTableLayout: Equatable, Sendable {
    /// S1Fmt as it behaves (0b11 acts as linear).
    public var format: StreamTableEntry.S1Fmt
    public var s1CDMax: UInt8
    /// S1ContextPtr (bits 51:6).
    public var pointer: UInt64
    /// False when S1CDMax == 0 or the SMMU has no substreams: the pointer is one CD.
    public var substreamsEnabled: Bool

    public init(format: StreamTableEntry.S1Fmt, s1CDMax: UInt8, pointer: UInt64, ssidBits: Int) {
        self.format = format; self.s1CDMax = s1CDMax & 0x1F
        self.pointer = pointer & StreamTableEntry.s1ContextPointerMask
        self.substreamsEnabled = s1CDMax != 0 && ssidBits != 0
    }

    public init(ste: StreamTableEntry, ssidBits: Int) {
        self.init(format: ste.s1Fmt, s1CDMax: ste.s1CDMax, pointer: ste.s1ContextPointer, ssidBits: ssidBits)
    }

    /// SubstreamID bits resolved by a level 2 table: 6 (4 KiB) or 10 (64 KiB).
    @inlinable
    public var leafBits: UInt32 { format == .twoLevel4K ? 6 : 10 }

    /// Where the CD for `ssid` is (`ssid` nil: a transaction without a SubstreamID when
    /// substreams are disabled; with substreams enabled the caller applies S1DSS first).
    /// - Complexity: O(1).
    @inlinable
    public func lookup(ssid: UInt32?) -> CDTableLookup {
        guard substreamsEnabled else { return ssid == nil ? .cd(pointer) : .badSubstream }
        let index = ssid ?? 0
        guard UInt64(index) >> UInt64(s1CDMax) == 0 else { return .badSubstream }
        switch format {
        case .linear:
            let base = pointer & ~((UInt64(64) << UInt64(s1CDMax)) - 1)
            return .cd(base &+ UInt64(index) &* ContextDescriptor.size)
        case .twoLevel4K, .twoLevel64K:
            let leaf = leafBits
            let l1Entries = UInt64(1) << UInt64(max(0, Int(s1CDMax) - Int(leaf)))
            let l1Size = max(64, l1Entries * L1ContextDescriptor.size)
            let base = pointer & ~(l1Size - 1)
            return .l1Descriptor(address: base &+ UInt64(index >> leaf) &* L1ContextDescriptor.size,
                                 index: index & ((1 << leaf) - 1))
        }
    }

    /// The CD address for entry `index` of the level 2 table `l1` points at, nil when the
    /// L1CD is invalid (C_BAD_SUBSTREAMID). A 64 KiB table's L2Ptr[15:12] are treated as zero.
    @inlinable
    public func cdAddress(l1: L1ContextDescriptor, index: UInt32) -> UInt64? {
        guard l1.valid else { return nil }
        let base = format == .twoLevel64K ? l1.l2Pointer & ~0xFFFF : l1.l2Pointer
        return base &+ UInt64(index & ((1 << leafBits) - 1)) &* ContextDescriptor.size
    }

    /// The layout Linux chooses for a master with `ssidBits` SubstreamID bits
    /// (`arm_smmu_alloc_cd_tables`): linear when the SMMU has no 2-level CD tables or at most
    /// 1024 CDs are needed, otherwise 2-level with 64 KiB leaves. Returns the format, S1CDMax
    /// and the size in bytes of the table S1ContextPtr points at.
    public static func linuxGeometry(ssidBits: Int, twoLevelSupported: Bool) -> (StreamTableEntry.S1Fmt, UInt8, UInt64) {
        let count = UInt64(1) << UInt64(max(0, ssidBits))
        if !twoLevelSupported || count <= 1024 {
            return (.linear, UInt8(ssidBits), count * ContextDescriptor.size)
        }
        let l1 = (count + 1023) / 1024
        return (.twoLevel64K, UInt8(ssidBits), l1 * L1ContextDescriptor.size)
    }
}
