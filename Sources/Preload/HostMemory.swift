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
        return swiftiommu_copy_from_user_fast(base, address, bytes.count) != 0
    }

    func copyOut(to address: UInt64, from bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count > 0 else { return true }
        guard let base = bytes.baseAddress, address != 0, address &+ UInt64(bytes.count) >= address else { return false }
        return swiftiommu_copy_to_user_fast(address, base, bytes.count) != 0
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
    /// For moved pages: the shim's release-event count when the address was last known to
    /// map the frame (nothing that could unmap it has run since while it is unchanged).
    private var verifiedAt: [UInt64: UInt64] = [:]
    private var byAddress: [UInt64: UInt64] = [:]
    /// Emulated huge pages (HostMemory+Huge.swift): the frame each address of a MAP_HUGETLB
    /// mapping maps, the pins of those frames, and frames unmapped while pinned.
    var hugePages: [UInt64: UInt64] = [:]
    var hugePins: [UInt64: Int] = [:]
    var hugeOrphans: Set<UInt64> = []
    private var byFile: [FileKey: UInt64] = [:]
    /// The name the physical memory's file shows in /proc/self/maps (CIOMMUSupport's memfd).
    private static let physicalName = "/memfd:swiftiommu-physical"
    /// /proc/self/maps as last parsed (in address order), and the shim's mapping generation
    /// it was read at.
    private var mapsCache: (generation: UInt64, mappings: [HostMapping]) = (0, [])

    /// The mapping at `va`: from the cached maps, read again when the shim saw a change or
    /// when `va` is not in them (a mapping made since, which needs no notice to be found).
    func mapping(containing va: UInt64) -> HostMapping? {
        func lookup() -> HostMapping? {
            let g = swiftiommu_shim_maps_generation()
            if mapsCache.generation != g || mapsCache.mappings.isEmpty { mapsCache = (g, HostMapping.all()) }
            let list = mapsCache.mappings
            var lo = 0, hi = list.count
            while lo < hi { let m = (lo + hi) >> 1; if list[m].end <= va { lo = m + 1 } else { hi = m } }
            return lo < list.count && list[lo].start <= va ? list[lo] : nil
        }
        if let m = lookup() { return m }
        mapsCache.mappings = []
        return lookup()
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
        if !hugePages.isEmpty, let f = hugePages[va] { return pinHuge(va, f, write: write) }
        if let f = byAddress[va], let p = pinned[f], case .moved(_, let prot) = p.page {
            // Moved before. The shim hears of the program's own mapping changes, not of
            // glibc's (free() of a large block unmaps it inside libc): the page table says
            // whether the address still maps the frame.
            let now = swiftiommu_shim_release_events()
            if verifiedAt[va] == now || stillMapsFrame(va, f) {
                verifiedAt[va] = now
                guard !write || prot & PROT_WRITE != 0 else { return nil }
                pinned[f] = (p.page, p.pins + 1)
                return f
            }
            forget(va, f, prot: prot)
        }
        guard let m = mapping(containing: va), m.readable, !write || m.writable, !m.path.hasPrefix(Self.physicalName) else { return nil }
        if m.shared {
            let key = FileKey(device: m.device, inode: m.inode, offset: m.offset &+ (va &- m.start))
            if let f = byFile[key], let p = pinned[f] {
                pinned[f] = (p.page, p.pins + 1)
                return f
            }
            // The frame becomes a second mapping of the same shared page (no file descriptor
            // or privilege needed). The page must exist in the file: past its end it is EFAULT.
            guard copyIn(from: va, into: UnsafeMutableRawBufferPointer(start: probeByte, count: 1)) else { return nil }
            guard let f = try? frames.allocate(.dmaBuffer, injectable: false) else { return nil }
            guard physical.aliasFrame(f, toSharedPageAt: va) else { try? frames.free(f); return nil }
            byFile[key] = f
            pinned[f] = (.aliased(key), 1)
            return f
        }
        // A private page: its contents go to a fresh frame, which then replaces it.
        guard let f = try? frames.allocate(.dmaBuffer, injectable: false) else { return nil }
        guard copyPageToFrame(va, f), physical.mapFrame(f, at: va, writable: m.writable) else {
            try? frames.free(f)
            return nil
        }
        // Fault the new mapping in now: a present page-table entry is what later pins check
        // (`stillMapsFrame`) to know the address still maps the frame.
        _ = copyIn(from: va, into: UnsafeMutableRawBufferPointer(start: probeByte, count: 1))
        let prot = (m.readable ? PROT_READ : 0) | (m.writable ? PROT_WRITE : 0) | (m.executable ? PROT_EXEC : 0)
        if m.executable { mprotect(UnsafeMutableRawPointer(bitPattern: UInt(va)), 4096, prot) }
        byAddress[va] = f
        verifiedAt[va] = swiftiommu_shim_release_events()
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
        guard let f = try? frames.allocate(.dmaBuffer, injectable: false) else { return nil }
        guard physical.aliasFrame(f, file: fd, offset: offset) else { try? frames.free(f); return nil }
        byFile[key] = f
        pinned[f] = (.aliased(key), 1)
        return f
    }

    /// Where this process maps page `offset` of the shared object (device, inode), if it
    /// does (a forked child's shared page the parent maps too: the same page).
    func addressOfShared(device: String, inode: UInt64, offset: UInt64) -> UInt64? {
        for m in HostMapping.all() where m.shared && m.device == device && m.inode == inode && !m.path.hasPrefix(Self.physicalName) {
            if offset >= m.offset, offset - m.offset < m.end - m.start { return m.start + (offset - m.offset) }
        }
        return nil
    }

    /// The page at `va` for the selftest's checks: the frame pinning made it (its pins), or
    /// no frame when it was never pinned; nil when nothing is mapped there.
    func inspectPage(at va: UInt64) -> UserPage? {
        if let f = hugePages[va] { return UserPage(frame: f, pins: hugePins[f] ?? 0, huge: true) }
        if let f = byAddress[va], let p = pinned[f], case .moved = p.page, stillMapsFrame(va, f) {
            return UserPage(frame: f, pins: p.pins, huge: false)
        }
        guard let m = mapping(containing: va) else { return nil }
        if m.shared, !m.path.hasPrefix(Self.physicalName) {
            let key = FileKey(device: m.device, inode: m.inode, offset: m.offset &+ (va &- m.start))
            if let f = byFile[key], let p = pinned[f] { return UserPage(frame: f, pins: p.pins, huge: false) }
        }
        return UserPage(frame: nil, pins: 0, huge: false)
    }

    /// /proc/self/pagemap, kept open: a page's entry tells whether it is present and shared
    /// (bit 63, bit 61) and, with the right privilege, its page frame number.
    private lazy var pagemap: Int32 = Glibc.open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)

    private func pagemapEntry(_ va: UInt64) -> UInt64? {
        guard pagemap >= 0 else { return nil }
        var e: UInt64 = 0
        let n = withUnsafeMutableBytes(of: &e) { Glibc.pread(pagemap, $0.baseAddress, 8, off_t(Int64(bitPattern: (va >> 12) &* 8))) }
        return n == 8 ? e : nil
    }

    /// Whether the program's page at `va` is still the shared page of frame `f`: present and
    /// shared in the page table, and the same page frame as the frame's when the host tells
    /// page frame numbers (privileged); a page not faulted in since counts (it cannot have
    /// been replaced by a private one without a fault).
    private func stillMapsFrame(_ va: UInt64, _ f: UInt64) -> Bool {
        guard let e = pagemapEntry(va) else { return true }
        let present = e & (1 << 63) != 0, shared = e & (1 << 61) != 0
        if !present { return e & (1 << 62) == 0 ? sharedStillMapped(va) : false }
        guard shared else { return false }
        let pfn = e & ((1 << 55) - 1)
        guard pfn != 0, let frame = pagemapEntry(physical.hostAddress &+ f), frame & (1 << 63) != 0 else { return true }
        return frame & ((1 << 55) - 1) == pfn
    }

    /// A page not in the page table: whether the maps still show the physical memory file there.
    private func sharedStillMapped(_ va: UInt64) -> Bool {
        mapsCache.mappings = []
        guard let m = mapping(containing: va) else { return false }
        return m.path.hasPrefix(Self.physicalName)
    }

    /// `va` no longer maps frame `f` (glibc let it go behind the shim's back): the frame stands
    /// for nothing the program sees; pinned, it stays the device's until its last unpin.
    private func forget(_ va: UInt64, _ f: UInt64, prot: Int32) {
        byAddress[va] = nil
        verifiedAt[va] = nil
        guard let p = pinned[f] else { return }
        if p.pins > 0 { pinned[f] = (.moved(address: nil, prot: prot), p.pins); return }
        pinned[f] = nil
        try? frames.free(f)
    }

    /// Drops a pin of each frame. A moved page whose last pin goes stays parked (see
    /// `pinned`); one the process no longer maps at its address goes back to wherever the
    /// process maps the frame now (found in /proc/self/maps) and its frame is freed; an
    /// aliased frame gets its own storage back and is freed.
    func unpinPages(_ list: UnsafeBufferPointer<UInt64>) {
        for f in list {
            if !hugePins.isEmpty, unpinHuge(f) { continue }
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
            let window = physical.hostAddress..<(physical.hostAddress &+ physical.size)
            for m in HostMapping.all() where m.path.hasPrefix(Self.physicalName) && !window.contains(m.start)
                && m.offset <= f && f < m.offset &+ (m.end &- m.start) {
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
        if !hugePages.isEmpty && kind != 2 { hugeRangeChanging(address, length, moved: kind == 1) }
        guard !byAddress.isEmpty else { return }
        let lo = address & ~0xFFF, hi = address &+ length
        guard hi > lo else { return }
        let page = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        for (va, f) in byAddress where va >= lo && va < hi {
            guard let p = pinned[f], case .moved(_, let prot) = p.page else { continue }
            if p.pins > 0 {
                // Pinned: a reprotect or advice acts on the shared mapping as it would on the
                // page; an unmap or move takes the address away (the device keeps the frame).
                if kind != 2 {
                    byAddress[va] = nil
                    pinned[f] = (.moved(address: nil, prot: prot), p.pins)
                }
                continue
            }
            // Parked: back to a private page first (so the change acts on the program's own
            // memory, and a change that fails leaves it intact), then the frame goes.
            byAddress[va] = nil
            pinned[f] = nil
            if let target = UnsafeMutableRawPointer(bitPattern: UInt(va)), readFrame(f, offset: 0, into: page) {
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
                  let target = UnsafeMutableRawPointer(bitPattern: UInt(va)), copyIn(from: va, into: page) else { continue }
            _ = ciommu_replace_private_page(target, page.baseAddress, prot)
        }
    }

    /// Copies the process's page at `va` into frame `f`.
    private func copyPageToFrame(_ va: UInt64, _ f: UInt64) -> Bool {
        let page = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        return copyIn(from: va, into: page) && writeFrame(f, offset: 0, from: UnsafeRawBufferPointer(page))
    }

    private let probeByte = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 1)

    /// Pages pinned now (parked pages, which only stand for the process's memory, excluded).
    var pinnedPages: Int { pinned.values.reduce(0) { $0 + ($1.pins > 0 ? 1 : 0) } + hugePins.count }
    /// Frames standing for the process's pages (pinned or parked, and huge pages).
    var framesStandingIn: Int { pinned.count + hugePages.count + hugeOrphans.count }

    func readFrame(_ frame: UInt64, offset: Int, into bytes: UnsafeMutableRawBufferPointer) -> Bool {
        physical.readFrame(frame, offset: offset, into: bytes)
    }

    func writeFrame(_ frame: UInt64, offset: Int, from bytes: UnsafeRawBufferPointer) -> Bool {
        physical.writeFrame(frame, offset: offset, from: bytes)
    }
}

extension PhysicalMemory {
    /// Bytes of a frame (an access's read or write through the IOAS): false if out of range.
    func readFrame(_ frame: UInt64, offset: Int, into bytes: UnsafeMutableRawBufferPointer) -> Bool {
        do { try read(frame + UInt64(offset), into: bytes) } catch { return false }
        return true
    }

    func writeFrame(_ frame: UInt64, offset: Int, from bytes: UnsafeRawBufferPointer) -> Bool {
        do { try write(frame + UInt64(offset), from: bytes) } catch { return false }
        return true
    }
}
