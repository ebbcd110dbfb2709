/// The kinds of objects a context holds (Linux `enum iommufd_object_type`).
public enum ObjectType: String, CaseIterable, Sendable {
    case ioas, hwptPaging, hwptNested, device, access, fault, viommu, vdevice, veventq, hwQueue
    /// The selftest's mock device (Linux `IOMMUFD_OBJ_SELFTEST`).
    case selftest
}

/// An object of a context (Linux `struct iommufd_object`): its ID and the references other
/// objects, open files and in-kernel users hold on it. `IOMMU_DESTROY` succeeds only when
/// nothing does (EBUSY otherwise); closing the context destroys everything leaf first.
public class IOMMUFDObject: CustomStringConvertible {
    public let type: ObjectType
    public internal(set) var id: UInt32 = 0
    /// References held by other objects, files and drivers (Linux `obj->users` minus the
    /// table's own).
    public internal(set) var users = 0
    public internal(set) var isDestroyed = false
    /// Destroyed while its ID stays taken (see `IOMMUFDContext.tombstone`).
    var isTombstone = false

    init(type: ObjectType) { self.type = type }

    public var description: String { "\(type) \(id)" }

    /// Releases what the object holds (Linux `obj->destroy`); called once, when it leaves
    /// the table with no users left.
    func destroy(_ ctx: IOMMUFDContext) {}
}

/// The object table (Linux `ictx->objects`, an xarray with `XA_FLAGS_ALLOC1` and a 31-bit
/// limit): IDs start at 1, each new object takes the lowest free ID, and an ID is free again
/// once its object is gone.
struct ObjectTable {
    private(set) var slots: [IOMMUFDObject?] = [nil]
    private var lowestFree = 1
    private(set) var count = 0
    static let idLimit = Int(Int32.max)

    mutating func insert(_ object: IOMMUFDObject) throws(Errno) {
        var i = lowestFree
        while i < slots.count, slots[i] != nil { i += 1 }
        guard i <= Self.idLimit else { throw Errno(Errno.ENOSPC, "no object ID left") }
        if i == slots.count { slots.append(object) } else { slots[i] = object }
        object.id = UInt32(i)
        lowestFree = i + 1
        count += 1
    }

    mutating func remove(_ object: IOMMUFDObject) {
        let i = Int(object.id)
        guard i > 0, i < slots.count, slots[i] === object else { return }
        slots[i] = nil
        if i < lowestFree { lowestFree = i }
        count -= 1
        while slots.count > 1, slots[slots.count - 1] == nil { slots.removeLast() }
    }

    /// The object with `id`, nil if there is none (Linux `xa_load`).
    @inline(__always)
    func object(_ id: UInt32) -> IOMMUFDObject? {
        let i = Int(id)
        return i > 0 && i < slots.count ? slots[i] : nil
    }

    /// Objects alive, oldest ID first.
    var all: [IOMMUFDObject] { slots.compactMap { $0 } }
}
