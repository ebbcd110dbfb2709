import Platform
import Formats
import Kernel

/// Mapping, copying and unmapping (Linux io_pagetable.c: iopt_map_pages, iopt_get_pages,
/// iopt_unmap_iova_range, iopt_area_fill_domains). An area exists in every domain of the
/// IOAS or in none: a fill that fails part-way is undone everywhere.
extension IOAS {
    /// One piece of a new mapping: bytes [pageOffset, pageOffset + length) of `pages`.
    struct Piece {
        var pages: IOPTPages
        var pageOffset: UInt64
        var length: UInt64
    }

    /// Inserts `pieces` as consecutive areas at `iova` (fixed) or at an allocated IOVA
    /// aligned after `address`, and fills every domain. Returns the IOVA.
    func insert(_ pieces: [Piece], iova fixed: UInt64?, address: UInt64, permissions: PagePermissions) throws(Errno) -> UInt64 {
        let iova = try place(length: pieces.reduce(UInt64(0)) { $0 + $1.length }, fixed: fixed, address: address)
        if pieces.count == 1 { return try insertPlaced(pieces[0], iova: iova, permissions: permissions) }
        var made: [IOPTArea] = []
        var at = iova
        for p in pieces {
            try check(p, permissions: permissions)
            made.append(IOPTArea(iova: at, length: p.length, pages: p.pages, pageOffset: p.pageOffset, permissions: permissions))
            at &+= p.length
        }
        var filled = 0
        do {
            for a in made {
                try fillDomains(a)
                filled += 1
            }
        } catch {
            for a in made[..<filled] { unfillDomains(a) }
            throw error
        }
        let index = firstAreaIndex(atOrAfter: iova)
        areas.insert(contentsOf: made, at: index)
        for a in made { a.pages.areaRefs += 1 }
        return iova
    }

    /// One piece (every MAP and MAP_FILE): placed, checked, filled, with no lists.
    func insertOne(_ p: Piece, iova fixed: UInt64?, address: UInt64, permissions: PagePermissions) throws(Errno) -> UInt64 {
        try insertPlaced(p, iova: try place(length: p.length, fixed: fixed, address: address), permissions: permissions)
    }

    /// The IOVA of a new mapping of `length` bytes: non-zero and aligned (EINVAL), then
    /// `fixed` checked, or one allocated keeping `address`'s low bits.
    private func place(length: UInt64, fixed: UInt64?, address: UInt64) throws(Errno) -> UInt64 {
        guard length != 0, length & (iovaAlignment - 1) == 0 else {
            throw Errno.inval("length 0x\(String(length, radix: 16)) is zero or not aligned to 0x\(String(iovaAlignment, radix: 16))")
        }
        if let fixed {
            try checkIOVA(fixed, length)
            return fixed
        }
        return try allocIOVA(address: address, length: length)
    }

    /// A piece may be mapped with `permissions` here: writable pages for a writeable mapping
    /// (EPERM), an in-page offset aligned to the IOAS (EINVAL).
    private func check(_ p: Piece, permissions: PagePermissions) throws(Errno) {
        if permissions.contains(.write) && !p.pages.writable { throw Errno(Errno.EPERM, "the pages were mapped read-only") }
        guard (p.pageOffset & 0xFFF) & (iovaAlignment - 1) == 0 else {
            throw Errno.inval("in-page offset 0x\(String(p.pageOffset & 0xFFF, radix: 16)) is not aligned to 0x\(String(iovaAlignment, radix: 16))")
        }
    }

    private func insertPlaced(_ p: Piece, iova: UInt64, permissions: PagePermissions) throws(Errno) -> UInt64 {
        try check(p, permissions: permissions)
        let a = IOPTArea(iova: iova, length: p.length, pages: p.pages, pageOffset: p.pageOffset, permissions: permissions)
        try fillDomains(a)
        areas.insert(a, at: firstAreaIndex(atOrAfter: iova))
        p.pages.areaRefs += 1
        return iova
    }

    /// Pins the area's pages and maps them into every domain (nothing when there is none:
    /// pinning is lazy).
    func fillDomains(_ area: IOPTArea) throws(Errno) {
        guard !domains.isEmpty else { return }
        try area.pages.pin(area.pageRange, faults: ctx.faults)
        area.pinnedForDomains = true
        var done = 0
        do {
            for h in domains {
                try mapArea(area, into: h.domain)
                done += 1
            }
        } catch {
            for h in domains[..<done] { unmapArea(area, from: h.domain) }
            area.pages.unpin(area.pageRange)
            area.pinnedForDomains = false
            throw error
        }
    }

    /// Unmaps the area from every domain and drops its pin.
    func unfillDomains(_ area: IOPTArea) {
        for h in domains { unmapArea(area, from: h.domain) }
        if area.pinnedForDomains {
            area.pages.unpin(area.pageRange)
            area.pinnedForDomains = false
        }
    }

    /// Maps the area's pinned pages into `domain`: each run of physically contiguous pages
    /// in one call (the driver picks huge IOPTEs where alignment allows), or page by page
    /// when large pages are disabled. Undoes itself on failure.
    func mapArea(_ area: IOPTArea, into domain: IOMMUDomain) throws(Errno) {
        let range = area.pageRange
        let core = ctx.core
        let single = disableLargePages
        var iova = area.iova
        var remaining = area.length
        var offset = area.startByte
        // One map call per physically contiguous run (the driver picks huge IOPTEs where the
        // alignment allows), or per page when large pages are disabled.
        try area.pages.forEachRun(range) { (first, count, base) throws(Errno) in
            var done = 0
            while done < count && remaining > 0 {
                let n = single ? 1 : count - done
                let bytes = min((UInt64(n) << 12) - offset, remaining)
                do throws(IOMMUError) {
                    try core.map(domain, iova: iova, physical: base + UInt64(done) << 12 + offset, size: bytes, permissions: area.permissions)
                } catch {
                    if iova > area.iova {
                        do throws(IOMMUError) { _ = try core.unmap(domain, iova: area.iova, size: iova - area.iova) } catch {
                            holdPinsUntilTranslationOff(area)
                        }
                    }
                    throw Errno(error)
                }
                iova += bytes
                remaining -= bytes
                done += n
                offset = 0
            }
        }
    }

    /// Removes the area's translations from `domain` (invalidated before the pages can be
    /// unpinned). If the invalidation fails, a device may still reach the pages through a
    /// stale translation: they get one more pin, dropped only when translation is off.
    func unmapArea(_ area: IOPTArea, from domain: IOMMUDomain) {
        do { try ctx.core.unmap(domain, iova: area.iova, size: area.length) } catch {
            holdPinsUntilTranslationOff(area)
        }
    }

    /// One more pin on the area's pages (they are pinned already, so it cannot fail), handed
    /// to the core to drop once the hardware can no longer translate.
    func holdPinsUntilTranslationOff(_ area: IOPTArea) {
        guard area.pinnedForDomains else { return }
        let pages = area.pages, range = area.pageRange
        guard (try? pages.pin(range, faults: ctx.faults)) != nil else { return }
        ctx.pagesKeptAfterFailedUnmap += range.count
        ctx.pinsKeptAfterFailedUnmap += 1
        ctx.core.releaseWhenTranslationOff { pages.unpin(range) }
    }

    /// Collects the pages behind [iova, iova + length) (Linux `iopt_get_pages`): covered
    /// without a gap by areas, possibly starting and ending inside them; ENOENT otherwise.
    func pieces(_ iova: UInt64, _ length: UInt64) throws(Errno) -> [Piece] {
        guard length != 0 else { throw Errno.inval("length 0") }
        let (last, o) = iova.addingReportingOverflow(length - 1)
        guard !o else { throw Errno(Errno.EOVERFLOW, "iova + length overflows") }
        var out: [Piece] = []
        var cursor = iova
        var i = firstAreaIndex(atOrAfter: iova)
        while true {
            guard i < areas.count, areas[i].iova <= cursor else { throw Errno.noent("no mapping at 0x\(String(cursor, radix: 16))") }
            let a = areas[i]
            let end = min(a.last, last)
            out.append(Piece(pages: a.pages, pageOffset: a.pageOffset + (cursor - a.iova), length: end - cursor + 1))
            if end == last { return out }
            cursor = end + 1
            i += 1
        }
    }

    /// Unmaps every area inside [iova, iova + length) (Linux `iopt_unmap_iova`): an area
    /// that is only partly inside is ENOENT (areas are never split), an area an internal
    /// access locked is EBUSY, and accesses holding pins are asked to unpin first.
    /// Returns the bytes unmapped; ENOENT if there were none (not for unmap-all).
    func unmap(_ iova: UInt64, _ length: UInt64) throws(Errno) -> UInt64 {
        let all = iova == 0 && length == .max
        var last: UInt64 = .max
        if !all {
            guard iova < .max, length < .max else { throw Errno(Errno.EOVERFLOW, "iova or length is U64_MAX") }
            guard length != 0 else { throw Errno.inval("length 0") }
            let (l, o) = iova.addingReportingOverflow(length - 1)
            guard !o else { throw Errno(Errno.EOVERFLOW, "iova + length overflows") }
            last = l
        }
        var unmapped: UInt64 = 0
        try unmapRange(iova, last, unmapped: &unmapped)
        if unmapped == 0 && !all { throw Errno.noent("nothing is mapped in the range") }
        return unmapped
    }

    /// Removes every area inside [start, last], adding their bytes to `unmapped` as it goes
    /// (so a caller sees the progress made before an error, as VFIO's unmap reports it).
    func unmapRange(_ start: UInt64, _ last: UInt64, unmapped: inout UInt64) throws(Errno) {
        var retries = 0, retryAt: UInt64 = 0
        while let i = firstArea(intersecting: start, last) {
            let a = areas[i]
            guard a.locks == 0 else { throw Errno.busy("mapping at 0x\(String(a.iova, radix: 16)) is locked by a hardware queue") }
            guard a.iova >= start, a.last <= last else {
                throw Errno.noent("mapping [0x\(String(a.iova, radix: 16)), 0x\(String(a.last, radix: 16))] is only partly in the range")
            }
            if a.accessPins > 0 {
                if retryAt != a.iova { retryAt = a.iova; retries = 0 }
                a.preventAccess = true
                for acc in accesses where !acc.isInternal { acc.notifyUnmap(iova: a.iova, length: a.length) }
                retries += 1
                guard retries <= 100 else { throw Errno(Errno.EDEADLK, "an access does not unpin 0x\(String(a.iova, radix: 16))") }
                continue
            }
            removeArea(at: i)
            unmapped += a.length
        }
    }

    /// Splits the area holding `iova` after it (Linux `iopt_cut_iova`, for VFIO type1's
    /// partial unmaps): only where mappings were made page by page (large pages disabled)
    /// and no access pins the area (EINVAL), not while an unmap waits on it (EBUSY).
    func cut(at iova: UInt64) throws(Errno) {
        guard let i = firstArea(intersecting: iova, iova) else { return }
        let a = areas[i]
        guard iova != a.last else { return }
        guard !a.preventAccess else { throw Errno.busy("the mapping at 0x\(String(a.iova, radix: 16)) is being unmapped") }
        guard a.accessPins == 0, disableLargePages || !a.pinnedForDomains else {
            throw Errno.inval("the mapping at 0x\(String(a.iova, radix: 16)) cannot be split")
        }
        // Both halves must keep the IOAS's alignment (Linux `iopt_area_split`).
        let mask = iovaAlignment - 1
        guard (iova &+ 1) & mask == 0, (a.startByte &+ (iova - a.iova + 1)) & 0xFFF & mask == 0 else {
            throw Errno.inval("0x\(String(iova &+ 1, radix: 16)) is not aligned to 0x\(String(iovaAlignment, radix: 16))")
        }
        let head = iova - a.iova + 1
        let left = IOPTArea(iova: a.iova, length: head, pages: a.pages, pageOffset: a.pageOffset, permissions: a.permissions)
        let right = IOPTArea(iova: iova + 1, length: a.length - head, pages: a.pages, pageOffset: a.pageOffset + head, permissions: a.permissions)
        if a.pinnedForDomains {
            // Each half holds its own pin; the old one goes.
            try a.pages.pin(left.pageRange, faults: ctx.faults)
            do { try a.pages.pin(right.pageRange, faults: ctx.faults) } catch {
                a.pages.unpin(left.pageRange)
                throw error
            }
            a.pages.unpin(a.pageRange)
            left.pinnedForDomains = true
            right.pinnedForDomains = true
        }
        areas.replaceSubrange(i...i, with: [left, right])
        a.pages.areaRefs += 1
    }

    func removeArea(at i: Int) {
        let a = areas.remove(at: i)
        unfillDomains(a)
        a.pages.areaRefs -= 1
    }
}
