/// The bytes of one fuzz input, read front to back as the operations and values a target
/// decodes. Reading past the end gives zeros (libFuzzer shortens inputs; a short input is
/// still a valid, smaller program), so no read can fail or trap.
public struct FuzzInput {
    private let bytes: UnsafeRawBufferPointer
    private var offset = 0

    public init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    /// Bytes not read yet.
    public var remaining: Int { bytes.count - offset }
    public var isEmpty: Bool { offset >= bytes.count }

    public mutating func u8() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    public mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    public mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }
    public mutating func bool() -> Bool { u8() & 1 != 0 }

    /// A value in `0..<bound` (0 when `bound` is 0).
    public mutating func below(_ bound: Int) -> Int {
        guard bound > 1 else { return 0 }
        return Int(bound <= 256 ? UInt32(u8()) : bound <= 65536 ? UInt32(u16()) : u32()) % bound
    }

    /// Up to `count` bytes (fewer at the end of the input).
    public mutating func take(_ count: Int) -> [UInt8] {
        let n = max(0, min(count, remaining))
        defer { offset += n }
        return Array(bytes[offset..<(offset + n)])
    }

    /// The rest of the input.
    public mutating func rest() -> [UInt8] { take(remaining) }

    /// A 64-bit value shaped as garbage in a table tends to be: all random, a small number,
    /// one bit, or an address-like value (aligned, within 1 TiB) with some low flag bits.
    public mutating func word() -> UInt64 {
        switch u8() & 3 {
        case 0: return u64()
        case 1: return UInt64(u16())
        case 2: return 1 << UInt64(u8() & 63)
        default: return (u64() & 0x0000_00FF_FFFF_F000) | UInt64(u16() & 0xFFF)
        }
    }
}
