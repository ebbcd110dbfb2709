#if canImport(Glibc)
import Glibc
#endif

/// A line of /proc/self/maps: what backs a range of this process's address space.
struct HostMapping {
    var start: UInt64
    var end: UInt64
    var readable: Bool
    var writable: Bool
    var executable: Bool
    var shared: Bool
    /// File offset of `start`.
    var offset: UInt64
    var device: String
    var inode: UInt64
    var path: String

    /// Every mapping, in address order, read from /proc/self/maps (or another process's).
    static func all(of pid: Int32? = nil) -> [HostMapping] {
        guard let text = readMaps(pid.map { "/proc/\($0)/maps" } ?? "/proc/self/maps") else { return [] }
        return text.split(separator: "\n").compactMap(parse)
    }

    static func parse(_ line: Substring) -> HostMapping? {
        let f = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
        guard f.count >= 5 else { return nil }
        let range = f[0].split(separator: "-")
        guard range.count == 2, let lo = UInt64(range[0], radix: 16), let hi = UInt64(range[1], radix: 16) else { return nil }
        let perms = Array(f[1])
        guard perms.count >= 4, let offset = UInt64(f[2], radix: 16), let inode = UInt64(f[4]) else { return nil }
        let path = f.count > 5 ? String(f[5]).trimmingLeadingSpaces() : ""
        return HostMapping(start: lo, end: hi, readable: perms[0] == "r", writable: perms[1] == "w", executable: perms[2] == "x",
                           shared: perms[3] == "s", offset: offset, device: String(f[3]), inode: inode, path: path)
    }

    /// The whole of /proc/self/maps (read with the system's calls, which the shim passes on).
    static func readMaps(_ path: String = "/proc/self/maps") -> String? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension String {
    func trimmingLeadingSpaces() -> String { String(drop(while: { $0 == " " })) }
}
