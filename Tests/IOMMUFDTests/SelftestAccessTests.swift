import Testing
import Platform
import Kernel
import IOMMUFD
@testable import Simulation

/// The selftest's access commands (notes: mock-driver §2 CREATE_ACCESS, ACCESS_PAGES,
/// DESTROY_ACCESS_PAGES, ACCESS_RW, ACCESS_REPLACE_IOAS): an access behind a descriptor of
/// its own, items numbered from 0, EBADFD for anything that is not an access file.
@Suite struct SelftestAccessTests {
    static let start = SelftestRig.start

    struct Setup {
        let t: SelftestRig
        let ioas: UInt32
        let buf: UInt64
    }

    /// ioas 1 with 64 KiB of touched memory mapped at START (no domain).
    static func setup() throws -> Setup {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        let buf = try t.rig.touchedRAM(64 << 10)
        var fill = [UInt8](repeating: 0, count: 64 << 10)
        for i in fill.indices { fill[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 1) }
        _ = fill.withUnsafeBytes { t.process.copyOut(to: buf, from: $0) }
        #expect(t.rig.map(ioas, va: buf, length: 64 << 10, iova: start).rc == 0)
        return Setup(t: t, ioas: ioas, buf: buf)
    }

    func createAccess(_ t: SelftestRig, _ ioas: UInt32, flags: UInt32 = 1) -> (rc: Int32, fd: UInt32) {
        let (rc, out) = t.cmd(.createAccess, id: ioas) { $0.set32(20, flags) }
        return (rc, out.u32(16))
    }

    func accessPages(_ t: SelftestRig, _ fd: UInt32, flags: UInt32 = 0, iova: UInt64, length: UInt64, uptr: UInt64) -> (rc: Int32, item: UInt32) {
        let (rc, out) = t.cmd(.accessPages, id: fd) { s in s.set32(16, flags); s.set64(24, iova); s.set64(32, length); s.set64(40, uptr) }
        return (rc, out.u32(20))
    }

    func destroyPages(_ t: SelftestRig, _ fd: UInt32, _ item: UInt32) -> Int32 { t.opU32(.destroyAccessPages, id: fd, item) }

    func accessRW(_ t: SelftestRig, _ fd: UInt32, flags: UInt32 = 0, iova: UInt64, length: UInt64, uptr: UInt64) -> Int32 {
        t.cmd(.accessRW, id: fd) { s in s.set64(16, iova); s.set64(24, length); s.set64(32, uptr); s.set32(40, flags) }.rc
    }

    @Test func createAccessGivesADescriptorAndConsumesAnObjectID() throws {
        let s = try Self.setup()
        let a = createAccess(s.t, s.ioas)
        #expect(a.rc == 0 && a.fd == 1000)
        #expect(try s.t.ioas() == 3)                     // ID 2 went to the access
        #expect(s.t.ctx.object(2) is AccessObject)
        #expect(createAccess(s.t, s.ioas, flags: 2).rc == -Errno.EOPNOTSUPP)
        #expect(createAccess(s.t, 999).rc == -Errno.ENOENT)
        let b = createAccess(s.t, s.ioas, flags: 0)
        #expect(b.rc == 0 && b.fd == 1001)
        #expect(s.t.destroy(s.ioas) == -Errno.EBUSY)
        s.t.ctx.closeTestAccess(Int32(a.fd))
        s.t.ctx.closeTestAccess(Int32(b.fd))
        #expect(s.t.ctx.object(2) == nil)
        #expect(s.t.destroy(s.ioas) == 0)
    }

    @Test func accessPagesNumbersItemsFrom0AndPinsEachPageOnce() throws {
        let s = try Self.setup()
        let t = s.t
        let fd = createAccess(t, s.ioas).fd
        let i0 = accessPages(t, fd, iova: Self.start, length: 8192, uptr: s.buf)
        #expect(i0.rc == 0 && i0.item == 0)
        let i1 = accessPages(t, fd, flags: 1, iova: Self.start, length: 8192, uptr: s.buf)
        #expect(i1.rc == 0 && i1.item == 1)
        #expect(t.checkRefs(s.buf, length: 8192, refs: 1) == 0)
        #expect(t.checkRefs(s.buf + 8192, length: (64 << 10) - 8192, refs: 0) == 0)
        #expect(accessPages(t, fd, iova: Self.start, length: (16 << 20) + 4096, uptr: s.buf).rc == -Errno.ENOMEM)
        #expect(accessPages(t, fd, flags: 2, iova: Self.start, length: 4096, uptr: s.buf).rc == -Errno.EOPNOTSUPP)
        #expect(accessPages(t, 999, iova: Self.start, length: 4096, uptr: s.buf).rc == -Errno.EBADFD)
        #expect(accessPages(t, 0, iova: Self.start, length: 4096, uptr: s.buf).rc == -Errno.EBADFD)
        #expect(accessPages(t, fd, iova: Self.start, length: 4096, uptr: s.buf + 4096).rc == -Errno.EBADE)
        #expect(accessPages(t, fd, iova: 0x300_0000, length: 4096, uptr: s.buf).rc == -Errno.ENOENT)
        let noPin = createAccess(t, s.ioas, flags: 0).fd
        #expect(accessPages(t, noPin, iova: Self.start, length: 4096, uptr: s.buf).rc == -Errno.EOPNOTSUPP)
        #expect(t.checkRefs(s.buf, length: 8192, refs: 1) == 0)     // failures pinned nothing
        #expect(destroyPages(t, fd, 0) == 0)
        #expect(destroyPages(t, fd, 0) == -Errno.ENOENT)
        #expect(destroyPages(t, 999, 1) == -Errno.EBADFD)
        #expect(destroyPages(t, fd, 1) == 0)
        #expect(t.checkRefs(s.buf, length: 64 << 10, refs: 0) == 0)
        #expect(t.process.pinnedPages == 0)
        // The next item keeps counting.
        #expect(accessPages(t, fd, iova: Self.start, length: 4096, uptr: 0).item == 2)
    }

    @Test func anUnmapTakesEveryOverlappingItemAway() throws {
        let s = try Self.setup()
        let t = s.t
        let fd = createAccess(t, s.ioas).fd
        let item = accessPages(t, fd, iova: Self.start + 4096, length: 4096, uptr: s.buf + 4096)
        #expect(item.rc == 0 && item.item == 0)
        #expect(t.process.pinnedPages == 1)
        #expect(t.rig.unmap(s.ioas, iova: Self.start, length: 64 << 10).rc == 0)
        #expect(destroyPages(t, fd, item.item) == -Errno.ENOENT)
        #expect(t.process.pinnedPages == 0)
    }

    @Test func accessRWCopiesThroughTheIOASAndReplaceMovesTheAccess() throws {
        let s = try Self.setup()
        let t = s.t
        let fd = createAccess(t, s.ioas).fd
        let tmp = try t.rig.touchedRAM(4096)
        #expect(accessRW(t, fd, iova: Self.start + 4000, length: 150, uptr: tmp) == 0)
        #expect(t.rig.read(va: tmp, count: 150) == t.rig.read(va: s.buf + 4000, count: 150))
        let pattern = [UInt8](repeating: 0xC3, count: 100)
        _ = pattern.withUnsafeBytes { t.process.copyOut(to: tmp, from: $0) }
        #expect(accessRW(t, fd, flags: 1, iova: Self.start + 8150, length: 100, uptr: tmp) == 0)
        #expect(t.rig.read(va: s.buf + 8150, count: 100) == pattern)
        #expect(t.rig.read(va: s.buf + 8149, count: 1) == [UInt8(truncatingIfNeeded: 8149 &* 7 &+ 1)])
        #expect(accessRW(t, fd, iova: Self.start, length: (16 << 20) + 1, uptr: tmp) == -Errno.ENOMEM)
        #expect(accessRW(t, fd, flags: 2, iova: Self.start, length: 8, uptr: tmp) == -Errno.EOPNOTSUPP)
        #expect(accessRW(t, 999, iova: Self.start, length: 8, uptr: tmp) == -Errno.EBADFD)
        #expect(accessRW(t, fd, iova: 0x300_0000, length: 8, uptr: tmp) == -Errno.ENOENT)
        // ACCESS_REPLACE_IOAS to a second IOAS mapping the same memory elsewhere.
        let ioas2 = try t.ioas()
        #expect(t.rig.map(ioas2, va: s.buf, length: 64 << 10, iova: 0x200_0000).rc == 0)
        #expect(t.opU32(.accessReplaceIOAS, id: fd, ioas2) == 0)
        #expect(accessRW(t, fd, iova: 0x200_0000 + 10, length: 50, uptr: tmp) == 0)
        #expect(t.rig.read(va: tmp, count: 50) == t.rig.read(va: s.buf + 10, count: 50))
        #expect(accessRW(t, fd, iova: Self.start, length: 8, uptr: tmp) == -Errno.ENOENT)
        #expect(t.opU32(.accessReplaceIOAS, id: fd, 999) == -Errno.ENOENT)
        #expect(t.opU32(.accessReplaceIOAS, id: 999, s.ioas) == -Errno.EBADFD)
        #expect(t.destroy(ioas2) == -Errno.EBUSY)
        t.ctx.closeTestAccess(Int32(fd))
        #expect(t.destroy(ioas2) == 0)
    }

    @Test func closingTheAccessFileUnpinsItsItemsAndFreesItsID() throws {
        let s = try Self.setup()
        let t = s.t
        let fd = createAccess(t, s.ioas).fd
        #expect(accessPages(t, fd, iova: Self.start, length: 16 << 10, uptr: s.buf).rc == 0)
        #expect(accessPages(t, fd, iova: Self.start, length: 8 << 10, uptr: s.buf).rc == 0)
        #expect(t.process.pinnedPages == 4)                // one pin per page provider
        t.ctx.closeTestAccess(Int32(fd))
        #expect(t.process.pinnedPages == 0)
        #expect(destroyPages(t, fd, 0) == -Errno.EBADFD)
        #expect(try t.ioas() == 2)                       // the access's ID is free again
    }
}
