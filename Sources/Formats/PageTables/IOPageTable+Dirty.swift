import Platform

/// Dirty tracking on an I/O page table: the hardware sets D in a leaf when it translates a
/// write with A/D enabled (VT-d §3.6.2, SSADE); software reads and clears it (Linux
/// `intel_iommu_read_and_clear_dirty`, drivers/iommu/intel/iommu.c). Arm formats record the
/// dirty state in the write permission under DBM (`PageTableFormat.isDirty`/`cleaned`; Linux
/// io-pgtable-arm.c `arm_lpae_read_and_clear_dirty` sets AP[2] to clean).
extension IOPageTable {
    /// Reports every leaf in [start, end) whose D bit is set, as (first IOVA of the leaf, its
    /// size): a superpage is reported whole. Clears D (atomically against the hardware
    /// setting it) unless `clear` is false. Callers flush the IOTLB after clearing, so that
    /// a later write finds D clear and sets it again.
    public func readAndClearDirty(start: UInt64, end: UInt64, clear: Bool, _ record: (UInt64, UInt64) -> Void) {
        guard start < end else { return }
        walkDirty(table: root, level: levels, base: 0, start: start, end: min(end, inputLimit), clear: clear, record)
    }

    private func walkDirty(table: UInt64, level: Int, base: UInt64, start: UInt64, end: UInt64, clear: Bool,
                           _ record: (UInt64, UInt64) -> Void) {
        let span = PageTableGeometry.span(level: level)
        let first = start > base ? (start - base) / span : 0
        var i = first
        while i < 512 {
            let entryBase = base + i * span
            guard entryBase < end else { break }
            let address = table + i * 8
            i += 1
            guard let raw = try? memory.load64(address) else { continue }
            let e = F.decode(raw, level: level, addressMask: addressMask)
            guard e.present else { continue }
            if !e.leaf {
                walkDirty(table: e.address, level: level - 1, base: entryBase, start: start, end: end, clear: clear, record)
                continue
            }
            guard F.isDirty(raw) else { continue }
            if clear {
                var seen = raw
                while F.isDirty(seen) {
                    guard let r = try? memory.compareExchange64(address, expected: seen, desired: F.cleaned(seen)) else { break }
                    if r.exchanged { break }
                    seen = r.original
                }
            }
            record(entryBase, span)
        }
    }
}
