#if canImport(Glibc)
import Glibc
#endif
import Platform
import Kernel
import IOMMUFD
import CPreload
import CIOMMUSupport

/// The memory of the real process the preload library runs in, as the kernel reaches it:
/// `copy_from_user` and `copy_to_user` go through `process_vm_readv`/`process_vm_writev` on
/// the process itself (in the C shim), so a bad pointer (unmapped, or not writable for a copy out) is an
/// EFAULT answer and never a fault in the shim. Partial copies count as failures, as the
/// kernel's helpers report them.
final class HostMemory: UserMemory {
    let physical: PhysicalMemory
    let frames: FrameAllocator

    init(physical: PhysicalMemory, frames: FrameAllocator) { self.physical = physical; self.frames = frames }

    func copyIn(from address: UInt64, into bytes: UnsafeMutableRawBufferPointer) -> Bool {
        guard bytes.count > 0 else { return true }
        guard let base = bytes.baseAddress, address != 0, address &+ UInt64(bytes.count) >= address else { return false }
        if directlyAccessible(address, bytes.count, write: false), let source = UnsafeRawPointer(bitPattern: UInt(address)) {
            base.copyMemory(from: source, byteCount: bytes.count)
            return true
        }
        return swiftiommu_copy_from_user(base, address, bytes.count) != 0
    }

    func copyOut(to address: UInt64, from bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count > 0 else { return true }
        guard let base = bytes.baseAddress, address != 0, address &+ UInt64(bytes.count) >= address else { return false }
        if directlyAccessible(address, bytes.count, write: true), let target = UnsafeMutableRawPointer(bitPattern: UInt(address)) {
            target.copyMemory(from: base, byteCount: bytes.count)
            return true
        }
        return swiftiommu_copy_to_user(address, base, bytes.count) != 0
    }

    /// Whether [address, address + count) lies in anonymous memory mapped with the rights
    /// asked (per the cached /proc/self/maps), so a plain copy cannot fault: such memory
    /// cannot be truncated under us (no SIGBUS), and the shim holds back every libc
    /// munmap/mremap/mprotect/mmap(MAP_FIXED) of another thread until this call is done (they
    /// take the runtime's lock first). Anything else takes the system-call copy, which
    /// reports a bad byte instead of faulting.
    private func directlyAccessible(_ address: UInt64, _ count: Int, write: Bool) -> Bool {
        refreshMaps()
        var at = address
        let end = address &+ UInt64(count)
        while at < end {
            guard let i = spanIndex(containing: at) else { return false }
            let m = spans[i]
            guard m.readable, !write || m.writable, m.plain else { return false }
            at = m.end
        }
        return true
    }

    // MARK: Pins (get_user_pages with FOLL_LONGTERM)

    /// What a frame stands for: a private page of the process moved into the frame (the
    /// process's page at `address` maps the frame; nil once the process unmapped or moved it
    /// while pinned), or a page of a shared file the frame aliases (identified by device,
    /// inode and offset, so every mapping of it pins the same frame).
    enum PinnedPage {
        case moved(address: UInt64?, prot: Int32)
        case aliased(FileKey)
    }
    struct FileKey: Hashable { var device: String; var inode: UInt64; var offset: UInt64 }

    /// Frames standing for the process's pages, with their pin counts. A moved page whose
    /// last pin went stays moved ("parked", 0 pins): the next pin of its address takes it
    /// again without asking the host; the shim tells us (`rangeChanging`) before the process
    /// unmaps, moves, reprotects or advises it, and then it goes back.
    private var pinned: [UInt64: (page: PinnedPage, pins: Int)] = [:]
    private var byAddress: [UInt64: UInt64] = [:]
    private var byFile: [FileKey: UInt64] = [:]
    /// The name the physical memory's file shows in /proc/self/maps (CIOMMUSupport's memfd).
    private static let physicalName = "/memfd:swiftiommu-physical"
    /// /proc/self/maps as last parsed, and the shim's mapping generation it was read at;
    /// `spans` the same ranges reduced to what the copy path asks (no strings: no reference
    /// counting on that path), and the span the last copy used.
    private var mapsCache: (generation: UInt64, mappings: [HostMapping]) = (0, [])
    private struct Span { var start: UInt64; var end: UInt64; var readable: Bool; var writable: Bool; var plain: Bool }
    private var spans: [Span] = []
    private var lastSpan = 0

    private func refreshMaps() {
        let g = swiftiommu_shim_maps_generation()
        guard mapsCache.generation != g || mapsCache.mappings.isEmpty else { return }
        let all = HostMapping.all()
        mapsCache = (g, all)
        spans = all.map { m in
            Span(start: m.start, end: m.end, readable: m.readable, writable: m.writable,
                 plain: m.path.isEmpty || m.path.hasPrefix("[heap]") || m.path.hasPrefix("[stack") || m.path.hasPrefix("[anon")
                    || m.path.hasPrefix(Self.physicalName))
        }
        lastSpan = 0
    }

    private func spanIndex(containing va: UInt64) -> Int? {
        if lastSpan < spans.count, spans[lastSpan].start <= va, va < spans[lastSpan].end { return lastSpan }
        var lo = 0, hi = spans.count
        while lo < hi { let m = (lo + hi) >> 1; if spans[m].end <= va { lo = m + 1 } else { hi = m } }
        guard lo < spans.count, spans[lo].start <= va else { return nil }
        lastSpan = lo
        return lo
    }

    private func mapping(containing va: UInt64) -> HostMapping? {
        refreshMaps()
        guard let i = spanIndex(containing: va) else { return nil }
        return mapsCache.mappings[i]
    }

    /// Pins pages from `address`: each page's frame, made the process's page on first pin.
    /// A private page (anonymous, or a private file mapping) is moved into a fresh frame and
    /// mapped back at its address shared with the frame (contents kept; identified by its
    /// virtual address); a shared file page gets a frame that aliases it. Stops at a page that
    /// is not mapped, not readable, or not writable when `write`.
    func pinPages(at address: UInt64, write: Bool, into frames: UnsafeMutableBufferPointer<UInt64>) -> Int {
        guard physical.sharedFile >= 0 else { return 0 }
        var done = 0
        while done < frames.count {
            let va = address &+ UInt64(done) << 12
            guard let f = pinOne(va, write: write) else { break }
            frames[done] = f
            done += 1
        }
        return done
    }

    private func pinOne(_ va: UInt64, write: Bool) -> UInt64? {
        if let f = byAddress[va], let p = pinned[f], case .moved(_, let prot) = p.page {
            // Moved before, and the process has not touched the mapping since (the shim says).
            guard !write || prot & PROT_WRITE != 0 else { return nil }
            pinned[f] = (p.page, p.pins + 1)
            return f
        }
        guard let m = mapping(containing: va), m.readable, !write || m.writable, !m.path.hasPrefix(Self.physicalName) else { return nil }
        if m.shared {
            let key = FileKey(device: m.device, inode: m.inode, offset: m.offset &+ (va &- m.start))
            if let f = byFile[key], let p = pinned[f] {
                pinned[f] = (p.page, p.pins + 1)
                return f
            }
            let fd = m.openFile()
            guard fd >= 0 else { return nil }
            defer { Glibc.close(fd) }
            guard let f = try? frames.allocate(.dmaBuffer) else { return nil }
            guard physical.aliasFrame(f, file: fd, offset: key.offset) else { try? frames.free(f); return nil }
            byFile[key] = f
            pinned[f] = (.aliased(key), 1)
            return f
        }
        // A private page: its contents go to a fresh frame, which then replaces it.
        guard let f = try? frames.allocate(.dmaBuffer) else { return nil }
        guard copyPageToFrame(va, f), physical.mapFrame(f, at: va, writable: m.writable) else {
            try? frames.free(f)
            return nil
        }
        let prot = (m.readable ? PROT_READ : 0) | (m.writable ? PROT_WRITE : 0) | (m.executable ? PROT_EXEC : 0)
        if m.executable { mprotect(UnsafeMutableRawPointer(bitPattern: UInt(va)), 4096, prot) }
        byAddress[va] = f
        pinned[f] = (.moved(address: va, prot: Int32(prot)), 1)
        return f
    }

    /// Pins the page at `offset` of the file open as `fd` (IOAS_MAP_FILE): the frame that
    /// aliases it, shared with every mapping of the same page (same device, inode, offset).
    /// Nil beyond the file's end (a device would fault on it) or when it cannot be mapped.
    func pinFilePage(fd: Int32, device: String, inode: UInt64, size: UInt64, offset: UInt64) -> UInt64? {
        guard physical.sharedFile >= 0, offset < size else { return nil }
        let key = FileKey(device: device, inode: inode, offset: offset)
        if let f = byFile[key], let p = pinned[f] {
            pinned[f] = (p.page, p.pins + 1)
            return f
        }
        guard let f = try? frames.allocate(.dmaBuffer) else { return nil }
        guard physical.aliasFrame(f, file: fd, offset: offset) else { try? frames.free(f); return nil }
        byFile[key] = f
        pinned[f] = (.aliased(key), 1)
        return f
    }

    /// Drops a pin of each frame. A moved page whose last pin goes stays parked (see
    /// `pinned`); one the process no longer maps at its address goes back to wherever the
    /// process maps the frame now (found in /proc/self/maps) and its frame is freed; an
    /// aliased frame gets its own storage back and is freed.
    func unpinPages(_ list: UnsafeBufferPointer<UInt64>) {
        for f in list {
            guard let p = pinned[f] else { continue }
            if p.pins > 1 { pinned[f] = (p.page, p.pins - 1); continue }
            switch p.page {
            case .moved(let va?, _):
                _ = va
                pinned[f] = (p.page, 0) // parked
            case .moved(nil, let prot):
                pinned[f] = nil
                releaseDetached(f, prot: prot)
            case .aliased(let key):
                pinned[f] = nil
                byFile[key] = nil
                physical.restoreFrame(f)
                try? frames.free(f)
            }
        }
    }

    /// A moved page whose address the process gave up while it was pinned: wherever the
    /// process still maps the frame (an mremap moved it) gets a private copy; then it is freed.
    private func releaseDetached(_ f: UInt64, prot: Int32) {
        let page = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        if readFrame(f, offset: 0, into: page) {
            for m in HostMapping.all() where m.path.hasPrefix(Self.physicalName) && m.offset <= f && f < m.offset &+ (m.end &- m.start) {
                if let target = UnsafeMutableRawPointer(bitPattern: UInt(m.start &+ (f &- m.offset))) {
                    _ = ciommu_replace_private_page(target, page.baseAddress, prot)
                }
            }
        }
        try? frames.free(f)
    }

    /// The process is about to change the mappings of [address, address + length) (`kind`:
    /// 0 unmap or replace, 1 move, 2 reprotect or advise). Parked pages there go back to
    /// being private pages first (so a move or reprotect acts on the process's own memory;
    /// an unmap then drops them) and their frames are freed; pinned pages there lose their
    /// address (a device still uses the frame; their last unpin finds where the process maps
    /// it, if anywhere).
    func rangeChanging(_ address: UInt64, _ length: UInt64, kind: Int32) {
        guard !byAddress.isEmpty else { return }
        let lo = address & ~0xFFF, hi = address &+ length
        guard hi > lo else { return }
        let page = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        for (va, f) in byAddress where va >= lo && va < hi {
            guard let p = pinned[f], case .moved(_, let prot) = p.page else { continue }
            byAddress[va] = nil
            if p.pins > 0 {
                pinned[f] = (.moved(address: nil, prot: prot), p.pins)
                continue
            }
            pinned[f] = nil
            if kind != 0, let target = UnsafeMutableRawPointer(bitPattern: UInt(va)), readFrame(f, offset: 0, into: page) {
                _ = ciommu_replace_private_page(target, page.baseAddress, prot)
            }
            try? frames.free(f)
        }
    }

    /// In a child after fork: the pages moved into frames are shared with the parent's (and
    /// its devices'); the child gets private copies of them instead, as fork gives a child
    /// copies of its parent's pinned private pages.
    func privatizeMovedPages() {
        let page = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        for (va, _) in byAddress {
            guard let f = byAddress[va], let p = pinned[f], case .moved(_, let prot) = p.page,
                  let source = UnsafeRawPointer(bitPattern: UInt(va)), let target = UnsafeMutableRawPointer(bitPattern: UInt(va)) else { continue }
            page.copyMemory(from: UnsafeRawBufferPointer(start: source, count: 4096))
            _ = ciommu_replace_private_page(target, page.baseAddress, prot)
        }
    }

    /// Copies the process's page at `va` into frame `f`.
    private func copyPageToFrame(_ va: UInt64, _ f: UInt64) -> Bool {
        let page = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        return copyIn(from: va, into: page) && writeFrame(f, offset: 0, from: UnsafeRawBufferPointer(page))
    }

    /// Pages pinned now (parked pages, which only stand for the process's memory, excluded).
    var pinnedPages: Int { pinned.values.reduce(0) { $0 + ($1.pins > 0 ? 1 : 0) } }
    /// Frames standing for the process's pages (pinned or parked).
    var framesStandingIn: Int { pinned.count }

    func readFrame(_ frame: UInt64, offset: Int, into bytes: UnsafeMutableRawBufferPointer) -> Bool {
        do { try physical.read(frame + UInt64(offset), into: bytes) } catch { return false }
        return true
    }

    func writeFrame(_ frame: UInt64, offset: Int, from bytes: UnsafeRawBufferPointer) -> Bool {
        do { try physical.write(frame + UInt64(offset), from: bytes) } catch { return false }
        return true
    }
}
