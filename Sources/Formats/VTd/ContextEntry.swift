/// VT-d scalable-mode context entry, 256 bits (VT-d spec §9.4).
///
/// A scalable-mode context table holds 128 of these (32 bytes each), indexed by the low 7
/// bits of devfn.
/// - `P` bit 0, `FPD` bit 1 (fault processing disable), `DTE` bit 2 (device-TLB enable),
///   `PASIDE` bit 3 (requests with PASID allowed), `PRE` bit 4 (page requests allowed),
///   bits 8:5 reserved, `PDTS` bits 11:9 (PASID directory has 2^(PDTS+7) entries),
///   `PASIDDIRPTR` bits 63:12.
/// - `RID_PASID` bits 83:64 (PASID used for requests without PASID), `RID_PRIV` bit 84.
/// - Bits 127:85 and 255:128 reserved.
public struct ScalableContextEntry: Equatable, Sendable {
    public var val: (UInt64, UInt64, UInt64, UInt64)

    public static let size: UInt64 = 32

    public init(val0: UInt64 = 0, val1: UInt64 = 0, val2: UInt64 = 0, val3: UInt64 = 0) {
        val = (val0, val1, val2, val3)
    }

    public init(present: Bool = true, fpd: Bool = false, deviceTLB: Bool = false, pasidEnable: Bool = true,
                pageRequest: Bool = false, pdts: UInt8, pasidDirectory: UInt64, ridPASID: UInt32 = 0, ridPriv: Bool = false) {
        var v0 = pasidDirectory & ~0xFFF
        if present { v0 |= 1 }
        if fpd { v0 |= 1 << 1 }
        if deviceTLB { v0 |= 1 << 2 }
        if pasidEnable { v0 |= 1 << 3 }
        if pageRequest { v0 |= 1 << 4 }
        v0 |= UInt64(pdts & 7) << 9
        var v1 = UInt64(ridPASID & 0xFFFFF)
        if ridPriv { v1 |= 1 << 20 }
        val = (v0, v1, 0, 0)
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.val.0 == b.val.0 && a.val.1 == b.val.1 && a.val.2 == b.val.2 && a.val.3 == b.val.3
    }

    public var present: Bool { val.0 & 1 != 0 }
    public var faultProcessingDisable: Bool { val.0 & 2 != 0 }
    public var deviceTLBEnable: Bool { val.0 & 4 != 0 }
    public var pasidEnable: Bool { val.0 & 8 != 0 }
    public var pageRequestEnable: Bool { val.0 & 16 != 0 }
    public var pdts: UInt8 { UInt8((val.0 >> 9) & 7) }
    /// Entries in the PASID directory: 2^(PDTS+7).
    public var pasidDirectoryEntries: UInt32 { 1 << (UInt32(pdts) + 7) }
    /// PASIDs covered by the directory (64 per directory entry), capped at 2^20.
    public var pasidLimit: UInt32 { min(pasidDirectoryEntries * 64, 1 << 20) }
    public var pasidDirectory: UInt64 { val.0 & ~0xFFF }
    public var ridPASID: UInt32 { UInt32(val.1 & 0xFFFFF) }
    public var ridPriv: Bool { val.1 & (1 << 20) != 0 }

    public func reservedBitsSet(addressMask: UInt64) -> Bool {
        let r0: UInt64 = 0x1E0 | (0xFFFF_FFFF_FFFF_F000 & ~addressMask)
        let r1: UInt64 = 0xFFFF_FFFF_FFE0_0000
        return val.0 & r0 != 0 || val.1 & r1 != 0 || val.2 != 0 || val.3 != 0
    }
}
