import Platform
import Kernel

/// The selftest's access commands (Linux selftest.c `iommufd_test_create_access`,
/// `_access_pages`, `_access_rw`, ...): an access is reached through its file's descriptor
/// (`cmd.id`), and anything else there is EBADFD.
extension IOMMUFDContext {
    /// The largest range one access command handles (the selftest's 16 MiB limit: ENOMEM).
    static let testAccessLimit: UInt64 = 16 << 20

    func testAccess(_ fd: Int32) throws(Errno) -> SelftestAccess {
        guard let t = testAccesses[fd], !t.access.isDestroyed else { throw Errno(Errno.EBADFD, "descriptor \(fd) is not a selftest access") }
        return t
    }

    /// CREATE_ACCESS: an ACCESS object (it takes an ID) on IOAS `ioasID`, behind a new file
    /// whose descriptor is returned; NEEDS_PIN_PAGES (1) is the only flag.
    func testCreateAccess(ioasID: UInt32, flags: UInt32) throws(Errno) -> UInt32 {
        guard flags & ~1 == 0 else { throw Errno.notsupp("access flags 0x\(String(flags, radix: 16))") }
        let a = try createAccess(ioasID: ioasID, needsPinPages: flags & 1 != 0, onUnmap: nil)
        let t = SelftestAccess(access: a)
        a.onUnmap = { [weak t] iova, length in t?.unmapped(iova, length) }
        let fd = openFile(a)
        guard fd >= 0 else {
            destroyAccess(a)
            throw Errno.nomem("no file for the access")
        }
        testAccesses[fd] = t
        return UInt32(bitPattern: fd)
    }

    /// `new` is a duplicate of the access file `old` (dup): either names the access.
    public func duplicateTestAccess(_ old: Int32, as new: Int32) {
        if let t = testAccesses[old] { testAccesses[new] = t }
    }

    /// The access file's descriptor `fd` was closed: with its last descriptor, its pins go,
    /// then the access.
    public func closeTestAccess(_ fd: Int32) {
        guard let t = testAccesses.removeValue(forKey: fd), !testAccesses.values.contains(where: { $0 === t }) else { return }
        for item in t.items { t.access.unpinPages(iova: item.iova, length: item.length) }
        t.items = []
        destroyAccess(t.access)
    }

    /// ACCESS_PAGES: pins [iova, iova + length) through the access (WRITE 1 asks for
    /// writable pages; SYZ 1 << 16 is accepted). With `uptr`, the pages must be the user's
    /// pages there (EBADE otherwise). Returns the new item's ID.
    func testAccessPages(fd: Int32, flags: UInt32, iova: UInt64, length: UInt64, uptr: UInt64) throws(Errno) -> UInt32 {
        guard length <= Self.testAccessLimit else { throw Errno.nomem("access of \(length) bytes") }
        guard flags & ~(1 | 1 << 16) == 0 else { throw Errno.notsupp("access flags 0x\(String(flags, radix: 16))") }
        let t = try testAccess(fd)
        guard t.access.needsPinPages else { throw Errno.notsupp("the access was made without NEEDS_PIN_PAGES") }
        let frames = try t.access.pinPages(iova: iova, length: length, write: flags & 1 != 0)
        if uptr != 0 {
            let first = (uptr &- (iova & 0xFFF)) & ~0xFFF
            for (k, f) in frames.enumerated() {
                let va = first &+ UInt64(k) << 12
                guard let page = memory.inspectPage(at: va) else {
                    t.access.unpinPages(iova: iova, length: length)
                    throw Errno.fault("user page 0x\(String(va, radix: 16)) is not mapped")
                }
                guard page.frame == f else {
                    t.access.unpinPages(iova: iova, length: length)
                    throw Errno(Errno.EBADE, "pinned page \(k) is not the user's page at 0x\(String(va, radix: 16))")
                }
            }
        }
        let id = t.nextItemID
        t.nextItemID &+= 1
        t.items.append((id, iova, length))
        return id
    }

    /// DESTROY_ACCESS_PAGES: unpins one item (ENOENT when there is none with that ID).
    func testDestroyAccessPages(fd: Int32, item: UInt32) throws(Errno) {
        let t = try testAccess(fd)
        guard let i = t.items.firstIndex(where: { $0.id == item }) else { throw Errno.noent("no access item \(item)") }
        let it = t.items.remove(at: i)
        t.access.unpinPages(iova: it.iova, length: it.length)
    }

    /// ACCESS_RW: copies between the user's buffer and the IOAS (WRITE 1: to the IOAS; the
    /// SLOW_PATH 4 and SYZ flags change nothing here).
    func testAccessRW(fd: Int32, iova: UInt64, length: UInt64, uptr: UInt64, flags: UInt32) throws(Errno) {
        guard length <= Self.testAccessLimit else { throw Errno.nomem("access of \(length) bytes") }
        guard flags & ~(1 | 4 | 1 << 16) == 0 else { throw Errno.notsupp("access flags 0x\(String(flags, radix: 16))") }
        let t = try testAccess(fd)
        let write = flags & 1 != 0
        var buffer = write ? try copyIn(uptr, count: Int(length)) : [UInt8](repeating: 0, count: Int(length))
        try t.access.rw(iova: iova, buffer: &buffer, write: write)
        if !write { try copyOut(uptr, bytes: buffer) }
    }
}
