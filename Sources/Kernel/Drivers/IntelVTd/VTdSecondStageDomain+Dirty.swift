import Platform
import Formats
import Hardware

/// Dirty tracking of a second-stage domain (Linux drivers/iommu/intel/iommu.c
/// `intel_iommu_set_dirty_tracking`, `intel_iommu_read_and_clear_dirty`, and
/// pasid.c `intel_pasid_setup_dirty_tracking`): SSADE in every PASID entry of the domain
/// makes the unit set A and D in the leaves it uses; software reads and clears D.
extension VTdSecondStageDomain {
    /// Sets or clears SSADE in every PASID entry pointing here and in those of its nested
    /// children (Linux `intel_iommu_set_dirty_tracking` with `parent_domain_set_dirty_tracking`):
    /// one store of the entry's first word each, then the PASID-cache, IOTLB and device-TLB
    /// invalidation VT-d's table 25 asks for (done by `programEntry`). On failure the entries
    /// already changed go back.
    func setSSADE(_ enabled: Bool) throws(IOMMUError) {
        guard flags.contains(.dirtyTracking) else { throw .notSupported("\(self) was not allocated for dirty tracking") }
        guard enabled != dirtyTrackingEnabled else { return }
        dirtyTrackingEnabled = enabled
        try reprogramEntries { dirtyTrackingEnabled = !enabled }
        var done: [VTdNestedDomain] = []
        for child in nestedChildren {
            let c = child.takeUnretainedValue()
            do { try c.reprogramEntries { dirtyTrackingEnabled = !enabled } } catch {
                for d in done { try? d.reprogramEntries {} }
                try? reprogramEntries {}
                throw error
            }
            done.append(c)
        }
    }

    /// Reads (and clears) the D bits of [iova, iova + size): EINVAL while tracking is off
    /// (Linux answers so when asked for a bitmap). A clearing read flushes the range from
    /// the IOTLB and device TLBs, so that a write after it, even through a translation
    /// cached before, finds D clear and sets it again.
    func readAndClearDBits(iova: UInt64, size: UInt64, clear: Bool, _ record: ((UInt64, UInt64) -> Void)?) throws(IOMMUError) {
        guard flags.contains(.dirtyTracking) else { throw .notSupported("\(self) was not allocated for dirty tracking") }
        guard dirtyTrackingEnabled || record == nil else { throw .invalidArgument("dirty tracking of \(self) is off") }
        guard size > 0 else { return }
        let end = iova &+ size
        var first: UInt64 = .max, last: UInt64 = 0
        pageTable.readAndClearDirty(start: iova, end: end < iova ? .max : end, clear: clear) { start, length in
            first = min(first, start)
            last = max(last, start + length - 1)
            record?(start, length)
        }
        if clear && first <= last && driver.core?.injectedBugs.contains(.dirtyClearWithoutFlush) != true {
            try flushRange(start: first, end: last, hint: true)
        }
    }
}
