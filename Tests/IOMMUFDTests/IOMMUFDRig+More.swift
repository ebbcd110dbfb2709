import Testing
import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD
@testable import Simulation

/// More helpers on the rig: memfds and IOAS_MAP_FILE, IOAS_COPY, ALLOW_IOVAS, a device
/// attached to an IOAS, DMA reads, and the VFIO type1 structs.
extension IOMMUFDRig {
    static let rw = UAPI.mapReadable | UAPI.mapWriteable

    /// A memfd of `length` bytes the process has open as `fd`.
    @discardableResult
    func memfd(_ length: UInt64, fd: Int32 = 3) -> SimulatedMemFD {
        let f = SimulatedMemFD(length: length, frames: machine.platform.frames)
        ctx.files[fd] = f
        return f
    }

    @discardableResult
    func mapFile(_ ioas: UInt32, fd: Int32 = 3, start: UInt64, length: UInt64, iova: UInt64? = nil,
                 flags: UInt32 = IOMMUFDRig.rw) -> (rc: Int32, iova: UInt64) {
        let (rc, out) = run(.ioasMapFile) { s in
            s.set32(4, flags | (iova != nil ? UAPI.mapFixedIOVA : 0)); s.set32(8, ioas); s.set32(12, UInt32(bitPattern: fd))
            s.set64(16, start); s.set64(24, length); s.set64(32, iova ?? 0)
        }
        return (rc, out.u64(32))
    }

    /// IOAS_COPY; a non-nil `dst` sets FIXED_IOVA.
    @discardableResult
    func copy(from src: UInt32, _ srcIOVA: UInt64, to dst: UInt32, _ dstIOVA: UInt64?, length: UInt64,
              flags: UInt32 = UAPI.mapReadable) -> (rc: Int32, iova: UInt64) {
        let (rc, out) = run(.ioasCopy) { s in
            s.set32(4, flags | (dstIOVA != nil ? UAPI.mapFixedIOVA : 0)); s.set32(8, dst); s.set32(12, src)
            s.set64(16, length); s.set64(24, dstIOVA ?? 0); s.set64(32, srcIOVA)
        }
        return (rc, out.u64(24))
    }

    /// IOAS_ALLOW_IOVAS with inclusive (start, last) pairs, passed through user memory.
    func allowIOVAs(_ ioas: UInt32, _ pairs: [(UInt64, UInt64)]) throws -> Int32 {
        let buf = try guestRAM(4096)
        var bytes = StructBytes(bytes: [UInt8](repeating: 0, count: 16 * pairs.count))
        for (i, p) in pairs.enumerated() { bytes.set64(16 * i, p.0); bytes.set64(16 * i + 8, p.1) }
        _ = bytes.bytes.withUnsafeBytes { process.copyOut(to: buf, from: $0) }
        return run(.ioasAllowIOVAs) { $0.set32(4, ioas); $0.set32(8, UInt32(pairs.count)); $0.set64(16, buf) }.rc
    }

    /// A bound device attached to `ioas` through an automatic domain: (device ID, HWPT, endpoint).
    func attachedDevice(to ioas: UInt32, _ name: String = "nic", dev: UInt8 = 1) throws -> (devID: UInt32, hwpt: HWPTPaging, ep: PCIeEndpoint) {
        let (device, ep) = try addDevice(name, dev: dev)
        let devID = try ctx.bind(device)
        let hwpt = try ctx.attach(devID, to: ioas)
        return (devID, try #require(ctx.object(hwpt) as? HWPTPaging), ep)
    }

    func ioasObject(_ id: UInt32) throws -> IOAS { try #require(ctx.object(id) as? IOAS) }

    func dmaRead(_ ep: PCIeEndpoint, _ address: UInt64, count: Int = 64) -> PCIeEndpoint.Completion? {
        var done: PCIeEndpoint.Completion?
        ep.submit(.read(address, length: count)) { done = $0 }
        try? machine.scheduler.wait(until: { done != nil }, timeoutNs: 1_000_000)
        return done
    }

    // MARK: VFIO type1 (vfio_compat.c)

    /// `struct vfio_iommu_type1_dma_map` {argsz, flags @4, vaddr @8, iova @16, size @24}.
    func vfioMapDMA(va: UInt64, iova: UInt64, size: UInt64, flags: UInt32 = 3, argsz: UInt32 = 32) -> Int32 {
        var s = StructBytes(size: 32)
        s.set32(0, argsz); s.set32(4, flags); s.set64(8, va); s.set64(16, iova); s.set64(24, size)
        return ctx.ioctl(IOMMUFDContext.vfioIOMMUMapDMA, &s.bytes)
    }

    /// `struct vfio_iommu_type1_dma_unmap` {argsz, flags @4, iova @8, size @16}: (rc, size after).
    func vfioUnmapDMA(iova: UInt64, size: UInt64, flags: UInt32 = 0, argsz: UInt32 = 24) -> (rc: Int32, size: UInt64) {
        var s = StructBytes(size: 24)
        s.set32(0, argsz); s.set32(4, flags); s.set64(8, iova); s.set64(16, size)
        let rc = ctx.ioctl(IOMMUFDContext.vfioIOMMUUnmapDMA, &s.bytes)
        return (rc, s.u64(16))
    }

    /// `struct vfio_iommu_type1_info` in a `buffer`-byte user buffer filled with `fill`.
    func vfioGetInfo(argsz: UInt32, buffer: Int = 128, fill: UInt8 = 0xEE) -> (rc: Int32, out: StructBytes) {
        var s = StructBytes(bytes: [UInt8](repeating: fill, count: buffer))
        s.set32(0, argsz)
        let rc = ctx.ioctl(IOMMUFDContext.vfioIOMMUGetInfo, &s.bytes)
        return (rc, s)
    }

    /// IOMMU_VFIO_IOAS {size, ioas_id @4, op @8 (u16), __reserved @10 (u16)}: (rc, ioas_id after).
    @discardableResult
    func vfioIOAS(_ op: UInt16, _ ioas: UInt32 = 0, reserved: UInt16 = 0) -> (rc: Int32, id: UInt32) {
        let (rc, out) = run(.vfioIOAS) { $0.set32(4, ioas); $0.set16(8, op); $0.set16(10, reserved) }
        return (rc, out.u32(4))
    }
}
