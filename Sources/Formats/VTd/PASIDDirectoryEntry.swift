/// VT-d scalable-mode PASID directory entry, 64 bits (VT-d spec §9.5).
///
/// The directory is indexed by PASID bits 19:6; each present entry points at a PASID table
/// of 64 entries (PASID bits 5:0).
/// - `P` bit 0, `FPD` bit 1, bits 11:2 reserved, `SMPTBLPTR` bits 63:12.
public struct PASIDDirectoryEntry: Equatable, Sendable {
    public var raw: UInt64
    public static let size: UInt64 = 8

    public init(raw: UInt64) { self.raw = raw }
    public init(table: UInt64, present: Bool = true, fpd: Bool = false) {
        raw = (table & ~0xFFF) | (present ? 1 : 0) | (fpd ? 2 : 0)
    }

    public var present: Bool { raw & 1 != 0 }
    public var faultProcessingDisable: Bool { raw & 2 != 0 }
    public var table: UInt64 { raw & ~0xFFF }

    public func reservedBitsSet(addressMask: UInt64) -> Bool {
        raw & (0xFFC | (0xFFFF_FFFF_FFFF_F000 & ~addressMask)) != 0
    }

    /// Directory index of `pasid` (bits 19:6) and table index (bits 5:0).
    public static func indices(of pasid: UInt32) -> (directory: UInt64, table: UInt64) {
        (UInt64(pasid >> 6), UInt64(pasid & 0x3F))
    }
}
