import Platform

/// Why a walk stopped.
public enum WalkFault: Error, Equatable, Sendable {
    /// A paging entry could not be fetched (out of memory range or unbacked frame).
    case accessError(level: Int, address: UInt64)
    /// The entry at `level` is not present.
    case notPresent(level: Int)
    /// The entry at `level` has reserved bits set (or a superpage where none is supported).
    case reserved(level: Int)
}

/// The outcome of a successful walk.
public struct WalkResult: Equatable, Sendable {
    /// Output address of the page (aligned to its size).
    public var pageBase: UInt64
    /// log2 of the page size: 12, 21 or 30.
    public var pageShift: UInt64
    /// Rights accumulated over every level.
    public var permissions: PagePermissions
    /// Level of the leaf (1, 2 or 3).
    public var level: Int
    /// Physical address of the leaf entry (for accessed/dirty updates).
    public var leafEntryAddress: UInt64

    @inlinable
    public init(pageBase: UInt64, pageShift: UInt64, permissions: PagePermissions, level: Int, leafEntryAddress: UInt64) {
        self.pageBase = pageBase; self.pageShift = pageShift; self.permissions = permissions
        self.level = level; self.leafEntryAddress = leafEntryAddress
    }

    /// The output address for `input`.
    @inlinable
    public func output(for input: UInt64) -> UInt64 { pageBase | (input & ((1 << pageShift) - 1)) }
}

/// Walks a page table in physical memory the way hardware does: every fetch is a device
/// access (an unbacked or out-of-range table is an access error, not a trap).
public enum PageTableWalker {
    /// Walks `levels` levels from the table at `root` for `input`.
    /// - Parameters:
    ///   - addressMask: bits an output address may use (`PageTableGeometry.addressMask`).
    ///   - maxLeafLevel: the largest leaf level supported (2: 2 MiB, 3: 1 GiB); a PS bit
    ///     above it is a reserved-bit fault.
    /// - Complexity: `levels` dependent memory loads.
    @inlinable
    public static func walk<F: PageTableFormat>(
        _ format: F.Type, memory: PhysicalMemory, root: UInt64, levels: Int, input: UInt64,
        addressMask: UInt64, maxLeafLevel: Int = 3
    ) throws(WalkFault) -> WalkResult {
        var table = root
        var level = levels
        var perms = PagePermissions.all
        while true {
            let entryAddress = table &+ PageTableGeometry.index(input, level: level) &* 8
            let raw: UInt64
            do { raw = try memory.deviceLoad(entryAddress, as: UInt64.self) } catch {
                throw .accessError(level: level, address: entryAddress)
            }
            let e = F.decode(raw, level: level, addressMask: addressMask)
            guard e.present else { throw .notPresent(level: level) }
            guard !e.reserved, !(e.leaf && level > maxLeafLevel) else { throw .reserved(level: level) }
            perms.formIntersection(e.permissions)
            if e.leaf {
                let shift = PageTableGeometry.shift(level: level)
                return WalkResult(pageBase: e.address & ~((1 << shift) - 1), pageShift: shift,
                                  permissions: perms, level: level, leafEntryAddress: entryAddress)
            }
            table = e.address
            level -= 1
        }
    }
}
