#if canImport(Glibc)
import Glibc
#endif
import Platform
import Kernel
import IOMMUFD
import CPreload

/// The memory of a forked child that calls through a file it inherited (the kernel's
/// `current->mm` of that call), reached from the parent, where the machine is: copies with
/// `process_vm_readv`/`process_vm_writev` (a parent may read its children's memory). A pin of
/// a shared page the parent maps too (shared anonymous memory inherited over the fork, a
/// memfd both map) is the parent's pin of that same page, so both processes and the devices
/// see one page. Any other page is copied into a frame when first pinned: a snapshot, not the
/// child's page itself (the child's later writes do not reach devices, nor devices' writes
/// the child; the kernel would share the page). Once the child is gone every copy and pin
/// fails (EFAULT), as the kernel's do on a dead mm.
final class RemoteMemory: UserMemory {
    let pid: pid_t
    let physical: PhysicalMemory
    let frames: FrameAllocator
    /// The parent's own memory, which pins the shared pages both map.
    let host: HostMemory
    /// Set when the child's connection closed: its pid may name another process later.
    var isGone = false
    /// Pages copied in, by the child's address: the frame and its pins.
    private var snapshots: [UInt64: (frame: UInt64, pins: Int)] = [:]
    private var addressOf: [UInt64: UInt64] = [:]
    /// Pins taken on the parent's own memory for shared pages, by frame (the child may map
    /// one page at several addresses: each pin is one of the parent's).
    private var sharedPins: [UInt64: Int] = [:]

    init(pid: pid_t, host: HostMemory, physical: PhysicalMemory, frames: FrameAllocator) {
        self.pid = pid; self.host = host; self.physical = physical; self.frames = frames
    }

    private func transfer(_ address: UInt64, _ local: UnsafeMutableRawPointer, _ count: Int, write: Bool) -> Bool {
        guard count > 0 else { return true }
        guard !isGone, address != 0, address &+ UInt64(count) >= address else { return false }
        return swiftiommu_copy_process(pid, local, address, count, write ? 1 : 0) != 0
    }

    func copyIn(from address: UInt64, into bytes: UnsafeMutableRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return bytes.isEmpty }
        return transfer(address, base, bytes.count, write: false)
    }

    func copyOut(to address: UInt64, from bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return bytes.isEmpty }
        return transfer(address, UnsafeMutableRawPointer(mutating: base), bytes.count, write: true)
    }

    /// Pins pages from `address`: a page pinned before gives its frame again; a new one is
    /// copied into a fresh frame (a writable pin also writes the page back to itself, which
    /// fails where the child cannot write).
    func pinPages(at address: UInt64, write: Bool, into out: UnsafeMutableBufferPointer<UInt64>) -> Int {
        guard !isGone else { return 0 }
        var done = 0
        var maps: [HostMapping]?
        while done < out.count {
            let va = address &+ UInt64(done) << 12
            if let p = snapshots[va] {
                snapshots[va] = (p.frame, p.pins + 1)
                out[done] = p.frame
                done += 1
                continue
            }
            if let pva = sharedAddress(va, &maps) {
                var f: UInt64 = 0
                guard withUnsafeMutablePointer(to: &f, { host.pinPages(at: pva, write: write, into: UnsafeMutableBufferPointer(start: $0, count: 1)) }) == 1 else { break }
                sharedPins[f, default: 0] += 1
                out[done] = f
                done += 1
                continue
            }
            guard let f = try? frames.allocate(.dmaBuffer, injectable: false) else { break }
            let hostAddress = physical.hostAddress &+ f
            guard let local = UnsafeMutableRawPointer(bitPattern: UInt(hostAddress)), transfer(va, local, 4096, write: false),
                  !write || transfer(va, local, 4096, write: true) else {
                try? frames.free(f)
                break
            }
            snapshots[va] = (f, 1)
            addressOf[f] = va
            out[done] = f
            done += 1
        }
        return done
    }

    func unpinPages(_ list: UnsafeBufferPointer<UInt64>) {
        for f in list {
            if let n = sharedPins[f] {
                sharedPins[f] = n > 1 ? n - 1 : nil
                withUnsafePointer(to: f) { host.unpinPages(UnsafeBufferPointer(start: $0, count: 1)) }
                continue
            }
            guard let va = addressOf[f], let p = snapshots[va] else { continue }
            if p.pins > 1 { snapshots[va] = (f, p.pins - 1); continue }
            snapshots[va] = nil
            addressOf[f] = nil
            try? frames.free(f)
        }
    }

    /// Where the parent maps the child's page at `va`, when it is a shared page the parent
    /// maps too (the child's mappings read once per call).
    private func sharedAddress(_ va: UInt64, _ maps: inout [HostMapping]?) -> UInt64? {
        if maps == nil { maps = HostMapping.all(of: pid) }
        guard let m = maps?.first(where: { $0.start <= va && va < $0.end }), m.shared else { return nil }
        return host.addressOfShared(device: m.device, inode: m.inode, offset: m.offset &+ (va &- m.start))
    }

    func readFrame(_ frame: UInt64, offset: Int, into bytes: UnsafeMutableRawBufferPointer) -> Bool {
        physical.readFrame(frame, offset: offset, into: bytes)
    }

    func writeFrame(_ frame: UInt64, offset: Int, from bytes: UnsafeRawBufferPointer) -> Bool {
        physical.writeFrame(frame, offset: offset, from: bytes)
    }

    func inspectPage(at address: UInt64) -> UserPage? {
        if let p = snapshots[address] { return UserPage(frame: p.frame, pins: p.pins, huge: false) }
        var maps: [HostMapping]?
        if let pva = sharedAddress(address, &maps) { return host.inspectPage(at: pva) }
        var byte: UInt8 = 0
        return transfer(address, &byte, 1, write: false) ? UserPage(frame: nil, pins: 0, huge: false) : nil
    }

    /// Pages pinned now.
    var pinnedPages: Int { snapshots.count + sharedPins.count }
}
