/// The VMM role: what a VMM does through /dev/iommu and VFIO (an iommufd context per
/// open, devices bound to it, IOASes over its process's memory as guest RAM, HWPTs, fault
/// objects), each step through the ioctl entry where the uAPI has an ioctl.
extension Scenario {
    public enum IOMMUFDAction: Sendable {
        /// Opens /dev/iommu as `process` (its memory is the context's user memory).
        case open(name: String, process: String)
        /// VFIO_DEVICE_BIND_IOMMUFD.
        case bind(context: String, device: Int)
        /// Closing the VFIO device file: detached and unbound.
        case unbind(device: Int)
        case ioasAlloc(name: String, context: String)
        /// IOAS_MAP of `pages` pages of a region (from `offsetPages`), at `iova` or where the
        /// kernel places it.
        case ioasMap(ioas: String, region: String, offsetPages: Int, pages: Int?, iova: UInt64?, writeable: Bool)
        /// IOAS_UNMAP of [iova, iova + pages), or of everything (`pages` nil).
        case ioasUnmap(ioas: String, iova: UInt64, pages: Int?)
        /// IOMMU_HWPT_ALLOC on an IOAS (a paging HWPT, maybe a nest parent), or on a nest
        /// parent HWPT with a guest table (a nested HWPT, `IOMMU_HWPT_DATA_VTD_S1`).
        case hwptAlloc(name: String, on: String, device: Int, fault: String?, pasid: Bool, dirtyTracking: Bool,
                       nestParent: Bool, guestTable: String?)
        /// IOMMU_HWPT_SET_DIRTY_TRACKING.
        case dirtyTracking(hwpt: String, enable: Bool)
        /// IOMMU_HWPT_GET_DIRTY_BITMAP of `pages` 4 KiB pages from `iova` (a pre-copy pass of a
        /// live migration), clearing unless `noClear`.
        case dirtyRead(hwpt: String, iova: UInt64, pages: Int, noClear: Bool)
        /// VFIO_DEVICE_ATTACH_IOMMUFD_PT to a HWPT or an IOAS (automatic domain), of the RID or a PASID.
        case attach(device: Int, target: String, pasid: UInt32?)
        case replace(device: Int, target: String, pasid: UInt32?)
        case detach(device: Int, pasid: UInt32?)
        /// IOMMU_FAULT_QUEUE_ALLOC; `closeFault` closes its file (the object lives on with its HWPTs).
        case faultAlloc(name: String, context: String)
        case closeFault(String)
        /// IOMMU_DESTROY of a named object.
        case destroy(String)
        /// close() of the context with whatever is still alive.
        case close(String)
        // The guest role (ScenarioRunner+Guest.swift): a guest with its own first-stage
        // table in its RAM, under a vIOMMU the VMM emulates with nested HWPTs.
        /// The guest sets up a page table: its pages are the first `tablePages` of `region`,
        /// which the VMM maps at guest-physical `gpa`.
        case guestTable(name: String, region: String, gpa: UInt64, tablePages: Int, levels: Int)
        /// The guest maps `pages` pages from `gva` to `gpa` (no invalidation: the entries were
        /// not present).
        case guestMap(table: String, gva: UInt64, gpa: UInt64, pages: Int, writable: Bool)
        /// The guest unmaps `pages` pages from `gva`, then invalidates them through every
        /// nested HWPT on the table (the VMM forwards its invalidation queue with
        /// HWPT_INVALIDATE), unless `invalidate` is false (a guest bug).
        case guestUnmap(table: String, gva: UInt64, pages: Int, invalidate: Bool)
    }
}
