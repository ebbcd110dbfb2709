import Platform
import Kernel

/// The memory of the process that uses an iommufd context, as the kernel reaches it
/// (get_user_pages, copy_from_user): pin page ranges to the frames behind them and copy
/// bytes in and out, with EFAULT for what is not there. In simulation it is a simulated
/// `Process` (guest RAM a VMM maps is memory devices really DMA to); the C ABI backs it with
/// the real process. Frames are page identities: `PhysicalMemory` addresses in simulation.
public protocol UserMemory: AnyObject {
    /// Pins up to `frames.count` pages from the page-aligned `address` (faulting them in) and
    /// returns how many were pinned before the first that cannot be (not mapped, or not
    /// writable when `write`).
    func pinPages(at address: UInt64, write: Bool, into frames: UnsafeMutableBufferPointer<UInt64>) -> Int
    /// Drops one pin of each frame.
    func unpinPages(_ frames: UnsafeBufferPointer<UInt64>)
    /// `copy_from_user`: false on EFAULT.
    func copyIn(from address: UInt64, into bytes: UnsafeMutableRawBufferPointer) -> Bool
    /// `copy_to_user`: false on EFAULT.
    func copyOut(to address: UInt64, from bytes: UnsafeRawBufferPointer) -> Bool
    /// Reads or writes bytes of a pinned frame (an access object's `rw` through the IOAS).
    func readFrame(_ frame: UInt64, offset: Int, into bytes: UnsafeMutableRawBufferPointer) -> Bool
    func writeFrame(_ frame: UInt64, offset: Int, from bytes: UnsafeRawBufferPointer) -> Bool
    /// The page at the page-aligned `address` as `get_user_pages` finds it, keeping no pin
    /// (the selftest's checks): nil when nothing is mapped there (EFAULT).
    func inspectPage(at address: UInt64) -> UserPage?
}

/// What `UserMemory.inspectPage` finds: the frame standing for the page (nil when none
/// does, e.g. a page never pinned by the C ABI), how many long-term pins it has (Linux: the
/// page providers holding it), and whether it belongs to a huge (compound) page.
public struct UserPage: Equatable, Sendable {
    public var frame: UInt64?
    public var pins: Int
    public var huge: Bool
    public init(frame: UInt64?, pins: Int, huge: Bool) { self.frame = frame; self.pins = pins; self.huge = huge }
}

/// A file whose pages can be pinned (`IOMMU_IOAS_MAP_FILE`: a memfd). Pages are identified
/// by the file and offset, so every mapping of it shares them.
public protocol PinnableFile: AnyObject {
    var length: UInt64 { get }
    /// Pins up to `frames.count` pages from the page-aligned `offset`; returns how many.
    func pinPages(at offset: UInt64, write: Bool, into frames: UnsafeMutableBufferPointer<UInt64>) -> Int
    func unpinPages(_ frames: UnsafeBufferPointer<UInt64>)
}

extension Process: UserMemory {
    public func inspectPage(at address: UInt64) -> UserPage? {
        guard let vma = vma(containing: address) else { return nil }
        if let base = vma.physicalBase { return UserPage(frame: base + (address - vma.start), pins: 0, huge: true) }
        guard fault(at: address, access: .read), let f = residentPages[address & ~0xFFF] else { return nil }
        return UserPage(frame: f, pins: Int(pinCount(of: f)), huge: false)
    }
}

/// A simulated memfd (`memfd_create`): `length` bytes of pages allocated on first pin and
/// kept until the file is closed and no pin remains.
public final class SimulatedMemFD: PinnableFile {
    public let length: UInt64
    let frames: FrameAllocator
    private var pages: [UInt64]
    private var pins: [UInt32]
    private var indexOf: [UInt64: Int] = [:]
    public private(set) var isClosed = false

    public init(length: UInt64, frames: FrameAllocator) {
        self.length = length
        self.frames = frames
        let n = Int((length + 0xFFF) >> 12)
        pages = [UInt64](repeating: 0, count: n)
        pins = [UInt32](repeating: 0, count: n)
    }

    public func pinPages(at offset: UInt64, write: Bool, into out: UnsafeMutableBufferPointer<UInt64>) -> Int {
        guard !isClosed, offset & 0xFFF == 0, offset < length else { return 0 }
        let first = Int(offset >> 12)
        var done = 0
        while done < out.count, first + done < pages.count {
            let i = first + done
            if pages[i] == 0 {
                guard let f = try? frames.allocate(.dmaBuffer) else { break }
                pages[i] = f
                indexOf[f] = i
            }
            pins[i] += 1
            out[done] = pages[i]
            done += 1
        }
        return done
    }

    public func unpinPages(_ frames: UnsafeBufferPointer<UInt64>) {
        for f in frames {
            guard let i = indexOf[f], pins[i] > 0 else { continue }
            pins[i] -= 1
            if isClosed && pins[i] == 0 { try? self.frames.free(f); pages[i] = 0; indexOf[f] = nil }
        }
    }

    /// Pages still pinned.
    public var pinnedPages: Int { pins.reduce(0) { $0 + Int($1) } }

    /// Closes the file: pages no pin holds go now, the rest at their last unpin.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        for i in pages.indices where pages[i] != 0 && pins[i] == 0 {
            try? frames.free(pages[i])
            indexOf[pages[i]] = nil
            pages[i] = 0
        }
    }
}
