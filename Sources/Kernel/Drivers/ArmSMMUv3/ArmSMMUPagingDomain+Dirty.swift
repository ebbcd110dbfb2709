import Platform
import Formats
import Hardware

/// Dirty tracking of a stage 1 domain (Linux 6.17 arm-smmu-v3.c `arm_smmu_dirty_ops`:
/// `arm_smmu_set_dirty_tracking`, `arm_smmu_read_and_clear_dirty`; io-pgtable-arm.c
/// `arm_lpae_read_and_clear_dirty`). The domain's CD has HA and HD (IHI 0070 §5.4, CD bits 43
/// and 42), so the unit turns a writable-clean leaf (DBM set, AP[2] set) writable-dirty (AP[2]
/// clear) on the first write through it (IHI 0070 §3.13.3; Arm ARM D8.4.6). Fresh writable
/// leaves are writable-dirty (Linux `arm_lpae_prot_to_pte` with IO_PGTABLE_QUIRK_ARM_HD: DBM,
/// AP[2] clear): iommufd clears every leaf when tracking starts (`iopt_clear_dirty_data`).
extension ArmSMMUS1Domain {
    /// Allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING (Linux `enable_dirty`: the HD quirk in
    /// the io-pgtable, HA|HD in the CD, `dirty_ops` set).
    var tracksDirty: Bool { flags.contains(.dirtyTracking) }

    /// Linux `arm_smmu_set_dirty_tracking`: nothing to do, returns 0 ("Always enabled and
    /// the dirty bitmap is cleared prior to set_dirty_tracking()"). A domain without
    /// `dirty_ops` is refused (iommufd `iopt_set_dirty_tracking`: EOPNOTSUPP).
    func setDirtyTrackingS1(_ enabled: Bool) throws(IOMMUError) {
        guard tracksDirty else { throw .notSupported("\(self) was not allocated for dirty tracking") }
    }

    /// Linux `arm_lpae_read_and_clear_dirty` → `__arm_lpae_iopte_walk` with `visit_dirty`:
    /// each writable-dirty leaf (`iopte_writeable_dirty`: DBM set, AP[2] clear) in
    /// [iova, iova + size) is recorded whole and, unless IOMMU_DIRTY_NO_CLEAR, made
    /// writable-clean by an atomic set of AP[2] (`iopte_set_writeable_clean`). There is no
    /// "tracking off" state, so reads always report. A clearing read then syncs the IOTLB
    /// (and ATCs) for the recorded span, as iommufd's `iommu_iotlb_sync` on the dirty
    /// bitmap's gather does: a TLB entry still writable would let a later write skip the
    /// hardware update, and the page would be missed.
    func readAndClearDirtyS1(iova: UInt64, size: UInt64, clear: Bool, _ record: ((UInt64, UInt64) -> Void)?) throws(IOMMUError) {
        guard tracksDirty else { throw .notSupported("\(self) was not allocated for dirty tracking") }
        guard size > 0 else { return }
        let end = iova &+ size
        var gather = UnmapGather()
        pageTable.readAndClearDirty(start: iova, end: end < iova ? .max : end, clear: clear) { start, length in
            gather.add(range: start, start &+ length, pageSize: length)
            record?(start, length)
        }
        guard clear, gather.start < gather.end, !driver.bugs.contains(.dirtyClearWithoutFlush) else { return }
        try iotlbSync(&gather)
    }
}
