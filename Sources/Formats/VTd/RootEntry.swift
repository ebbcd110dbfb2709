/// VT-d scalable-mode root entry, 128 bits (VT-d spec §9.2).
///
/// The root table holds 256 of these, one per bus. In scalable mode each entry points at two
/// context tables: the lower one for devfn 0–127 and the upper one for devfn 128–255.
/// - `LP` bit 0, `LCTP` bits 63:12 (lower context-table pointer).
/// - `UP` bit 64, `UCTP` bits 127:76 (upper context-table pointer).
/// - Reserved: bits 11:1, 75:65, and pointer bits above the host address width.
public struct ScalableRootEntry: Equatable, Sendable {
    public var lo: UInt64
    public var hi: UInt64

    public init(lo: UInt64 = 0, hi: UInt64 = 0) { self.lo = lo; self.hi = hi }

    public init(lower: UInt64?, upper: UInt64?) {
        lo = lower.map { ($0 & ~0xFFF) | 1 } ?? 0
        hi = upper.map { ($0 & ~0xFFF) | 1 } ?? 0
    }

    public static let size: UInt64 = 16

    public var lowerPresent: Bool { lo & 1 != 0 }
    public var lowerContextTable: UInt64 { lo & ~0xFFF }
    public var upperPresent: Bool { hi & 1 != 0 }
    public var upperContextTable: UInt64 { hi & ~0xFFF }

    /// Present bit and context-table pointer for `devfn`.
    public func half(for devfn: UInt8) -> (present: Bool, table: UInt64) {
        devfn < 128 ? (lowerPresent, lowerContextTable) : (upperPresent, upperContextTable)
    }

    /// Whether reserved bits are set in the half used by `devfn`, given the address mask.
    public func reservedBitsSet(for devfn: UInt8, addressMask: UInt64) -> Bool {
        let v = devfn < 128 ? lo : hi
        let reserved: UInt64 = 0xFFE | (0xFFFF_FFFF_FFFF_F000 & ~addressMask)
        return v & reserved != 0
    }
}
