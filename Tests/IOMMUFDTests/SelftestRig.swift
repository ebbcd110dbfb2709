import Testing
import Platform
import Formats
import Kernel
import IOMMUFD
@testable import Simulation

/// An `IOMMUFDRig` whose core also has the selftest's mock driver (a kernel with
/// CONFIG_IOMMUFD_TEST), and helpers that build `struct iommu_test_cmd` (72 bytes: size @0,
/// op @4, id @8, union @16) and the uAPI structs the selftest uses around it, each going
/// through the ioctl entry as bytes. Return codes are 0 or -errno.
final class SelftestRig {
    let rig: IOMMUFDRig
    let mock: MockIOMMUDriver
    var ctx: IOMMUFDContext { rig.ctx }
    var core: IOMMUCore { rig.core }
    var process: Process { rig.process }

    /// `IOMMU_TEST_CMD` = `_IO(';', 0xa0)`.
    static let testCmd: UInt32 = 0x3ba0
    /// `MOCK_APERTURE_START`, `MOCK_PAGE_SIZE`, the default IOTLB and device cache values.
    static let start: UInt64 = 0x100_0000
    static let mockPage: UInt64 = 2048
    static let iotlbDefault: UInt32 = 0xbadbeef
    static let cacheDefault: UInt32 = 0xbaddad
    /// Device flags of MOCK_DOMAIN_FLAGS.
    static let noDirty: UInt32 = 1, hugeIOVA: UInt32 = 2, pasid: UInt32 = 4

    init(memory: UInt64 = 64 << 20, registerMock: Bool = true) throws {
        rig = try IOMMUFDRig(memory: memory)
        mock = MockIOMMUDriver(platform: rig.machine.platform)
        if registerMock { rig.machine.core.register(mock) }
    }

    // MARK: IOMMU_TEST_CMD

    /// Runs IOMMU_TEST_CMD with `op` on a struct of `size` bytes (a buffer of at least 72).
    @discardableResult
    func cmd(_ op: UInt32, id: UInt32 = 0, size: Int = 72, _ fill: (inout StructBytes) -> Void = { _ in }) -> (rc: Int32, out: StructBytes) {
        var s = StructBytes(size: max(size, 72))
        s.set32(0, UInt32(size))
        s.set32(4, op)
        s.set32(8, id)
        fill(&s)
        let rc = ctx.ioctl(Self.testCmd, &s.bytes)
        return (rc, s)
    }

    @discardableResult
    func cmd(_ op: IOMMUTestOp, id: UInt32 = 0, _ fill: (inout StructBytes) -> Void = { _ in }) -> (rc: Int32, out: StructBytes) {
        cmd(op.rawValue, id: id, fill)
    }

    struct MockDevice: Equatable, CustomStringConvertible {
        var stdev: UInt32, hwpt: UInt32, idev: UInt32
        var description: String { "stdev \(stdev) hwpt \(hwpt) idev \(idev)" }
    }

    /// MOCK_DOMAIN (flags nil) or MOCK_DOMAIN_FLAGS onto `pt`.
    func mockDomain(_ pt: UInt32, flags: UInt32? = nil) -> (rc: Int32, dev: MockDevice) {
        let (rc, out) = cmd(flags == nil ? .mockDomain : .mockDomainFlags, id: pt) { s in if let flags { s.set32(28, flags) } }
        return (rc, MockDevice(stdev: out.u32(16), hwpt: out.u32(20), idev: out.u32(24)))
    }

    func requireMock(_ pt: UInt32, flags: UInt32? = nil) throws -> MockDevice {
        let r = mockDomain(pt, flags: flags)
        try #require(r.rc == 0, "MOCK_DOMAIN: \(lastError)")
        return r.dev
    }

    /// MOCK_DOMAIN_REPLACE: (rc, the resolved HWPT).
    @discardableResult
    func replace(_ stdev: UInt32, _ pt: UInt32) -> (rc: Int32, id: UInt32) {
        let (rc, out) = cmd(.mockDomainReplace, id: stdev) { $0.set32(16, pt) }
        return (rc, out.u32(16))
    }

    func checkMap(_ hwpt: UInt32, iova: UInt64, length: UInt64, uptr: UInt64) -> Int32 {
        cmd(.checkMap, id: hwpt) { $0.set64(16, iova); $0.set64(24, length); $0.set64(32, uptr) }.rc
    }

    func checkRefs(_ uptr: UInt64, length: UInt64, refs: UInt32) -> Int32 {
        cmd(.checkRefs) { $0.set64(16, length); $0.set64(24, uptr); $0.set32(32, refs) }.rc
    }

    /// MD_CHECK_IOTLB or DEV_CHECK_CACHE of one slot.
    func checkSlot(_ op: IOMMUTestOp, _ id: UInt32, slot: UInt32, _ value: UInt32) -> Int32 {
        cmd(op, id: id) { $0.set32(16, slot); $0.set32(20, value) }.rc
    }

    /// Whether the four slots hold exactly `values`.
    func slots(_ op: IOMMUTestOp, _ id: UInt32, are values: [UInt32]) -> Bool {
        values.enumerated().allSatisfy { checkSlot(op, id, slot: UInt32($0.offset), $0.element) == 0 }
    }

    /// A one-u32 op (TRIGGER_VEVENT, PASID_DETACH, ACCESS_REPLACE_IOAS, ...).
    func opU32(_ op: IOMMUTestOp, id: UInt32 = 0, _ value: UInt32) -> Int32 {
        cmd(op, id: id) { $0.set32(16, value) }.rc
    }

    /// PASID_ATTACH / PASID_REPLACE / PASID_CHECK_HWPT: (rc, the pt_id field after).
    @discardableResult
    func pasidOp(_ op: IOMMUTestOp, _ stdev: UInt32, pasid: UInt32, _ pt: UInt32) -> (rc: Int32, id: UInt32) {
        let (rc, out) = cmd(op, id: stdev) { $0.set32(16, pasid); $0.set32(20, pt) }
        return (rc, out.u32(20))
    }

    // MARK: Other iommufd commands

    func ioas() throws -> UInt32 { try rig.ioasAlloc() }

    func destroy(_ id: UInt32) -> Int32 { rig.run(.destroy) { $0.set32(4, id) }.rc }

    /// HWPT_ALLOC with optional driver data copied to user memory first.
    func hwptAlloc(dev: UInt32, pt: UInt32, flags: UInt32 = 0, dataType: UInt32 = 0, data: [UInt8]? = nil,
                   fault: UInt32 = 0) throws -> (rc: Int32, id: UInt32) {
        let uptr = try data.map { try user($0) } ?? 0
        let (rc, out) = rig.run(.hwptAlloc) { s in
            s.set32(4, flags); s.set32(8, dev); s.set32(12, pt)
            s.set32(24, dataType); s.set32(28, UInt32(data?.count ?? 0)); s.set64(32, uptr); s.set32(40, fault)
        }
        return (rc, out.u32(16))
    }

    func requireHWPT(dev: UInt32, pt: UInt32, flags: UInt32 = 0) throws -> UInt32 {
        let h = try hwptAlloc(dev: dev, pt: pt, flags: flags)
        try #require(h.rc == 0, "HWPT_ALLOC: \(lastError)")
        return h.id
    }

    /// A nested HWPT of data type 0xdead {iotlb} over `parent` (a HWPT or a vIOMMU).
    func nested(dev: UInt32, parent: UInt32, iotlb: UInt32 = SelftestRig.iotlbDefault, flags: UInt32 = 0) throws -> (rc: Int32, id: UInt32) {
        try hwptAlloc(dev: dev, pt: parent, flags: flags, dataType: MockIOMMUDriver.hwptDataSelftest, data: Self.le(iotlb))
    }

    /// HWPT_INVALIDATE of `entries` (u32 fields each) laid out `entryLen` bytes apart.
    func invalidate(_ id: UInt32, type: UInt32, entries: [[UInt32]], entryLen: UInt32, num: UInt32? = nil) throws -> (rc: Int32, num: UInt32) {
        var bytes = [UInt8](repeating: 0, count: max(Int(entryLen) * entries.count, 8))
        for (i, e) in entries.enumerated() {
            for (j, v) in e.enumerated() where j * 4 + 4 <= Int(entryLen) {
                for k in 0..<4 { bytes[i * Int(entryLen) + j * 4 + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(k))) }
            }
        }
        let uptr = try user(bytes)
        let (rc, out) = rig.run(.hwptInvalidate) { s in
            s.set32(4, id); s.set64(8, uptr); s.set32(16, type); s.set32(20, entryLen); s.set32(24, num ?? UInt32(entries.count))
        }
        return (rc, out.u32(24))
    }

    func setTracking(_ hwpt: UInt32, _ on: Bool) -> Int32 {
        rig.run(.hwptSetDirtyTracking) { $0.set32(4, on ? UAPI.dirtyTrackingEnable : 0); $0.set32(8, hwpt) }.rc
    }

    /// The selftest's DIRTY op with a bitmap whose `bits` are set: (rc, out_nr_dirty).
    func markDirty(_ hwpt: UInt32, iova: UInt64, length: UInt64, pageSize: UInt64, bits: [Int]) throws -> (rc: Int32, count: UInt64) {
        let n = pageSize == 0 ? 8 : Int((length / pageSize + 7) / 8)
        var bitmap = [UInt8](repeating: 0, count: max(n, 8))
        for b in bits { bitmap[b / 8] |= 1 << UInt8(b % 8) }
        let uptr = try user(bitmap)
        let (rc, out) = cmd(.dirty, id: hwpt) { s in
            s.set64(24, iova); s.set64(32, length); s.set64(40, pageSize); s.set64(48, uptr)
        }
        return (rc, out.u64(56))
    }

    /// IOMMU_HWPT_GET_DIRTY_BITMAP into a zeroed user bitmap: (rc, its u64 words).
    func dirtyBitmap(_ hwpt: UInt32, iova: UInt64, length: UInt64, pageSize: UInt64, flags: UInt32 = 0) throws -> (rc: Int32, words: [UInt64]) {
        let words = max(Int((length / pageSize + 63) / 64), 1)
        let uptr = try user([UInt8](repeating: 0, count: words * 8))
        let rc = rig.run(.hwptGetDirtyBitmap) { b in
            b.set32(4, hwpt); b.set32(8, flags); b.set64(16, iova); b.set64(24, length); b.set64(32, pageSize); b.set64(40, uptr)
        }.rc
        let raw = StructBytes(bytes: rig.read(va: uptr, count: words * 8))
        return (rc, (0..<words).map { raw.u64($0 * 8) })
    }

    // MARK: Memory and objects

    /// `bytes` in a fresh, touched page of the process.
    func user(_ bytes: [UInt8]) throws -> UInt64 {
        let length = UInt64(max((bytes.count + 4095) & ~4095, 4096))
        let va = try rig.touchedRAM(length)
        _ = bytes.withUnsafeBytes { process.copyOut(to: va, from: $0) }
        return va
    }

    /// The physical address behind the user address `va`.
    func physical(_ va: UInt64) throws -> UInt64 {
        let page = try #require(process.inspectPage(at: va & ~0xFFF))
        return try #require(page.frame) + (va & 0xFFF)
    }

    func pagingDomain(_ hwpt: UInt32) throws -> MockPagingDomain {
        let h = try #require(ctx.object(hwpt) as? HWPTPaging)
        return try #require(h.domain as? MockPagingDomain)
    }

    var lastError: String { ctx.lastError.map { "\($0)" } ?? "-" }

    static func le(_ values: UInt32...) -> [UInt8] {
        values.flatMap { v in (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
    }

    static func err(_ e: Int32) -> Int32 { -e }
}
