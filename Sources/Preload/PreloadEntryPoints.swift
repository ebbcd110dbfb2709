#if canImport(Glibc)
import Glibc
#endif
import Platform
import Kernel
import IOMMUFD
import CPreload

// The library's entry points, called by the C shim (Sources/CPreload): each takes the
// runtime's lock. Descriptors a forked child inherited go to the parent's machine
// (ForkSharing.swift).

@_cdecl("swiftiommu_open")
public func swiftiommuOpen(_ fd: Int32, _ path: UnsafePointer<CChar>) -> Int32 {
    let p = String(cString: path)
    return PreloadRuntime.withLock {
        if let c = PreloadRuntime.client, let pid = PreloadRuntime.statusPID(p) { return c.openStatus(fd, pid: pid) }
        if PreloadRuntime.current() == nil {
            do { PreloadRuntime.shared = try PreloadRuntime() } catch { return -ENOMEM }
        }
        return PreloadRuntime.current()?.open(fd, path: p) ?? -ENOMEM
    }
}

@_cdecl("swiftiommu_ioctl")
public func swiftiommuIoctl(_ fd: Int32, _ request: UInt, _ arg: UInt) -> Int {
    PreloadRuntime.withLock {
        if let c = PreloadRuntime.client, c.descriptors.contains(fd) { return c.ioctl(fd, request, arg) }
        return PreloadRuntime.current()?.ioctl(fd, request, arg) ?? -Int(EBADF)
    }
}

@_cdecl("swiftiommu_read")
public func swiftiommuRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: UInt) -> Int {
    PreloadRuntime.withLock {
        // An inherited /dev/iommu has no read, as the parent's (EINVAL).
        if let c = PreloadRuntime.client, c.descriptors.contains(fd) { return -Int(EINVAL) }
        if let c = PreloadRuntime.client, c.statusFiles[fd] != nil { return c.readStatus(fd, buffer, Int(min(count, 1 << 30)), at: nil) }
        return PreloadRuntime.current()?.read(fd, buffer, Int(min(count, 1 << 30))) ?? -Int(EBADF)
    }
}

@_cdecl("swiftiommu_write")
public func swiftiommuWrite(_ fd: Int32, _ buffer: UnsafeRawPointer?, _ count: UInt) -> Int {
    PreloadRuntime.withLock {
        if let c = PreloadRuntime.client, c.descriptors.contains(fd) { return -Int(EINVAL) }
        return PreloadRuntime.current()?.write(fd, buffer, Int(min(count, 1 << 30))) ?? -Int(EBADF)
    }
}

@_cdecl("swiftiommu_pread")
public func swiftiommuPread(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: UInt, _ offset: Int) -> Int {
    PreloadRuntime.withLock {
        if let c = PreloadRuntime.client, c.descriptors.contains(fd) { return -Int(EINVAL) }
        if let c = PreloadRuntime.client, c.statusFiles[fd] != nil { return c.readStatus(fd, buffer, Int(min(count, 1 << 30)), at: offset) }
        return PreloadRuntime.current()?.pread(fd, buffer, Int(min(count, 1 << 30)), offset) ?? -Int(EBADF)
    }
}

@_cdecl("swiftiommu_pwrite")
public func swiftiommuPwrite(_ fd: Int32, _ buffer: UnsafeRawPointer?, _ count: UInt, _ offset: Int) -> Int {
    PreloadRuntime.withLock {
        if let c = PreloadRuntime.client, c.descriptors.contains(fd) { return -Int(EINVAL) }
        return PreloadRuntime.current()?.pwrite(fd, buffer, Int(min(count, 1 << 30)), offset) ?? -Int(EBADF)
    }
}

@_cdecl("swiftiommu_mmap")
public func swiftiommuMmap(_ fd: Int32, _ address: UInt64, _ length: Int, _ prot: Int32, _ flags: Int32, _ offset: Int64) -> Int {
    PreloadRuntime.withLock {
        // A window of an inherited file would be the parent's pages: not served in a child.
        if let c = PreloadRuntime.client, c.descriptors.contains(fd) { return -Int(ENODEV) }
        return PreloadRuntime.current()?.mmap(fd, address: address, length: length, prot: prot, flags: flags, offset: offset) ?? -Int(ENODEV)
    }
}

@_cdecl("swiftiommu_huge_mapping")
public func swiftiommuHugeMapping(_ address: UInt64, _ length: Int, _ prot: Int32) {
    PreloadRuntime.withLock {
        _ = PreloadRuntime.current()?.memory.mapHuge(at: address, length: UInt64(length), writable: prot & PROT_WRITE != 0)
    }
}

@_cdecl("swiftiommu_range_changing")
public func swiftiommuRangeChanging(_ address: UInt64, _ length: UInt64, _ kind: Int32) {
    PreloadRuntime.withLock {
        guard let r = PreloadRuntime.current() else { return }
        r.memory.rangeChanging(address, length, kind: kind)
        if kind != 2 { r.windowsChanging(address, length, moved: kind == 1) }
    }
}

@_cdecl("swiftiommu_dup")
public func swiftiommuDup(_ old: Int32, _ new: Int32) -> Int32 {
    PreloadRuntime.withLock {
        if let c = PreloadRuntime.client, c.descriptors.contains(old) { return c.dup(old, new) }
        return PreloadRuntime.current()?.dup(old, new) ?? -EBADF
    }
}

@_cdecl("swiftiommu_close")
public func swiftiommuClose(_ fd: Int32) -> Int32 {
    PreloadRuntime.withLock {
        if let c = PreloadRuntime.client, c.descriptors.contains(fd) { c.close(fd); return 0 }
        if let c = PreloadRuntime.client, c.statusFiles.removeValue(forKey: fd) != nil { return 0 }
        PreloadRuntime.current()?.close(fd)
        return 0
    }
}

@_cdecl("swiftiommu_fork_prepare")
public func swiftiommuForkPrepare() {
    pthread_mutex_lock(&PreloadRuntime.lockStorage)
    PreloadRuntime.prepareFork()
}

@_cdecl("swiftiommu_fork_parent")
public func swiftiommuForkParent() {
    PreloadRuntime.parentAfterFork()
    pthread_mutex_unlock(&PreloadRuntime.lockStorage)
}

/// In a child after fork: its inherited /dev/iommu descriptors name the parent's files, as
/// in the kernel: their calls go to the parent (ForkSharing.swift). The child's pinned private
/// pages become private copies (as the kernel gives a child copies of pinned pages); its
/// inherited device descriptors get fresh device files over a fresh machine, made on the
/// child's first call (nothing heavy runs in the fork handler), as does anything it opens.
/// The copy of the parent's state is left alone: its threads do not exist here, so it is
/// never touched again.
@_cdecl("swiftiommu_fork_child")
public func swiftiommuForkChild() {
    // The parent's lock was held for the fork: the child starts with a new one.
    PreloadRuntime.lockStorage = pthread_mutex_t()
    let inherited = PreloadRuntime.shared.map { Array($0.contexts.keys) } ?? []
    PreloadRuntime.childAfterFork(inherited: inherited)
    guard let old = PreloadRuntime.shared else { return }
    old.memory.privatizeMovedPages()
    old.privatizeWindows()
    PreloadRuntime.pendingChild = ([], old.deviceFiles.map { ($0.key, $0.value.index) })
    for fd in old.faultFiles.keys { swiftiommu_shim_mark(fd, 0) }
    for fd in old.injectionFiles.keys { swiftiommu_shim_mark(fd, 0) }
    for fd in old.accessFiles.keys { swiftiommu_shim_mark(fd, 0) }
    for fd in old.eventQueueFiles.keys { swiftiommu_shim_mark(fd, 0) }
    for fd in old.statusFiles.keys { swiftiommu_shim_mark(fd, 0) }
    _ = Unmanaged.passRetained(old) // never deinitialised in the child
    PreloadRuntime.shared = nil
}

extension PreloadRuntime {
    /// Descriptors a fork child inherited, to reopen on its first call.
    nonisolated(unsafe) static var pendingChild: (contexts: [Int32], devices: [(Int32, Int)])?

    /// The runtime, made again in a fork child on its first call (under the lock).
    static func current() -> PreloadRuntime? {
        if shared == nil, let pending = pendingChild {
            pendingChild = nil
            guard let fresh = try? PreloadRuntime() else {
                for fd in pending.contexts { swiftiommu_shim_mark(fd, 0) }
                for (fd, _) in pending.devices { swiftiommu_shim_mark(fd, 0) }
                return nil
            }
            shared = fresh
            for fd in pending.contexts { _ = fresh.open(fd, path: "/dev/iommu") }
            for (fd, n) in pending.devices { _ = fresh.open(fd, path: "/dev/vfio/devices/vfio\(n)") }
        }
        return shared
    }
}
