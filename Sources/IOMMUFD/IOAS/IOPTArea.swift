import Formats

/// An inclusive IOVA range (the kernel's interval-tree nodes: `start`, `last`).
public struct IOVARange: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var start: UInt64
    public var last: UInt64
    public init(start: UInt64, last: UInt64) { self.start = start; self.last = last }
    @inline(__always) func intersects(_ s: UInt64, _ l: UInt64) -> Bool { start <= l && s <= last }
    public var description: String { "[0x\(String(start, radix: 16)), 0x\(String(last, radix: 16))]" }
}

/// One mapping of an IOAS (Linux `struct iopt_area`): IOVAs [iova, iova + length) over
/// bytes [pageOffset, pageOffset + length) of its pages. Made by one MAP, MAP_FILE or one
/// element of a COPY; never split by IOAS_UNMAP.
final class IOPTArea {
    let iova: UInt64
    let length: UInt64
    let pages: IOPTPages
    /// Byte offset of the area's first byte from the start of the pages' first page.
    let pageOffset: UInt64
    let permissions: PagePermissions
    /// The area holds a pin on its pages for the IOAS's domains (there is one or more).
    var pinnedForDomains = false
    /// Access pins on the area (Linux `num_accesses`), and pins of internal accesses that
    /// lock it against unmapping (`num_locks`).
    var accessPins = 0
    var locks = 0
    /// An unmap waits for accesses to let go (Linux `prevent_access`).
    var preventAccess = false

    init(iova: UInt64, length: UInt64, pages: IOPTPages, pageOffset: UInt64, permissions: PagePermissions) {
        self.iova = iova; self.length = length; self.pages = pages; self.pageOffset = pageOffset
        self.permissions = permissions
    }

    @inline(__always) var last: UInt64 { iova + (length - 1) }
    /// Indices of the pages the area covers.
    @inline(__always) var pageRange: Range<Int> { Int(pageOffset >> 12)..<Int((pageOffset + length - 1) >> 12) + 1 }
    /// Byte offset of the area's start inside its first page.
    @inline(__always) var startByte: UInt64 { pageOffset & 0xFFF }
}
