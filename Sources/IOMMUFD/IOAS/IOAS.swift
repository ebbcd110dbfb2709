import Platform
import Formats
import Kernel

/// An I/O address space (Linux `struct iommufd_ioas` and its `struct io_pagetable`): the
/// mappings user space made (areas over pinned-on-demand pages), the IOVA it asked to keep
/// allocatable (allowed ranges), the IOVA no device may use (reserved ranges, from domain
/// apertures and device reserved regions), and every domain that mirrors its mappings.
public final class IOAS: IOMMUFDObject {
    unowned(unsafe) let ctx: IOMMUFDContext
    /// Areas sorted by IOVA; they never overlap.
    var areas: [IOPTArea] = []
    /// IOAS_ALLOW_IOVAS ranges, sorted; empty: no restriction.
    var allowed: [IOVARange] = []
    /// Reserved ranges and who reserved them (a domain or a device); they may overlap.
    var reserved: [(range: IOVARange, owner: ObjectIdentifier)] = []
    /// Domains holding every mapping of this IOAS, with the HWPT that owns each.
    var domains: [HWPTPaging] = []
    /// Paging HWPTs made on this IOAS (creation order: the automatic-domain search order).
    var hwpts: [HWPTPaging] = []
    /// Accesses attached to it.
    var accesses: [AccessObject] = []
    /// Required alignment of IOVAs, lengths and in-page offsets (Linux `iova_alignment`).
    public internal(set) var iovaAlignment: UInt64 = 1
    /// IOMMU_OPTION_HUGE_PAGES = 0 (or VFIO type1 v1): map page by page.
    public internal(set) var disableLargePages = false

    init(ctx: IOMMUFDContext) {
        self.ctx = ctx
        super.init(type: .ioas)
    }

    static let pageSize: UInt64 = 4096

    /// Bytes mapped, and the number of areas.
    public var mappedBytes: UInt64 { areas.reduce(0) { $0 + $1.length } }
    public var areaCount: Int { areas.count }
    /// The mappings as (iova, length), in IOVA order.
    public var mappings: [(iova: UInt64, length: UInt64)] { areas.map { ($0.iova, $0.length) } }

    /// What every domain of the IOAS must translate: for each run of physically contiguous
    /// pinned pages of each area, (iova, physical, length, permissions). Empty when no
    /// domain holds the areas (nothing is pinned for domains then).
    public func forEachTranslation(_ body: (UInt64, UInt64, UInt64, PagePermissions) -> Void) {
        for a in areas where a.pinnedForDomains {
            let range = a.pageRange
            var iova = a.iova, left = a.length, offset = a.startByte
            try? a.pages.forEachRun(range) { (_, count, base) throws(Errno) in
                let bytes = min((UInt64(count) << 12) - offset, left)
                guard bytes > 0 else { return }
                body(iova, base + offset, bytes, a.permissions)
                iova += bytes; left -= bytes; offset = 0
            }
        }
    }

    /// The core domains holding this IOAS's mappings.
    public var attachedDomains: [IOMMUDomain] { domains.map(\.domain) }

    // MARK: Lookup

    /// Index of the first area whose last IOVA is at or after `start`.
    @inline(__always)
    func firstAreaIndex(atOrAfter start: UInt64) -> Int {
        var lo = 0, hi = areas.count
        while lo < hi {
            let mid = (lo + hi) >> 1
            if areas[mid].last < start { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// The first area intersecting [start, last], with its index.
    @inline(__always)
    func firstArea(intersecting start: UInt64, _ last: UInt64) -> Int? {
        let i = firstAreaIndex(atOrAfter: start)
        return i < areas.count && areas[i].iova <= last ? i : nil
    }

    func reservedIntersects(_ start: UInt64, _ last: UInt64) -> Bool {
        reserved.contains { $0.range.intersects(start, last) }
    }

    // MARK: Reserved ranges (Linux iopt_reserve_iova)

    /// Reserves [start, last] for `owner`: EADDRINUSE if an area or an allowed range meets it.
    func reserve(_ start: UInt64, _ last: UInt64, owner: ObjectIdentifier) throws(Errno) {
        if firstArea(intersecting: start, last) != nil {
            throw Errno(Errno.EADDRINUSE, "reserved range \(IOVARange(start: start, last: last)) is mapped")
        }
        if allowed.contains(where: { $0.intersects(start, last) }) {
            throw Errno(Errno.EADDRINUSE, "reserved range \(IOVARange(start: start, last: last)) is in an allowed range")
        }
        reserved.append((IOVARange(start: start, last: last), owner))
    }

    func removeReservations(of owner: ObjectIdentifier) {
        reserved.removeAll { $0.owner == owner }
    }

    /// Reserves the device's reserved regions but `directRelaxable` (Linux
    /// `iopt_table_enforce_dev_resv_regions`); all or nothing.
    func enforceReservedRegions(of device: Device, owner: ObjectIdentifier) throws(Errno) {
        let before = reserved.count
        for r in device.driver.reservedRegions(for: device) where r.kind != .directRelaxable {
            do { try reserve(r.start, r.last, owner: owner) } catch {
                reserved.removeSubrange(before...)
                throw error
            }
        }
    }

    /// The complement of the reserved ranges (what IOAS_IOVA_RANGES reports).
    var usableRanges: [IOVARange] {
        let sorted = reserved.map(\.range).sorted { $0.start < $1.start }
        var out: [IOVARange] = []
        var next: UInt64 = 0
        var done = false
        for r in sorted {
            if r.start > next { out.append(IOVARange(start: next, last: r.start - 1)) }
            if r.last == .max { done = true; break }
            next = max(next, r.last + 1)
        }
        if !done { out.append(IOVARange(start: next, last: .max)) }
        return out
    }

    // MARK: Alignment (Linux iopt_calculate_iova_alignment, iopt_check_iova_alignment)

    func computeAlignment(extraDomain: IOMMUDomain? = nil, excluding: HWPTPaging? = nil) -> UInt64 {
        var a: UInt64 = disableLargePages ? Self.pageSize : 1
        for h in domains where h !== excluding { a = max(a, h.domain.smallestPageSize) }
        if let extraDomain { a = max(a, extraDomain.smallestPageSize) }
        for acc in accesses { a = max(a, acc.iovaAlignment) }
        return a
    }

    /// Every area must be aligned to `alignment` before it can become the requirement.
    func checkAreasAligned(_ alignment: UInt64) throws(Errno) {
        guard alignment > iovaAlignment else { return }
        let mask = alignment - 1
        for a in areas where a.iova & mask != 0 || a.length & mask != 0 || a.startByte & mask != 0 {
            throw Errno(Errno.EADDRINUSE, "mapping at 0x\(String(a.iova, radix: 16)) is not aligned to 0x\(String(alignment, radix: 16))")
        }
    }

    // MARK: IOVA allocation (Linux iopt_alloc_iova, iopt_check_iova)

    /// Checks a FIXED_IOVA placement.
    func checkIOVA(_ iova: UInt64, _ length: UInt64) throws(Errno) {
        guard iova & (iovaAlignment - 1) == 0 else { throw Errno.inval("iova 0x\(String(iova, radix: 16)) is not aligned to 0x\(String(iovaAlignment, radix: 16))") }
        let (last, o) = iova.addingReportingOverflow(length - 1)
        guard !o else { throw Errno(Errno.EOVERFLOW, "iova + length overflows") }
        guard !reservedIntersects(iova, last) else { throw Errno.inval("[0x\(String(iova, radix: 16)), 0x\(String(last, radix: 16))] is reserved") }
        guard firstArea(intersecting: iova, last) == nil else { throw Errno(Errno.EEXIST, "[0x\(String(iova, radix: 16)), 0x\(String(last, radix: 16))] is already mapped") }
    }

    /// Picks the lowest IOVA in the allowed ranges, outside reserved ranges and areas, whose
    /// alignment keeps `address`'s low bits (up to 2 MiB) so huge pages stay possible.
    func allocIOVA(address: UInt64, length: UInt64) throws(Errno) -> UInt64 {
        guard length > 0, length < UInt64.max / 2 else { throw Errno(Errno.EOVERFLOW, "length 0x\(String(length, radix: 16))") }
        let hugePage: UInt64 = 2 << 20
        var alignment = length <= 1 ? 1 : UInt64(1) << (64 - (length - 1).leadingZeroBitCount)
        if address != 0 { alignment = min(alignment, UInt64(1) << UInt64(address.trailingZeroBitCount)) }
        if alignment >= hugePage { alignment = hugePage }
        guard alignment >= iovaAlignment else {
            throw Errno.inval("the address's alignment 0x\(String(alignment, radix: 16)) is below the IOAS's 0x\(String(iovaAlignment, radix: 16))")
        }
        let pageOffset = address % Self.pageSize
        let windowStart = Self.pageSize, windowLast = UInt64.max - Self.pageSize
        func fit(_ start: UInt64, _ last: UInt64) -> UInt64? {
            let (up, o) = start.addingReportingOverflow(alignment - 1)
            guard !o else { return nil }
            let candidate = (up & ~(alignment - 1)) | pageOffset
            guard candidate < last, last - candidate >= length - 1 else { return nil }
            return candidate
        }
        let spans = allowed.isEmpty ? [IOVARange(start: windowStart, last: windowLast)] : allowed
        // Used space: reserved ranges and areas, merged into sorted disjoint ranges.
        var raw = reserved.map(\.range)
        raw.reserveCapacity(raw.count + areas.count)
        for a in areas { raw.append(IOVARange(start: a.iova, last: a.last)) }
        raw.sort { $0.start < $1.start }
        var used: [IOVARange] = []
        used.reserveCapacity(raw.count)
        for r in raw {
            if let l = used.last, r.start <= l.last || (l.last != .max && r.start == l.last + 1) {
                used[used.count - 1].last = max(l.last, r.last)
            } else {
                used.append(r)
            }
        }
        for span in spans {
            let s = max(span.start, windowStart), l = min(span.last, windowLast)
            guard s <= l, fit(s, l) != nil else { continue }
            // Walk the gaps of [s, l] between used ranges, lowest first, from the first used
            // range that ends at or after s.
            var lo = 0, hi = used.count
            while lo < hi { let m = (lo + hi) >> 1; if used[m].last < s { lo = m + 1 } else { hi = m } }
            var cursor: UInt64? = s
            for u in used[lo...] {
                guard let c = cursor else { break }
                if u.last < c { continue }
                if u.start > l { break }
                if u.start > c, let iova = fit(c, u.start - 1) { return iova }
                cursor = u.last >= l ? nil : u.last + 1
            }
            if let c = cursor, let iova = fit(c, l) { return iova }
        }
        throw Errno(Errno.ENOSPC, "no free IOVA range of 0x\(String(length, radix: 16)) bytes")
    }

    // MARK: IOVA_RANGES / ALLOW_IOVAS

    /// Replaces the allowed ranges (Linux `iopt_set_allow_iova`): each start < last, no
    /// overlap among them (EINVAL), none meeting a reserved range (EADDRINUSE).
    func setAllowed(_ ranges: [IOVARange]) throws(Errno) {
        for r in ranges where r.start >= r.last { throw Errno.inval("allowed range \(r): start must be below last") }
        // Sorted, neighbours must not meet (n log n: the list is the user's, of any length).
        let sorted = ranges.sorted { $0.start < $1.start }
        for i in sorted.indices.dropFirst() where sorted[i].start <= sorted[i - 1].last {
            throw Errno.inval("allowed range \(sorted[i]) overlaps another")
        }
        for r in sorted where reservedIntersects(r.start, r.last) {
            throw Errno(Errno.EADDRINUSE, "allowed range \(r) meets a reserved range")
        }
        allowed = sorted
    }

    /// Pages spanned by `length` bytes starting `offset` bytes into a page (no overflow for
    /// any length up to SIZE_MAX - PAGE_SIZE).
    static func pageCount(offset: UInt64, length: UInt64) -> Int { Int((offset + (length - 1)) >> 12) + 1 }
}
