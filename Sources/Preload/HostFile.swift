#if canImport(Glibc)
import Glibc
#endif
import IOMMUFD

/// A real file a program hands to IOMMU_IOAS_MAP_FILE (a memfd, shmem): pages identified by
/// (device, inode, offset), pinned as frames aliasing them, like shared mappings of the same
/// file. Holds its own descriptor (a dup), as the kernel holds the file, so the program may
/// close its own.
final class HostFile: PinnableFile {
    let fd: Int32
    let device: String
    let inode: UInt64
    unowned let memory: HostMemory

    /// Nil when `fd` is not an open file of the process.
    init?(fd userFD: Int32, memory: HostMemory) {
        guard userFD >= 0, fcntl(userFD, F_GETFD) >= 0 else { return nil }
        let copy = fcntl(userFD, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { return nil }
        var st = Glibc.stat()
        guard fstat(copy, &st) == 0 else { Glibc.close(copy); return nil }
        fd = copy
        // As /proc/self/maps prints a device: major:minor in hex, two digits at least.
        device = Self.deviceName(UInt64(st.st_dev))
        inode = UInt64(st.st_ino)
        self.memory = memory
    }

    deinit { Glibc.close(fd) }

    /// The emulated machine's own RAM file (reachable through /proc/self/fd): never a
    /// program's file to map.
    var isEmulatedRAM: Bool {
        let ram = memory.physical.sharedFile
        guard ram >= 0 else { return false }
        var st = Glibc.stat()
        guard fstat(ram, &st) == 0 else { return false }
        return UInt64(st.st_ino) == inode && device == Self.deviceName(UInt64(st.st_dev))
    }

    static func deviceName(_ dev: UInt64) -> String {
        let major = ((dev >> 8) & 0xFFF) | ((dev >> 32) & ~0xFFF), minor = (dev & 0xFF) | ((dev >> 12) & ~0xFF)
        func hex2(_ v: UInt64) -> String { let h = String(v, radix: 16); return h.count < 2 ? "0" + h : h }
        return "\(hex2(major)):\(hex2(minor))"
    }

    /// The file's size now.
    var length: UInt64 {
        var st = Glibc.stat()
        return fstat(fd, &st) == 0 ? UInt64(st.st_size) : 0
    }

    func pinPages(at offset: UInt64, write: Bool, into frames: UnsafeMutableBufferPointer<UInt64>) -> Int {
        let size = length
        var done = 0
        while done < frames.count {
            guard let f = memory.pinFilePage(fd: fd, device: device, inode: inode, size: size, offset: offset &+ UInt64(done) << 12) else { break }
            frames[done] = f
            done += 1
        }
        return done
    }

    func unpinPages(_ frames: UnsafeBufferPointer<UInt64>) { memory.unpinPages(frames) }
}
