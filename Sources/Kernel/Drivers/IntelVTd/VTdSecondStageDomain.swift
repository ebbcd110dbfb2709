import Platform
import Formats
import Hardware

/// A second-stage paging domain (Linux `dmar_domain` with second-stage tables,
/// `intel_domain_is_ss_paging`): a VT-d page table in physical memory, entries PGTT=010,
/// IOTLB entries tagged by DID. Nest parents and dirty-tracking domains are of this kind.
final class VTdSecondStageDomain: VTdDMARDomain, @unchecked Sendable {
    let pageTable: IOPageTable<SecondStageFormat>
    let levels: Int
    /// Dirty tracking is on: every PASID entry of the domain, and of its nested children,
    /// has SSADE set (VTdSecondStageDomain+Dirty.swift).
    var dirtyTrackingEnabled = false
    /// Nested domains built on this one (Linux `s1_domains`), not counted: each removes
    /// itself when freed.
    var nestedChildren: [Unmanaged<VTdNestedDomain>] = []

    init(driver: VTdDriver, type: DomainType, flags: DomainFlags, levels: Int, maxLeafLevel: Int, addressWidth: Int) throws(IOMMUError) {
        do {
            pageTable = try IOPageTable(memory: driver.platform.memory, frames: driver.platform.frames, levels: levels,
                                        maxLeafLevel: maxLeafLevel, addressWidth: addressWidth,
                                        ownerTag: driver.platform.frames.makeOwnerTag())
        } catch { throw .noMemory("page-table root") }
        if driver.core?.injectedBugs.contains(.freeTablesOutsideGather) == true { pageTable.freesUnlinkedTablesAtOnce = true }
        self.levels = levels
        var sizes: UInt64 = 1 << 12
        if maxLeafLevel >= 2 { sizes |= 1 << 21 }
        if maxLeafLevel >= 3 { sizes |= 1 << 30 }
        super.init(driver: driver, type: type, flags: flags, pageSizes: sizes, apertureEnd: pageTable.inputLimit - 1, taggedByPASID: false)
    }

    public override var tableOwnerTag: UInt32 { pageTable.ownerTag }

    /// Linux `paging_domain_compatible` for a second-stage domain.
    override func checkCompatible(_ u: IntelIOMMU, device: Device) throws(IOMMUError) {
        guard u.extendedCapability.secondStage, u.capability.supportsSecondStage(levels: levels) else {
            throw .incompatible("\(u.name) cannot walk \(levels)-level second-stage tables")
        }
        let large = u.capability.secondStageLargePages
        if pageSizes & (1 << 21) != 0 && large & 1 == 0 { throw .incompatible("\(u.name) has no 2 MiB pages") }
        if pageSizes & (1 << 30) != 0 && large & 2 == 0 { throw .incompatible("\(u.name) has no 1 GiB pages") }
        guard pageTable.addressMask & ~PageTableGeometry.addressMask(width: u.unit.configuration.hostAddressWidth) == 0 else {
            throw .incompatible("\(u.name) has a narrower host address width")
        }
        // A dirty-tracking domain needs SSADS.
        if flags.contains(.dirtyTracking) && !u.extendedCapability.secondStageAD {
            throw .incompatible("\(u.name) cannot track dirty pages (no SSADS)")
        }
    }

    /// Linux `pasid_pte_config_second_level`.
    override func makeEntry(did: DomainID, unit u: IntelIOMMU) -> PASIDEntry {
        PASIDEntry.make(pgtt: .secondStage, did: did, secondStageTable: pageTable.root, secondStageLevels: levels,
                        secondStageAD: dirtyTrackingEnabled, pageWalkSnoop: true)
    }

    // MARK: Map and unmap

    override func mapPages(iova: UInt64, physical: UInt64, pageSize: UInt64, count: UInt64,
                           permissions: PagePermissions) throws(IOMMUError) -> UInt64 {
        try pageTable.domainMap(iova: iova, physical: physical, pageSize: pageSize, count: count, permissions: permissions, domain: self)
    }

    override func unmapPages(iova: UInt64, pageSize: UInt64, count: UInt64, gather: inout UnmapGather) -> UInt64 {
        pageTable.domainUnmap(iova: iova, pageSize: pageSize, count: count, gather: &gather)
    }

    override func syncMap(iova: UInt64, size: UInt64) throws(IOMMUError) {
        // Caching-mode hardware may cache non-present second-stage entries: flush the new
        // range (Linux `cache_tag_flush_range_np`). Otherwise nothing is needed.
        guard cachingModeTags > 0 else { return }
        try flushRange(start: iova, end: iova + size - 1, hint: false)
    }

    override func iovaToPhys(_ iova: UInt64) -> UInt64? { pageTable.translate(iova)?.physical }
    override func mappedPageSize(_ iova: UInt64) -> UInt64? { pageTable.translate(iova)?.pageSize }

    override func setDirtyTracking(_ enabled: Bool) throws(IOMMUError) { try setSSADE(enabled) }

    override func readAndClearDirty(iova: UInt64, size: UInt64, clear: Bool, _ record: ((UInt64, UInt64) -> Void)?) throws(IOMMUError) {
        try readAndClearDBits(iova: iova, size: size, clear: clear, record)
    }

    override func free() { pageTable.domainFree() }
}

extension VTdDMARDomain {
    /// IH for the flush of an unmap: set only when no table page was freed (Linux passes
    /// `!freelist` as IH), unless a bug is injected that sets it regardless.
    @inline(__always)
    func flushHint(_ gather: UnmapGather) -> Bool {
        gather.freedTables.isEmpty || driver.core?.injectedBugs.contains(.hintAfterFreeingTables) == true
    }
}
