#if canImport(Glibc)
import Glibc
#endif
import Platform
import Kernel
import IOMMUFD
import CPreload

/// One iommufd file shared by a parent and the children it forks, as the kernel shares it:
/// the machine stays in the parent, and a child's calls through descriptors it inherited go
/// to the parent over a socket made at the fork (a `ForkServer` thread in the parent, a
/// `ForkClient` in the child). The parent runs each call on the same context with the
/// child's memory (`RemoteMemory`), so a mapping the child makes is in the parent's IOAS and
/// pins the child's pages. A child's new opens get a machine of its own, as before.
///
/// Messages are fixed-size: a request {op u32, fd i32, a u64, b u64} (24 bytes), a reply
/// {rc i64}. The child's first message is its pid (op `hello`).
enum ForkMessage {
    static let hello: UInt32 = 0, ioctl: UInt32 = 1, close: UInt32 = 2, dup: UInt32 = 3, status: UInt32 = 4
    static let requestSize = 24

    static func send(_ socket: Int32, op: UInt32, fd: Int32, a: UInt64 = 0, b: UInt64 = 0) -> Bool {
        var m = (op, fd, a, b)
        return withUnsafeBytes(of: &m) { Glibc.send(socket, $0.baseAddress, requestSize, Int32(MSG_NOSIGNAL)) == requestSize }
    }
}

/// The parent's side for one child: the descriptors the child holds (a copy of the parent's
/// table at the fork, then what the child dups and closes), served on a thread of its own.
final class ForkServer: @unchecked Sendable {
    let socket: Int32
    var contexts: [Int32: IOMMUFDContext]
    var memory: RemoteMemory?
    /// The child's pin accounting (its mm's `pinned_vm`, `locked_vm`).
    let ledger = PinLedger()

    init(socket: Int32, contexts: [Int32: IOMMUFDContext]) { self.socket = socket; self.contexts = contexts }

    /// Serves requests until the child's end closes (it exited or exec'd), then lets go of
    /// what the child held.
    func run() {
        // This thread runs no program code: its own mapping changes are the library's.
        swiftiommu_shim_set_inside(1)
        var request = (UInt32(0), Int32(0), UInt64(0), UInt64(0))
        while true {
            let n = withUnsafeMutableBytes(of: &request) { Glibc.recv(socket, $0.baseAddress, ForkMessage.requestSize, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n == ForkMessage.requestSize else { break }
            let (op, fd, a, b) = request
            var rc: Int64 = 0
            PreloadRuntime.withLock {
                guard let runtime = PreloadRuntime.shared else { rc = -Int64(EBADF); return }
                rc = handle(runtime, op: op, fd: fd, a: a, b: b)
            }
            guard withUnsafeBytes(of: &rc, { Glibc.send(socket, $0.baseAddress, 8, Int32(MSG_NOSIGNAL)) }) == 8 else { break }
        }
        PreloadRuntime.withLock {
            memory?.isGone = true
            let held = contexts
            contexts = [:]
            if let runtime = PreloadRuntime.shared {
                runtime.servers.removeAll { $0 === self }
                for c in held.values { runtime.closeIfUnheld(c) }
            }
        }
        Glibc.close(socket)
    }

    private func handle(_ runtime: PreloadRuntime, op: UInt32, fd: Int32, a: UInt64, b: UInt64) -> Int64 {
        switch op {
        case ForkMessage.hello:
            memory = RemoteMemory(pid: pid_t(truncatingIfNeeded: a), host: runtime.memory, physical: runtime.machine.platform.memory,
                                  frames: runtime.machine.platform.frames)
            return 0
        case ForkMessage.ioctl:
            guard let c = contexts[fd], let memory else { return -Int64(EBADF) }
            let cmd = UInt32(truncatingIfNeeded: a)
            if cmd == PreloadRuntime.stats { return -Int64(ENOTTY) }
            if cmd == IOMMUFDCommand.ioasMapFile.number { offerChildFile(c, b) }
            runtime.servingChild = true
            defer { runtime.servingChild = false }
            return Int64(c.withMemory(memory, ledger: ledger) { c.ioctl(cmd, userArgument: b) })
        case ForkMessage.close:
            guard let c = contexts.removeValue(forKey: fd) else { return -Int64(EBADF) }
            runtime.closeIfUnheld(c)
            return 0
        case ForkMessage.status:
            guard let v = runtime.pinnedKiB(pid: pid_t(truncatingIfNeeded: a)) else { return -Int64(ENOENT) }
            return Int64(v.pinned) << 32 | Int64(v.locked & 0xFFFF_FFFF)
        case ForkMessage.dup:
            guard let c = contexts[fd] else { return -Int64(EBADF) }
            contexts[Int32(truncatingIfNeeded: a)] = c
            return 0
        default:
            return -Int64(EINVAL)
        }
    }

    /// IOAS_MAP_FILE from the child names one of the child's descriptors: the parent opens
    /// the same file through /proc (a parent may), so its pages are the same frames.
    private func offerChildFile(_ c: IOMMUFDContext, _ arg: UInt64) {
        guard let memory else { return }
        var head = (UInt64(0), UInt64(0))
        guard withUnsafeMutableBytes(of: &head, { memory.copyIn(from: arg, into: $0) }) else { return }
        let childFD = Int32(bitPattern: UInt32(truncatingIfNeeded: head.1 >> 32))
        c.files[childFD] = nil
        guard childFD >= 0, let runtime = PreloadRuntime.shared else { return }
        let local = Glibc.open("/proc/\(memory.pid)/fd/\(childFD)", O_RDWR | O_CLOEXEC)
        guard local >= 0 else { return }
        defer { Glibc.close(local) }
        if let file = HostFile(fd: local, memory: runtime.memory), !file.isEmulatedRAM { c.files[childFD] = file }
    }
}

/// The child's side: the inherited descriptors whose calls go to the parent.
final class ForkClient: @unchecked Sendable {
    let socket: Int32
    var descriptors: Set<Int32>
    /// /proc/PID/status files opened in the child, with the parent's accounting in them.
    var statusFiles: [Int32: (text: [UInt8], offset: Int)] = [:]

    init(socket: Int32, descriptors: Set<Int32>) { self.socket = socket; self.descriptors = descriptors }

    /// One request and its reply; -EBADF once the parent is gone.
    func call(_ op: UInt32, fd: Int32, a: UInt64 = 0, b: UInt64 = 0) -> Int {
        guard ForkMessage.send(socket, op: op, fd: fd, a: a, b: b) else { return -Int(EBADF) }
        var rc: Int64 = 0
        while true {
            let n = withUnsafeMutableBytes(of: &rc) { Glibc.recv(socket, $0.baseAddress, 8, 0) }
            if n < 0 && errno == EINTR { continue }
            return n == 8 ? Int(rc) : -Int(EBADF)
        }
    }

    func ioctl(_ fd: Int32, _ request: UInt, _ arg: UInt) -> Int {
        call(ForkMessage.ioctl, fd: fd, a: UInt64(UInt32(truncatingIfNeeded: request)), b: UInt64(arg))
    }

    func close(_ fd: Int32) {
        guard descriptors.remove(fd) != nil else { return }
        _ = call(ForkMessage.close, fd: fd)
    }

    func dup(_ old: Int32, _ new: Int32) -> Int32 {
        guard descriptors.contains(old) else { return -EBADF }
        if descriptors.contains(new) { close(new) }
        descriptors.insert(new)
        return Int32(truncatingIfNeeded: call(ForkMessage.dup, fd: old, a: UInt64(UInt32(bitPattern: new))))
    }
}

extension PreloadRuntime {
    /// The socket pair made for a fork in progress (parent's end, child's end) and the
    /// descriptors the child will inherit.
    nonisolated(unsafe) static var forkPair: (parent: Int32, child: Int32, contexts: [Int32: IOMMUFDContext])?
    /// In a child: the inherited descriptors served by the parent.
    nonisolated(unsafe) static var client: ForkClient?

    /// Before fork (the lock held): a socket pair when there are files to share.
    static func prepareFork() {
        guard let r = shared, !r.contexts.isEmpty else { return }
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else { return }
        forkPair = (pair[0], pair[1], r.contexts)
    }

    /// In the parent after fork: the child's server starts.
    static func parentAfterFork() {
        guard let pair = forkPair, let r = shared else { return }
        forkPair = nil
        Glibc.close(pair.child)
        let server = ForkServer(socket: pair.parent, contexts: pair.contexts)
        r.servers.append(server)
        guard let thread = HostThread.start({ server.run() }) else {
            r.servers.removeAll { $0 === server }
            Glibc.close(pair.parent)
            return
        }
        thread.detach()
    }

    /// In the child after fork: inherited iommufd descriptors go to the parent.
    static func childAfterFork(inherited: [Int32]) {
        // A client's own fork: the descriptors it got from its parent cannot be shared further
        // (the socket is its parent's and its own).
        if let old = client {
            for fd in old.descriptors { swiftiommu_shim_mark(fd, 0) }
            for fd in old.statusFiles.keys { swiftiommu_shim_mark(fd, 0) }
            Glibc.close(old.socket)
            client = nil
        }
        guard let pair = forkPair else {
            for fd in inherited { swiftiommu_shim_mark(fd, 0) }
            return
        }
        forkPair = nil
        Glibc.close(pair.parent)
        let c = ForkClient(socket: pair.child, descriptors: Set(inherited))
        client = c
        _ = c.call(ForkMessage.hello, fd: -1, a: UInt64(UInt32(bitPattern: getpid())))
    }

    /// VmPin and VmLck (KiB) of `pid` as the emulated kernel counts them: this process's
    /// (its contexts' ledger) or a served child's; nil for any other process.
    func pinnedKiB(pid: pid_t) -> (pinned: UInt64, locked: UInt64)? {
        let l: PinLedger
        if pid == getpid() { l = ledger } else if let s = servers.first(where: { $0.memory?.pid == pid }) { l = s.ledger } else { return nil }
        return (l.chargedPages * 4, l.mmPages * 4)
    }

    /// Whether a process other than this one (a child through a server) holds `c`.
    func heldByChildren(_ c: IOMMUFDContext) -> Bool {
        servers.contains { $0.contexts.values.contains { $0 === c } }
    }

    /// Children that have exited and been waited for hold nothing any more, even if their
    /// servers have not yet seen their sockets close (Linux closes an exiting task's files
    /// before the parent's wait returns). Returns the contexts they held.
    func reapDeadChildren() -> [IOMMUFDContext] {
        var released: [IOMMUFDContext] = []
        for s in servers where s.memory.map({ kill($0.pid, 0) == -1 && errno == ESRCH }) ?? false {
            s.memory?.isGone = true
            released += s.contexts.values
            s.contexts = [:]
        }
        return released
    }
}
