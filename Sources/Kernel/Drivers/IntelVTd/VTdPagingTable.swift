import Platform
import Formats
import Hardware

/// The page-table side of a VT-d paging domain, shared by the first- and second-stage
/// domains (Linux `intel_iommu_map_pages`, `intel_iommu_unmap_pages`): errors of the table
/// become the core's. Inlined into each domain, so each runs specialized for its format.
extension IOPageTable {
    @inline(__always)
    func domainMap(iova: UInt64, physical: UInt64, pageSize: UInt64, count: UInt64, permissions: PagePermissions,
                   domain: IOMMUDomain) throws(IOMMUError) -> UInt64 {
        let (size, o) = pageSize.multipliedReportingOverflow(by: count)
        guard !o else { throw .invalidArgument("mapping size overflows") }
        do {
            try map(iova: iova, physical: physical, size: size, permissions: permissions)
        } catch {
            switch error {
            case .alreadyMapped(let at): throw .exists("0x\(String(at, radix: 16)) is already mapped in \(domain)")
            case .outOfMemory: throw .noMemory("page-table page")
            case .outOfRange: throw .outOfRange("mapping beyond the table's reach")
            case .misaligned, .noAccess: throw .invalidArgument("\(error)")
            }
        }
        return size
    }

    @inline(__always)
    func domainUnmap(iova: UInt64, pageSize: UInt64, count: UInt64, gather: inout UnmapGather) -> UInt64 {
        let (size, o) = pageSize.multipliedReportingOverflow(by: count)
        guard !o else { return 0 }
        let before = gather.end
        do { return try unmap(iova: iova, size: size, gather: &gather) } catch {
            // A superpage split ran out of frames: report what was cleared before it.
            return gather.end > max(before, iova) ? gather.end - iova : 0
        }
    }

    /// Frees every table page (the domain is gone and no entry points at it).
    func domainFree() {
        var gather = UnmapGather()
        destroy(into: &gather)
        for t in gather.freedTables { try? frames.free(t) }
    }
}

/// Which stage a VT-d DMA paging domain translates with.
public enum VTdPagingStage: String, Sendable, CaseIterable {
    /// First-stage (x86-64) tables, PGTT=001: Linux's choice where the unit has FLTS.
    case first
    /// Second-stage (VT-d) tables, PGTT=010: for nest parents, dirty tracking, and units
    /// without first-stage translation.
    case second
}
