import Platform
import Kernel

/// The selftest's check commands (Linux selftest.c `iommufd_test_md_check_pa`,
/// `_md_check_refs`, `iommufd_test_dirty`): arguments are checked before any lookup.
extension IOMMUFDContext {
    /// MD_CHECK_MAP: each 2 KiB of [iova, iova + length) in the mock domain of paging HWPT
    /// `id` must hold the physical address of the user's memory at `uptr` (EINVAL
    /// otherwise; an unmapped user page is EFAULT).
    func testCheckMap(_ id: UInt32, iova: UInt64, length: UInt64, uptr: UInt64) throws(Errno) {
        let step = MockIOMMUDriver.pageSize
        guard (iova | length | uptr) % step == 0, !uptr.addingReportingOverflow(length).overflow else {
            throw Errno.inval("MD_CHECK_MAP arguments not 2 KiB-aligned or overflowing")
        }
        let h: HWPTPaging = try get(id, .hwptPaging)
        guard let domain = h.domain as? MockPagingDomain else { throw Errno.inval("\(h) is not a mock domain") }
        var done: UInt64 = 0
        while done < length {
            let va = uptr + done
            guard let page = memory.inspectPage(at: va & ~0xFFF) else { throw Errno.fault("user page 0x\(String(va, radix: 16)) is not mapped") }
            guard let pa = domain.iovaToPhys(iova + done), let f = page.frame, pa == f + (va & 0xFFF) else {
                throw Errno.inval("IOVA 0x\(String(iova + done, radix: 16)) does not map the user's page at 0x\(String(va, radix: 16))")
            }
            done += step
        }
    }

    /// MD_CHECK_REFS: every 4 KiB page of [uptr, uptr + length) that is not part of a huge
    /// page has `refs` long-term pins (EIO otherwise).
    func testCheckRefs(length: UInt64, uptr: UInt64, refs: UInt32) throws(Errno) {
        guard (length | uptr) & 0xFFF == 0, !uptr.addingReportingOverflow(length).overflow else {
            throw Errno.inval("MD_CHECK_REFS arguments not page-aligned or overflowing")
        }
        var va = uptr
        while va < uptr + length {
            guard let page = memory.inspectPage(at: va) else { throw Errno.fault("user page 0x\(String(va, radix: 16)) is not mapped") }
            if !page.huge, page.pins != Int(refs) {
                throw Errno(Errno.EIO, "user page 0x\(String(va, radix: 16)) has \(page.pins) pins, not \(refs)")
            }
            va += 4096
        }
    }

    /// DIRTY: marks the IOPTEs whose bits are set in the user's bitmap dirty, bit i keyed
    /// (iova + i × page_size) / page_size as the mock does (the right slot only for 2 KiB
    /// pages, all the tests use). Returns how many were present.
    func testDirty(_ id: UInt32, iova: UInt64, length: UInt64, pageSize: UInt64, uptr: UInt64) throws(Errno) -> UInt64 {
        guard pageSize != 0, length != 0, iova % pageSize == 0, length % pageSize == 0, uptr != 0 else {
            throw Errno.inval("DIRTY arguments")
        }
        let h: HWPTPaging = try get(id, .hwptPaging)
        guard let domain = h.domain as? MockPagingDomain, domain.trackingDirty else { throw Errno.inval("\(h) is not tracking dirty pages") }
        let bits = length / pageSize
        // The mock allocates the bitmap (kvzalloc): past what that can give, ENOMEM.
        guard bits <= 1 << 31 else { throw Errno.nomem("bitmap of \(bits) bits") }
        let bitmap = try copyIn(uptr, count: Int((bits + 7) / 8))
        var count: UInt64 = 0
        for i in 0..<bits where bitmap[Int(i / 8)] & (1 << (i % 8)) != 0 {
            // The kernel's unsigned long arithmetic: wraps.
            if domain.markDirty(slot: (iova &+ i &* pageSize) / pageSize) { count += 1 }
        }
        return count
    }
}
