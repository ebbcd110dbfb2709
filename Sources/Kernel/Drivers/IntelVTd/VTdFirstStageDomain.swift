import Platform
import Formats
import Hardware

/// A first-stage paging domain (Linux `dmar_domain` with `intel_domain_is_fs_paging`,
/// drivers/iommu/intel/iommu.c `intel_iommu_domain_alloc_first_stage`): x86-64 tables,
/// 4 or 5 levels, entries PGTT=001 with FSPTPTR; IOTLB entries are tagged by (DID, PASID)
/// and invalidated with PASID-based IOTLB descriptors. The input is canonical, so the
/// aperture is the lower half (bit N-1 is never set: 47 or 56 bits). New mappings need no
/// flush even in caching mode (VT-d §6.1: caching mode does not apply to first-stage
/// entries).
final class VTdFirstStageDomain: VTdDMARDomain, @unchecked Sendable {
    let pageTable: IOPageTable<FirstStageDMAFormat>
    let levels: Int

    init(driver: VTdDriver, type: DomainType, flags: DomainFlags, levels: Int, oneGiBPages: Bool, addressWidth: Int) throws(IOMMUError) {
        do {
            pageTable = try IOPageTable(memory: driver.platform.memory, frames: driver.platform.frames, levels: levels,
                                        maxLeafLevel: oneGiBPages ? 3 : 2, addressWidth: addressWidth,
                                        ownerTag: driver.platform.frames.makeOwnerTag())
        } catch { throw .noMemory("page-table root") }
        if driver.core?.injectedBugs.contains(.freeTablesOutsideGather) == true { pageTable.freesUnlinkedTablesAtOnce = true }
        self.levels = levels
        var sizes: UInt64 = 1 << 12 | 1 << 21
        if oneGiBPages { sizes |= 1 << 30 }
        super.init(driver: driver, type: type, flags: flags, pageSizes: sizes,
                   apertureEnd: pageTable.inputLimit / 2 - 1, taggedByPASID: true)
    }

    public override var tableOwnerTag: UInt32 { pageTable.ownerTag }

    /// Linux `paging_domain_compatible` for a first-stage domain: FLTS, FS5LP for 5 levels,
    /// FS1GP when 1 GiB pages are in use, and the host address width.
    override func checkCompatible(_ u: IntelIOMMU, device: Device) throws(IOMMUError) {
        guard u.extendedCapability.firstStage else { throw .incompatible("\(u.name) has no first-stage translation") }
        if levels == 5 && !u.capability.firstStage5Level { throw .incompatible("\(u.name) cannot walk 5-level first-stage tables") }
        if pageSizes & (1 << 30) != 0 && !u.capability.firstStage1GPages { throw .incompatible("\(u.name) has no first-stage 1 GiB pages") }
        guard pageTable.addressMask & ~PageTableGeometry.addressMask(width: u.unit.configuration.hostAddressWidth) == 0 else {
            throw .incompatible("\(u.name) has a narrower host address width")
        }
    }

    /// Linux `pasid_pte_config_first_level`.
    override func makeEntry(did: DomainID, unit u: IntelIOMMU) -> PASIDEntry {
        PASIDEntry.make(pgtt: .firstStage, did: did, firstStageTable: pageTable.root, firstStageLevels: levels, pageWalkSnoop: true)
    }

    /// A present first-stage leaf is readable (x86-64 paging has no read-disable bit).
    override func grantedPermissions(_ permissions: PagePermissions) -> PagePermissions {
        permissions.isDisjoint(with: .readWrite) ? permissions : permissions.union(.read)
    }

    override func mapPages(iova: UInt64, physical: UInt64, pageSize: UInt64, count: UInt64,
                           permissions: PagePermissions) throws(IOMMUError) -> UInt64 {
        try pageTable.domainMap(iova: iova, physical: physical, pageSize: pageSize, count: count, permissions: permissions, domain: self)
    }

    override func unmapPages(iova: UInt64, pageSize: UInt64, count: UInt64, gather: inout UnmapGather) -> UInt64 {
        pageTable.domainUnmap(iova: iova, pageSize: pageSize, count: count, gather: &gather)
    }

    override func iovaToPhys(_ iova: UInt64) -> UInt64? { pageTable.translate(iova)?.physical }
    override func mappedPageSize(_ iova: UInt64) -> UInt64? { pageTable.translate(iova)?.pageSize }

    override func free() { pageTable.domainFree() }
}
