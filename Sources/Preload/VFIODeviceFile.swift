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

/// An open VFIO device cdev (/dev/vfio/devices/vfioN) of an emulated device, with the ioctls
/// a VMM uses on it with iommufd (include/uapi/linux/vfio.h, drivers/vfio/device_cdev.c):
/// BIND_IOMMUFD, ATTACH/DETACH_IOMMUFD_PT (with PASID) and GET_INFO; plus the emulator's own
/// DMA command, through which a program makes the device move bytes.
final class VFIODeviceFile {
    static let getInfo: UInt32 = 0x3b6b            // _IO(';', 100 + 7)
    static let bindIOMMUFD: UInt32 = 0x3b76        // _IO(';', 100 + 18)
    static let attachIOMMUFDPT: UInt32 = 0x3b77    // _IO(';', 100 + 19)
    static let detachIOMMUFDPT: UInt32 = 0x3b78    // _IO(';', 100 + 20)
    /// The emulator's DMA command: `struct swiftiommu_device_dma` {argsz u32, flags u32
    /// (WRITE 1: the device writes memory; PASID 2; ATS 4: through ATS, with page requests
    /// for what is not mapped when the device has PRI; ASYNC 8: return at once with a
    /// handle), pasid u32, out_status u32 (0 done, 1 the DMA faulted or failed, 2 pending),
    /// iova u64, length u64, data u64 (the program's buffer: what the device writes, or where
    /// what it read goes; unused with ATS), out_fault_reason u32 (the VT-d fault reason, or the SMMUv3 event number; 0xFF for a silent abort),
    /// out_handle u32} = 48 bytes. `_IO('S', 0x01)`, outside the VFIO range.
    static let deviceDMA: UInt32 = 0x5301
    /// `struct swiftiommu_device_dma_wait` {argsz u32, handle u32, out_status u32,
    /// out_transferred u32} = 16: the machine runs until the asynchronous DMA `handle`
    /// completes or nothing more can happen (then status 2: it waits, e.g. for a page
    /// response). `_IO('S', 0x02)`.
    static let deviceDMAWait: UInt32 = 0x5302
    static let dmaWrite: UInt32 = 1, dmaPASID: UInt32 = 2, dmaATS: UInt32 = 4, dmaAsync: UInt32 = 8

    /// Asynchronous DMAs: handle → the ATS access's result once it ended.
    private var pending: [UInt32: ATSAccessResult?] = [:]
    private var nextHandle: UInt32 = 1

    let index: Int
    let device: Device
    let endpoint: PCIeEndpoint
    /// The iommufd context (whichever of its descriptors named it) and device ID it is bound to.
    var bound: (context: IOMMUFDContext, id: UInt32)?

    init(index: Int, device: Device, endpoint: PCIeEndpoint) {
        self.index = index; self.device = device; self.endpoint = endpoint
    }

    func ioctl(_ cmd: UInt32, _ arg: UInt64, runtime: PreloadRuntime) -> Int {
        let m = runtime.memory
        func read(_ n: Int) -> StructBytes? {
            var s = StructBytes(size: n)
            let ok = s.bytes.withUnsafeMutableBytes { m.copyIn(from: arg, into: $0) }
            return ok ? s : nil
        }
        func write(_ s: StructBytes, _ n: Int) -> Bool {
            s.bytes.withUnsafeBytes { m.copyOut(to: arg, from: UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
        // A cdev not bound to iommufd answers EINVAL to all but BIND, before reading anything
        // (vfio_device_fops_cdev_ioctl / vfio_device_fops_unl_ioctl).
        if cmd != Self.bindIOMMUFD && bound == nil { return -Int(EINVAL) }
        switch cmd {
        case Self.getInfo:
            // struct vfio_device_info {argsz, flags @4, num_regions @8, num_irqs @12,
            // cap_offset @16, pad @20}; minsz = 16 (vfio_pci_core_ioctl_get_info), and
            // min(argsz, 24) bytes go back (no capabilities: cap_offset 0).
            guard let head = read(4) else { return -Int(EFAULT) }
            let argsz = Int(head.u32(0))
            guard argsz >= 16 else { return -Int(EINVAL) }
            guard var s = read(min(argsz, 24)) else { return -Int(EFAULT) }
            s.set32(4, 1 << 1 | 1 << 0) // VFIO_DEVICE_FLAGS_PCI | RESET
            s.set32(8, 9)              // VFIO_PCI_NUM_REGIONS (BARs 0-5, ROM, config, VGA)
            s.set32(12, 5)             // VFIO_PCI_NUM_IRQS (INTx, MSI, MSI-X, ERR, REQ)
            if argsz >= 20 { s.set32(16, 0) }
            return write(s, min(argsz, 24)) ? 0 : -Int(EFAULT)
        case Self.bindIOMMUFD:
            // struct vfio_device_bind_iommufd {argsz, flags @4 (TOKEN 1), iommufd @8 (s32),
            // out_devid @12, token_uuid_ptr @16}: argsz first (get_user), minsz 16, then the
            // struct as copy_struct_from_user takes it (24 bytes; a longer one's tail must be
            // zero: E2BIG). With TOKEN the UUID is read (EFAULT); these devices take none (EINVAL).
            guard let head = read(4) else { return -Int(EFAULT) }
            let argsz = Int(head.u32(0))
            guard argsz >= 16 else { return -Int(EINVAL) }
            guard var s = read(min(argsz, 24)) else { return -Int(EFAULT) }
            if argsz > 24 {
                var tail = [UInt8](repeating: 0, count: min(argsz - 24, 4096))
                guard tail.withUnsafeMutableBytes({ m.copyIn(from: arg &+ 24, into: $0) }) else { return -Int(EFAULT) }
                if tail.contains(where: { $0 != 0 }) { return -Int(E2BIG) }
            }
            guard s.u32(4) & ~1 == 0 else { return -Int(EINVAL) }
            if s.u32(4) & 1 != 0 {
                var uuid = [UInt8](repeating: 0, count: 16)
                let ptr = argsz >= 24 ? s.u64(16) : 0
                guard uuid.withUnsafeMutableBytes({ m.copyIn(from: ptr, into: $0) }) else { return -Int(EFAULT) }
                return -Int(EINVAL)
            }
            s = StructBytes(bytes: Array(s.bytes[0..<16]))
            let fd = Int32(bitPattern: s.u32(8))
            guard fd >= 0 else { return -Int(EINVAL) }
            guard bound == nil else { return -Int(EINVAL) }
            guard let ctx = runtime.context(fd) else { return fcntl(fd, F_GETFD) < 0 ? -Int(EBADF) : -Int(EBADFD) }
            let id: UInt32
            do { id = try ctx.bind(device) } catch { return -Int(error.code) }
            bound = (ctx, id)
            s.set32(12, id)
            guard write(s, 16) else { unbind(); return -Int(EFAULT) }
            return 0
        case Self.attachIOMMUFDPT:
            // struct vfio_device_attach_iommufd_pt {argsz, flags @4 (PASID 1), pt_id @8, pasid @12}.
            guard var s = read(12) else { return -Int(EFAULT) }
            guard s.u32(0) >= 12, s.u32(4) & ~1 == 0 else { return -Int(EINVAL) }
            var pasid: PASID?
            if s.u32(4) & 1 != 0 {
                guard s.u32(0) >= 16, let full = read(16) else { return s.u32(0) < 16 ? -Int(EINVAL) : -Int(EFAULT) }
                guard full.u32(12) <= 0xFFFFF else { return -Int(EINVAL) }
                pasid = PASID(truncating: full.u32(12))
            }
            guard let (ctx, id) = bound, !ctx.isClosed else { return -Int(EINVAL) }
            let hwpt: UInt32
            do { hwpt = try ctx.attach(id, to: s.u32(8), pasid: pasid) } catch { return -Int(error.code) }
            s.set32(8, hwpt)
            guard write(s, 12) else {
                try? ctx.detach(id, pasid: pasid)
                return -Int(EFAULT)
            }
            return 0
        case Self.detachIOMMUFDPT:
            // struct vfio_device_detach_iommufd_pt {argsz, flags @4 (PASID 1), pasid @8}.
            guard let s = read(8) else { return -Int(EFAULT) }
            guard s.u32(0) >= 8, s.u32(4) & ~1 == 0 else { return -Int(EINVAL) }
            var pasid: PASID?
            if s.u32(4) & 1 != 0 {
                guard s.u32(0) >= 12, let full = read(12) else { return s.u32(0) < 12 ? -Int(EINVAL) : -Int(EFAULT) }
                guard full.u32(8) <= 0xFFFFF else { return -Int(EINVAL) }
                pasid = PASID(truncating: full.u32(8))
            }
            guard let (ctx, id) = bound, !ctx.isClosed else { return -Int(EINVAL) }
            do { try ctx.detach(id, pasid: pasid) } catch { return -Int(error.code) }
            return 0
        case Self.deviceDMA:
            return dma(arg, runtime: runtime)
        case Self.deviceDMAWait:
            return dmaWait(arg, runtime: runtime)
        default:
            return -Int(ENOTTY)
        }
    }

    /// The emulator's DMA command: the device reads or writes `length` bytes at `iova`
    /// through the IOMMU as a real DMA would, the machine runs until it completes.
    private func dma(_ arg: UInt64, runtime: PreloadRuntime) -> Int {
        let m = runtime.memory
        var s = StructBytes(size: 48)
        guard s.bytes.withUnsafeMutableBytes({ m.copyIn(from: arg, into: $0) }) else { return -Int(EFAULT) }
        let flags = s.u32(4), length = s.u64(24), data = s.u64(32)
        let known = Self.dmaWrite | Self.dmaPASID | Self.dmaATS | Self.dmaAsync
        guard s.u32(0) >= 48, flags & ~known == 0, length > 0, length <= 1 << 20 else { return -Int(EINVAL) }
        let pasid = flags & Self.dmaPASID != 0 ? PASID(truncating: s.u32(8)) : nil
        if flags & Self.dmaATS != 0 {
            // Through ATS (and PRI): the endpoint translates, asks for missing pages, retries.
            guard device.ats else { return -Int(EOPNOTSUPP) }
            let h = nextHandle
            nextHandle &+= 1
            pending[h] = .some(nil)
            endpoint.atsAccess(pasid: pasid, address: s.u64(16), length: Int(length), write: flags & Self.dmaWrite != 0) { [weak self] r in
                self?.pending[h] = .some(r)
            }
            runtime.settle()
            s.set32(44, h)
            if flags & Self.dmaAsync == 0 || (pending[h] ?? nil) != nil {
                s.set32(12, Self.status(pending[h] ?? nil))
                if flags & Self.dmaAsync == 0 { pending[h] = nil }
            } else {
                s.set32(12, 2)
            }
            return s.bytes.withUnsafeBytes({ m.copyOut(to: arg, from: $0) }) ? 0 : -Int(EFAULT)
        }
        guard flags & Self.dmaAsync == 0 else { return -Int(EINVAL) }
        var request: PCIeEndpoint.Request
        if flags & Self.dmaWrite != 0 {
            var bytes = [UInt8](repeating: 0, count: Int(length))
            guard bytes.withUnsafeMutableBytes({ m.copyIn(from: data, into: $0) }) else { return -Int(EFAULT) }
            request = .write(s.u64(16), bytes, pasid: pasid)
        } else {
            request = .read(s.u64(16), length: Int(length), pasid: pasid)
        }
        var done: PCIeEndpoint.Completion?
        endpoint.submit(request) { done = $0 }
        try? runtime.machine.scheduler.wait(until: { done != nil }, timeoutNs: 100_000_000)
        guard let c = done else { return -Int(ETIMEDOUT) }
        if let f = c.fault {
            s.set32(12, 1)
            s.set32(40, UInt32(f.reason?.rawValue ?? f.event?.rawValue ?? 0xFF))
        } else {
            s.set32(12, 0)
            if flags & Self.dmaWrite == 0 {
                guard c.data.withUnsafeBytes({ m.copyOut(to: data, from: $0) }) else { return -Int(EFAULT) }
            }
        }
        return s.bytes.withUnsafeBytes({ m.copyOut(to: arg, from: $0) }) ? 0 : -Int(EFAULT)
    }

    static func status(_ r: ATSAccessResult?) -> UInt32 {
        guard let r else { return 2 }
        return r.outcome == .completed ? 0 : 1
    }

    private func dmaWait(_ arg: UInt64, runtime: PreloadRuntime) -> Int {
        let m = runtime.memory
        var s = StructBytes(size: 16)
        guard s.bytes.withUnsafeMutableBytes({ m.copyIn(from: arg, into: $0) }) else { return -Int(EFAULT) }
        guard s.u32(0) >= 16 else { return -Int(EINVAL) }
        let h = s.u32(4)
        guard let entry = pending[h] else { return -Int(ENOENT) }
        var result = entry
        if result == nil {
            runtime.settle()
            result = pending[h] ?? nil
        }
        s.set32(8, Self.status(result))
        s.set32(12, UInt32(clamping: result?.transferred ?? 0))
        if result != nil { pending[h] = nil }
        return s.bytes.withUnsafeBytes({ m.copyOut(to: arg, from: $0) }) ? 0 : -Int(EFAULT)
    }

    /// Closing the device file: detached and unbound (the iommufd device object goes).
    func unbind() {
        guard let (ctx, id) = bound else { return }
        bound = nil
        if !ctx.isClosed { try? ctx.unbind(id) }
    }
}
