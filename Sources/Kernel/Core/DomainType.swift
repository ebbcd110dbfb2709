/// The kind of a domain, from Linux's feature bits (include/linux/iommu.h `__IOMMU_DOMAIN_*`).
/// Deferred flushing is not a type here: it is `DomainFlags.deferredFlush` (Linux hides
/// `DMA_FQ` from drivers behind `IOMMU_CAP_DEFERRED_FLUSH`, §8b of the reference).
public enum DomainType: Equatable, Hashable, Sendable, CustomStringConvertible {
    /// No DMA passes (`IOMMU_DOMAIN_BLOCKED`).
    case blocked
    /// DMA addresses are physical addresses (`IOMMU_DOMAIN_IDENTITY`).
    case identity
    /// A paging domain managed by its user, e.g. VFIO/iommufd (`IOMMU_DOMAIN_UNMANAGED`).
    case unmanaged
    /// A paging domain behind the DMA API (`IOMMU_DOMAIN_DMA`).
    case dma
    /// A process address space shared with the device (`IOMMU_DOMAIN_SVA`).
    case sva
    /// A user-managed first stage over a second-stage parent (`IOMMU_DOMAIN_NESTED`).
    case nested

    /// Whether map/unmap apply (`__IOMMU_DOMAIN_PAGING`).
    public var isPaging: Bool { self == .unmanaged || self == .dma }

    /// The sysfs name (`iommu_domain_type_str`).
    public var description: String {
        switch self {
        case .blocked: return "blocked"
        case .identity: return "identity"
        case .unmanaged: return "unmanaged"
        case .dma: return "DMA"
        case .sva: return "SVA"
        case .nested: return "nested"
        }
    }
}

/// Properties of a domain beyond its type.
public struct DomainFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Unmaps may defer their invalidation to a flush queue (Linux type `DMA_FQ`). Set by the
    /// core only when the policy is lazy, the device is trusted and the driver declares
    /// `DriverCapability.deferredFlush`.
    public static let deferredFlush = DomainFlags(rawValue: 1 << 0)
    /// The domain may be attached to PASIDs (`IOMMU_HWPT_ALLOC_PASID`).
    public static let pasid = DomainFlags(rawValue: 1 << 1)
    /// The domain may be the parent of nested domains (`IOMMU_HWPT_ALLOC_NEST_PARENT`).
    public static let nestParent = DomainFlags(rawValue: 1 << 2)
    /// The domain can track what devices wrote (`IOMMU_HWPT_ALLOC_DIRTY_TRACKING`): it has
    /// `setDirtyTracking` and `readAndClearDirty`, and attaches only where the unit can.
    public static let dirtyTracking = DomainFlags(rawValue: 1 << 3)
}

/// The default-domain policy (Linux `iommu.passthrough=` and `iommu.strict=`).
public enum DMAPolicy: String, Equatable, Sendable, CaseIterable {
    /// Translated DMA; unmap invalidates before it returns.
    case strict
    /// Translated DMA; unmap may defer the invalidation to a flush queue.
    case lazy
    /// Identity (pass-through) default domains.
    case passthrough
}

/// Per-device capabilities the core asks a driver about (Linux `enum iommu_cap`).
public enum DriverCapability: Equatable, Sendable {
    /// DMA is cache coherent.
    case cacheCoherency
    /// Unmap does no TLB maintenance unless asked, so a flush queue pays off
    /// (`IOMMU_CAP_DEFERRED_FLUSH`).
    case deferredFlush
    /// Dirty tracking of the second stage.
    case dirtyTracking
}
