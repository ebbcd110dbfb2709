import Platform
import Formats

/// A driver's virtual IOMMU: the slice of the physical unit a VMM presents to one guest
/// (Linux: the driver part of `struct iommufd_viommu` with its `iommufd_viommu_ops`). The
/// user API owns the object, its vDEVICEs and event queues; the driver subclasses this and
/// overrides what its vIOMMU type supports, as it fills `iommufd_viommu_ops`.
open class IOMMUVIOMMU: @unchecked Sendable, CustomStringConvertible {
    /// The nesting parent whose second stage every guest address goes through.
    public let parent: IOMMUDomain
    /// The uAPI type (`enum iommu_viommu_type`).
    public let type: UInt32
    /// Devices with a vDEVICE here, by their virtual ID (Linux `viommu->vdevs`); the user
    /// API keeps it as vDEVICEs come and go.
    public var virtualDevices: [UInt64: Device] = [:]
    /// Set by the user API: queues an event of vEVENTQ type `type` (Linux
    /// `iommufd_viommu_report_event`): EOPNOTSUPP when no such queue exists, ENOMEM when
    /// the event was lost for memory. A full queue loses it and is no error.
    public var reportEvent: ((_ type: UInt32, _ payload: [UInt8]) throws(IOMMUError) -> Void)?
    /// Set by the user API: exposes `frames` through mmap of the user API's file and gives
    /// back its offset (Linux `iommufd_viommu_alloc_mmap`), and withdraws one.
    public var addMmapRegion: ((_ frames: [UInt64]) throws(IOMMUError) -> UInt64)?
    public var removeMmapRegion: ((_ offset: UInt64) -> Void)?

    public init(parent: IOMMUDomain, type: UInt32) { self.parent = parent; self.type = type }

    open var description: String { "vIOMMU (type 0x\(String(type, radix: 16)))" }

    /// Sets the vIOMMU up with the user's data, if any (`viommu_init`); on failure nothing
    /// of it remains.
    open func initialize(data: IOMMUUserData?) throws(IOMMUError) {}

    /// The virtual ID of `device`'s vDEVICE here, if it has one.
    public func virtualID(of device: Device) -> UInt64? {
        virtualDevices.first { $0.value === device }?.key
    }

    /// The type of the invalidation entries the user may send for this vIOMMU, and the size
    /// of one entry's struct; nil when it takes none (`cache_invalidate` unset).
    open var userInvalidationDataType: UInt32? { nil }
    open var userInvalidationEntrySize: Int { 0 }

    /// Acts on one entry (`cache_invalidate`, one entry of the array).
    open func cacheInvalidateUser(entry: [UInt8]) throws(IOMMUError) {
        throw .notSupported("\(self) takes no invalidations")
    }

    /// Acts on the whole copied array (`cache_invalidate`): how many entries to report done
    /// (`array->entry_num` on return) and the error, if any. By default entry by entry,
    /// stopping at the first that fails; a driver that batches (SMMUv3) overrides it.
    open func cacheInvalidateUser(entries: [[UInt8]]) -> (done: Int, error: IOMMUError?) {
        for (i, e) in entries.enumerated() {
            do { try cacheInvalidateUser(entry: e) } catch { return (i, error) }
        }
        return (entries.count, nil)
    }

    /// A nested domain whose first stage the guest owns (`alloc_domain_nested`).
    open func allocNestedDomain(for device: Device, flags: DomainFlags, dataType: UInt32, data: [UInt8]) throws(IOMMUError) -> IOMMUDomain {
        throw .notSupported("\(self) makes no nested domains")
    }

    /// Whether `alloc_domain_nested` copies the user's data itself, as every 6.17 driver
    /// does with `iommu_copy_struct_from_user` (its flags checked first, then a type other
    /// than its own or a length other than its struct's is EINVAL); then the user API calls
    /// `allocNestedDomain(for:flags:dataType:userData:)` instead of copying by the driver's
    /// `nestedDataSize`.
    open var copiesNestedData: Bool { false }

    open func allocNestedDomain(for device: Device, flags: DomainFlags, dataType: UInt32, userData: IOMMUUserData) throws(IOMMUError) -> IOMMUDomain {
        throw .notSupported("\(self) makes no nested domains")
    }

    /// The size of the driver's queue state for uAPI queue type `type` (`get_hw_queue_size`);
    /// 0: no such queue (EOPNOTSUPP).
    open func hardwareQueueSize(type: UInt32) -> Int { 0 }

    /// Sets up queue `index` of `type` over guest memory that is physically contiguous from
    /// `physical` and starts at the parent's IOVA `base` (`hw_queue_init_phys`). Returns the
    /// index of a queue this one depends on (that one cannot go first), if any.
    open func initHardwareQueue(type: UInt32, index: UInt32, physical: UInt64, base: UInt64, length: UInt64) throws(IOMMUError) -> UInt32? {
        throw .notSupported("\(self) has no hardware queues")
    }

    /// Tears queue `index` down (its `destroy`).
    open func destroyHardwareQueue(index: UInt32) {}

    /// Releases what the driver holds (`viommu->ops->destroy`); called once.
    open func destroy() {}
}

/// User data a driver copies itself (include/linux/iommu.h `iommu_copy_struct_from_user`
/// and `iommu_copy_struct_to_user` on a `struct iommu_user_data`): its length as the user
/// gave it, and copies from and to the user's buffer (EFAULT as `IOMMUError.user`).
public struct IOMMUUserData {
    public let length: Int
    public let read: (_ count: Int) throws(IOMMUError) -> [UInt8]
    public let write: (_ bytes: [UInt8]) throws(IOMMUError) -> Void

    public init(length: Int, read: @escaping (Int) throws(IOMMUError) -> [UInt8], write: @escaping ([UInt8]) throws(IOMMUError) -> Void) {
        self.length = length; self.read = read; self.write = write
    }
}
