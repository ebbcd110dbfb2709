#if canImport(Glibc)
import Glibc
#endif
import Platform
import Kernel
import IOMMUFD
import CPreload

/// The memory of the real process the preload library runs in, as the kernel reaches it:
/// `copy_from_user` and `copy_to_user` go through `process_vm_readv`/`process_vm_writev` on
/// the process itself (in the C shim), so a bad pointer (unmapped, or not writable for a copy out) is an
/// EFAULT answer and never a fault in the shim. Partial copies count as failures, as the
/// kernel's helpers report them.
final class HostMemory: UserMemory {
    let physical: PhysicalMemory

    init(physical: PhysicalMemory) { self.physical = physical }

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

    /// Pinning real pages so emulated devices reach them is not served yet: no page pins,
    /// so filling a domain answers EFAULT (the IOAS keeps its areas; maps without an
    /// attached domain need no pins).
    func pinPages(at address: UInt64, write: Bool, into frames: UnsafeMutableBufferPointer<UInt64>) -> Int { 0 }

    func unpinPages(_ frames: UnsafeBufferPointer<UInt64>) {}

    func readFrame(_ frame: UInt64, offset: Int, into bytes: UnsafeMutableRawBufferPointer) -> Bool {
        do { try physical.read(frame + UInt64(offset), into: bytes) } catch { return false }
        return true
    }

    func writeFrame(_ frame: UInt64, offset: Int, from bytes: UnsafeRawBufferPointer) -> Bool {
        do { try physical.write(frame + UInt64(offset), from: bytes) } catch { return false }
        return true
    }
}
