import Formats

/// Access rights a page request asks for (Linux `IOMMU_FAULT_PERM_*`).
public struct FaultPermissions: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let read = FaultPermissions(rawValue: 1 << 0)
    public static let write = FaultPermissions(rawValue: 1 << 1)
    public static let exec = FaultPermissions(rawValue: 1 << 2)
    public static let priv = FaultPermissions(rawValue: 1 << 3)
}

/// One recoverable page request as drivers report it (Linux `struct iommu_fault_page_request`).
public struct PageFault: Equatable, Sendable {
    public struct Flags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// `IOMMU_FAULT_PAGE_REQUEST_PASID_VALID`.
        public static let pasidValid = Flags(rawValue: 1 << 0)
        /// `IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE`: the last request of its group.
        public static let lastPage = Flags(rawValue: 1 << 1)
        /// `IOMMU_FAULT_PAGE_RESPONSE_NEEDS_PASID`: the response carries the PASID.
        public static let needsPASID = Flags(rawValue: 1 << 2)
    }
    public var flags: Flags
    public var pasid: PASID
    /// Page request group index.
    public var groupIndex: UInt16
    public var permissions: FaultPermissions
    /// Page address.
    public var address: UInt64
    public var privateData: UInt64
    /// When the core was told of it (virtual ns; set by `reportPageFault`).
    public internal(set) var reportedAt: UInt64 = 0

    public init(flags: Flags, pasid: PASID, groupIndex: UInt16, permissions: FaultPermissions, address: UInt64, privateData: UInt64 = 0) {
        self.flags = flags; self.pasid = pasid; self.groupIndex = groupIndex; self.permissions = permissions
        self.address = address; self.privateData = privateData
    }

    public var isLast: Bool { flags.contains(.lastPage) }
    /// The PASID, when the request carried one.
    public var requestPASID: PASID? { flags.contains(.pasidValid) ? pasid : nil }
}

/// A complete page request group handed to a domain's fault handler (Linux `struct iopf_group`):
/// the partial requests of the group in device order, then the last one.
public final class IOPFGroup: @unchecked Sendable, CustomStringConvertible {
    public let device: Device
    public let faults: [PageFault]
    /// The domain attached to (device, PASID) when the group was built (the attach handle).
    public let domain: IOMMUDomain
    /// Set by the handler that delivers it (the user fault queue's cookie).
    public var cookie: UInt32 = 0
    /// Still waiting for its response (Linux: linked on `fault_param->faults`).
    public internal(set) var isPending = true
    public let reportedAt: UInt64

    init(device: Device, faults: [PageFault], domain: IOMMUDomain, reportedAt: UInt64) {
        self.device = device; self.faults = faults; self.domain = domain; self.reportedAt = reportedAt
    }

    public var last: PageFault { faults[faults.count - 1] }
    public var pasid: PASID? { last.requestPASID }
    public var description: String { "page request group \(last.groupIndex) of \(device)\(pasid.map { " \($0)" } ?? "") (\(faults.count) page(s))" }
}

/// What handles the recoverable faults of a domain (Linux `domain->iopf_handler`).
public protocol IOPFHandler: AnyObject {
    /// Takes a group: it must answer it (through `IOMMUCore.respond`) sooner or later. An
    /// error makes the core answer Response Failure at once.
    func handle(_ group: IOPFGroup) throws(IOMMUError)
    /// (`device`, `pasid`) moved away from `domain` (detach or replace): groups of that
    /// attachment still waiting are the handler's to answer now.
    func detached(_ device: Device, pasid: PASID?, from domain: IOMMUDomain)
}

extension IOPFHandler {
    public func detached(_ device: Device, pasid: PASID?, from domain: IOMMUDomain) {}
}
