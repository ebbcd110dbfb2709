import Platform
import Formats
import Kernel

/// The IOAS commands (drivers/iommu/iommufd/ioas.c), each check in the kernel's order.
/// Offsets are those of include/uapi/linux/iommufd.h (v6.17, x86-64).
extension IOMMUFDContext {
    /// IOMMU_IOAS_ALLOC: {size, flags @4, out_ioas_id @8}.
    func ioasAllocIoctl(_ a: inout IoctlArgument) throws(Errno) {
        guard a.u32(4) == 0 else { throw Errno.notsupp("IOAS_ALLOC flags 0x\(String(a.u32(4), radix: 16))") }
        let ioas = IOAS(ctx: self)
        try add(ioas)
        a.set32(8, ioas.id)
        a.respond()
    }

    /// IOMMU_IOAS_ALLOW_IOVAS: {size, ioas_id @4, num_iovas @8, __reserved @12, allowed_iovas @16}.
    func allowIOVAsIoctl(_ a: inout IoctlArgument) throws(Errno) {
        guard a.u32(12) == 0 else { throw Errno.notsupp("__reserved is not zero") }
        let ioas: IOAS = try get(a.u32(4), .ioas)
        let count = Int(a.u32(8)), base = a.u64(16)
        var ranges: [IOVARange] = []
        for i in 0..<count {
            let e = StructBytes(bytes: try copyIn(base &+ UInt64(i) &* 16, count: 16))
            let r = IOVARange(start: e.u64(0), last: e.u64(8))
            guard r.start < r.last else { throw Errno.inval("allowed range \(r): start must be below last") }
            ranges.append(r)
        }
        try ioas.setAllowed(ranges)
    }

    /// IOMMU_IOAS_IOVA_RANGES: {size, ioas_id @4, num_iovas @8 (in/out), __reserved @12,
    /// allowed_iovas @16, out_iova_alignment @24}: the holes between reserved ranges;
    /// EMSGSIZE (after writing the count and what fits) when the array is too small.
    func iovaRangesIoctl(_ a: inout IoctlArgument) throws(Errno) {
        guard a.u32(12) == 0 else { throw Errno.notsupp("__reserved is not zero") }
        let ioas: IOAS = try get(a.u32(4), .ioas)
        let capacity = Int(a.u32(8)), base = a.u64(16)
        let ranges = ioas.usableRanges
        for (i, r) in ranges.prefix(capacity).enumerated() {
            var e = StructBytes(bytes: [UInt8](repeating: 0, count: 16))
            e.set64(0, r.start)
            e.set64(8, r.last)
            try copyOut(base &+ UInt64(i) &* 16, bytes: e.bytes)
        }
        a.set32(8, UInt32(ranges.count))
        a.set64(24, ioas.iovaAlignment)
        a.respond()
        if ranges.count > capacity { throw Errno(Errno.EMSGSIZE, "\(ranges.count) ranges, room for \(capacity)") }
    }

    static let mapFlags: UInt32 = UAPI.mapFixedIOVA | UAPI.mapWriteable | UAPI.mapReadable

    func permissions(_ flags: UInt32) -> PagePermissions {
        var p: PagePermissions = []
        if flags & UAPI.mapReadable != 0 { p.insert(.read) }
        if flags & UAPI.mapWriteable != 0 { p.insert(.write) }
        return p
    }

    /// IOMMU_IOAS_MAP: {size, flags @4, ioas_id @8, __reserved @12, user_va @16, length @24,
    /// iova @32 (in with FIXED_IOVA, out)}. Pins nothing unless a domain needs the pages.
    func mapIoctl(_ a: inout IoctlArgument) throws(Errno) {
        guard a.u32(12) == 0 else { throw Errno.notsupp("IOAS_MAP __reserved") }
        let view = a
        try map(&a, command: "IOAS_MAP") { () throws(Errno) in
            let va = view.u64(16), length = view.u64(24)
            guard !va.addingReportingOverflow(length).overflow else { throw Errno(Errno.EOVERFLOW, "user_va + length overflows") }
            return (.user(memory, address: va & ~0xFFF), va)
        }
    }

    /// IOMMU_IOAS_MAP_FILE: {size, flags @4, ioas_id @8, fd @12 (s32), start @16, length @24,
    /// iova @32}: pages of a memfd, identified by file and offset.
    func mapFileIoctl(_ a: inout IoctlArgument) throws(Errno) {
        let view = a
        try map(&a, command: "IOAS_MAP_FILE") { () throws(Errno) in
            guard let file = files[view.s32(12)] else { throw Errno(Errno.EBADF, "fd \(view.s32(12)) is not open") }
            let start = view.u64(16), length = view.u64(24)
            if length != 0 { guard !start.addingReportingOverflow(length - 1).overflow else { throw Errno(Errno.EOVERFLOW, "start + length overflows") } }
            return (.file(file, offset: start & ~0xFFF), start)
        }
    }

    /// What MAP and MAP_FILE share, in the kernel's order: flags (EOPNOTSUPP), iova and
    /// length below U64_MAX (EOVERFLOW), readable or writeable (EINVAL), the IOAS (ENOENT),
    /// then the source's own checks (`source` gives the pages' source and the address whose
    /// low bits the IOVA keeps), the length (EINVAL), and the placement.
    private func map(_ a: inout IoctlArgument, command: String,
                     source: () throws(Errno) -> (IOPTPages.Source, UInt64)) throws(Errno) {
        let flags = a.u32(4)
        guard flags & ~Self.mapFlags == 0 else { throw Errno.notsupp("\(command) flags 0x\(String(flags, radix: 16))") }
        let length = a.u64(24), iova = a.u64(32)
        guard iova < .max, length < .max else { throw Errno(Errno.EOVERFLOW, "iova or length is U64_MAX") }
        guard flags & (UAPI.mapReadable | UAPI.mapWriteable) != 0 else { throw Errno.inval("a mapping must be readable or writeable") }
        let ioas: IOAS = try get(a.u32(8), .ioas)
        let (src, address) = try source()
        guard length != 0, length <= UInt64.max - IOAS.pageSize else { throw Errno.inval("length 0x\(String(length, radix: 16))") }
        let offset = address & 0xFFF
        let pages = IOPTPages(source: src, pageCount: IOAS.pageCount(offset: offset, length: length),
                              writable: flags & UAPI.mapWriteable != 0, accountMode: accountMode, ledger: ledger)
        let placed = try ioas.insertOne(IOAS.Piece(pages: pages, pageOffset: offset, length: length),
                                        iova: flags & UAPI.mapFixedIOVA != 0 ? iova : nil, address: address, permissions: permissions(flags))
        a.set64(32, placed)
        a.respond()
    }

    /// IOMMU_IOAS_COPY: {size, flags @4, dst_ioas_id @8, src_ioas_id @12, length @16,
    /// dst_iova @24, src_iova @32}: maps the pages behind a source range again, sharing them.
    func copyIoctl(_ a: inout IoctlArgument) throws(Errno) {
        let flags = a.u32(4)
        guard flags & ~Self.mapFlags == 0 else { throw Errno.notsupp("IOAS_COPY flags 0x\(String(flags, radix: 16))") }
        let length = a.u64(16), dstIOVA = a.u64(24), srcIOVA = a.u64(32)
        guard length < .max, srcIOVA < .max, dstIOVA < .max else { throw Errno(Errno.EOVERFLOW, "length or an iova is U64_MAX") }
        guard flags & (UAPI.mapReadable | UAPI.mapWriteable) != 0 else { throw Errno.inval("a mapping must be readable or writeable") }
        let src: IOAS = try get(a.u32(12), .ioas)
        let pieces = try src.pieces(srcIOVA, length)
        let dst: IOAS = try get(a.u32(8), .ioas)
        let first = pieces[0]
        let address: UInt64
        switch first.pages.source {
        case .user(_, let va): address = va + first.pageOffset
        case .file(_, let offset): address = offset + first.pageOffset
        }
        let placed = try dst.insert(pieces, iova: flags & UAPI.mapFixedIOVA != 0 ? dstIOVA : nil, address: address, permissions: permissions(flags))
        a.set64(24, placed)
        a.respond()
    }

    /// IOMMU_IOAS_UNMAP: {size, ioas_id @4, iova @8, length @16 (in/out)}.
    func unmapIoctl(_ a: inout IoctlArgument) throws(Errno) {
        let ioas: IOAS = try get(a.u32(4), .ioas)
        let unmapped = try ioas.unmap(a.u64(8), a.u64(16))
        a.set64(16, unmapped)
        a.respond()
    }

    /// IOMMU_OPTION: {size, option_id @4, op @8 (u16), __reserved @10 (u16), object_id @12,
    /// val64 @16}.
    func optionIoctl(_ a: inout IoctlArgument) throws(Errno) {
        guard a.u16(10) == 0 else { throw Errno.notsupp("__reserved is not zero") }
        let op = a.u16(8), object = a.u32(12), value = a.u64(16)
        switch a.u32(4) {
        case UAPI.optionRlimitMode:
            guard object == 0 else { throw Errno.notsupp("RLIMIT_MODE takes object_id 0") }
            switch op {
            case UAPI.optionOpGet: a.set64(16, accountToProcess ? 1 : 0)
            case UAPI.optionOpSet:
                guard capSysResource else { throw Errno(Errno.EPERM, "RLIMIT_MODE needs CAP_SYS_RESOURCE") }
                guard table.count == 0 else { throw Errno.busy("RLIMIT_MODE is set before any object exists") }
                guard value <= 1 else { throw Errno.inval("RLIMIT_MODE \(value)") }
                accountToProcess = value == 1
            default: throw Errno.notsupp("option op \(op)")
            }
        case UAPI.optionHugePages:
            let ioas: IOAS = try get(object, .ioas)
            switch op {
            case UAPI.optionOpGet: a.set64(16, ioas.disableLargePages ? 0 : 1)
            case UAPI.optionOpSet:
                switch value {
                case 0:
                    guard !ioas.disableLargePages else { break }
                    guard ioas.domains.isEmpty || ioas.areas.isEmpty else {
                        throw Errno.inval("huge pages cannot be disabled with mappings in a domain")
                    }
                    ioas.disableLargePages = true
                    let alignment = ioas.computeAlignment()
                    do { try ioas.checkAreasAligned(alignment) } catch {
                        ioas.disableLargePages = false
                        throw error
                    }
                    ioas.iovaAlignment = alignment
                case 1:
                    ioas.disableLargePages = false
                    ioas.iovaAlignment = ioas.computeAlignment()
                default: throw Errno.inval("HUGE_PAGES \(value)")
                }
            default: throw Errno.notsupp("option op \(op)")
            }
        default: throw Errno.notsupp("option \(a.u32(4))")
        }
        a.respond()
    }

    /// IOMMU_VFIO_IOAS: {size, ioas_id @4, op @8 (u16), __reserved @10 (u16)}.
    func vfioIOASIoctl(_ a: inout IoctlArgument) throws(Errno) {
        guard a.u16(10) == 0 else { throw Errno.notsupp("__reserved is not zero") }
        switch a.u16(8) {
        case UAPI.vfioIOASGet:
            guard let ioas = vfioIOAS else { throw Errno(Errno.ENODEV, "no VFIO compatibility IOAS") }
            a.set32(4, ioas.id)
            a.respond()
        case UAPI.vfioIOASSet: vfioIOAS = try get(a.u32(4), .ioas)
        case UAPI.vfioIOASClear: vfioIOAS = nil
        default: throw Errno.notsupp("VFIO_IOAS op \(a.u16(8))")
        }
    }

    /// IOMMU_IOAS_CHANGE_PROCESS: {size, __reserved @4}: moves the pin accounting of every
    /// MAP_FILE mapping to this context's current ledger; EINVAL if any mapping is not of a
    /// file; all or nothing.
    func changeProcessIoctl(_ a: inout IoctlArgument) throws(Errno) {
        guard a.u32(4) == 0 else { throw Errno.notsupp("__reserved is not zero") }
        var pagesSeen: [ObjectIdentifier: IOPTPages] = [:]
        for case let ioas as IOAS in table.all {
            for area in ioas.areas {
                guard area.pages.isFile else { throw Errno.inval("a mapping of \(ioas) is not of a file") }
                pagesSeen[ObjectIdentifier(area.pages)] = area.pages
            }
        }
        let moving = pagesSeen.values.filter { $0.ledger !== ledger && $0.accountMode != .none }
        var user: UInt64 = 0, mm: UInt64 = 0
        for p in moving { if p.accountMode == .user { user += UInt64(p.pinnedPages) } else { mm += UInt64(p.pinnedPages) } }
        try ledger.charge(.user, user, faults: faults)
        do { try ledger.charge(.mm, mm, faults: faults) } catch {
            ledger.uncharge(.user, user)
            throw error
        }
        for p in moving {
            p.ledger.uncharge(p.accountMode, UInt64(p.pinnedPages))
            p.ledger = ledger
        }
    }
}
