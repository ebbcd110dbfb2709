import Platform
import Kernel

/// A hardware page table (Linux `struct iommufd_hw_pagetable`): a core domain user space
/// attaches devices to, with the fault object that takes its IO page faults.
public class HWPT: IOMMUFDObject {
    public let domain: IOMMUDomain
    /// The fault object page requests of devices attached here go to.
    public internal(set) var fault: FaultObject?
    /// Allocated with `IOMMU_HWPT_ALLOC_PASID`: may be attached to PASIDs, and to a RID
    /// while PASIDs are attached (Linux `pasid_compat`).
    public let pasidCompatible: Bool

    init(type: ObjectType, domain: IOMMUDomain, fault: FaultObject?, pasidCompatible: Bool) {
        self.domain = domain; self.fault = fault; self.pasidCompatible = pasidCompatible
        super.init(type: type)
    }

    /// The paging HWPT whose IOAS this one's DMA goes through (itself, or a nested one's parent).
    var pagingBacking: HWPTPaging? { nil }

    /// What every HWPT gives back last: its fault object and its domain.
    override func destroy(_ ctx: IOMMUFDContext) {
        fault?.users -= 1
        fault = nil
        try? ctx.core.freeDomain(domain)
    }
}

/// A paging HWPT (Linux `struct iommufd_hwpt_paging`): a domain holding every mapping of
/// its IOAS. Made explicitly by IOMMU_HWPT_ALLOC or automatically when a device is
/// attached to an IOAS; an automatic one goes when its last device leaves.
public final class HWPTPaging: HWPT {
    public let ioas: IOAS
    public let isAutoDomain: Bool
    public let isNestParent: Bool
    public let dirtyTracking: Bool

    init(domain: IOMMUDomain, ioas: IOAS, auto: Bool, nestParent: Bool, dirtyTracking: Bool, fault: FaultObject?, pasidCompatible: Bool) {
        self.ioas = ioas; self.isAutoDomain = auto; self.isNestParent = nestParent; self.dirtyTracking = dirtyTracking
        super.init(type: .hwptPaging, domain: domain, fault: fault, pasidCompatible: pasidCompatible)
    }

    override var pagingBacking: HWPTPaging? { self }

    override func destroy(_ ctx: IOMMUFDContext) {
        ioas.removeDomain(self)
        ioas.hwpts.removeAll { $0 === self }
        ioas.users -= 1
        super.destroy(ctx)
    }
}

/// A nested HWPT (Linux `struct iommufd_hwpt_nested`): a user-managed first stage over a
/// nesting parent's second stage.
public final class HWPTNested: HWPT {
    public let parent: HWPTPaging
    /// The vIOMMU it was made on (which holds the parent), if any.
    public let viommu: VIOMMUObject?

    init(domain: IOMMUDomain, parent: HWPTPaging, viommu: VIOMMUObject? = nil, fault: FaultObject?, pasidCompatible: Bool) {
        self.parent = parent
        self.viommu = viommu
        super.init(type: .hwptNested, domain: domain, fault: fault, pasidCompatible: pasidCompatible)
    }

    override var pagingBacking: HWPTPaging? { parent }

    override func destroy(_ ctx: IOMMUFDContext) {
        if let viommu { viommu.users -= 1 } else { parent.users -= 1 }
        super.destroy(ctx)
    }
}

extension IOAS {
    /// Adds a domain that will hold every mapping (Linux `iopt_table_add_domain`): its
    /// smallest page must not exceed PAGE_SIZE (EINVAL) and every area must fit the
    /// alignment it brings (EADDRINUSE); the IOVA beyond its aperture is reserved
    /// (EADDRINUSE on conflict); then every area is mapped into it. All or nothing.
    func addDomain(_ hwpt: HWPTPaging) throws(Errno) {
        let d = hwpt.domain
        let alignment = max(iovaAlignment, d.smallestPageSize)
        guard alignment <= Self.pageSize else { throw Errno.inval("\(d)'s smallest page is larger than PAGE_SIZE") }
        try checkAreasAligned(alignment)
        let owner = ObjectIdentifier(hwpt)
        if d.apertureEnd != .max { try reserve(d.apertureEnd + 1, .max, owner: owner) }
        if d.apertureStart > 0 {
            do { try reserve(0, d.apertureStart - 1, owner: owner) } catch {
                removeReservations(of: owner)
                throw error
            }
        }
        let first = domains.isEmpty
        var filled = 0
        do throws(Errno) {
            for a in areas {
                if first {
                    try a.pages.pin(a.pageRange, faults: ctx.faults)
                    a.pinnedForDomains = true
                }
                do { try mapArea(a, into: d) } catch {
                    if first { a.pages.unpin(a.pageRange); a.pinnedForDomains = false }
                    throw error
                }
                filled += 1
            }
        } catch {
            for a in areas[..<filled] {
                unmapArea(a, from: d)
                if first && a.pinnedForDomains { a.pages.unpin(a.pageRange); a.pinnedForDomains = false }
            }
            removeReservations(of: owner)
            throw error
        }
        iovaAlignment = alignment
        domains.append(hwpt)
    }

    /// Removes a domain (Linux `iopt_table_remove_domain`): its translations go; the last
    /// domain's removal unpins every area. Never fails.
    func removeDomain(_ hwpt: HWPTPaging) {
        guard let i = domains.firstIndex(where: { $0 === hwpt }) else { return }
        domains.remove(at: i)
        for a in areas {
            unmapArea(a, from: hwpt.domain)
            if domains.isEmpty && a.pinnedForDomains {
                a.pages.unpin(a.pageRange)
                a.pinnedForDomains = false
            }
        }
        removeReservations(of: ObjectIdentifier(hwpt))
        iovaAlignment = computeAlignment()
    }
}
