/// x86-64 paging entries, used by VT-d first-stage translation (VT-d §9.7, Intel SDM vol. 3
/// §4.5) and as the CPU page tables of simulated processes.
///
/// Bits: P (0), R/W (1), U/S (2), PWT (3), PCD (4), A (5), D (6, leaf), PS (7, at the 2 MiB
/// and 1 GiB levels; reserved in PML4/PML5), G (8), ADDR (51:12), XD (63). For superpages
/// bit 12 is PAT and bits below the page size above it are reserved. Rights accumulate
/// along the walk: writable only if R/W is set at every level, user only if U/S is set at
/// every level, executable only if XD is clear at every level.
public enum FirstStageFormat: PageTableFormat {
    public static let name = "x86-64-first-stage"
    @inlinable public static var p: UInt64 { 1 << 0 }
    @inlinable public static var rw: UInt64 { 1 << 1 }
    @inlinable public static var us: UInt64 { 1 << 2 }
    @inlinable public static var accessedBit: UInt64 { 1 << 5 }
    @inlinable public static var dirtyBit: UInt64 { 1 << 6 }
    @inlinable public static var ps: UInt64 { 1 << 7 }
    @inlinable public static var xd: UInt64 { 1 << 63 }

    @inlinable
    public static func leaf(address: UInt64, permissions: PagePermissions, level: Int) -> UInt64 {
        var v = (address & 0x000F_FFFF_FFFF_F000) | p
        if permissions.contains(.write) { v |= rw }
        if permissions.contains(.user) { v |= us }
        if !permissions.contains(.execute) { v |= xd }
        if level > 1 { v |= ps }
        return v
    }

    @inlinable
    public static func table(address: UInt64) -> UInt64 { (address & 0x000F_FFFF_FFFF_F000) | p | rw | us }

    @inlinable @inline(__always)
    public static func decode(_ raw: UInt64, level: Int, addressMask: UInt64) -> DecodedPTE {
        let present = raw & p != 0
        let isLeaf = level == 1 || (level <= 3 && raw & ps != 0)
        var reservedMask = 0x000F_FFFF_FFFF_F000 & ~addressMask
        if level >= 4 { reservedMask |= ps }
        if isLeaf && level > 1 {
            // Bit 12 is PAT in a superpage; bits from 13 up to the page size are reserved.
            reservedMask |= (PageTableGeometry.span(level: level) - 1) & ~0x1FFF
        }
        var perms: PagePermissions = [.read]
        if raw & rw != 0 { perms.insert(.write) }
        if raw & us != 0 { perms.insert(.user) }
        if raw & xd == 0 { perms.insert(.execute) }
        let addrMask: UInt64 = isLeaf && level > 1 ? 0x000F_FFFF_FFFF_E000 : 0x000F_FFFF_FFFF_F000
        return DecodedPTE(present: present, leaf: isLeaf, reserved: raw & reservedMask != 0,
                          address: raw & addrMask, permissions: perms)
    }
}

/// First-stage entries as the Linux VT-d driver writes them for a DMA paging domain
/// (drivers/iommu/intel/iommu.c `__domain_mapping` with `use_first_level`): the x86-64
/// format, with every leaf user-accessible (requests without PASID are user requests),
/// not executable, and A (and D when writable) set in advance, so the hardware never has
/// to write them back; tables are present, writable, user and accessed. Decoding is the
/// hardware's (`FirstStageFormat`).
public enum FirstStageDMAFormat: PageTableFormat {
    public static let name = "x86-64-first-stage-dma"
    @inlinable public static var accessedBit: UInt64 { FirstStageFormat.accessedBit }
    @inlinable public static var dirtyBit: UInt64 { FirstStageFormat.dirtyBit }

    @inlinable
    public static func leaf(address: UInt64, permissions: PagePermissions, level: Int) -> UInt64 {
        var v = (address & 0x000F_FFFF_FFFF_F000) | FirstStageFormat.p | FirstStageFormat.us | FirstStageFormat.xd
            | FirstStageFormat.accessedBit
        if permissions.contains(.write) { v |= FirstStageFormat.rw | FirstStageFormat.dirtyBit }
        if level > 1 { v |= FirstStageFormat.ps }
        return v
    }

    @inlinable
    public static func table(address: UInt64) -> UInt64 {
        (address & 0x000F_FFFF_FFFF_F000) | FirstStageFormat.p | FirstStageFormat.rw | FirstStageFormat.us | FirstStageFormat.accessedBit
    }

    @inlinable @inline(__always)
    public static func decode(_ raw: UInt64, level: Int, addressMask: UInt64) -> DecodedPTE {
        FirstStageFormat.decode(raw, level: level, addressMask: addressMask)
    }
}
