/// Access rights carried by a page-table entry or asked for by a request.
public struct PagePermissions: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    @inlinable public static var read: PagePermissions { PagePermissions(rawValue: 1) }
    @inlinable public static var write: PagePermissions { PagePermissions(rawValue: 2) }
    @inlinable public static var execute: PagePermissions { PagePermissions(rawValue: 4) }
    /// User-mode (unprivileged) access allowed; first-stage U/S.
    @inlinable public static var user: PagePermissions { PagePermissions(rawValue: 8) }
    @inlinable public static var readWrite: PagePermissions { [.read, .write] }
    @inlinable public static var all: PagePermissions { [.read, .write, .execute, .user] }
}

/// One decoded paging entry.
public struct DecodedPTE: Equatable, Sendable {
    public var present: Bool
    /// A leaf: maps a page (level 1) or a superpage (PS set at level 2 or 3).
    public var leaf: Bool
    /// Reserved bits are set for this level and address width.
    public var reserved: Bool
    /// Output address (page or next table), bits 51:12.
    public var address: UInt64
    public var permissions: PagePermissions

    @inlinable
    public init(present: Bool, leaf: Bool, reserved: Bool, address: UInt64, permissions: PagePermissions) {
        self.present = present; self.leaf = leaf; self.reserved = reserved
        self.address = address; self.permissions = permissions
    }
}

/// A paging-structure format: how a 64-bit entry at a level encodes a table pointer or a
/// leaf. Levels count from 1 (4 KiB leaves) up to 4 or 5; each level resolves 9 bits.
public protocol PageTableFormat {
    /// A short name for reports.
    static var name: String { get }
    /// The accessed bit hardware sets on use, and the dirty bit it sets on write (Arm: AF,
    /// and DBM, the bit that enables dirty-state recording; see `isDirty`).
    static var accessedBit: UInt64 { get }
    static var dirtyBit: UInt64 { get }
    /// Encodes a leaf at `level` (1: 4 KiB, 2: 2 MiB, 3: 1 GiB) mapping `address`.
    static func leaf(address: UInt64, permissions: PagePermissions, level: Int) -> UInt64
    /// Encodes a non-leaf entry pointing at the table at `address`.
    static func table(address: UInt64) -> UInt64
    /// Decodes `raw` found at `level`; `addressMask` has the bits an address may use
    /// (bits HAW-1..12), everything above is reserved.
    static func decode(_ raw: UInt64, level: Int, addressMask: UInt64) -> DecodedPTE

    // Dirty state and superpage splitting. The defaults below are the single-bit model of
    // VT-d (a D bit hardware sets on write and software clears); Arm formats record dirtiness
    // as write permission under DBM (VMSAv8-64 "dirty state": stage 1 AP[2] clear, stage 2
    // S2AP[1] set) and override them.

    /// The leaf `raw` records a write since it was last cleaned.
    static func isDirty(_ raw: UInt64) -> Bool
    /// `raw` with its dirty state cleaned, so the next write is recorded again.
    static func cleaned(_ raw: UInt64) -> UInt64
    /// `raw` as hardware leaves it when it allows a write and records the dirty state.
    static func dirtied(_ raw: UInt64) -> UInt64
    /// The leaf is writable only through a hardware dirty-state update (Arm: DBM set and the
    /// write permission not yet granted); the walk reports it without write permission.
    static func isWritableClean(_ raw: UInt64) -> Bool
    /// The entry at `index` (0..<512) of the level `level - 1` table that maps what the
    /// superpage `raw` (decoded as `decoded`) at `level` maps.
    static func splitLeaf(_ raw: UInt64, decoded: DecodedPTE, level: Int, index: UInt64) -> UInt64
}

extension PageTableFormat {
    @inlinable @inline(__always)
    public static func isDirty(_ raw: UInt64) -> Bool { raw & dirtyBit != 0 }
    @inlinable @inline(__always)
    public static func cleaned(_ raw: UInt64) -> UInt64 { raw & ~dirtyBit }
    @inlinable @inline(__always)
    public static func dirtied(_ raw: UInt64) -> UInt64 { raw | dirtyBit }
    @inlinable @inline(__always)
    public static func isWritableClean(_ raw: UInt64) -> Bool { false }
    /// A fresh leaf with the superpage's address and rights (accessed/dirty bits are not kept).
    @inlinable
    public static func splitLeaf(_ raw: UInt64, decoded: DecodedPTE, level: Int, index: UInt64) -> UInt64 {
        leaf(address: decoded.address + index * PageTableGeometry.span(level: level - 1),
             permissions: decoded.permissions, level: level - 1)
    }
}

public enum PageTableGeometry {
    /// Bits of address resolved below `level`: 12, 21, 30, 39, 48.
    @inlinable @inline(__always)
    public static func shift(level: Int) -> UInt64 { UInt64(12 + 9 * (level - 1)) }
    /// Bytes mapped by one entry at `level`.
    @inlinable @inline(__always)
    public static func span(level: Int) -> UInt64 { 1 << shift(level: level) }
    /// Index of `address` in a table at `level`.
    @inlinable @inline(__always)
    public static func index(_ address: UInt64, level: Int) -> UInt64 { (address >> shift(level: level)) & 511 }
    /// Mask of address bits 51..12 limited to an address width of `bits`.
    @inlinable
    public static func addressMask(width bits: Int) -> UInt64 {
        let w = UInt64(min(max(bits, 12), 52))
        return ((1 << w) - 1) & ~0xFFF
    }
}
