import Platform
import Formats

/// The selftest's vIOMMU (Linux `struct mock_viommu`, type `IOMMU_VIOMMU_TYPE_SELFTEST`):
/// nested domains over its parent, invalidations of its vDEVICEs' cache slots, an event
/// per TRIGGER_VEVENT, two hardware queues, and, when made with data, two pages the user
/// maps through the iommufd file with `in_data` at byte 0.
public final class MockVIOMMU: IOMMUVIOMMU, @unchecked Sendable {
    unowned(unsafe) let driver: MockIOMMUDriver
    /// The two pages of the mmap window and their offset in the file, if made with data.
    public private(set) var pages: [UInt64] = []
    public private(set) var mmapOffset: UInt64?
    /// Hardware queues by index (`hw_queue[IOMMU_TEST_HW_QUEUE_MAX]`): their guest base.
    public private(set) var queues: [UInt64?] = [nil, nil]

    public static let type: UInt32 = 0xdeadbeef
    /// `IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST`: {flags, vdev_id, cache_id}.
    public static let invalidateDataType: UInt32 = 0xdeadbeef
    /// `IOMMU_VEVENTQ_TYPE_SELFTEST`: events are {virt_id}.
    public static let eventType: UInt32 = 0xbeefbeef
    public static let hwQueueType: UInt32 = 0xdeadbeef

    init(driver: MockIOMMUDriver, parent: IOMMUDomain) {
        self.driver = driver
        super.init(parent: parent, type: Self.type)
    }

    override public var description: String { "mock vIOMMU" }

    /// Linux `mock_viommu_init` with data (`struct iommu_viommu_selftest`, 8..24 bytes):
    /// two zeroed pages become a window of the file, `in_data` is written at its start, and
    /// {out_data = in_data, offset, length} go back. Undone on any failure.
    override public func initialize(data: IOMMUUserData?) throws(IOMMUError) {
        guard let data, data.length > 0 else { return }
        guard data.length >= 8, data.length <= 24 else { throw .invalidArgument("iommu_viommu_selftest of \(data.length) bytes") }
        let bytes = try data.read(data.length)
        let inData = UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24
        let frames = driver.platform.frames, memory = driver.platform.memory
        do {
            for _ in 0..<2 {
                let f = try frames.allocate(.dmaBuffer)
                pages.append(f)
                try memory.zero(f, count: 4096)
            }
            try memory.store32(pages[0], inData)
        } catch {
            releasePages()
            throw .noMemory("the vIOMMU's pages")
        }
        guard let add = addMmapRegion else { releasePages(); throw .notSupported("no file to map the window through") }
        let offset: UInt64
        do { offset = try add(pages) } catch { releasePages(); throw error }
        mmapOffset = offset
        var out = [UInt8](repeating: 0, count: 24)
        func put32(_ at: Int, _ v: UInt32) { for i in 0..<4 { out[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
        func put64(_ at: Int, _ v: UInt64) { for i in 0..<8 { out[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
        put32(0, inData)
        put32(4, inData)
        put64(8, offset)
        put64(16, 2 * 4096)
        do { try data.write(Array(out[..<data.length])) } catch {
            removeMmapRegion?(offset)
            mmapOffset = nil
            releasePages()
            throw error
        }
    }

    private func releasePages() {
        for f in pages { try? driver.platform.frames.free(f) }
        pages = []
    }

    override public func destroy() {
        if let o = mmapOffset { removeMmapRegion?(o) }
        mmapOffset = nil
        releasePages()
    }

    // MARK: Nested domains

    override public func allocNestedDomain(for device: Device, flags: DomainFlags, dataType: UInt32, data: [UInt8]) throws(IOMMUError) -> IOMMUDomain {
        guard flags.isSubset(of: .pasid) else { throw .notSupported("nested flags 0x\(String(flags.rawValue, radix: 16))") }
        guard let p = parent as? MockPagingDomain else { throw .invalidArgument("\(parent) is not a mock paging domain") }
        return try MockNestedDomain(driver: driver, parent: p, viommu: self, flags: flags, dataType: dataType, data: data)
    }

    // MARK: Invalidation (Linux `mock_viommu_cache_invalidate`)

    override public var userInvalidationDataType: UInt32? { Self.invalidateDataType }
    override public var userInvalidationEntrySize: Int { 12 }

    /// Unknown flags are EOPNOTSUPP, a cache id beyond 3 EINVAL (even with FLAG_ALL), a
    /// virtual ID no vDEVICE has here EINVAL; then one slot or all of that device's go.
    override public func cacheInvalidateUser(entry: [UInt8]) throws(IOMMUError) {
        func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(entry[at + $1]) << (8 * UInt32($1)) } }
        let flags = u32(0), vdev = u32(4), slot = u32(8)
        guard flags & ~MockNestedDomain.invalidateFlagAll == 0 else { throw .notSupported("invalidation flags 0x\(String(flags, radix: 16))") }
        guard slot < 4 else { throw .invalidArgument("cache id \(slot) is beyond 3") }
        guard let device = virtualDevices[UInt64(vdev)], let state = MockDeviceState.of(device) else {
            throw .invalidArgument("no vDEVICE with virtual ID \(vdev) on \(self)")
        }
        if flags & MockNestedDomain.invalidateFlagAll != 0 {
            for i in state.cache.indices { state.cache[i] = 0 }
        } else {
            state.cache[Int(slot)] = 0
        }
    }

    // MARK: Hardware queues (Linux `mock_hw_queue_init_phys`)

    override public func hardwareQueueSize(type: UInt32) -> Int { type == Self.hwQueueType ? 64 : 0 }

    /// Index beyond 1: EINVAL; taken: EEXIST; queue 1 before queue 0: EIO; memory whose
    /// physical address is not what the parent maps `base` to: EFAULT. Queue 1 depends on 0.
    override public func initHardwareQueue(type: UInt32, index: UInt32, physical: UInt64, base: UInt64, length: UInt64) throws(IOMMUError) -> UInt32? {
        guard index < UInt32(queues.count) else { throw .invalidArgument("hardware queue index \(index) is beyond 1") }
        guard queues[Int(index)] == nil else { throw .exists("hardware queue \(index) exists") }
        if index > 0, queues[Int(index) - 1] == nil { throw .ioError("hardware queue \(index - 1) must come first") }
        guard parent.iovaToPhys(base) == physical else {
            throw .user(errno: 14, name: "EFAULT", message: "the parent does not map 0x\(String(base, radix: 16)) to the queue's memory")
        }
        queues[Int(index)] = base
        return index > 0 ? index - 1 : nil
    }

    override public func destroyHardwareQueue(index: UInt32) {
        if index < UInt32(queues.count) { queues[Int(index)] = nil }
    }

    // MARK: Events

    /// The selftest's TRIGGER_VEVENT: an event {virt_id} of `device` on the vIOMMU its RID
    /// is attached through. ENOENT when it has none (or its virtual ID is 0).
    public static func triggerEvent(for device: Device) throws(IOMMUError) {
        guard let state = MockDeviceState.of(device), let v = state.viommu, state.virtualID != 0 else {
            throw .notFound("\(device) is not attached through a vIOMMU with a vDEVICE")
        }
        guard let report = v.reportEvent else { throw .notSupported("no event queue") }
        let id = UInt32(truncatingIfNeeded: state.virtualID)
        try report(eventType, (0..<4).map { UInt8(truncatingIfNeeded: id >> (8 * UInt32($0))) })
    }
}

extension MockIOMMUDriver {
    public func viommuSize(for device: Device, type: UInt32) -> Int { type == MockVIOMMU.type ? 64 : 0 }

    /// A mock vIOMMU (its `viommu_init` is `MockVIOMMU.initialize`).
    public func allocVIOMMU(for device: Device, parent: IOMMUDomain, type: UInt32) throws(IOMMUError) -> IOMMUVIOMMU {
        guard type == MockVIOMMU.type else { throw .notSupported("vIOMMU type 0x\(String(type, radix: 16))") }
        return MockVIOMMU(driver: self, parent: parent)
    }
}
