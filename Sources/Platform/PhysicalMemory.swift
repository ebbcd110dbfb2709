#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CIOMMUSupport

/// Why a physical-memory access could not be performed.
///
/// Hardware turns these into architectural faults (for example VT-d fault reason 0x58,
/// "error attempting to access PASID table entry"); they never trap.
public enum MemoryError: Error, Equatable, Sendable {
    /// The access reaches past the end of installed memory.
    case outOfRange(address: UInt64)
    /// A device touched a frame that no one has backed (no RAM behind it).
    case unbacked(address: UInt64)
    /// The access is not naturally aligned where alignment is required (atomics).
    case misaligned(address: UInt64)
}

/// Simulated host physical memory: sparse 4 KiB frames, little-endian, byte addressed.
///
/// Storage is one flat, lazily committed host mapping (`MAP_NORESERVE`), so a physical
/// address is a fixed offset from `base` and the hot path is a bounds check plus a load.
/// Sparseness is tracked per 4 KiB frame by a bitmap of *backed* frames:
/// - CPU (software) stores back a frame on first touch; CPU loads of an unbacked frame read
///   zero, as fresh memory does.
/// - Device (hardware) accesses to an unbacked frame or beyond the end are errors, which
///   the caller reports as a fault. Nothing reachable from table contents traps.
///
/// Frames given back with `discard(frame:)` are zeroed and unbacked, so a device that keeps
/// using a freed page-table page sees an access error instead of silently reading reused RAM.
public final class PhysicalMemory: @unchecked Sendable {
    @inlinable public static var frameShift: UInt64 { 12 }
    @inlinable public static var frameSize: UInt64 { 4096 }

    /// Installed bytes; valid physical addresses are `0..<size`.
    public let size: UInt64
    /// Installed 4 KiB frames.
    public let frameCount: UInt64

    @usableFromInline let base: UnsafeMutableRawPointer
    @usableFromInline let backedBits: UnsafeMutablePointer<UInt64>
    @usableFromInline let bitmapWords: Int

    /// Largest supported installed size (2^40 bytes = 1 TiB).
    public static let maximumSize: UInt64 = 1 << 40

    /// The memory file behind shared memory (`shared: true`), -1 otherwise.
    public let sharedFile: Int32

    /// Creates memory of `size` bytes (a non-zero multiple of 4 KiB, at most 1 TiB). With
    /// `shared`, the storage is a memory file mapped shared, so a frame can also be mapped
    /// into a real process's address space, or stand for a page of a file the process maps
    /// (`mapFrame`, `aliasFrame`): the C ABI's pinned pages.
    public init(size: UInt64, shared: Bool = false) throws(MemoryError) {
        guard size > 0, size % Self.frameSize == 0, size <= Self.maximumSize else {
            throw .outOfRange(address: size)
        }
        var file: Int32 = -1
        if shared {
            file = ciommu_memfd(size)
            guard file >= 0 else { throw .outOfRange(address: size) }
        }
        let mapped = shared
            ? mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, file, 0)
            : mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let mapped, mapped != MAP_FAILED else {
            if file >= 0 { close(file) }
            throw .outOfRange(address: size)
        }
        self.sharedFile = file
        self.base = mapped
        self.size = size
        self.frameCount = size >> Self.frameShift
        self.bitmapWords = Int((frameCount + 63) / 64)
        self.backedBits = .allocate(capacity: bitmapWords)
        self.backedBits.initialize(repeating: 0, count: bitmapWords)
    }

    deinit {
        munmap(base, Int(size))
        if sharedFile >= 0 { close(sharedFile) }
        backedBits.deallocate()
    }

    // MARK: Sharing with a real process (shared memory only)

    /// Where the memory sits in this process's address space (its window).
    public var hostAddress: UInt64 { UInt64(UInt(bitPattern: base)) }

    /// Maps the frame at physical address `frame` (4 KiB aligned) at the page-aligned
    /// `address` of this process (replacing what was there), so the process's page there and
    /// the frame are one page. False when the memory is not shared or the host refuses.
    /// Maps `count` consecutive frames from `first` shared at `address` (one mapping).
    public func mapFrames(_ first: UInt64, count: Int, at address: UnsafeMutableRawPointer, writable: Bool) -> Bool {
        guard sharedFile >= 0, count > 0, first & (Self.frameSize - 1) == 0, first + UInt64(count) * Self.frameSize <= size else { return false }
        return ciommu_map_shared_fixed(address, UInt64(count) * Self.frameSize, sharedFile, first, writable ? 1 : 0) == 0
    }

    public func mapFrame(_ frame: UInt64, at address: UInt64, writable: Bool) -> Bool {
        guard sharedFile >= 0, frame & (Self.frameSize - 1) == 0, frame < size,
              let p = UnsafeMutableRawPointer(bitPattern: UInt(address)) else { return false }
        return ciommu_map_shared_fixed(p, Self.frameSize, sharedFile, frame, writable ? 1 : 0) == 0
    }

    /// Makes the frame at physical address `frame` stand for the page at `offset` of file
    /// `fd` (mapped shared over the frame), so accesses to the frame are accesses to that
    /// file page; `restoreFrame` undoes it.
    public func aliasFrame(_ frame: UInt64, file fd: Int32, offset: UInt64) -> Bool {
        guard sharedFile >= 0, frame & (Self.frameSize - 1) == 0, frame < size else { return false }
        guard ciommu_map_shared_fixed(base + Int(frame), Self.frameSize, fd, offset, 1) == 0 else { return false }
        markBacked(frame >> Self.frameShift)
        return true
    }

    /// Makes the frame at physical address `frame` the same page as the shared page the
    /// process maps at `address` (a second mapping of it over the frame); `restoreFrame` undoes.
    public func aliasFrame(_ frame: UInt64, toSharedPageAt address: UInt64) -> Bool {
        guard sharedFile >= 0, frame & (Self.frameSize - 1) == 0, frame < size,
              let source = UnsafeMutableRawPointer(bitPattern: UInt(address)) else { return false }
        guard ciommu_duplicate_shared_page(source, base + Int(frame)) == 0 else { return false }
        markBacked(frame >> Self.frameShift)
        return true
    }

    /// Puts the frame's own storage back behind it (after `aliasFrame`).
    public func restoreFrame(_ frame: UInt64) {
        guard sharedFile >= 0, frame & (Self.frameSize - 1) == 0, frame < size else { return }
        _ = ciommu_map_shared_fixed(base + Int(frame), Self.frameSize, sharedFile, frame, 1)
    }

    // MARK: Backing

    /// Whether `frame` (a frame number) has RAM behind it.
    @inlinable @inline(__always)
    public func isBacked(frame: UInt64) -> Bool {
        guard frame < frameCount else { return false }
        return backedBits[Int(frame >> 6)] & (1 << (frame & 63)) != 0
    }

    /// Number of frames currently backed.
    public var backedFrameCount: Int {
        var n = 0
        for i in 0..<bitmapWords { n += backedBits[i].nonzeroBitCount }
        return n
    }

    /// Backs `frame` (idempotent). The frame reads as zero until written.
    public func populate(frame: UInt64) throws(MemoryError) {
        guard frame < frameCount else { throw .outOfRange(address: frame << Self.frameShift) }
        markBacked(frame)
    }

    /// Asks the host to fault in the pages behind `frames` in one call, so the first touches of
    /// fresh guest RAM do not each take a host page fault (about 2 µs apiece in a VM). Contents
    /// are unchanged; out-of-range frames are clipped; a host without MADV_POPULATE_WRITE
    /// (Linux < 5.14) simply faults them in later.
    public func prefault(frames: Range<UInt64>) {
        let lo = min(frames.lowerBound, frameCount), hi = min(frames.upperBound, frameCount)
        guard lo < hi else { return }
        #if os(Linux)
        let madvPopulateWrite: Int32 = 23
        _ = madvise(base + Int(lo << Self.frameShift), Int((hi - lo) << Self.frameShift), madvPopulateWrite)
        #endif
    }

    /// Zeroes and unbacks `frame`.
    public func discard(frame: UInt64) throws(MemoryError) {
        guard frame < frameCount else { throw .outOfRange(address: frame << Self.frameShift) }
        memset(base + Int(frame << Self.frameShift), 0, Int(Self.frameSize))
        let word = Int(frame >> 6), bit: UInt64 = 1 << (frame & 63)
        // Atomic: other frames of the word may be backed concurrently (populate).
        _ = ciommu_fetch_and64(UnsafeMutableRawPointer(backedBits + word), ~bit)
    }

    @usableFromInline
    func markBacked(_ frame: UInt64) {
        let word = Int(frame >> 6), bit: UInt64 = 1 << (frame & 63)
        if backedBits[word] & bit == 0 {
            _ = ciommu_fetch_or64(UnsafeMutableRawPointer(backedBits + word), bit)
        }
    }

    // MARK: Range checks

    /// Throws unless `[pa, pa+width)` lies inside installed memory.
    @inlinable @inline(__always)
    func checkRange(_ pa: UInt64, _ width: UInt64) throws(MemoryError) {
        guard pa < size, size &- pa >= width else { throw .outOfRange(address: pa) }
    }

    /// Throws unless `[pa, pa+width)` is inside memory and every frame it touches is backed.
    @inlinable @inline(__always)
    func checkDevice(_ pa: UInt64, _ width: UInt64) throws(MemoryError) {
        try checkRange(pa, width)
        if pa & (Self.frameSize - 1) <= Self.frameSize - width {
            // Within one frame (every aligned table fetch): a single bitmap test.
            let f = pa >> Self.frameShift
            guard backedBits[Int(f >> 6)] & (1 << (f & 63)) != 0 else { throw .unbacked(address: pa) }
            return
        }
        let first = pa >> Self.frameShift
        let last = (pa &+ width &- 1) >> Self.frameShift
        var f = first
        while f <= last {
            guard backedBits[Int(f >> 6)] & (1 << (f & 63)) != 0 else {
                throw .unbacked(address: f == first ? pa : f << Self.frameShift)
            }
            f &+= 1
        }
    }

    /// Backs every frame of `[pa, pa+width)` (range already checked).
    @inlinable @inline(__always)
    func touch(_ pa: UInt64, _ width: UInt64) {
        var f = pa >> Self.frameShift
        let last = (pa &+ width &- 1) >> Self.frameShift
        while f <= last {
            if backedBits[Int(f >> 6)] & (1 << (f & 63)) == 0 { markBacked(f) }
            f &+= 1
        }
    }

    // MARK: CPU (software) access

    /// Little-endian load by the CPU. Unbacked frames read as zero.
    @inlinable @inline(__always)
    public func load<T: FixedWidthInteger>(_ pa: UInt64, as type: T.Type = T.self) throws(MemoryError) -> T {
        try checkRange(pa, UInt64(MemoryLayout<T>.size))
        return T(littleEndian: base.loadUnaligned(fromByteOffset: Int(pa), as: T.self))
    }

    /// Little-endian store by the CPU; backs the frame on first touch.
    @inlinable @inline(__always)
    public func store<T: FixedWidthInteger>(_ pa: UInt64, _ value: T) throws(MemoryError) {
        let width = UInt64(MemoryLayout<T>.size)
        try checkRange(pa, width)
        touch(pa, width)
        base.storeBytes(of: value.littleEndian, toByteOffset: Int(pa), as: T.self)
    }

    /// Stores four little-endian 64-bit words at `pa` (a 256-bit queue descriptor) with one
    /// range check.
    @inlinable @inline(__always)
    public func store256(_ pa: UInt64, _ w0: UInt64, _ w1: UInt64, _ w2: UInt64, _ w3: UInt64) throws(MemoryError) {
        try checkRange(pa, 32)
        touch(pa, 32)
        let p = base + Int(pa)
        p.storeBytes(of: w0.littleEndian, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: w1.littleEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: w2.littleEndian, toByteOffset: 16, as: UInt64.self)
        p.storeBytes(of: w3.littleEndian, toByteOffset: 24, as: UInt64.self)
    }

    @inlinable @inline(__always) public func load64(_ pa: UInt64) throws(MemoryError) -> UInt64 { try load(pa, as: UInt64.self) }
    @inlinable public func load32(_ pa: UInt64) throws(MemoryError) -> UInt32 { try load(pa, as: UInt32.self) }
    @inlinable public func load16(_ pa: UInt64) throws(MemoryError) -> UInt16 { try load(pa, as: UInt16.self) }
    @inlinable public func load8(_ pa: UInt64) throws(MemoryError) -> UInt8 { try load(pa, as: UInt8.self) }
    @inlinable @inline(__always) public func store64(_ pa: UInt64, _ v: UInt64) throws(MemoryError) { try store(pa, v) }
    @inlinable public func store32(_ pa: UInt64, _ v: UInt32) throws(MemoryError) { try store(pa, v) }
    @inlinable public func store16(_ pa: UInt64, _ v: UInt16) throws(MemoryError) { try store(pa, v) }
    @inlinable public func store8(_ pa: UInt64, _ v: UInt8) throws(MemoryError) { try store(pa, v) }

    /// Atomic 64-bit compare-exchange (8-byte aligned). Returns whether it swapped and the
    /// value found.
    public func compareExchange64(_ pa: UInt64, expected: UInt64, desired: UInt64)
        throws(MemoryError) -> (exchanged: Bool, original: UInt64)
    {
        guard pa & 7 == 0 else { throw .misaligned(address: pa) }
        try checkRange(pa, 8)
        touch(pa, 8)
        var found = expected.littleEndian
        let ok = ciommu_cmpxchg64(base + Int(pa), &found, desired.littleEndian)
        return (ok, UInt64(littleEndian: found))
    }

    /// Stores `desired` at `pa` (8-byte aligned) if the word holds `expected`, atomically
    /// against this CPU only (Linux `cmpxchg64_local`); returns the value found.
    @inlinable @inline(__always)
    public func compareExchange64Local(_ pa: UInt64, expected: UInt64, desired: UInt64) throws(MemoryError) -> UInt64 {
        guard pa & 7 == 0 else { throw .misaligned(address: pa) }
        try checkRange(pa, 8)
        touch(pa, 8)
        var found = expected.littleEndian
        _ = ciommu_cmpxchg64_local(base + Int(pa), &found, desired.littleEndian)
        return UInt64(littleEndian: found)
    }

    /// Atomic 128-bit compare-exchange (16-byte aligned), `(low, high)` quadwords. This is
    /// how software must update entries wider than 64 bits that hardware may fetch at any
    /// time (VT-d IRTEs, AMD DTEs; see docs/architecture.md on PASID-entry updates).
    public func compareExchange128(_ pa: UInt64, expected: (UInt64, UInt64), desired: (UInt64, UInt64))
        throws(MemoryError) -> (exchanged: Bool, original: (UInt64, UInt64))
    {
        guard pa & 15 == 0 else { throw .misaligned(address: pa) }
        try checkRange(pa, 16)
        touch(pa, 16)
        var e: (UInt64, UInt64) = (expected.0.littleEndian, expected.1.littleEndian)
        var d: (UInt64, UInt64) = (desired.0.littleEndian, desired.1.littleEndian)
        let ok = withUnsafeMutablePointer(to: &e) { ep in
            withUnsafeMutablePointer(to: &d) { dp in
                ep.withMemoryRebound(to: UInt64.self, capacity: 2) { e64 in
                    dp.withMemoryRebound(to: UInt64.self, capacity: 2) { d64 in
                        ciommu_cmpxchg128(base + Int(pa), e64, d64)
                    }
                }
            }
        }
        return (ok, (UInt64(littleEndian: e.0), UInt64(littleEndian: e.1)))
    }

    /// Copies `bytes` into memory at `pa` (CPU write; backs frames).
    public func write(_ pa: UInt64, from bytes: UnsafeRawBufferPointer) throws(MemoryError) {
        guard bytes.count > 0, let src = bytes.baseAddress else { return }
        try checkRange(pa, UInt64(bytes.count))
        touch(pa, UInt64(bytes.count))
        (base + Int(pa)).copyMemory(from: src, byteCount: bytes.count)
    }

    /// Copies memory at `pa` into `bytes` (CPU read).
    public func read(_ pa: UInt64, into bytes: UnsafeMutableRawBufferPointer) throws(MemoryError) {
        guard bytes.count > 0, let dst = bytes.baseAddress else { return }
        try checkRange(pa, UInt64(bytes.count))
        dst.copyMemory(from: base + Int(pa), byteCount: bytes.count)
    }

    /// Zeroes `[pa, pa+count)` (CPU; backs frames).
    public func zero(_ pa: UInt64, count: UInt64) throws(MemoryError) {
        guard count > 0 else { return }
        try checkRange(pa, count)
        touch(pa, count)
        memset(base + Int(pa), 0, Int(count))
    }

    // MARK: Device (hardware) access

    /// Little-endian load by hardware (table fetch, DMA). Unbacked or out of range: error.
    @inlinable @inline(__always)
    public func deviceLoad<T: FixedWidthInteger>(_ pa: UInt64, as type: T.Type = T.self) throws(MemoryError) -> T {
        try checkDevice(pa, UInt64(MemoryLayout<T>.size))
        return T(littleEndian: base.loadUnaligned(fromByteOffset: Int(pa), as: T.self))
    }

    /// Loads four little-endian 64-bit words at `pa` by hardware (a 256-bit descriptor fetch)
    /// with one check.
    @inlinable @inline(__always)
    public func deviceLoad256(_ pa: UInt64) throws(MemoryError) -> (UInt64, UInt64, UInt64, UInt64) {
        try checkDevice(pa, 32)
        let p = base + Int(pa)
        return (UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
                UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
                UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt64.self)),
                UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 24, as: UInt64.self)))
    }

    /// Little-endian store by hardware. Unbacked or out of range: error, nothing written.
    @inlinable @inline(__always)
    public func deviceStore<T: FixedWidthInteger>(_ pa: UInt64, _ value: T) throws(MemoryError) {
        try checkDevice(pa, UInt64(MemoryLayout<T>.size))
        base.storeBytes(of: value.littleEndian, toByteOffset: Int(pa), as: T.self)
    }

    /// Atomic OR by hardware (accessed/dirty updates). Returns the previous value.
    @inlinable
    public func deviceFetchOr64(_ pa: UInt64, _ bits: UInt64) throws(MemoryError) -> UInt64 {
        guard pa & 7 == 0 else { throw .misaligned(address: pa) }
        try checkDevice(pa, 8)
        return UInt64(littleEndian: ciommu_fetch_or64(base + Int(pa), bits.littleEndian))
    }

    /// DMA write payload: copies `bytes` to `pa`. All-or-nothing: checked before copying.
    public func deviceWrite(_ pa: UInt64, from bytes: UnsafeRawBufferPointer) throws(MemoryError) {
        guard bytes.count > 0, let src = bytes.baseAddress else { return }
        try checkDevice(pa, UInt64(bytes.count))
        (base + Int(pa)).copyMemory(from: src, byteCount: bytes.count)
    }

    /// DMA read payload: copies from `pa` into `bytes`.
    public func deviceRead(_ pa: UInt64, into bytes: UnsafeMutableRawBufferPointer) throws(MemoryError) {
        guard bytes.count > 0, let dst = bytes.baseAddress else { return }
        try checkDevice(pa, UInt64(bytes.count))
        dst.copyMemory(from: base + Int(pa), byteCount: bytes.count)
    }

    // MARK: Raw views for reference implementations

    /// The host address of physical address 0 (for C reference code in benchmarks only).
    public var unsafeBase: UnsafeMutableRawPointer { base }
    /// The backed-frame bitmap (for C reference code in benchmarks only).
    public var unsafeBackedBitmap: UnsafeMutablePointer<UInt64> { backedBits }
}
