import Platform
import Kernel
import Formats

/// `IOMMU_TEST_CMD` (Linux drivers/iommu/iommufd/selftest.c `iommufd_test`, with the layouts
/// of iommufd_test.h): the kernel's selftest interface, present when the mock driver is
/// registered (a kernel built with CONFIG_IOMMUFD_TEST); otherwise its number is unknown
/// (ENOTTY). `struct iommu_test_cmd` is {size, op, id, __reserved, union @16 (48 bytes),
/// last @64}: 72 bytes, 68 at least, framed as every iommufd command.
public enum IOMMUTestOp: UInt32, CaseIterable, Sendable {
    case addReserved = 1, mockDomain, checkMap, checkRefs, createAccess, destroyAccessPages, accessPages, accessRW,
         setTemporaryMemoryLimit, mockDomainReplace, accessReplaceIOAS, mockDomainFlags, dirty, checkIOTLB, triggerIOPF,
         checkDeviceCache, triggerVEvent, pasidAttach, pasidReplace, pasidDetach, pasidCheckHWPT

    /// `IOMMU_TEST_CMD` = `_IO(';', 0x80 + 32)`.
    public static let number: UInt32 = 0x3ba0
    public static let size = 72
    public static let minimumSize = 68
}

extension IOMMUFDContext {
    /// The global cap on the core's temporary batch memory the selftest sets
    /// (SET_TEMP_MEMORY_LIMIT): it shrinks batches only, so results never depend on it.
    nonisolated(unsafe) public static var temporaryMemoryLimit: UInt32 = 65536

    /// Whether `cmd` is the selftest's command on this system.
    func isTestCommand(_ cmd: UInt32) -> Bool { cmd == IOMMUTestOp.number && mockDriver != nil }

    /// Runs IOMMU_TEST_CMD on the user's struct at `arg` (the C ABI), framed as every
    /// iommufd command: `size` readable (EFAULT), at least 68 (EINVAL), zero past 72 (E2BIG).
    func testIoctl(userArgument arg: UInt64) -> Int32 {
        var size32: UInt32 = 0
        guard withUnsafeMutableBytes(of: &size32, { memory.copyIn(from: arg, into: $0) }) else {
            return fail(Errno.fault("the argument at 0x\(String(arg, radix: 16)) is not readable"))
        }
        let size = Int(UInt32(littleEndian: size32))
        guard size >= IOMMUTestOp.minimumSize else { return fail(Errno.inval("IOMMU_TEST_CMD: size \(size) is below 68")) }
        let copied = min(size, IOMMUTestOp.size)
        var bytes = [UInt8](repeating: 0, count: IOMMUTestOp.size)
        guard bytes.withUnsafeMutableBytes({ memory.copyIn(from: arg, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<copied])) }) else {
            return fail(Errno.fault("IOMMU_TEST_CMD: the struct is not readable"))
        }
        if size > IOMMUTestOp.size {
            do { try checkZeroTail(arg &+ UInt64(IOMMUTestOp.size), size - IOMMUTestOp.size) } catch { return fail(error) }
        }
        var responded = false
        var rc: Int32 = 0
        do { try testCommand(&bytes, userSize: size, responded: &responded) } catch { rc = fail(error) }
        if responded && !bytes.withUnsafeBytes({ memory.copyOut(to: arg, from: UnsafeRawBufferPointer(rebasing: $0[0..<copied])) }) && rc == 0 {
            rc = fail(Errno.fault("IOMMU_TEST_CMD: the response could not be written back"))
            undoUnreported(StructBytes(bytes: bytes))
        }
        return rc
    }

    /// What the selftest undoes when its response cannot be written back (mock-driver §5.12):
    /// MOCK_DOMAIN, CREATE_ACCESS, ACCESS_PAGES and PASID_ATTACH; the replace ops and DIRTY
    /// keep what they did.
    private func undoUnreported(_ c: StructBytes) {
        switch IOMMUTestOp(rawValue: c.u32(4)) {
        case .mockDomain, .mockDomainFlags:
            if let s = table.object(c.u32(16)) as? SelftestObject, !s.isDestroyed { try? destroy(s.id) }
        case .createAccess:
            let fd = Int32(bitPattern: c.u32(16))
            closeTestAccess(fd)
            releaseFile(fd)
        case .accessPages:
            try? testDestroyAccessPages(fd: Int32(bitPattern: c.u32(8)), item: c.u32(20))
        case .pasidAttach:
            if let s = table.object(c.u32(8)) as? SelftestObject, let d = s.idev, !d.isDestroyed {
                detach(d, pasid: Self.userPASID(PASID(truncating: c.u32(16))))
            }
        default: break
        }
    }

    /// The same on the caller's bytes (tests): the array is the user's struct.
    func testIoctl(_ arg: UnsafeMutableRawBufferPointer) -> Int32 {
        guard arg.count >= 4 else { return fail(Errno.fault("the argument is not readable")) }
        let size = Int(UInt32(littleEndian: arg.loadUnaligned(as: UInt32.self)))
        guard size >= IOMMUTestOp.minimumSize else { return fail(Errno.inval("IOMMU_TEST_CMD: size \(size) is below 68")) }
        guard arg.count >= size else { return fail(Errno.fault("IOMMU_TEST_CMD: only \(arg.count) of \(size) bytes readable")) }
        if size > IOMMUTestOp.size, arg[IOMMUTestOp.size..<size].contains(where: { $0 != 0 }) {
            return fail(Errno(Errno.E2BIG, "IOMMU_TEST_CMD: bytes past the 72-byte struct are not zero"))
        }
        let copied = min(size, IOMMUTestOp.size)
        var bytes = [UInt8](repeating: 0, count: IOMMUTestOp.size)
        for i in 0..<copied { bytes[i] = arg[i] }
        var responded = false
        var rc: Int32 = 0
        do { try testCommand(&bytes, userSize: size, responded: &responded) } catch { rc = fail(error) }
        if responded { for i in 0..<copied { arg[i] = bytes[i] } }
        return rc
    }

    /// One test command on the kernel's copy of the struct; `responded` when it goes back.
    private func testCommand(_ bytes: inout [UInt8], userSize: Int, responded: inout Bool) throws(Errno) {
        guard !isClosed else { throw Errno(Errno.EBADF, "the context is closed") }
        guard let mock = mockDriver else { throw Errno(Errno.ENOTTY, "no selftest on this system") }
        var c = StructBytes(bytes: bytes)
        defer { bytes = c.bytes }
        guard let op = IOMMUTestOp(rawValue: c.u32(4)) else { throw Errno.notsupp("selftest op \(c.u32(4))") }
        let id = c.u32(8)
        switch op {
        case .addReserved:
            let ioas: IOAS = try get(id, .ioas)
            let start = c.u64(16), length = c.u64(24)
            try ioas.reserve(start, start &+ length &- 1, owner: ObjectIdentifier(SelftestObject.self))
        case .mockDomain, .mockDomainFlags:
            let (stdev, hwpt, idev) = try mockDomain(mock, ptID: id, flags: op == .mockDomainFlags ? c.u32(28) : 0)
            c.set32(16, stdev); c.set32(20, hwpt); c.set32(24, idev)
            responded = true
        case .checkMap: try testCheckMap(id, iova: c.u64(16), length: c.u64(24), uptr: c.u64(32))
        case .checkRefs: try testCheckRefs(length: c.u64(16), uptr: c.u64(24), refs: c.u32(32))
        case .createAccess:
            c.set32(16, try testCreateAccess(ioasID: id, flags: c.u32(20)))
            responded = true
        case .destroyAccessPages: try testDestroyAccessPages(fd: Int32(bitPattern: id), item: c.u32(16))
        case .accessPages:
            c.set32(20, try testAccessPages(fd: Int32(bitPattern: id), flags: c.u32(16), iova: c.u64(24), length: c.u64(32), uptr: c.u64(40)))
            responded = true
        case .accessRW:
            try testAccessRW(fd: Int32(bitPattern: id), iova: c.u64(16), length: c.u64(24), uptr: c.u64(32), flags: c.u32(40))
        case .setTemporaryMemoryLimit:
            guard c.u32(16) >= 12 else { throw Errno.inval("temporary memory limit \(c.u32(16)) is below 12") }
            Self.temporaryMemoryLimit = c.u32(16)
        case .mockDomainReplace:
            let s = try selftestObject(id)
            c.set32(16, try replace(s.idev.id, with: c.u32(16)))
            responded = true
        case .accessReplaceIOAS:
            let t = try testAccess(Int32(bitPattern: id))
            try replaceAccessIOAS(t.access, ioasID: c.u32(16))
        case .dirty:
            c.set64(56, try testDirty(id, iova: c.u64(24), length: c.u64(32), pageSize: c.u64(40), uptr: c.u64(48)))
            responded = true
        case .checkIOTLB:
            let h: HWPTNested = try get(id, .hwptNested)
            guard let n = h.domain as? MockNestedDomain else { throw Errno.inval("\(h) is not a mock nested domain") }
            let slot = c.u32(16)
            guard slot < 4, n.iotlb[Int(slot)] == c.u32(20) else { throw Errno.inval("IOTLB slot \(slot) does not hold 0x\(String(c.u32(20), radix: 16))") }
        case .triggerIOPF:
            let d: DeviceObject = try get(c.u32(16), .device)
            mock.triggerPageRequest(d.device, pasid: c.u32(20), group: c.u32(24), permissions: c.u32(28), address: c.u64(32))
        case .checkDeviceCache:
            let d: DeviceObject = try get(id, .device)
            let slot = c.u32(16)
            guard let state = MockDeviceState.of(d.device), slot < 4, state.cache[Int(slot)] == c.u32(20) else {
                throw Errno.inval("cache slot \(slot) does not hold 0x\(String(c.u32(20), radix: 16))")
            }
        case .triggerVEvent:
            let d: DeviceObject = try get(c.u32(16), .device)
            do throws(IOMMUError) { try MockVIOMMU.triggerEvent(for: d.device) } catch { throw Errno(error) }
        case .pasidAttach, .pasidReplace:
            let s = try selftestObject(id)
            let pasid = PASID(truncating: c.u32(16))
            let hwpt = op == .pasidAttach ? try attach(s.idev.id, to: c.u32(20), pasid: pasid) : try replace(s.idev.id, with: c.u32(20), pasid: pasid)
            c.set32(20, hwpt)
            responded = true
        case .pasidDetach:
            let s = try selftestObject(id)
            detach(s.idev, pasid: Self.userPASID(PASID(truncating: c.u32(16))))
        case .pasidCheckHWPT:
            let s = try selftestObject(id)
            try testPASIDCheck(s.idev, pasid: c.u32(16), hwptID: c.u32(20))
        }
    }

    /// The selftest object `id` with its DEVICE object (ENOENT otherwise).
    private func selftestObject(_ id: UInt32) throws(Errno) -> (object: SelftestObject, idev: DeviceObject) {
        let s: SelftestObject = try get(id, .selftest)
        guard let d = s.idev, !d.isDestroyed else { throw Errno.noent("selftest object \(id) has no device") }
        return (s, d)
    }

    /// PASID_CHECK_HWPT: what (device, pasid) is attached to through this context must be
    /// the domain of `hwptID` (0: nothing).
    private func testPASIDCheck(_ d: DeviceObject, pasid: UInt32, hwptID: UInt32) throws(Errno) {
        let attached = d.igroup.attachments[pasid]?.hwpt.domain
        guard hwptID != 0 else {
            if attached != nil { throw Errno.inval("PASID \(pasid) is attached") }
            return
        }
        guard let o = table.object(hwptID), !o.isDestroyed else { throw Errno.noent("no object with ID \(hwptID)") }
        guard let h = o as? HWPT else { throw Errno.inval("\(o) is not a HWPT") }
        guard attached === h.domain else { throw Errno.inval("PASID \(pasid) is not attached to \(h)") }
    }
}
