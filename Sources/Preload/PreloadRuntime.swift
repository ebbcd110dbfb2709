#if canImport(Glibc)
import Glibc
#endif
import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD
import Simulation
import CPreload

/// The preload library's state in a process (`LD_PRELOAD=libIOMMUPreload.so`): one emulated
/// machine, made on the first open of /dev/iommu (no threads before it), and an iommufd
/// context per open file, keyed by the descriptor the shim reserved for it. Every entry takes
/// one process-wide lock: the kernel serializes much finer, but the emulated machine is not
/// made for concurrent callers.
final class PreloadRuntime: @unchecked Sendable {
    let machine: Machine
    let memory: HostMemory
    private(set) var contexts: [Int32: IOMMUFDContext] = [:]

    init() throws {
        machine = try Machine(seed: 1, memorySize: 256 << 20, units: [VTdConfiguration(name: "dmar0")], policy: .strict)
        memory = HostMemory(physical: machine.platform.memory)
    }

    func open(_ fd: Int32) -> Int32 {
        contexts[fd] = IOMMUFDContext(core: machine.core, memory: memory)
        return 0
    }

    func ioctl(_ fd: Int32, _ request: UInt, _ arg: UInt) -> Int {
        guard let c = contexts[fd] else { return -Int(EBADF) }
        // Only the low 32 bits are the ioctl number (the kernel's `unsigned int cmd`).
        return Int(c.ioctl(UInt32(truncatingIfNeeded: request), userArgument: UInt64(arg)))
    }

    func close(_ fd: Int32) {
        contexts.removeValue(forKey: fd)?.close()
    }

    // MARK: Process-wide

    nonisolated(unsafe) static var shared: PreloadRuntime?
    nonisolated(unsafe) static var lockStorage = pthread_mutex_t()
    nonisolated(unsafe) static var lockReady = false

    static func withLock<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(&lockStorage)
        defer { pthread_mutex_unlock(&lockStorage) }
        return body()
    }
}

@_cdecl("swiftiommu_open")
public func swiftiommuOpen(_ fd: Int32) -> Int32 {
    PreloadRuntime.withLock {
        if PreloadRuntime.shared == nil {
            do { PreloadRuntime.shared = try PreloadRuntime() } catch { return -ENOMEM }
        }
        return PreloadRuntime.shared?.open(fd) ?? -ENOMEM
    }
}

@_cdecl("swiftiommu_ioctl")
public func swiftiommuIoctl(_ fd: Int32, _ request: UInt, _ arg: UInt) -> Int {
    PreloadRuntime.withLock { PreloadRuntime.shared?.ioctl(fd, request, arg) ?? -Int(EBADF) }
}

@_cdecl("swiftiommu_close")
public func swiftiommuClose(_ fd: Int32) -> Int32 {
    PreloadRuntime.withLock {
        PreloadRuntime.shared?.close(fd)
        return 0
    }
}

/// In a child after fork: the parent's contexts are the parent's (the child has a copy of
/// their memory, not the objects behind them). The child's inherited iommufd descriptors
/// get fresh, empty contexts over a fresh machine, so nothing the parent holds can be
/// reached or corrupted from the child. The copy of the parent's state is left alone: its
/// threads do not exist here, so it is never touched again.
@_cdecl("swiftiommu_fork_child")
public func swiftiommuForkChild() {
    // The lock may have been held by another parent thread at fork: start a new one.
    PreloadRuntime.lockStorage = pthread_mutex_t()
    guard let old = PreloadRuntime.shared else { return }
    let fds = Array(old.contexts.keys)
    _ = Unmanaged.passRetained(old) // never deinitialised in the child
    PreloadRuntime.shared = nil
    guard let fresh = try? PreloadRuntime() else {
        for fd in fds { swiftiommu_shim_mark(fd, 0) }
        return
    }
    PreloadRuntime.shared = fresh
    for fd in fds { _ = fresh.open(fd) }
}
