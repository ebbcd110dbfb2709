/// Field access on the little-endian 64-bit words SMMUv3 structures are made of (IHI 0070
/// chapter 5 numbers bits across the whole structure; bit N lives in word N / 64). The
/// equivalent of Linux `FIELD_GET`/`FIELD_PREP` with `GENMASK_ULL(lo + width - 1, lo)`.
@usableFromInline
enum BitField {
    /// The `width`-bit field at bit `lo` of `word`.
    @inlinable @inline(__always)
    static func get(_ word: UInt64, _ lo: UInt64, _ width: UInt64) -> UInt64 {
        (word &>> lo) & mask(width)
    }

    /// `word` with the field at `lo` replaced by the low `width` bits of `value`.
    @inlinable @inline(__always)
    static func set(_ word: UInt64, _ lo: UInt64, _ width: UInt64, _ value: UInt64) -> UInt64 {
        (word & ~(mask(width) &<< lo)) | ((value & mask(width)) &<< lo)
    }

    @inlinable @inline(__always)
    static func mask(_ width: UInt64) -> UInt64 { width >= 64 ? .max : (1 &<< width) &- 1 }

    /// Bits `hi` down to `lo` set (`GENMASK_ULL(hi, lo)`).
    @inlinable @inline(__always)
    static func genmask(_ hi: UInt64, _ lo: UInt64) -> UInt64 { mask(hi - lo + 1) &<< lo }

    @inlinable @inline(__always)
    static func bit(_ word: UInt64, _ n: UInt64) -> Bool { (word &>> n) & 1 != 0 }

    @inlinable @inline(__always)
    static func set(_ word: UInt64, _ n: UInt64, _ on: Bool) -> UInt64 { on ? word | (1 &<< n) : word & ~(1 &<< n) }
}
