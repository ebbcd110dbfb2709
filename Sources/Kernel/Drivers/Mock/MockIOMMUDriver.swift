import Platform
import Formats

/// The iommufd selftest's mock IOMMU driver (Linux drivers/iommu/iommufd/selftest.c,
/// `mock_ops`), as a driver of the core like any other: devices made on demand (the
/// selftest's MOCK_DOMAIN command), each in a group of its own behind one mock unit, paging
/// domains whose IOPTEs are a table of 2 KiB slots (`MockPagingDomain`), nested domains with
/// four IOTLB ids (`MockNestedDomain`), a vIOMMU with an mmap window (`MockVIOMMU`), and a
/// static blocking domain that is also every group's default. It programs no hardware.
public final class MockIOMMUDriver: IOMMUDriver, @unchecked Sendable {
    public let name = "iommufd-mock"
    public let platform: PlatformContext
    public private(set) unowned(unsafe) var core: IOMMUCore?
    private lazy var blocked = MockBlockedDomain(driver: self)
    /// The unit's fault queue (Linux `mock_iommu_iopf_queue`).
    private(set) var iopfQueue: IOPFQueue?
    private var nextRequesterID: UInt16 = 0
    /// What the driver noticed that Linux would WARN about (a core bug, never user input).
    public internal(set) var warnings: [String] = []

    /// Mock pages: 2 KiB, or 1 MiB for HUGE_IOVA devices (`MOCK_IO_PAGE_SIZE`,
    /// `MOCK_HUGE_PAGE_SIZE`), in the aperture [16 MiB, 2 GiB − 1] (`MOCK_APERTURE_*`).
    public static let pageSize: UInt64 = 2048
    public static let hugePageSize: UInt64 = 1 << 20
    public static let apertureStart: UInt64 = 1 << 24
    public static let apertureLast: UInt64 = 0x7FFF_FFFF
    /// PASIDs a PASID-capable mock device has (`pasid-num-bits` 20).
    public static let pasidBits: UInt32 = 20

    public init(platform: PlatformContext) { self.platform = platform }

    public var unitCount: Int { 1 }
    public var blockedDomain: IOMMUDomain { blocked }
    public var identityDomain: IOMMUDomain? { nil }
    /// Fresh and detached devices sit on the blocking domain (`mock_ops.default_domain`).
    public var defaultDomain: IOMMUDomain? { blocked }
    /// The mock's PASID table is the user's (`mock_ops.user_pasid_table`).
    public var usesUserPASIDTable: Bool { true }
    public var supportsPageResponse: Bool { true }
    /// Responses go nowhere: the mock has no device to tell (`mock_domain_page_response`).
    public func pageResponse(_ device: Device, to fault: PageFault, code: PageResponseCode) {}

    public func register(with core: IOMMUCore) {
        self.core = core
        if iopfQueue == nil { iopfQueue = core.allocIOPFQueue(name: "mock-iommu-iopf") }
    }

    // MARK: Devices

    /// Makes and probes a mock device (Linux `mock_dev_create`): flags beyond NO_DIRTY,
    /// HUGE_IOVA and PASID are EINVAL.
    public func createDevice(flags: MockDeviceFlags) throws(IOMMUError) -> Device {
        guard let core else { throw .noDevice("\(name) is not registered") }
        guard flags.isSubset(of: .all) else { throw .invalidArgument("mock device flags 0x\(String(flags.rawValue, radix: 16))") }
        // A requester ID no live mock device has (they wrap after 65535 devices).
        var tries = 0
        repeat {
            nextRequesterID &+= 1
            tries += 1
        } while core.device(driver: self, unit: 0, requesterID: RequesterID(rawValue: nextRequesterID)) != nil && tries <= 1 << 16
        pendingFlags = flags
        defer { pendingFlags = [] }
        let desc = DeviceDescription(name: "mock\(nextRequesterID)", requesterID: RequesterID(rawValue: nextRequesterID), unit: 0,
                                     maxPASIDs: flags.contains(.pasid) ? 1 << Self.pasidBits : 1)
        return try core.probe([desc], driver: self)[0]
    }

    /// Flags of the device being probed (the platform data Linux's `mock_dev_create` sets
    /// before `device_add`).
    private var pendingFlags: MockDeviceFlags = []

    public func probeDevice(_ device: Device) throws(IOMMUError) -> UInt32 {
        device.driverData = MockDeviceState(flags: pendingFlags)
        return 1 << Self.pasidBits
    }

    public func releaseDevice(_ device: Device) {
        if let s = MockDeviceState.of(device), s.iopfUsers > 0 {
            core?.iopfRemoveDevice(device)
            s.iopfUsers = 0
        }
        device.driverData = nil
    }

    /// Linux `mock_domain_capable`: cache coherent always, dirty tracking unless NO_DIRTY.
    public func capable(_ device: Device, _ capability: DriverCapability) -> Bool {
        switch capability {
        case .cacheCoherency: return true
        case .dirtyTracking: return !(MockDeviceState.of(device)?.flags.contains(.noDirty) ?? true)
        case .deferredFlush: return false
        }
    }

    // MARK: Domains

    /// Linux `mock_domain_alloc_paging_flags`: 2 KiB pages (and 1 MiB for a HUGE_IOVA
    /// device), dirty operations when asked for; other flags are EOPNOTSUPP.
    public func allocPagingDomain(for device: Device, type: DomainType, flags: DomainFlags) throws(IOMMUError) -> IOMMUDomain {
        guard flags.isSubset(of: [.dirtyTracking, .nestParent, .pasid]) else {
            throw .notSupported("mock paging domains take no flags 0x\(String(flags.rawValue, radix: 16))")
        }
        let huge = MockDeviceState.of(device)?.flags.contains(.hugeIOVA) ?? false
        if flags.contains(.dirtyTracking), !capable(device, .dirtyTracking) {
            throw .notSupported("\(device) cannot track dirty pages")
        }
        return MockPagingDomain(driver: self, type: type, flags: flags, huge: huge)
    }

    /// The selftest's nested data: `struct iommu_hwpt_selftest` {iotlb}.
    public static let hwptDataSelftest: UInt32 = 0xdead

    public func nestedDataSize(for device: Device, dataType: UInt32) -> Int { dataType == Self.hwptDataSelftest ? 4 : 0 }

    /// Linux `mock_domain_alloc_nested` over a mock paging parent.
    public func allocNestedDomain(for device: Device, parent: IOMMUDomain, flags: DomainFlags, dataType: UInt32,
                                  data: [UInt8]) throws(IOMMUError) -> IOMMUDomain {
        guard flags.isSubset(of: .pasid) else { throw .notSupported("nested flags 0x\(String(flags.rawValue, radix: 16))") }
        guard let parent = parent as? MockPagingDomain else { throw .invalidArgument("\(parent) is not a mock paging domain") }
        return try MockNestedDomain(driver: self, parent: parent, viommu: nil, flags: flags, dataType: dataType, data: data)
    }

    // MARK: Information

    /// `IOMMU_HW_INFO_TYPE_SELFTEST` and its payload `struct iommu_test_hw_info`
    /// {flags 0, test_reg 0xdeadbeef}.
    public static let hwInfoType: UInt32 = 0xfeedbeef
    public static let hwInfoTestReg: UInt32 = 0xdeadbeef

    public func hardwareInfo(_ device: Device) -> (type: UInt32, payload: [UInt8])? {
        var payload = [UInt8](repeating: 0, count: 8)
        withUnsafeBytes(of: Self.hwInfoTestReg.littleEndian) { for i in 0..<4 { payload[4 + i] = $0[i] } }
        return (Self.hwInfoType, payload)
    }

    // MARK: Fault reporting (Linux `mock_dev_enable_iopf` / `mock_dev_disable_iopf`)

    /// A domain with a fault handler now serves `device` (RID or PASID): the device joins
    /// the fault queue with its first such domain.
    func faultHandlerAttached(_ device: Device, _ domain: IOMMUDomain?) {
        guard let domain, domain.iopfHandler != nil, let s = MockDeviceState.of(device), let core, let q = iopfQueue else { return }
        if s.iopfUsers == 0 {
            do { try core.iopfAddDevice(device, to: q) } catch { return }
        }
        s.iopfUsers += 1
    }

    /// The domain no longer serves it; the device leaves the queue with its last one.
    func faultHandlerDetached(_ device: Device, _ domain: IOMMUDomain?) {
        guard let domain, domain.iopfHandler != nil, let s = MockDeviceState.of(device), s.iopfUsers > 0 else { return }
        s.iopfUsers -= 1
        if s.iopfUsers == 0 { core?.iopfRemoveDevice(device) }
    }

    /// The selftest's TRIGGER_IOPF (Linux `iommufd_test_trigger_iopf`): a page request of
    /// `device` as its hardware would report it, the last of its group, handled at once.
    public func triggerPageRequest(_ device: Device, pasid: UInt32, group: UInt32, permissions: UInt32, address: UInt64) {
        var flags: PageFault.Flags = .lastPage
        if pasid != 0 { flags.insert(.pasidValid) }
        let fault = PageFault(flags: flags, pasid: PASID(truncating: pasid), groupIndex: UInt16(truncatingIfNeeded: group),
                              permissions: FaultPermissions(rawValue: permissions), address: address)
        core?.reportPageFault(device, fault)
    }
}

/// `enum { MOCK_FLAGS_DEVICE_* }` of the selftest: what a mock device can and cannot do.
public struct MockDeviceFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// No dirty tracking (`MOCK_FLAGS_DEVICE_NO_DIRTY`).
    public static let noDirty = MockDeviceFlags(rawValue: 1 << 0)
    /// Domains made for it also have 1 MiB pages (`MOCK_FLAGS_DEVICE_HUGE_IOVA`).
    public static let hugeIOVA = MockDeviceFlags(rawValue: 1 << 1)
    /// 20 PASID bits (`MOCK_FLAGS_DEVICE_PASID`).
    public static let pasid = MockDeviceFlags(rawValue: 1 << 2)
    public static let all: MockDeviceFlags = [.noDirty, .hugeIOVA, .pasid]
}

/// A mock device's own state (Linux `struct mock_dev`).
public final class MockDeviceState {
    public let flags: MockDeviceFlags
    /// The device's cache slots a vIOMMU invalidation clears (`cache[MOCK_DEV_CACHE_NUM]`).
    public internal(set) var cache = [UInt32](repeating: MockDeviceState.cacheDefault, count: 4)
    public static let cacheDefault: UInt32 = 0xbaddad
    /// The vIOMMU of the nested domain its RID is attached to, and the virtual ID of its
    /// vDEVICE there, recorded at attach (`mdev->viommu`, `mdev->vdev_id`).
    public internal(set) var viommu: MockVIOMMU?
    public internal(set) var virtualID: UInt64 = 0
    /// Domains with a fault handler it is attached to (`iopf_refcount`).
    var iopfUsers = 0
    /// The PASID 1024 quirk: armed by a successful set, disarmed by a blocked one.
    var pasid1024Armed = false

    init(flags: MockDeviceFlags) { self.flags = flags }

    public static func of(_ device: Device) -> MockDeviceState? { device.driverData as? MockDeviceState }
}
