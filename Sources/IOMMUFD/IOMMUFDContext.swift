import Platform
import Formats
import Kernel

/// One open of /dev/iommu (Linux `struct iommufd_ctx`): the object table, the user memory
/// of the process that opened it, its pin ledger and accounting mode, the devices bound to
/// it. Every user API call enters through `ioctl` (argument bytes as the kernel receives
/// them) or, for what VFIO and in-kernel users do, through the Swift methods on it.
///
/// Single-threaded like the core below it: callers serialise calls (the C ABI holds one
/// lock around each).
public final class IOMMUFDContext: @unchecked Sendable, CustomStringConvertible {
    public let core: IOMMUCore
    /// The memory of the process calling now (Linux `current->mm`): where user pointers
    /// point and whose pages a new mapping pins. The opener's, except inside `withMemory`.
    public private(set) var memory: UserMemory
    /// The RLIMIT_MEMLOCK ledger of the process using it now (IOAS_CHANGE_PROCESS moves
    /// charges to it; `withMemory` makes another process's the current one for a call).
    public var ledger: PinLedger
    /// Files the process has open, by descriptor (IOAS_MAP_FILE).
    public var files: [Int32: PinnableFile] = [:]
    /// Capabilities of the opener: CAP_SYS_RESOURCE (RLIMIT_MODE), CAP_IPC_LOCK (no pin
    /// accounting).
    public var capSysResource = true
    public var capIPCLock = false
    /// IOMMU_OPTION_RLIMIT_MODE: pins charged to the process (`mm`) rather than the user.
    public internal(set) var accountToProcess = false
    var table = ObjectTable()
    /// The IOAS VFIO compatibility ioctls act on (IOMMU_VFIO_IOAS).
    var vfioIOAS: IOAS?
    /// Per iommu group state (Linux `struct iommufd_group`), by core group.
    var groups: [ObjectIdentifier: IGroup] = [:]
    /// Device objects by core device.
    var boundDevices: [ObjectIdentifier: DeviceObject] = [:]
    /// Accesses the selftest made, by the descriptor of their file.
    var testAccesses: [Int32: SelftestAccess] = [:]
    /// Windows of the file drivers exposed (vIOMMU pages), by offset.
    var mmapRegions: [UInt64: (frames: [UInt64], owner: IOMMUFDObject)] = [:]
    /// Unmaps whose invalidation failed: their pages stay pinned (a device may reach them).
    public internal(set) var pinsKeptAfterFailedUnmap = 0
    public internal(set) var pagesKeptAfterFailedUnmap = 0
    public private(set) var isClosed = false
    /// Gives an event file (fault, vEVENTQ) its descriptor: the C ABI makes a real one; by
    /// default descriptors are numbered from 1000.
    public var openFile: (IOMMUFDObject) -> Int32
    /// Closes a descriptor `openFile` gave for a command whose response never reached the
    /// program (the C ABI closes its file); by default nothing.
    public var releaseFile: (Int32) -> Void = { _ in }
    private var nextDescriptor: Int32 = 1000
    /// The last error an ioctl returned, with its message.
    public internal(set) var lastError: Errno?
    /// The kernel copy of the argument struct (`union ucmd_buffer`).
    let scratch: UnsafeMutableRawPointer

    static let scratchSize = 128

    public init(core: IOMMUCore, memory: UserMemory, ledger: PinLedger = PinLedger()) {
        self.core = core; self.memory = memory; self.ledger = ledger
        scratch = UnsafeMutableRawPointer.allocate(byteCount: Self.scratchSize, alignment: 16)
        openFile = { _ in 0 }
        openFile = { [unowned(unsafe) self] _ in
            self.nextDescriptor += 1
            return self.nextDescriptor - 1
        }
    }

    /// Runs `body` as a call from another process sharing the file (a forked child's call
    /// through a descriptor it inherited): user pointers are that process's, and mappings
    /// made meanwhile pin its pages.
    public func withMemory<R>(_ caller: UserMemory, ledger callerLedger: PinLedger? = nil, _ body: () -> R) -> R {
        let own = memory, ownLedger = ledger
        memory = caller
        if let callerLedger { ledger = callerLedger }
        defer { memory = own; ledger = ownLedger }
        return body()
    }

    /// A context dropped without `close` is closed (the process went): nothing it holds may
    /// outlive it, since its objects refer back to it.
    deinit {
        close()
        scratch.deallocate()
    }

    public var description: String { "iommufd context (\(table.count) objects)" }

    var faults: FaultInjector { core.platform.faults }

    /// The mode new pages are charged in (Linux: NONE with CAP_IPC_LOCK, else USER, or MM
    /// when RLIMIT_MODE is 1).
    var accountMode: PinAccountMode { capIPCLock ? .none : accountToProcess ? .mm : .user }

    // MARK: Objects

    /// Objects alive, lowest ID first.
    public var objects: [IOMMUFDObject] { table.all }
    public func object(_ id: UInt32) -> IOMMUFDObject? { table.object(id) }

    /// Adds an object, giving it the lowest free ID (Linux `iommufd_object_alloc`).
    func add(_ o: IOMMUFDObject) throws(Errno) {
        if faults.shouldFail(.iommufdObjectAlloc) { throw Errno.nomem("object allocation (injected)") }
        try table.insert(o)
    }

    /// Looks up an object of one type: ENOENT when missing or of another type (Linux
    /// `iommufd_get_object`).
    /// Each object type has one class, so the type check makes the downcast safe (and
    /// cheap: no dynamic cast on the ioctl path).
    @inline(__always)
    func get<T: IOMMUFDObject>(_ id: UInt32, _ type: ObjectType, as: T.Type = T.self) throws(Errno) -> T {
        guard let o = table.object(id), o.type == type, !o.isDestroyed else { throw Errno.noent("no \(type) with ID \(id)") }
        return unsafeDowncast(o, to: T.self)
    }

    /// Takes the lowest free ID for an object not visible yet (Linux: the zero entry
    /// `iommufd_object_alloc` leaves until `finalize`): lookups and DESTROY of it are ENOENT.
    func reserve(_ o: IOMMUFDObject) throws(Errno) {
        try add(o)
        o.isDestroyed = true
    }

    /// Makes a reserved object visible (`iommufd_object_finalize`).
    func finalize(_ o: IOMMUFDObject) { o.isDestroyed = false }

    /// Undoes a reserved object: its ID is free again (`iommufd_object_abort`). What it
    /// took meanwhile the caller gives back.
    func abort(_ o: IOMMUFDObject) { table.remove(o) }

    /// Destroys an object whose owner went while it lived (a vDEVICE of an unbound device):
    /// its ID stays taken until the context closes, and lookups and DESTROY of it are
    /// ENOENT (Linux `iommufd_object_tombstone_user`).
    func tombstone(_ o: IOMMUFDObject) {
        guard !o.isDestroyed else { return }
        o.isDestroyed = true
        o.isTombstone = true
        o.users = 0
        o.destroy(self)
    }

    /// IOMMU_DESTROY: ENOENT if there is no such object, EBUSY while anything refers to it.
    public func destroy(_ id: UInt32) throws(Errno) {
        guard let o = table.object(id), !o.isDestroyed else { throw Errno.noent("no object with ID \(id)") }
        guard o.users == 0 else { throw Errno.busy("\(o) is in use (\(o.users) reference(s))") }
        remove(o)
    }

    /// Takes an object out of the table and releases what it holds.
    func remove(_ o: IOMMUFDObject) {
        table.remove(o)
        if o.isTombstone { return }
        if vfioIOAS === o { vfioIOAS = nil }
        o.isDestroyed = true
        o.destroy(self)
    }

    // MARK: Close

    /// Closes the context (the process let go of /dev/iommu and of the VFIO device files
    /// bound to it, e.g. at exit): event files are closed, devices detached and unbound,
    /// then objects are destroyed in passes over ascending IDs, each pass taking those
    /// nothing refers to any more (Linux `iommufd_fops_release`). Nothing stays behind.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        for o in table.all {
            if let f = o as? FaultObject { f.closeFile() }
            if let q = o as? VEventQueueObject { q.closeFile() }
        }
        for fd in testAccesses.keys.sorted() { closeTestAccess(fd) }
        for o in table.all {
            if let d = o as? DeviceObject { unbind(d) }
            // The in-kernel users (mdev drivers) let go of their accesses as the devices go.
            if let a = o as? AccessObject, !a.isInternal { destroyAccess(a) }
        }
        while table.count > 0 {
            var progress = false
            for o in table.all where o.users == 0 {
                remove(o)
                progress = true
            }
            if !progress {
                // A reference cycle would be a bug; take the rest regardless.
                assertionFailure("iommufd close: objects still referenced: \(table.all)")
                for o in table.all { o.users = 0 }
            }
        }
        groups = [:]
    }
}
