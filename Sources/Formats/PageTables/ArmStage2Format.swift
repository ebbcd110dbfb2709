/// VMSAv8-64 stage 2 translation table descriptors with the 4 KiB granule (Arm ARM D8.3; used
/// by SMMUv3 STEs with S2AA64, IHI 0070 §5.2), encoded as Linux io-pgtable-arm.c writes them
/// for `ARM_64_LPAE_S2` (`ARM_LPAE_PTE_HAP_*`, `ARM_LPAE_PTE_MEMATTR_*`).
///
/// Levels and descriptor types as `ArmStage1Format`. Leaf attributes: MemAttr 5:2, S2AP 7:6
/// (bit 6 read, bit 7 write), SH 9:8, AF 10, output address 47:12, DBM 51, Contiguous 52,
/// XN 54 (with FEAT_XNX, XN[1:0] 54:53; Linux sets both for IOMMU_NOEXEC). Stage 2 table
/// descriptors have no hierarchical attributes.
///
/// Rights: read from S2AP[0], write from S2AP[1], execute when XN (bit 54) is clear; `.user`
/// always (stage 2 does not distinguish privilege). A valid leaf with S2AP == 0b00 is present
/// and grants nothing (a Permission fault, not a Translation fault).
///
/// Dirty state (DBM): a leaf with DBM set is writable-clean while S2AP[1] is clear; a write
/// with STE.S2HD == 1 sets S2AP[1] (writable-dirty). Cleaning clears S2AP[1]. The sense is
/// the inverse of stage 1's AP[2]. Linux does not offer dirty tracking on stage 2 domains;
/// this format sets DBM on every writable leaf, inert while S2HD == 0.
///
/// FEAT_XNX is not modelled: bit 53 is ignored. Not checked here: AF == 0 (Access flag fault
/// unless S2AFFD or S2HA), the S2T0SZ input range, concatenated start-level tables (the
/// walker resolves 9 bits per level: use a start level without concatenation, e.g. S2T0SZ 16
/// with SL0 0b10 or S2T0SZ 25 with SL0 0b01).
public enum ArmStage2Format: PageTableFormat {
    public static let name = "vmsav8-64-stage2-4k"
    @inlinable public static var valid: UInt64 { 1 << 0 }
    @inlinable public static var typeBit: UInt64 { 1 << 1 }
    @inlinable public static var memAttrShift: UInt64 { 2 }
    /// S2AP[0] / S2AP[1] (`ARM_LPAE_PTE_HAP_READ` / `_WRITE`).
    @inlinable public static var s2apRead: UInt64 { 1 << 6 }
    @inlinable public static var s2apWrite: UInt64 { 1 << 7 }
    @inlinable public static var shShift: UInt64 { 8 }
    @inlinable public static var accessedBit: UInt64 { 1 << 10 }
    @inlinable public static var dirtyBit: UInt64 { dbm }
    @inlinable public static var dbm: UInt64 { 1 << 51 }
    @inlinable public static var contiguous: UInt64 { 1 << 52 }
    /// XN[0] (FEAT_XNX, ignored here) and XN / XN[1].
    @inlinable public static var xn0: UInt64 { 1 << 53 }
    @inlinable public static var xn: UInt64 { 1 << 54 }
    @inlinable public static var outputAddressMask: UInt64 { 0x0000_FFFF_FFFF_F000 }
    /// MemAttr 0b1111 (`ARM_LPAE_PTE_MEMATTR_OIWB`) and SH inner shareable.
    @inlinable public static var cacheableAttributes: UInt64 { 0xF << memAttrShift | 3 << shShift }

    /// `arm_lpae_prot_to_pte` for an `IOMMU_CACHE` stage 2 mapping, plus type and AF.
    @inlinable
    public static func leaf(address: UInt64, permissions: PagePermissions, level: Int) -> UInt64 {
        var v = (address & outputAddressMask) | valid | accessedBit | cacheableAttributes
        if level == 1 { v |= typeBit }
        if permissions.contains(.read) { v |= s2apRead }
        if permissions.contains(.write) { v |= s2apWrite | dbm }
        if !permissions.contains(.execute) { v |= xn0 | xn }
        return v
    }

    @inlinable
    public static func table(address: UInt64) -> UInt64 { (address & outputAddressMask) | valid | typeBit }

    @inlinable @inline(__always)
    public static func decode(_ raw: UInt64, level: Int, addressMask: UInt64) -> DecodedPTE {
        let blockOrTable = raw & typeBit != 0
        let present = raw & valid != 0 && (blockOrTable || (level == 2 || level == 3))
        let isLeaf = level == 1 || (level <= 3 && !blockOrTable)
        let address = raw & outputAddressMask
        var perms: PagePermissions
        if isLeaf {
            perms = [.user]
            if raw & s2apRead != 0 { perms.insert(.read) }
            if raw & s2apWrite != 0 { perms.insert(.write) }
            if raw & xn == 0 { perms.insert(.execute) }
        } else {
            perms = .all
        }
        return DecodedPTE(present: present, leaf: isLeaf, reserved: address & ~addressMask != 0,
                          address: address, permissions: perms)
    }

    /// DBM set and S2AP[1] set.
    @inlinable @inline(__always)
    public static func isDirty(_ raw: UInt64) -> Bool { raw & (s2apWrite | dbm) == s2apWrite | dbm }
    /// Writable-dirty → writable-clean: clear S2AP[1] (only under DBM).
    @inlinable @inline(__always)
    public static func cleaned(_ raw: UInt64) -> UInt64 { raw & dbm != 0 ? raw & ~s2apWrite : raw }
    /// The hardware update on a write with STE.S2HD == 1: set S2AP[1] (only under DBM).
    @inlinable @inline(__always)
    public static func dirtied(_ raw: UInt64) -> UInt64 { raw & dbm != 0 ? raw | s2apWrite : raw }
    @inlinable @inline(__always)
    public static func isWritableClean(_ raw: UInt64) -> Bool { raw & (s2apWrite | dbm) == dbm }

    /// Keeps every attribute of the block; the Contiguous hint is dropped.
    @inlinable
    public static func splitLeaf(_ raw: UInt64, decoded: DecodedPTE, level: Int, index: UInt64) -> UInt64 {
        let base = (raw & outputAddressMask) & ~(PageTableGeometry.span(level: level) - 1)
        var v = raw & ~(outputAddressMask | typeBit | contiguous)
        if level - 1 == 1 { v |= typeBit }
        return v | (base + index * PageTableGeometry.span(level: level - 1))
    }
}
