import Platform
import Kernel

/// The ioctl entry as a real process reaches it (the C ABI's preload library): the argument
/// is a user pointer, read and written only through `memory` (copy_from_user and
/// copy_to_user), so a bad pointer is EFAULT, never a crash. Same framing as the byte entry
/// (Linux `iommufd_fops_ioctl`): the leading u32 `size` (EFAULT), the exact number (ENOTTY),
/// the minimum (EINVAL), zero bytes past the kernel's struct (`copy_struct_from_user`: E2BIG,
/// read in pieces however large `size` is), and the response copied back (a failed copy
/// back is EFAULT, as `iommufd_ucmd_respond` answers).
extension IOMMUFDContext {
    /// Runs ioctl `cmd` with argument `arg` (a pointer, or a value for the VFIO commands that
    /// take one). Returns 0, a non-negative result, or -errno. No allocation on this path
    /// for iommufd commands (the struct goes through the context's scratch buffer).
    public func ioctl(_ cmd: UInt32, userArgument arg: UInt64) -> Int32 {
        let nr = UInt8(truncatingIfNeeded: cmd)
        guard let command = IOMMUFDCommand(rawValue: nr) else {
            return isTestCommand(cmd) ? (isClosed ? fail(Errno(Errno.EBADF, "the context is closed")) : testIoctl(userArgument: arg)) : vfioUserIoctl(cmd, arg)
        }
        guard !isClosed else { return fail(Errno(Errno.EBADF, "the context is closed")) }
        var size32: UInt32 = 0
        guard withUnsafeMutableBytes(of: &size32, { memory.copyIn(from: arg, into: $0) }) else {
            return fail(Errno.fault("the argument at 0x\(String(arg, radix: 16)) is not readable"))
        }
        let size = Int(UInt32(littleEndian: size32))
        guard cmd == command.number else { return fail(Errno(Errno.ENOTTY, "0x\(String(cmd, radix: 16)) is not \(command.name)")) }
        guard size >= command.minimumSize else { return fail(Errno.inval("\(command.name): size \(size) is below \(command.minimumSize)")) }
        let kernelSize = command.size
        let copied = min(size, kernelSize)
        guard memory.copyIn(from: arg, into: UnsafeMutableRawBufferPointer(start: scratch, count: copied)) else {
            return fail(Errno.fault("\(command.name): the struct is not readable"))
        }
        if size > kernelSize {
            if let e = checkZeroTail(arg &+ UInt64(kernelSize), size - kernelSize, command) { return fail(e) }
        }
        if copied < kernelSize { (scratch + copied).initializeMemory(as: UInt8.self, repeating: 0, count: kernelSize - copied) }
        var a = IoctlArgument(base: scratch, kernelSize: kernelSize, userSize: size)
        var rc: Int32 = 0
        do { try executeCommand(command, &a) } catch { rc = fail(error) }
        if a.responded && !memory.copyOut(to: arg, from: UnsafeRawBufferPointer(start: scratch, count: copied)) && rc == 0 {
            rc = fail(Errno.fault("\(command.name): the response could not be written back"))
            undoUnreported(command, a)
        }
        return rc
    }

    /// A command whose response could not be written back made an object the program never
    /// learns of: the allocation commands undo it, as theirs do when `iommufd_ucmd_respond`
    /// fails (the object aborted, its file closed).
    private func undoUnreported(_ command: IOMMUFDCommand, _ a: IoctlArgument) {
        let idOffset: Int
        switch command {
        case .ioasAlloc, .faultQueueAlloc: idOffset = 8
        case .vdeviceAlloc: idOffset = 12
        case .hwptAlloc: idOffset = 16
        case .viommuAlloc, .veventqAlloc, .hwQueueAlloc: idOffset = 20
        default: return
        }
        guard let o = table.object(a.u32(idOffset)), !o.isDestroyed else { return }
        switch o {
        case let f as FaultObject:
            releaseFile(Int32(bitPattern: a.u32(12)))
            f.closeFile()
        case let q as VEventQueueObject:
            releaseFile(Int32(bitPattern: a.u32(24)))
            q.closeFile()
        case let vd as VDeviceObject:
            // Linux finalizes a vDEVICE after the response: it never existed.
            remove(vd)
            return
        default: break
        }
        try? destroy(o.id)
    }

    /// Bytes [address, address + count) must read as zero (E2BIG) and be readable (EFAULT).
    private func checkZeroTail(_ address: UInt64, _ count: Int, _ command: IOMMUFDCommand) -> Errno? {
        var chunk = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        var at = 0
        while at < count {
            let n = min(count - at, 64)
            let result: Errno? = withUnsafeMutableBytes(of: &chunk) { buffer -> Errno? in
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
                guard memory.copyIn(from: address &+ UInt64(at), into: piece) else {
                    return Errno.fault("\(command.name): bytes past the kernel's struct are not readable")
                }
                if let i = piece.firstIndex(where: { $0 != 0 }) {
                    return Errno(Errno.E2BIG, "\(command.name): byte \(command.size + at + i) past the kernel's \(command.size)-byte struct is not zero")
                }
                return nil
            }
            if let result { return result }
            at += n
        }
        return nil
    }

    /// The VFIO compatibility ioctls from a real process: the three that take a value use
    /// `arg` as it is; the struct ones are framed by `argsz` (read first: EFAULT; the struct
    /// then copied in and, as the kernel writes it, back).
    private func vfioUserIoctl(_ cmd: UInt32, _ arg: UInt64) -> Int32 {
        switch cmd {
        case Self.vfioGetAPIVersion, Self.vfioCheckExtension, Self.vfioSetIOMMU:
            return ioctl(cmd, value: arg)
        case Self.vfioIOMMUMapDMA, Self.vfioIOMMUUnmapDMA, Self.vfioIOMMUGetInfo:
            var argsz: UInt32 = 0
            guard withUnsafeMutableBytes(of: &argsz, { memory.copyIn(from: arg, into: $0) }) else {
                return fail(Errno.fault("the argument at 0x\(String(arg, radix: 16)) is not readable"))
            }
            // The kernel reads the fixed part (`minsz`, EFAULT) and checks argsz against it in
            // the handler; GET_INFO writes up to argsz (its capability chain): those bytes are
            // read too, so what the handler leaves alone goes back unchanged.
            let fixed = cmd == Self.vfioIOMMUMapDMA ? 32 : cmd == Self.vfioIOMMUUnmapDMA ? 24 : 20
            let span = cmd == Self.vfioIOMMUGetInfo ? max(fixed, min(Int(argsz), 4096)) : fixed
            var bytes = [UInt8](repeating: 0, count: span)
            guard bytes.withUnsafeMutableBytes({ memory.copyIn(from: arg, into: $0) }) else {
                return fail(Errno.fault("the argument is not readable"))
            }
            let rc = bytes.withUnsafeMutableBytes { vfioIoctl(cmd, $0) }
            if cmd != Self.vfioIOMMUMapDMA {
                guard bytes.withUnsafeBytes({ memory.copyOut(to: arg, from: $0) }) else {
                    return rc < 0 ? rc : fail(Errno.fault("the result could not be written back"))
                }
            }
            return rc
        default:
            return fail(Errno(Errno.ENOTTY, "ioctl 0x\(String(cmd, radix: 16)) is not an iommufd or VFIO command"))
        }
    }
}
