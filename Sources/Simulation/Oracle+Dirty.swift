import Platform
import Formats
import Hardware
import Kernel

/// Dirty completeness (the live-migration invariant): every page a device wrote through a
/// domain with dirty tracking on appears in a clearing read of its dirty bits. A write that
/// completed before a clearing read began must be in that read; one that races it may be
/// in it or in the next (the VMM copies what the read reported after it returns, so a
/// racing write to a reported page is copied too).
extension Oracle {
    /// Pages written and not yet reported, with the oracle's check count at their first
    /// such write (an order, finer than virtual time: a write and a read may share an
    /// instant), and where the read in progress began, per domain with tracking on.
    final class DirtyState {
        var pending: [UInt64: UInt64] = [:]
        var readBegan: UInt64?
        var readBeganNs: UInt64 = 0
    }

    /// Records a write through a tracked domain (called from `check`).
    func noteDirtyWrite(domain id: Int, address: UInt64, length: UInt64) {
        guard let state = dirty[id] else { return }
        let time = checks
        var page = address & ~0xFFF
        let end = address &+ max(length, 1)
        while page < end {
            if state.pending[page] == nil { state.pending[page] = time }
            page &+= 0x1000
        }
    }

    /// A failed clearing read (its flush timed out) may leave cached translations that no
    /// longer set D: the VMM was told and must restart tracking (a migration aborts), so the
    /// domain is not judged until tracking is turned on again.
    public func dirtyReadFailed(_ domain: IOMMUDomain, cleared: Bool) {
        checks &+= 1
        guard cleared else { dirty[domain.id]?.readBegan = nil; return }
        dirty[domain.id] = nil
    }

    /// An unmap that returned took its pages' dirty bits with their PTEs: a later clearing
    /// read cannot report them (Linux iopt_read_and_clear_dirty_data walks the mapped areas
    /// only, and IOMMU_IOAS_UNMAP returns no dirty bits, drivers/iommu/iommufd/io_pagetable.c),
    /// so the VMM must read before it unmaps: writes to those pages are no longer owed.
    func dirtyRangeUnmapped(domain id: Int, iova: UInt64, size: UInt64) {
        guard let state = dirty[id], size > 0, !state.pending.isEmpty else { return }
        let end = iova &+ size
        for page in state.pending.keys where page >= iova & ~0xFFF && page < end { state.pending[page] = nil }
    }

    public func dirtyTrackingChanged(_ domain: IOMMUDomain, enabled: Bool) {
        checks &+= 1
        dirty[domain.id] = enabled ? DirtyState() : nil
    }

    public func dirtyReadBegan(_ domain: IOMMUDomain) {
        checks &+= 1
        dirty[domain.id]?.readBegan = checks
        dirty[domain.id]?.readBeganNs = platform.scheduler.now
    }

    public func dirtyReadEnded(_ domain: IOMMUDomain, iova: UInt64, size: UInt64, cleared: Bool, reported: [(UInt64, UInt64)]) {
        checks &+= 1
        guard let state = dirty[domain.id], let began = state.readBegan else { return }
        state.readBegan = nil
        guard cleared else { return }
        let ranges = reported.sorted { $0.0 < $1.0 }
        func isReported(_ page: UInt64) -> Bool {
            var lo = 0, hi = ranges.count
            while lo < hi { let m = (lo + hi) >> 1; if ranges[m].0 &+ ranges[m].1 <= page { lo = m + 1 } else { hi = m } }
            return lo < ranges.count && ranges[lo].0 <= page
        }
        let end = iova &+ size
        var missed: [(UInt64, UInt64)] = []
        for (page, time) in state.pending where page >= iova && page < end {
            if isReported(page) {
                state.pending[page] = nil
            } else if time < began {
                missed.append((page, time))
                state.pending[page] = nil
            }
        }
        if let first = missed.min(by: { $0.0 < $1.0 }) {
            violate("dirty-write-missed", "\(domain): \(missed.count) page(s) written before a clearing dirty read were not reported " +
                    "(first: IOVA \(Self.hex(first.0)); the read began at \(state.readBeganNs) ns)")
        }
    }
}
