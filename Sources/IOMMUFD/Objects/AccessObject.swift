import Platform
import Formats
import Kernel

/// An in-kernel user of an IOAS (Linux `struct iommufd_access`: an emulated/mdev device
/// driver, or the internal pinning of a hardware queue): it pins IOVA ranges to pages and
/// reads or writes through the IOAS. An unmap of a range it pinned calls its `unmap`
/// operation, which must unpin; an internal access locks its ranges instead (unmap EBUSY).
public final class AccessObject: IOMMUFDObject {
    public internal(set) var ioas: IOAS?
    public let needsPinPages: Bool
    public let isInternal: Bool
    /// The driver's `ops->unmap(iova, length)`.
    public var onUnmap: ((UInt64, UInt64) -> Void)?
    struct Pin {
        var iova: UInt64
        var length: UInt64
        var pieces: [(area: IOPTArea, pages: Range<Int>)]
    }
    var pins: [Pin] = []

    init(needsPinPages: Bool, isInternal: Bool) {
        self.needsPinPages = needsPinPages; self.isInternal = isInternal
        super.init(type: .access)
    }

    /// What the access adds to the IOAS's alignment (PAGE_SIZE when it pins pages).
    var iovaAlignment: UInt64 { needsPinPages || isInternal ? IOAS.pageSize : 1 }

    func notifyUnmap(iova: UInt64, length: UInt64) { onUnmap?(iova, length) }

    override func destroy(_ ctx: IOMMUFDContext) {
        for p in pins { release(p) }
        pins = []
        detachIOAS()
    }

    func detachIOAS() {
        guard let ioas else { return }
        ioas.accesses.removeAll { $0 === self }
        ioas.users -= 1
        ioas.iovaAlignment = ioas.computeAlignment()
        self.ioas = nil
    }

    private func release(_ p: Pin) {
        for (a, r) in p.pieces {
            a.pages.unpin(r)
            a.accessPins -= 1
            if isInternal { a.locks -= 1 }
        }
    }

    /// The pieces of [iova, iova + length): contiguous areas, page aligned where a piece
    /// meets the next (EINVAL), allowing the access (EPERM), unmap not in progress (EINVAL);
    /// a gap is ENOENT.
    private func walk(_ iova: UInt64, _ length: UInt64, write: Bool) throws(Errno) -> [(area: IOPTArea, pages: Range<Int>, from: UInt64, to: UInt64)] {
        guard length > 0 else { throw Errno.inval("length 0") }
        let (last, o) = iova.addingReportingOverflow(length - 1)
        guard !o else { throw Errno(Errno.EOVERFLOW, "iova + length overflows") }
        guard let ioas else { throw Errno.noent("the access is not attached to an IOAS") }
        var out: [(area: IOPTArea, pages: Range<Int>, from: UInt64, to: UInt64)] = []
        var cursor = iova
        var i = ioas.firstAreaIndex(atOrAfter: iova)
        while true {
            guard i < ioas.areas.count, ioas.areas[i].iova <= cursor else { throw Errno.noent("nothing mapped at 0x\(String(cursor, radix: 16))") }
            let a = ioas.areas[i]
            guard !a.preventAccess else { throw Errno.inval("the mapping at 0x\(String(a.iova, radix: 16)) is being unmapped") }
            guard a.permissions.contains(write ? .write : .read) else { throw Errno(Errno.EPERM, "the mapping does not allow \(write ? "writes" : "reads")") }
            if write && !a.pages.writable { throw Errno(Errno.EPERM, "the pages are read-only") }
            let end = min(a.last, last)
            let firstByte = a.pageOffset + (cursor - a.iova), lastByte = a.pageOffset + (end - a.iova)
            out.append((a, Int(firstByte >> 12)..<Int(lastByte >> 12) + 1, cursor, end))
            if end == last { return out }
            cursor = end + 1
            i += 1
        }
    }

    /// Pins [iova, iova + length) (Linux `iommufd_access_pin_pages`): returns each page's
    /// frame. All or nothing.
    public func pinPages(iova: UInt64, length: UInt64, write: Bool) throws(Errno) -> [UInt64] {
        guard needsPinPages || isInternal else { throw Errno.inval("the access does not pin pages") }
        let pieces = try walk(iova, length, write: write)
        for (n, p) in pieces.enumerated() {
            // Pieces meeting another must do so on page boundaries of their pages.
            if n > 0 && (p.area.pageOffset + (p.from - p.area.iova)) & 0xFFF != 0 { throw Errno.inval("the range crosses mappings mid-page") }
            if n < pieces.count - 1 && (p.area.pageOffset + (p.to - p.area.iova) + 1) & 0xFFF != 0 { throw Errno.inval("the range crosses mappings mid-page") }
        }
        guard let ctx = ioas?.ctx else { throw Errno.noent("no IOAS") }
        var done: [(area: IOPTArea, pages: Range<Int>)] = []
        var frames: [UInt64] = []
        for p in pieces {
            do { try p.area.pages.pin(p.pages, faults: ctx.faults) } catch {
                release(Pin(iova: iova, length: length, pieces: done))
                throw error
            }
            p.area.accessPins += 1
            if isInternal { p.area.locks += 1 }
            done.append((p.area, p.pages))
            for i in p.pages { frames.append(p.area.pages.frame(i)) }
        }
        pins.append(Pin(iova: iova, length: length, pieces: done))
        return frames
    }

    /// Unpins a range pinned with exactly this iova and length (Linux
    /// `iommufd_access_unpin_pages`); anything else is ignored.
    public func unpinPages(iova: UInt64, length: UInt64) {
        guard let i = pins.firstIndex(where: { $0.iova == iova && $0.length == length }) else { return }
        release(pins.remove(at: i))
    }

    /// Pins held now.
    public var pinCount: Int { pins.count }

    /// Reads or writes through the IOAS (Linux `iommufd_access_rw`): pages not pinned are
    /// pinned for the copy only.
    public func rw(iova: UInt64, buffer: inout [UInt8], write: Bool) throws(Errno) {
        let pieces = try walk(iova, UInt64(buffer.count), write: write)
        guard let ctx = ioas?.ctx else { throw Errno.noent("no IOAS") }
        var offset = 0
        for p in pieces {
            try p.area.pages.pin(p.pages, faults: ctx.faults)
            defer { p.area.pages.unpin(p.pages) }
            var va = p.area.pageOffset + (p.from - p.area.iova)
            let end = p.area.pageOffset + (p.to - p.area.iova) + 1
            while va < end {
                let n = Int(min(end - va, 0x1000 - (va & 0xFFF)))
                let frame = p.area.pages.frame(Int(va >> 12))
                let ok = buffer.withUnsafeMutableBytes { b in
                    let chunk = UnsafeMutableRawBufferPointer(rebasing: b[offset..<offset + n])
                    return write ? ctx.memory.writeFrame(frame, offset: Int(va & 0xFFF), from: UnsafeRawBufferPointer(chunk))
                                 : ctx.memory.readFrame(frame, offset: Int(va & 0xFFF), into: chunk)
                }
                if !ok { throw Errno.fault("copy through the IOAS failed") }
                va += UInt64(n)
                offset += n
            }
        }
    }
}

extension IOMMUFDContext {
    /// Creates an access on an IOAS (Linux `iommufd_access_create` + `_attach`). The
    /// creator holds it until `destroyAccess` (IOMMU_DESTROY of it is EBUSY).
    public func createAccess(ioasID: UInt32, needsPinPages: Bool, onUnmap: ((UInt64, UInt64) -> Void)?) throws(Errno) -> AccessObject {
        let ioas: IOAS = try get(ioasID, .ioas)
        let a = AccessObject(needsPinPages: needsPinPages, isInternal: false)
        a.onUnmap = onUnmap
        let alignment = max(ioas.iovaAlignment, a.iovaAlignment)
        try ioas.checkAreasAligned(alignment)
        try add(a)
        a.users = 1
        a.ioas = ioas
        ioas.accesses.append(a)
        ioas.users += 1
        ioas.iovaAlignment = alignment
        return a
    }

    /// Moves an access to another IOAS (Linux `iommufd_access_replace`): the old IOAS's
    /// pins are dropped through the unmap operation first.
    public func replaceAccessIOAS(_ a: AccessObject, ioasID: UInt32) throws(Errno) {
        let new: IOAS = try get(ioasID, .ioas)
        guard let old = a.ioas else { throw Errno.noent("the access has no IOAS") }
        if old === new { return }
        let alignment = max(new.iovaAlignment, a.iovaAlignment)
        try new.checkAreasAligned(alignment)
        a.onUnmap?(0, .max)
        for p in a.pins { a.unpinPages(iova: p.iova, length: p.length) }
        a.detachIOAS()
        a.ioas = new
        new.accesses.append(a)
        new.users += 1
        new.iovaAlignment = alignment
    }

    /// The creator lets go of an access (Linux `iommufd_access_destroy`).
    public func destroyAccess(_ a: AccessObject) {
        guard !a.isDestroyed else { return }
        a.users -= 1
        if a.users == 0 { remove(a) }
    }
}
