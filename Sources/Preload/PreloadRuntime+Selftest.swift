#if canImport(Glibc)
import Glibc
#endif
import Platform
import Kernel
import IOMMUFD
import Simulation
import CPreload

/// What the kernel's selftest interface needs from the process (notes: mock-driver §4):
/// the mock driver beside the machine's units (a kernel with CONFIG_IOMMUFD_TEST), files for
/// the selftest's accesses and for vEVENTQs, and windows of the iommufd file mapped into the
/// program (a vIOMMU's pages).
extension PreloadRuntime {
    /// Registers the selftest's mock driver with the machine's core, unless
    /// `SWIFTIOMMU_SELFTEST=0` asks for a kernel without it (IOMMU_TEST_CMD is then ENOTTY).
    static func registerSelftest(_ machine: Machine) {
        if let v = getenv("SWIFTIOMMU_SELFTEST"), String(cString: v) == "0" { return }
        machine.core.register(MockIOMMUDriver(platform: machine.platform))
    }

    /// A file for an object the context made (besides fault queues): an access gets a
    /// descriptor of its own (an eventfd nobody signals: the access file has no read, poll
    /// or mmap); a vEVENTQ an eventfd kept readable while events wait.
    func openObjectFile(_ c: IOMMUFDContext, _ object: IOMMUFDObject) -> Int32 {
        let efd = swiftiommu_shim_eventfd(1)
        guard efd >= 0 else { return -1 }
        switch object {
        case is AccessObject:
            accessFiles[efd] = c
        case let q as VEventQueueObject:
            eventQueueFiles[efd] = (c, q)
            q.onReadinessChange = { readable in swiftiommu_shim_signal(efd, readable ? 1 : 0) }
        default:
            swiftiommu_shim_mark(efd, 0)
            Glibc.close(efd)
            return -1
        }
        return efd
    }

    /// read() of a vEVENTQ file (Linux `iommufd_veventq_fops_read`): whole events while they
    /// fit, 0 when the first does not or none waits. The buffer is checked first, so a bad
    /// one takes no event away.
    func readEvents(_ q: VEventQueueObject, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int {
        let wanted = min(count, q.readableBytes)
        guard wanted > 0 else { return 0 }
        let local = UnsafeMutableRawBufferPointer.allocate(byteCount: wanted, alignment: 8)
        defer { local.deallocate() }
        let user = UInt64(UInt(bitPattern: buffer))
        guard memory.copyIn(from: user, into: local), memory.copyOut(to: user, from: UnsafeRawBufferPointer(local)) else { return -Int(EFAULT) }
        let n = q.read(into: local)
        guard n == 0 || memory.copyOut(to: user, from: UnsafeRawBufferPointer(rebasing: local[0..<n])) else { return -Int(EFAULT) }
        return n
    }

    /// mmap of one of our files (Linux `iommufd_fops_mmap`): a window the driver exposed in
    /// the iommufd file, mapped shared over its frames (EINVAL for a length not page-sized,
    /// an offset not page-aligned or a private mapping, EPERM executable, ENXIO where there
    /// is no window); device regions are not emulated (EINVAL); the other files have no mmap
    /// (ENODEV). Returns the address, or -errno.
    func mmap(_ fd: Int32, address: UInt64, length: Int, prot: Int32, flags: Int32, offset: Int64) -> Int {
        guard let c = contexts[fd] else { return deviceFiles[fd] != nil ? -Int(EINVAL) : -Int(ENODEV) }
        guard length > 0, length & 0xFFF == 0, offset & 0xFFF == 0 else { return -Int(EINVAL) }
        guard flags & MAP_SHARED != 0 else { return -Int(EINVAL) }
        guard prot & PROT_EXEC == 0 else { return -Int(EPERM) }
        guard offset >= 0 else { return -Int(ENXIO) }
        let window: (frames: [UInt64], owner: IOMMUFDObject)
        do { window = try c.mapWindow(offset: UInt64(offset), length: UInt64(length)) } catch { return -Int(error.code) }
        // Address space first (where the program asked, if it insisted), then each frame. A
        // fixed mapping replaces what was there: the pages the system tracks there are told.
        let fixed = flags & MAP_FIXED != 0
        if fixed {
            memory.rangeChanging(address, UInt64(length), kind: 0)
            windowsChanging(address, UInt64(length), moved: false)
        }
        guard let base = Glibc.mmap(UnsafeMutableRawPointer(bitPattern: UInt(address)), length, PROT_NONE,
                                    MAP_PRIVATE | MAP_ANONYMOUS | (fixed ? MAP_FIXED : 0), -1, 0), base != MAP_FAILED else {
            c.releaseMmap(window.owner)
            return -Int(ENOMEM)
        }
        let start = UInt64(UInt(bitPattern: base))
        for (i, f) in window.frames.enumerated() where !machine.platform.memory.mapFrame(f, at: start + UInt64(i) << 12, writable: prot & PROT_WRITE != 0) {
            Glibc.munmap(base, length)
            c.releaseMmap(window.owner)
            return -Int(ENOMEM)
        }
        if prot & PROT_READ == 0 && prot & PROT_WRITE == 0 { Glibc.mprotect(base, length, PROT_NONE) }
        windows.append(MappedWindow(start: start, pages: window.frames.count, context: c, owner: window.owner))
        return Int(bitPattern: UInt(start))
    }

    /// The program unmaps [address, address + length) (or maps over it): the pages of
    /// windows there are gone, and a window with none left no longer holds its owner nor
    /// the context's file. A window moved by mremap keeps its hold wherever it went (its new
    /// place is not known here): its owner stays busy until the context closes.
    func windowsChanging(_ address: UInt64, _ length: UInt64, moved: Bool) {
        guard !windows.isEmpty, !moved else { return }
        let end = address &+ length < address ? UInt64.max : address &+ length
        var emptied: [MappedWindow] = []
        for w in windows where w.start < end && address < w.start + UInt64(w.mapped.count) << 12 {
            for i in w.mapped.indices where w.mapped[i] {
                let page = w.start + UInt64(i) << 12
                if page >= address && page + 4096 <= end { w.mapped[i] = false; w.remaining -= 1 }
            }
            if w.remaining == 0 { emptied.append(w) }
        }
        for w in emptied {
            windows.removeAll { $0 === w }
            w.context.releaseMmap(w.owner)
            closeIfUnheld(w.context)
        }
    }

    /// In a fork child: the windows it inherited become private copies (a child's mapping
    /// must not outlive the parent's hold on the frames).
    func privatizeWindows() {
        for w in windows {
            let length = w.mapped.count << 12
            let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 4096)
            defer { copy.deallocate() }
            guard let at = UnsafeMutableRawPointer(bitPattern: UInt(w.start)), let saved = copy.baseAddress else { continue }
            _ = swiftiommu_copy_from_user(saved, w.start, length)
            guard Glibc.mmap(at, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED else { continue }
            at.copyMemory(from: saved, byteCount: length)
        }
        windows = []
    }
}

/// A window of an iommufd file mapped into the program: which of its pages are still mapped
/// (munmap may take it piece by piece).
final class MappedWindow {
    let start: UInt64
    let context: IOMMUFDContext
    let owner: IOMMUFDObject
    var mapped: [Bool]
    var remaining: Int

    init(start: UInt64, pages: Int, context: IOMMUFDContext, owner: IOMMUFDObject) {
        self.start = start; self.context = context; self.owner = owner
        mapped = [Bool](repeating: true, count: pages)
        remaining = pages
    }
}
