/// VT-d second-stage paging entries (VT-d spec §9.8, "Second-Stage Paging Entries").
///
/// Bits: R (0), W (1), X (2, honoured when SLEE), EMT (5:3), IPAT (6), PS (7, at the 2 MiB
/// and 1 GiB levels), A (8), D (9), SNP (11, reserved in scalable mode: QEMU treats it so),
/// ADDR (51:12). An entry with R = W = 0 is not present. Non-leaf entries are written with
/// R and W set (Linux `DMA_PTE_READ | DMA_PTE_WRITE`); rights accumulate along the walk.
public enum SecondStageFormat: PageTableFormat {
    public static let name = "vtd-second-stage"
    @inlinable public static var r: UInt64 { 1 << 0 }
    @inlinable public static var w: UInt64 { 1 << 1 }
    @inlinable public static var x: UInt64 { 1 << 2 }
    @inlinable public static var ps: UInt64 { 1 << 7 }
    @inlinable public static var accessedBit: UInt64 { 1 << 8 }
    @inlinable public static var dirtyBit: UInt64 { 1 << 9 }
    @inlinable public static var snp: UInt64 { 1 << 11 }

    @inlinable
    public static func leaf(address: UInt64, permissions: PagePermissions, level: Int) -> UInt64 {
        var v = address & 0x000F_FFFF_FFFF_F000
        if permissions.contains(.read) { v |= r }
        if permissions.contains(.write) { v |= w }
        if permissions.contains(.execute) { v |= x }
        if level > 1 { v |= ps }
        return v
    }

    @inlinable
    public static func table(address: UInt64) -> UInt64 { (address & 0x000F_FFFF_FFFF_F000) | r | w }

    @inlinable @inline(__always)
    public static func decode(_ raw: UInt64, level: Int, addressMask: UInt64) -> DecodedPTE {
        let present = raw & (r | w) != 0
        let isLeaf = level == 1 || (level <= 3 && raw & ps != 0)
        // Address bits above the host address width, SNP, and PS where it cannot be set.
        var reservedMask = (0x000F_FFFF_FFFF_F000 & ~addressMask) | snp
        if level >= 4 { reservedMask |= ps }
        if isLeaf && level > 1 {
            // Superpage: the address bits below the page size must be zero.
            reservedMask |= (PageTableGeometry.span(level: level) - 1) & ~0xFFF
        }
        var perms: PagePermissions = [.user]
        if raw & r != 0 { perms.insert(.read) }
        if raw & w != 0 { perms.insert(.write) }
        if raw & x != 0 { perms.insert(.execute) }
        return DecodedPTE(present: present, leaf: isLeaf, reserved: raw & reservedMask != 0,
                          address: raw & 0x000F_FFFF_FFFF_F000, permissions: perms)
    }
}
