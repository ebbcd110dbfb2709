import Platform
import Formats

/// Long-term pinning and user copies (Linux `pin_user_pages_fast` with FOLL_LONGTERM,
/// `unpin_user_pages`, `copy_from_user`/`copy_to_user`): what a user API needs from a
/// process's memory. A pinned frame stays allocated, and keeps its contents, until its last
/// unpin, even if the range is unmapped meanwhile.
extension Process {
    /// Maps `length` bytes (a multiple of 2 MiB) of physically contiguous memory, 2 MiB
    /// aligned and populated at once (anonymous hugetlb memory, `MAP_HUGETLB | MAP_POPULATE`).
    public func mmapContiguous(length: UInt64, permissions: PagePermissions) throws(IOMMUError) -> UInt64 {
        let huge: UInt64 = 2 << 20
        guard length > 0, length % huge == 0, length <= 1 << 36 else {
            throw .invalidArgument("contiguous memory needs a non-zero multiple of 2 MiB, got \(length)")
        }
        let base: UInt64
        do { base = try core.platform.frames.allocateContiguous(Int(length >> 12), .dmaBuffer, alignment: 512) } catch {
            throw .noMemory("\(length >> 20) MiB of contiguous memory")
        }
        let start: UInt64
        do { start = try mmap(length: length + huge, permissions: permissions) } catch {
            for i in 0..<(length >> 12) { try? core.platform.frames.free(base + (i << 12)) }
            throw error
        }
        // Align the virtual range as the physical one, so huge IOPTEs can cover it.
        let aligned = (start + huge - 1) & ~(huge - 1)
        vmas.removeLast()
        vmas.append(VMA(start: aligned, end: aligned + length, permissions: permissions.intersection([.read, .write, .execute]),
                        physicalBase: base))
        return aligned
    }

    /// Pins up to `frames.count` pages from the page-aligned `address` (faulting them in),
    /// writing their physical addresses to `frames`. Stops at the first page that is not
    /// mapped with the access asked for and returns how many were pinned before it.
    public func pinPages(at address: UInt64, write: Bool, into frames: UnsafeMutableBufferPointer<UInt64>) -> Int {
        guard !isExited, address & 0xFFF == 0 else { return 0 }
        var done = 0
        while done < frames.count {
            let va = address + UInt64(done) << 12
            guard let vma = vma(containing: va), vma.permissions.contains(.read), !write || vma.permissions.contains(.write) else {
                break
            }
            if let base = vma.physicalBase {
                // Contiguous memory: every page is resident; one count for the block per page.
                let n = min(frames.count - done, Int((vma.end - va) >> 12))
                let first = base + (va - vma.start)
                for i in 0..<n { frames[done + i] = first + UInt64(i) << 12 }
                blockPins[base >> 12, default: 0] += n
                done += n
                continue
            }
            let f: UInt64
            if let r = residentPages[va] { f = r } else {
                guard fault(at: va, access: write ? [.read, .write] : .read), let r = residentPages[va] else { break }
                f = r
            }
            frames[done] = f
            pinCounts.increment(f)
            done += 1
        }
        return done
    }

    /// Drops one pin of each frame (Linux `unpin_user_pages`); frames unmapped meanwhile are
    /// freed at their last unpin.
    public func unpinPages(_ frames: UnsafeBufferPointer<UInt64>) {
        var i = 0
        while i < frames.count {
            let f = frames[i]
            if pinCounts[f] > 0 {
                if pinCounts.decrement(f) == 0, !orphanedFrames.isEmpty, orphanedFrames.remove(f) != nil {
                    try? core.platform.frames.free(f)
                }
                i += 1
                continue
            }
            // A block: count the run of frames of the same block at once.
            guard let (base, length) = block(containing: f) else { i += 1; continue }
            var n = 1
            while i + n < frames.count, frames[i + n] == f + UInt64(n) << 12, f + UInt64(n) << 12 < base + length { n += 1 }
            unpinBlock(base >> 12, n)
            i += n
        }
    }

    private func unpinBlock(_ key: UInt64, _ n: Int) {
        guard let c = blockPins[key] else { return }
        if c > n { blockPins[key] = c - n; return }
        blockPins[key] = nil
        if let count = orphanedBlocks.removeValue(forKey: key) {
            for i in 0..<count { try? core.platform.frames.free((key << 12) + (i << 12)) }
        }
    }

    /// The contiguous block (first frame's address, length) holding `frame`: mapped or
    /// orphaned while pinned.
    private func block(containing frame: UInt64) -> (UInt64, UInt64)? {
        for v in vmas { if let b = v.physicalBase, frame >= b, frame < b + (v.end - v.start) { return (b, v.end - v.start) } }
        for (key, count) in orphanedBlocks where frame >= key << 12 && frame < (key + count) << 12 { return (key << 12, count << 12) }
        return nil
    }

    /// Long-term pins of one frame of this process (not of contiguous blocks).
    public func pinCount(of frame: UInt64) -> UInt32 { pinCounts[frame] }

    /// Long-term pins held on this process's memory (pages).
    public var pinnedPages: Int { pinCounts.total + blockPins.values.reduce(0, +) }

    /// Copies from user memory at `address` (Linux `copy_from_user`): false if any byte is
    /// not readable (EFAULT), after copying what came before it.
    public func copyIn(from address: UInt64, into bytes: UnsafeMutableRawBufferPointer) -> Bool {
        forEachChunk(address, bytes.count, write: false) { pa, offset, n in
            (try? core.platform.memory.read(pa, into: UnsafeMutableRawBufferPointer(rebasing: bytes[offset..<offset + n]))) != nil
        }
    }

    /// Copies to user memory at `address` (Linux `copy_to_user`): false if any byte is not
    /// writable (EFAULT).
    public func copyOut(to address: UInt64, from bytes: UnsafeRawBufferPointer) -> Bool {
        forEachChunk(address, bytes.count, write: true) { pa, offset, n in
            (try? core.platform.memory.write(pa, from: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n]))) != nil
        }
    }

    /// Reads bytes of a frame this process has pinned.
    public func readFrame(_ frame: UInt64, offset: Int, into bytes: UnsafeMutableRawBufferPointer) -> Bool {
        (try? core.platform.memory.read(frame + UInt64(offset), into: bytes)) != nil
    }

    /// Writes bytes of a frame this process has pinned.
    public func writeFrame(_ frame: UInt64, offset: Int, from bytes: UnsafeRawBufferPointer) -> Bool {
        (try? core.platform.memory.write(frame + UInt64(offset), from: bytes)) != nil
    }

    private func forEachChunk(_ address: UInt64, _ count: Int, write: Bool, _ body: (UInt64, Int, Int) -> Bool) -> Bool {
        guard count > 0 else { return true }
        guard address < Self.userLimit, UInt64(count) <= Self.userLimit - address else { return false }
        var done = 0
        while done < count {
            let va = address + UInt64(done)
            let n = min(count - done, Int(0x1000 - (va & 0xFFF)))
            guard fault(at: va, access: write ? [.read, .write] : .read), let f = residentPages[va & ~0xFFF] else { return false }
            guard body(f + (va & 0xFFF), done, n) else { return false }
            done += n
        }
        return true
    }
}
