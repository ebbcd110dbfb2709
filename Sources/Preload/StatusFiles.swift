#if canImport(Glibc)
import Glibc
#endif
import Platform
import IOMMUFD
import CPreload

/// /proc/PID/status with the emulated kernel's accounting: the host's file, with `VmPin` and
/// `VmLck` what iommufd charged to that process (Linux: `mm->pinned_vm` and
/// `mm->locked_vm`), for this process and the children sharing its files; other processes'
/// files are the host's. Read from a snapshot taken at open, as a program reads it once.
extension PreloadRuntime {
    /// The process a status path names (`/proc/self/status`, `/proc/PID/status`), if any.
    static func statusPID(_ path: String) -> pid_t? {
        guard path.hasPrefix("/proc/"), path.hasSuffix("/status") else { return nil }
        let middle = path.dropFirst(6).dropLast(7)
        if middle == "self" { return getpid() }
        return pid_t(middle)
    }

    /// The host's status text of `pid` with the VmPin and VmLck lines replaced by `values`
    /// (KiB), when there are values.
    static func statusText(pid: pid_t, _ values: (pinned: UInt64, locked: UInt64)?) -> String? {
        guard let real = HostMapping.readMaps("/proc/\(pid)/status") else { return nil }
        guard let values else { return real }
        func pad(_ v: UInt64) -> String { let s = String(v); return String(repeating: " ", count: max(0, 8 - s.count)) + s }
        var lines = real.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        for i in lines.indices {
            if lines[i].hasPrefix("VmPin:") { lines[i] = "VmPin:\t\(pad(values.pinned)) kB" }
            if lines[i].hasPrefix("VmLck:") { lines[i] = "VmLck:\t\(pad(values.locked)) kB" }
        }
        return lines.joined(separator: "\n")
    }

    /// read (offset nil: the file's own position) or pread of a snapshot file.
    static func readSnapshot(_ files: inout [Int32: (text: [UInt8], offset: Int)], _ fd: Int32, _ buffer: UnsafeMutableRawPointer?,
                             _ count: Int, at offset: Int?, _ memory: UserMemory) -> Int {
        guard let file = files[fd] else { return -Int(EBADF) }
        let from = offset ?? file.offset
        guard from >= 0 else { return -Int(EINVAL) }
        let n = max(0, min(count, file.text.count - from))
        guard n > 0 else { return 0 }
        guard file.text[from..<from + n].withUnsafeBytes({ memory.copyOut(to: UInt64(UInt(bitPattern: buffer)), from: $0) }) else {
            return -Int(EFAULT)
        }
        if offset == nil { files[fd] = (file.text, from + n) }
        return n
    }
}

/// The same in a forked child: the accounting is the parent's, asked over the socket.
extension ForkClient {
    /// 0, or -ENOENT for a process that does not exist.
    func openStatus(_ fd: Int32, pid: pid_t) -> Int32 {
        let rc = call(ForkMessage.status, fd: -1, a: UInt64(UInt32(bitPattern: pid)))
        let values = rc < 0 ? nil : (pinned: UInt64(rc) >> 32, locked: UInt64(rc) & 0xFFFF_FFFF)
        guard let text = PreloadRuntime.statusText(pid: pid, values) else { return -ENOENT }
        statusFiles[fd] = (Array(text.utf8), 0)
        return 0
    }

    func readStatus(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int, at offset: Int?) -> Int {
        PreloadRuntime.readSnapshot(&statusFiles, fd, buffer, count, at: offset, ProcessBytes.shared)
    }
}

/// Copies to this process's own memory for a child with no runtime of its own (fault-safe,
/// through the shim).
final class ProcessBytes: UserMemory, @unchecked Sendable {
    static let shared = ProcessBytes()
    func copyIn(from address: UInt64, into bytes: UnsafeMutableRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return bytes.isEmpty }
        return swiftiommu_copy_from_user(base, address, bytes.count) != 0
    }
    func copyOut(to address: UInt64, from bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return bytes.isEmpty }
        return swiftiommu_copy_to_user(address, base, bytes.count) != 0
    }
    func pinPages(at address: UInt64, write: Bool, into frames: UnsafeMutableBufferPointer<UInt64>) -> Int { 0 }
    func unpinPages(_ frames: UnsafeBufferPointer<UInt64>) {}
    func readFrame(_ frame: UInt64, offset: Int, into bytes: UnsafeMutableRawBufferPointer) -> Bool { false }
    func writeFrame(_ frame: UInt64, offset: Int, from bytes: UnsafeRawBufferPointer) -> Bool { false }
    func inspectPage(at address: UInt64) -> UserPage? { nil }
}
