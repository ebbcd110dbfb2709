/// VMSAv8-64 stage 1 translation table descriptors with the 4 KiB granule (Arm ARM D8.3
/// "Translation table descriptor formats"; used by SMMUv3 CDs, IHI 0070 §3.4), encoded as
/// Linux drivers/iommu/io-pgtable-arm.c (`ARM_LPAE_PTE_*`, `arm_lpae_prot_to_pte`) writes them.
///
/// Levels as `PageTableFormat` counts them: 1 = Arm level 3 (4 KiB pages), 2 = level 2
/// (2 MiB blocks), 3 = level 1 (1 GiB blocks), 4 = level 0 (tables only). Level 5 (Arm level
/// −1) exists only with FEAT_LPA2, which is not modelled; it decodes as level 0 does.
///
/// Bits 1:0: 0b11 table (levels 4–2) or page (level 1); 0b01 block (levels 3, 2; invalid at
/// levels 4 and 1); bit 0 clear: invalid. Leaf attributes: AttrIndx 4:2, NS 5, AP[1] 6 (EL0
/// access), AP[2] 7 (read-only), SH 9:8, AF 10, nG 11, output address 47:12, GP 50, DBM 51,
/// Contiguous 52, PXN 53, UXN 54. Table attributes: PXNTable 59, UXNTable 60, APTable 62:61
/// (bit 61 no EL0 access, bit 62 no write), NSTable 63; they limit every level below (unless
/// CD.HADx disables them).
///
/// Rights: read is always granted by a valid leaf; write when AP[2] is clear; `.user` when
/// AP[1] is set; execute when both PXN and UXN are clear (Linux sets both for IOMMU_NOEXEC).
///
/// Dirty state (Arm ARM D8.4.6, DBM): a leaf with DBM set is writable-clean while AP[2] is
/// set; a write with CD.HD == 1 clears AP[2] (now writable-dirty) instead of faulting. Linux
/// maps writable leaves writable-dirty (DBM set, AP[2] clear) and cleans by setting AP[2]
/// (`arm_lpae_read_and_clear_dirty`). This format sets DBM on every writable leaf, which is
/// inert while CD.HD == 0; the SMMUv3 driver strips it (`IOPageTable.clearedLeafBits`) from
/// domains without dirty tracking, as Linux sets it only with IO_PGTABLE_QUIRK_ARM_HD.
///
/// Not checked here (the hardware model's part): AF == 0 (Access flag fault unless CD.AFFD or
/// HA), TxSZ input range, WXN/UWXN/PAN. An output or next-table address above `addressMask`
/// (the effective IPS) decodes as `reserved`: the model reports it as F_ADDR_SIZE. Address
/// bits of a block below its size are ignored.
public enum ArmStage1Format: PageTableFormat {
    public static let name = "vmsav8-64-stage1-4k"
    @inlinable public static var valid: UInt64 { 1 << 0 }
    /// Bit 1: table or page (set), block (clear).
    @inlinable public static var typeBit: UInt64 { 1 << 1 }
    @inlinable public static var attrIndxShift: UInt64 { 2 }
    @inlinable public static var ns: UInt64 { 1 << 5 }
    /// AP[1]: EL0 (unprivileged) access (`ARM_LPAE_PTE_AP_UNPRIV`).
    @inlinable public static var apUnprivileged: UInt64 { 1 << 6 }
    /// AP[2]: read-only (`ARM_LPAE_PTE_AP_RDONLY`).
    @inlinable public static var apReadOnly: UInt64 { 1 << 7 }
    @inlinable public static var shShift: UInt64 { 8 }
    @inlinable public static var accessedBit: UInt64 { 1 << 10 }
    @inlinable public static var notGlobal: UInt64 { 1 << 11 }
    @inlinable public static var dirtyBit: UInt64 { dbm }
    @inlinable public static var dbm: UInt64 { 1 << 51 }
    @inlinable public static var contiguous: UInt64 { 1 << 52 }
    @inlinable public static var pxn: UInt64 { 1 << 53 }
    @inlinable public static var uxn: UInt64 { 1 << 54 }
    @inlinable public static var pxnTable: UInt64 { 1 << 59 }
    @inlinable public static var uxnTable: UInt64 { 1 << 60 }
    @inlinable public static var apTableNoEL0: UInt64 { 1 << 61 }
    @inlinable public static var apTableReadOnly: UInt64 { 1 << 62 }
    @inlinable public static var nsTable: UInt64 { 1 << 63 }
    /// Output address bits 47:12 (`ARM_LPAE_PTE_ADDR_MASK` for 4 KiB pages).
    @inlinable public static var outputAddressMask: UInt64 { 0x0000_FFFF_FFFF_F000 }
    /// Shareability inner (0b11, `ARM_LPAE_PTE_SH_IS`), AttrIndx 1 (`ARM_LPAE_MAIR_ATTR_IDX_CACHE`).
    @inlinable public static var cacheableAttributes: UInt64 { 3 << shShift | 1 << attrIndxShift }

    /// `arm_lpae_prot_to_pte` for an `IOMMU_CACHE` mapping, with `.user` for mappings without
    /// `IOMMU_PRIV` (AP[1]), plus the page/block type and AF.
    @inlinable
    public static func leaf(address: UInt64, permissions: PagePermissions, level: Int) -> UInt64 {
        var v = (address & outputAddressMask) | valid | accessedBit | notGlobal | cacheableAttributes
        if level == 1 { v |= typeBit }
        if permissions.contains(.write) { v |= dbm } else { v |= apReadOnly }
        if permissions.contains(.user) { v |= apUnprivileged }
        if !permissions.contains(.execute) { v |= pxn | uxn }
        return v
    }

    /// `ARM_LPAE_PTE_TYPE_TABLE` with the next table's address; no hierarchical limits.
    @inlinable
    public static func table(address: UInt64) -> UInt64 { (address & outputAddressMask) | valid | typeBit }

    @inlinable @inline(__always)
    public static func decode(_ raw: UInt64, level: Int, addressMask: UInt64) -> DecodedPTE {
        let blockOrTable = raw & typeBit != 0
        // Bits 1:0 = 0b01 is a block only at levels 3 and 2; at 1 and 4 it is invalid.
        let present = raw & valid != 0 && (blockOrTable || (level == 2 || level == 3))
        let isLeaf = level == 1 || (level <= 3 && !blockOrTable)
        let address = raw & outputAddressMask
        var perms: PagePermissions
        if isLeaf {
            perms = [.read]
            if raw & apReadOnly == 0 { perms.insert(.write) }
            if raw & apUnprivileged != 0 { perms.insert(.user) }
            if raw & (pxn | uxn) == 0 { perms.insert(.execute) }
        } else {
            perms = .all
            if raw & apTableReadOnly != 0 { perms.remove(.write) }
            if raw & apTableNoEL0 != 0 { perms.remove(.user) }
            if raw & (pxnTable | uxnTable) != 0 { perms.remove(.execute) }
        }
        return DecodedPTE(present: present, leaf: isLeaf, reserved: address & ~addressMask != 0,
                          address: address, permissions: perms)
    }

    /// Linux `iopte_writeable_dirty`: DBM set and AP[2] clear.
    @inlinable @inline(__always)
    public static func isDirty(_ raw: UInt64) -> Bool { raw & (apReadOnly | dbm) == dbm }
    /// Writable-dirty → writable-clean: set AP[2] (only under DBM).
    @inlinable @inline(__always)
    public static func cleaned(_ raw: UInt64) -> UInt64 { raw & dbm != 0 ? raw | apReadOnly : raw }
    /// The hardware update on a write with CD.HD == 1: clear AP[2] (only under DBM).
    @inlinable @inline(__always)
    public static func dirtied(_ raw: UInt64) -> UInt64 { raw & dbm != 0 ? raw & ~apReadOnly : raw }
    @inlinable @inline(__always)
    public static func isWritableClean(_ raw: UInt64) -> Bool { raw & (apReadOnly | dbm) == apReadOnly | dbm }

    /// Keeps every attribute of the block, as Linux `arm_lpae_split_blk_unmap` does (so a
    /// writable-clean block splits into writable-clean pages); the Contiguous hint is dropped.
    @inlinable
    public static func splitLeaf(_ raw: UInt64, decoded: DecodedPTE, level: Int, index: UInt64) -> UInt64 {
        let base = (raw & outputAddressMask) & ~(PageTableGeometry.span(level: level) - 1)
        var v = raw & ~(outputAddressMask | typeBit | contiguous)
        if level - 1 == 1 { v |= typeBit }
        return v | (base + index * PageTableGeometry.span(level: level - 1))
    }
}
