/// The kernel's copy of an ioctl argument struct (the `ucmd_buffer` of
/// drivers/iommu/iommufd/main.c): `copy_struct_from_user` has zero-extended a shorter user
/// struct to the kernel's size; handlers read and write fields at their uAPI offsets
/// (little-endian, x86-64 layout), and `respond` marks how much goes back. It lives in a
/// buffer the context owns, so a call allocates nothing.
public struct IoctlArgument {
    @usableFromInline let base: UnsafeMutableRawPointer
    /// `sizeof` of the kernel's struct.
    public let kernelSize: Int
    /// The `size` user space gave.
    public let userSize: Int
    /// Set by `respond`: copy the struct back (min(userSize, kernelSize) bytes).
    public internal(set) var responded = false

    init(base: UnsafeMutableRawPointer, kernelSize: Int, userSize: Int) {
        self.base = base; self.kernelSize = kernelSize; self.userSize = userSize
    }

    @inlinable public func u8(_ offset: Int) -> UInt8 { base.load(fromByteOffset: offset, as: UInt8.self) }
    @inlinable public func u16(_ offset: Int) -> UInt16 { UInt16(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt16.self)) }
    @inlinable public func u32(_ offset: Int) -> UInt32 { UInt32(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    @inlinable public func s32(_ offset: Int) -> Int32 { Int32(bitPattern: u32(offset)) }
    @inlinable public func u64(_ offset: Int) -> UInt64 { UInt64(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }

    @inlinable public func set8(_ offset: Int, _ v: UInt8) { base.storeBytes(of: v, toByteOffset: offset, as: UInt8.self) }
    @inlinable public func set32(_ offset: Int, _ v: UInt32) { base.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt32.self) }
    @inlinable public func set64(_ offset: Int, _ v: UInt64) { base.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt64.self) }

    /// Copies the struct back to user space when the call returns (Linux
    /// `iommufd_ucmd_respond`), even if the call then fails (IOVA_RANGES' EMSGSIZE).
    public mutating func respond() { responded = true }
}

/// A little-endian byte builder and reader for argument structs and records (tests,
/// scenarios and the VMM role build ioctl arguments with it; the C ABI passes raw bytes).
public struct StructBytes: Equatable, Sendable {
    public var bytes: [UInt8]

    public init(size: Int) {
        bytes = [UInt8](repeating: 0, count: size)
        if size >= 4 { set32(0, UInt32(size)) }
    }

    public init(bytes: [UInt8]) { self.bytes = bytes }

    public mutating func set8(_ o: Int, _ v: UInt8) { bytes[o] = v }
    public mutating func set16(_ o: Int, _ v: UInt16) { for i in 0..<2 { bytes[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt16(i))) } }
    public mutating func set32(_ o: Int, _ v: UInt32) { for i in 0..<4 { bytes[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
    public mutating func set64(_ o: Int, _ v: UInt64) { for i in 0..<8 { bytes[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }

    public func u8(_ o: Int) -> UInt8 { bytes[o] }
    public func u16(_ o: Int) -> UInt16 { (0..<2).reduce(0) { $0 | UInt16(bytes[o + $1]) << (8 * UInt16($1)) } }
    public func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(bytes[o + $1]) << (8 * UInt32($1)) } }
    public func u64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(bytes[o + $1]) << (8 * UInt64($1)) } }
}
