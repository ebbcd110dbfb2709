import Formats
import Synchronization

/// What the platform tells the core about a device when it is probed.
public struct DeviceDescription: Sendable {
    public var name: String
    public var requesterID: RequesterID
    /// Index of the IOMMU unit (within its driver) the device sits behind.
    public var unit: Int
    /// Devices with the same key cannot be isolated from each other (no ACS, DMA aliases,
    /// multifunction without isolation) and share one group. Nil: a group of its own.
    public var groupKey: String?
    /// PASIDs the device supports (0: no PASID capability).
    public var maxPASIDs: UInt32
    public var ats: Bool
    public var pri: Bool
    /// The device tolerates stalled transactions (Linux firmware property `dma-can-stall`):
    /// an SMMUv3 may hold its faulting accesses until software resumes them.
    public var canStall: Bool
    /// An external-facing device: always gets a strict DMA domain (Linux `pci_dev->untrusted`).
    public var untrusted: Bool
    /// A per-device default-domain preference (Linux `def_domain_type`), nil for none.
    public var preferredDomain: DomainType?

    public init(name: String, requesterID: RequesterID, unit: Int = 0, groupKey: String? = nil, maxPASIDs: UInt32 = 0,
                ats: Bool = false, pri: Bool = false, untrusted: Bool = false, preferredDomain: DomainType? = nil,
                canStall: Bool = false) {
        self.name = name; self.requesterID = requesterID; self.unit = unit; self.groupKey = groupKey
        self.maxPASIDs = maxPASIDs; self.ats = ats; self.pri = pri; self.untrusted = untrusted; self.canStall = canStall
        self.preferredDomain = preferredDomain
    }
}

/// A fault the driver read from the hardware and the core reported for a device.
///
/// `record` is in VT-d's fault-record terms (requester ID, reason, page address, PASID,
/// access), which every driver can fill; an SMMUv3 driver puts the event's StreamID (the
/// requester ID), event number, input address and SubstreamID there and the whole
/// architected event in `event`.
public struct ReportedFault: Equatable, Sendable {
    public var time: UInt64
    public var unit: Int
    public var record: FaultRecord
    /// The SMMUv3 event record the fault came from (nil: a VT-d fault record).
    public var event: SMMUEventRecord? = nil
}

/// A device known to the IOMMU core (Linux `struct device` with its `dev_iommu`).
public final class Device: @unchecked Sendable, CustomStringConvertible {
    public let name: String
    public let requesterID: RequesterID
    public let unit: Int
    /// PASIDs usable: the smaller of the device's and the unit's limits (Linux `max_pasids`).
    public internal(set) var maxPASIDs: UInt32
    public let ats: Bool
    public let pri: Bool
    /// Linux `dma-can-stall` (see `DeviceDescription.canStall`).
    public let canStall: Bool
    public let untrusted: Bool
    public let preferredDomain: DomainType?
    /// The driver that probed it.
    public let driver: any IOMMUDriver
    /// The group, while the device is probed.
    @exclusivity(unchecked) public internal(set) var group: Group? {
        didSet { dmaCookieCache = nil }
    }
    /// The DMA API's cookie while the device may use it (its group is in its default DMA
    /// domain and not user-owned); cleared by every change of that. Not counted: the cookie
    /// lives as long as the default domain, which outlives this state.
    @exclusivity(unchecked) var dmaCookieCache: Unmanaged<DMACookie>?
    public internal(set) var isReleased = false
    /// The domain the device's RID traffic translates through right now (normally the
    /// group's domain; the blocked domain after a failed rollback).
    public internal(set) var attachedDomain: IOMMUDomain?
    /// The PASIDs programmed for this device and their domains (a group's PASID attachment
    /// reaches every PASID-capable device of the group present when it was made).
    public internal(set) var attachedPASIDs: [UInt32: IOMMUDomain] = [:]
    /// Fault reporting state while the device is on a fault queue (Linux `fault_param`).
    var faultParam: FaultParam?
    /// Whether the device reports recoverable faults (it is on a fault queue).
    public var reportsPageFaults: Bool { faultParam != nil }
    /// The user API context the device is bound to (VFIO's `BIND_IOMMUFD`), if any.
    public var boundContext: ObjectIdentifier?
    /// The user API's number for the device (iommufd `dev_id`), set at probe.
    public internal(set) var objectID: UInt32 = 0
    /// Driver-private state (Linux `dev_iommu->priv`).
    public var driverData: AnyObject?
    /// Faults reported for this device (the most recent `faultLogLimit`).
    public internal(set) var faults: [ReportedFault] = []
    public internal(set) var faultCount = 0
    public let faultLogLimit = 256
    /// Addresses the device can generate for streaming DMA (Linux `dma_mask`); 64 bits, as
    /// after the `dma_set_mask(DMA_BIT_MASK(64))` nearly every modern driver makes.
    @exclusivity(unchecked) public internal(set) var dmaMask: UInt64 = .max
    /// Try IOVAs below 4 GiB first (Linux `pci_32bit_workaround`); cleared for good the
    /// first time that space is exhausted for the device.
    public let dmaTry32BitFirst = Atomic<Bool>(true)

    init(_ d: DeviceDescription, driver: any IOMMUDriver) {
        name = d.name; requesterID = d.requesterID; unit = d.unit; maxPASIDs = d.maxPASIDs
        ats = d.ats; pri = d.pri; canStall = d.canStall; untrusted = d.untrusted; preferredDomain = d.preferredDomain
        self.driver = driver
    }

    public var description: String { "\(name) [\(requesterID)]" }
}

/// Devices that cannot be isolated from each other (Linux `struct iommu_group`): they share
/// one RID domain and one PASID space.
public final class Group: @unchecked Sendable, CustomStringConvertible {
    public let id: Int
    public let key: String
    public internal(set) var devices: [Device] = []
    @exclusivity(unchecked) public internal(set) var defaultDomain: IOMMUDomain?
    public internal(set) var blockingDomain: IOMMUDomain?
    /// The domain every device of the group translates RID traffic through.
    @exclusivity(unchecked) public internal(set) var domain: IOMMUDomain? {
        didSet { if domain !== oldValue { for d in devices { d.dmaCookieCache = nil } } }
    }
    /// Domains attached to PASIDs (Linux `pasid_array`).
    public internal(set) var pasidDomains: [UInt32: IOMMUDomain] = [:]
    /// A user (VFIO/iommufd) owns the group's DMA: detach goes to the blocking domain.
    @exclusivity(unchecked) public internal(set) var dmaOwned = false {
        didSet { for d in devices { d.dmaCookieCache = nil } }
    }
    /// Who owns the group's DMA when a user claimed it per device (Linux `group->owner`),
    /// and how many of its devices claimed it (`owner_cnt`).
    public internal(set) var dmaOwnerID: ObjectIdentifier?
    public internal(set) var dmaOwnerCount = 0

    init(id: Int, key: String) { self.id = id; self.key = key }

    public var description: String { "group \(id)" }
}
