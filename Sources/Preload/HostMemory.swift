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
        return swiftiommu_copy_from_user(base, address, bytes.count) != 0
    }

    func copyOut(to address: UInt64, from bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count > 0 else { return true }
        guard let base = bytes.baseAddress, address != 0, address &+ UInt64(bytes.count) >= address else { return false }
        return swiftiommu_copy_to_user(address, base, bytes.count) != 0
    }

    // MARK: Pins (get_user_pages with FOLL_LONGTERM)

    /// What a pinned frame stands for: a private page of the process moved into the frame
    /// (the process's page at `address` now maps the frame), or a page of a shared file the
    /// frame aliases (identified by device, inode and offset, so every mapping of it pins
    /// the same frame).
    enum PinnedPage {
        case moved(address: UInt64, prot: Int32)
        case aliased(FileKey)
    }
    struct FileKey: Hashable { var device: String; var inode: UInt64; var offset: UInt64 }

    private var pinned: [UInt64: (page: PinnedPage, pins: Int)] = [:]
    private var byAddress: [UInt64: UInt64] = [:]
    private var byFile: [FileKey: UInt64] = [:]
    /// The name the physical memory's file shows in /proc/self/maps (CIOMMUSupport's memfd).
    private static let physicalName = "/memfd:swiftiommu-physical"

    /// Pins pages from `address`: each page's frame, made the process's page on first pin.
    /// A private page (anonymous, or a private file mapping) is moved into a fresh frame and
    /// mapped back at its address shared with the frame (its contents kept; the page is the
    /// process's by its virtual address); a shared file page gets a frame that aliases it.
    /// Stops at a page that is not mapped, not readable, or not writable when `write`.
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
        guard let m = HostMapping.containing(va), m.readable, !write || m.writable else { return nil }
        if m.path.hasPrefix(Self.physicalName) {
            // A page moved here before: the frame is the mapping's offset.
            let f = m.offset &+ (va &- m.start)
            guard let p = pinned[f] else { return nil }
            pinned[f] = (p.page, p.pins + 1)
            return f
        }
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

    /// Drops a pin of each frame; the last one gives the page back as it was (a moved page
    /// becomes a private page with the frame's contents again, if the process still maps the
    /// frame there; an aliased frame gets its own storage back) and frees the frame.
    func unpinPages(_ list: UnsafeBufferPointer<UInt64>) {
        for f in list {
            guard let p = pinned[f] else { continue }
            if p.pins > 1 { pinned[f] = (p.page, p.pins - 1); continue }
            pinned[f] = nil
            switch p.page {
            case .moved(let va, let prot):
                byAddress[va] = nil
                if let m = HostMapping.containing(va), m.path.hasPrefix(Self.physicalName), m.offset &+ (va &- m.start) == f,
                   let target = UnsafeMutableRawPointer(bitPattern: UInt(va)) {
                    let page = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
                    defer { page.deallocate() }
                    if readFrame(f, offset: 0, into: page) { _ = ciommu_replace_private_page(target, page.baseAddress, prot) }
                }
            case .aliased(let key):
                byFile[key] = nil
                physical.restoreFrame(f)
            }
            try? frames.free(f)
        }
    }

    /// Copies the process's page at `va` into frame `f`.
    private func copyPageToFrame(_ va: UInt64, _ f: UInt64) -> Bool {
        let page = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        return copyIn(from: va, into: page) && writeFrame(f, offset: 0, from: UnsafeRawBufferPointer(page))
    }

    /// In a child after fork: the pages moved into frames are shared with the parent's (and
    /// its devices'); the child gets private copies of them instead, as fork gives a child
    /// copies of its parent's pinned private pages.
    func privatizeMovedPages() {
        let page = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        for (_, p) in pinned {
            guard case .moved(let va, let prot) = p.page, let source = UnsafeRawPointer(bitPattern: UInt(va)),
                  let target = UnsafeMutableRawPointer(bitPattern: UInt(va)) else { continue }
            page.copyMemory(from: UnsafeRawBufferPointer(start: source, count: 4096))
            _ = ciommu_replace_private_page(target, page.baseAddress, prot)
        }
    }

    /// Pages pinned now.
    var pinnedPages: Int { pinned.count }

    func readFrame(_ frame: UInt64, offset: Int, into bytes: UnsafeMutableRawBufferPointer) -> Bool {
        do { try physical.read(frame + UInt64(offset), into: bytes) } catch { return false }
        return true
    }

    func writeFrame(_ frame: UInt64, offset: Int, from bytes: UnsafeRawBufferPointer) -> Bool {
        do { try physical.write(frame + UInt64(offset), from: bytes) } catch { return false }
        return true
    }
}
