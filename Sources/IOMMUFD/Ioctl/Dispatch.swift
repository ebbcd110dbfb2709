import Platform
import Kernel

/// The ioctl entry (Linux `iommufd_fops_ioctl`, drivers/iommu/iommufd/main.c): one call
/// takes the ioctl number and the argument bytes as the kernel receives them.
///
/// Framing, in the kernel's order: a number outside the iommufd table goes to the VFIO
/// compatibility ioctls (ENOTTY when unknown there); the leading u32 `size` must be
/// readable (EFAULT); the full number must be `_IO(';', nr)` (ENOTTY); `size` below the
/// command's minimum is EINVAL; bytes past the kernel's struct must be zero (E2BIG); a
/// shorter struct is zero-extended. What the handler responds is copied back, min(user
/// size, kernel size) bytes, even when it then fails (IOVA_RANGES' EMSGSIZE).
extension IOMMUFDContext {
    /// Runs one ioctl on `arg` (the user's struct, at least `size` bytes readable). Returns
    /// 0, a non-negative result (VFIO's CHECK_EXTENSION), or -errno.
    public func ioctl(_ cmd: UInt32, _ arg: UnsafeMutableRawBufferPointer) -> Int32 {
        let nr = UInt8(truncatingIfNeeded: cmd)
        guard let command = IOMMUFDCommand(rawValue: nr) else { return isTestCommand(cmd) ? testIoctl(arg) : vfioIoctl(cmd, arg) }
        guard arg.count >= 4, let user = arg.baseAddress else { return fail(Errno.fault("the argument is not readable")) }
        let size = Int(UInt32(littleEndian: user.loadUnaligned(as: UInt32.self)))
        guard cmd == command.number else { return fail(Errno(Errno.ENOTTY, "0x\(String(cmd, radix: 16)) is not \(command.name)")) }
        guard size >= command.minimumSize else { return fail(Errno.inval("\(command.name): size \(size) is below \(command.minimumSize)")) }
        guard arg.count >= size else { return fail(Errno.fault("\(command.name): only \(arg.count) of \(size) bytes readable")) }
        let kernelSize = command.size
        if size > kernelSize {
            for i in kernelSize..<size where arg[i] != 0 {
                return fail(Errno(Errno.E2BIG, "\(command.name): byte \(i) past the kernel's \(kernelSize)-byte struct is not zero"))
            }
        }
        let copied = min(size, kernelSize)
        scratch.copyMemory(from: user, byteCount: copied)
        if copied < kernelSize { (scratch + copied).initializeMemory(as: UInt8.self, repeating: 0, count: kernelSize - copied) }
        var a = IoctlArgument(base: scratch, kernelSize: kernelSize, userSize: size)
        var rc: Int32 = 0
        do { try executeCommand(command, &a) } catch { rc = fail(error) }
        if a.responded { user.copyMemory(from: scratch, byteCount: copied) }
        return rc
    }

    /// The same on a byte array (tests, scenarios): the array is the user's struct.
    public func ioctl(_ cmd: UInt32, _ bytes: inout [UInt8]) -> Int32 {
        bytes.withUnsafeMutableBytes { ioctl(cmd, $0) }
    }

    /// Runs a command on `bytes` built with `StructBytes`; throws its errno.
    public func call(_ command: IOMMUFDCommand, _ s: inout StructBytes) throws(Errno) {
        let rc = ioctl(command.number, &s.bytes)
        if rc < 0 { throw lastError ?? Errno(-rc) }
    }

    func fail(_ e: Errno) -> Int32 {
        lastError = e
        return -e.code
    }

    func executeCommand(_ c: IOMMUFDCommand, _ a: inout IoctlArgument) throws(Errno) {
        guard !isClosed else { throw Errno(Errno.EBADF, "the context is closed") }
        switch c {
        case .destroy: try destroy(a.u32(4))
        case .ioasAlloc: try ioasAllocIoctl(&a)
        case .ioasAllowIOVAs: try allowIOVAsIoctl(&a)
        case .ioasCopy: try copyIoctl(&a)
        case .ioasIOVARanges: try iovaRangesIoctl(&a)
        case .ioasMap: try mapIoctl(&a)
        case .ioasMapFile: try mapFileIoctl(&a)
        case .ioasUnmap: try unmapIoctl(&a)
        case .option: try optionIoctl(&a)
        case .vfioIOAS: try vfioIOASIoctl(&a)
        case .ioasChangeProcess: try changeProcessIoctl(&a)
        case .hwptAlloc: try hwptAllocIoctl(&a)
        case .getHWInfo: try hwInfoIoctl(&a)
        case .hwptSetDirtyTracking: try setDirtyTrackingIoctl(&a)
        case .hwptGetDirtyBitmap: try getDirtyBitmapIoctl(&a)
        case .hwptInvalidate: try invalidateIoctl(&a)
        case .faultQueueAlloc: try faultAllocIoctl(&a)
        case .viommuAlloc: try viommuAllocIoctl(&a)
        case .vdeviceAlloc: try vdeviceAllocIoctl(&a)
        case .veventqAlloc: try veventqAllocIoctl(&a)
        case .hwQueueAlloc: try hwQueueAllocIoctl(&a)
        }
    }

    // MARK: User memory (copy_from_user / copy_to_user, with their fault point)

    func copyIn(_ address: UInt64, _ bytes: UnsafeMutableRawBufferPointer) throws(Errno) {
        if faults.shouldFail(.iommufdUserCopy) || !memory.copyIn(from: address, into: bytes) {
            throw Errno.fault("user memory at 0x\(String(address, radix: 16)) is not readable")
        }
    }

    /// `count` bytes from user memory.
    func copyIn(_ address: UInt64, count: Int) throws(Errno) -> [UInt8] {
        var data = [UInt8](repeating: 0, count: count)
        var failed: Errno?
        data.withUnsafeMutableBytes { b in
            do throws(Errno) { try copyIn(address, b) } catch { failed = error }
        }
        if let failed { throw failed }
        return data
    }

    func copyOut(_ address: UInt64, bytes: [UInt8]) throws(Errno) {
        var failed: Errno?
        bytes.withUnsafeBytes { b in
            do throws(Errno) { try copyOut(address, b) } catch { failed = error }
        }
        if let failed { throw failed }
    }

    func copyOut(_ address: UInt64, _ bytes: UnsafeRawBufferPointer) throws(Errno) {
        if faults.shouldFail(.iommufdUserCopy) || !memory.copyOut(to: address, from: bytes) {
            throw Errno.fault("user memory at 0x\(String(address, radix: 16)) is not writable")
        }
    }
}
