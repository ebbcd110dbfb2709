import Platform
import Formats

/// What every mock domain does on attach (Linux `mock_domain_nop_attach` and
/// `mock_domain_set_dev_pasid_nop`), each domain kind adding its own checks first.
public class MockDomain: IOMMUDomain, @unchecked Sendable {
    unowned(unsafe) let driver: MockIOMMUDriver

    init(driver: MockIOMMUDriver, type: DomainType, flags: DomainFlags = [], pageSizes: UInt64 = 0) {
        self.driver = driver
        super.init(type: type, flags: flags, owner: ObjectIdentifier(driver), pageSizes: pageSizes,
                   apertureEnd: pageSizes == 0 ? 0 : MockIOMMUDriver.apertureLast,
                   apertureStart: pageSizes == 0 ? 0 : MockIOMMUDriver.apertureStart)
    }

    /// The vIOMMU a nested domain was made from (its attach needs a vDEVICE there).
    var viommu: MockVIOMMU? { nil }

    /// Linux `mock_domain_nop_attach`: a device that cannot track dirty pages is refused a
    /// domain with dirty operations (EINVAL); a nested domain from a vIOMMU needs the
    /// device's vDEVICE there (ENOENT); then the vIOMMU link is recorded and fault
    /// reporting follows the domain's handler.
    override public func attach(_ device: Device, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        guard let state = MockDeviceState.of(device) else { throw .noDevice("\(device) is not a mock device") }
        if flags.contains(.dirtyTracking), state.flags.contains(.noDirty) {
            throw .invalidArgument("\(device) cannot track dirty pages")
        }
        var virtualID: UInt64 = 0
        if let v = viommu {
            guard let id = v.virtualID(of: device) else { throw .notFound("\(device) has no vDEVICE on \(v)") }
            virtualID = id
        }
        state.viommu = viommu
        state.virtualID = virtualID
        driver.faultHandlerAttached(device, self)
        driver.faultHandlerDetached(device, old)
        return old == nil ? .fresh : (type == .blocked ? .removed : .singleWord)
    }

    /// Linux `mock_domain_set_dev_pasid_nop`: only PASID 1024 has a rule, a quirk the
    /// selftest uses to see a failed replace keep the old domain: a set while armed fails
    /// (ENOMEM) and disarms, a set while disarmed arms; the blocked domain disarms.
    override public func setDevicePASID(_ device: Device, pasid: PASID, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        guard let state = MockDeviceState.of(device) else { throw .noDevice("\(device) is not a mock device") }
        if pasid.rawValue == 1024 {
            if type == .blocked {
                state.pasid1024Armed = false
            } else if state.pasid1024Armed {
                state.pasid1024Armed = false
                throw .noMemory("the mock fails every second set of PASID 1024")
            } else {
                state.pasid1024Armed = true
            }
        }
        driver.faultHandlerAttached(device, self)
        driver.faultHandlerDetached(device, old)
        return old == nil ? .fresh : (type == .blocked ? .removed : .singleWord)
    }
}

/// The mock's blocking domain, also every group's default (Linux `mock_blocking_domain`).
final class MockBlockedDomain: MockDomain, @unchecked Sendable {
    init(driver: MockIOMMUDriver) {
        super.init(driver: driver, type: .blocked)
        id = -1
    }

    override var description: String { "mock blocked domain" }
}

/// A mock paging domain (Linux `struct mock_iommu_domain`): one IOPTE per 2 KiB of IOVA in
/// a table keyed by IOVA / 2 KiB, holding PA / 2 KiB and three flags: MARK on the first
/// and last slot of each map call (the unmap check that the core never splits one), DIRTY
/// set by the selftest's DIRTY command, HUGE on every slot of a 1 MiB mapping.
public final class MockPagingDomain: MockDomain, @unchecked Sendable {
    public static let markBit: UInt64 = 1 << 53
    public static let dirtyBit: UInt64 = 1 << 54
    public static let hugeBit: UInt64 = 1 << 55
    static let pfnMask: UInt64 = (1 << 53) - 1

    /// IOPTEs by IOVA / 2 KiB (`mock->pfns`).
    public private(set) var slots: [UInt64: UInt64] = [:]
    /// Dirty tracking is on (`mock->dirty_tracking`).
    public private(set) var trackingDirty = false
    /// 1 MiB pages are among its sizes.
    public let isHuge: Bool

    init(driver: MockIOMMUDriver, type: DomainType, flags: DomainFlags, huge: Bool) {
        isHuge = huge
        super.init(driver: driver, type: type, flags: flags,
                   pageSizes: MockIOMMUDriver.pageSize | (huge ? MockIOMMUDriver.hugePageSize : 0))
    }

    override public var description: String { "mock domain \(id)" }

    /// Linux `mock_domain_map_pages`: a fail_nth point first (ENOENT, nothing written), then
    /// one slot per 2 KiB with consecutive PAs.
    override public func mapPages(iova: UInt64, physical: UInt64, pageSize: UInt64, count: UInt64,
                                  permissions: PagePermissions) throws(IOMMUError) -> UInt64 {
        if driver.platform.faults.shouldFail(.mockMapPages) { throw .notFound("mock map_pages (injected)") }
        let step = MockIOMMUDriver.pageSize
        let total = pageSize * count
        let n = total / step
        let first = iova / step
        for i in 0..<n where slots[first + i] != nil {
            for j in 0..<i { slots[first + j] = nil }
            driver.warnings.append("map over a present IOPTE at 0x\(String(iova + i * step, radix: 16))")
            throw .exists("IOVA 0x\(String(iova + i * step, radix: 16)) is mapped")
        }
        for i in 0..<n {
            var e = (physical / step + i) & Self.pfnMask
            if i == 0 || i == n - 1 { e |= Self.markBit }
            if pageSize != step { e |= Self.hugeBit }
            slots[first + i] = e
        }
        return total
    }

    /// Linux `mock_domain_unmap_pages`: every slot of the range goes; the full size is
    /// returned even over holes. Without 1 MiB pages, the first and last slots found must
    /// be a map call's ends (MARK), or the core split a mapping.
    override public func unmapPages(iova: UInt64, pageSize: UInt64, count: UInt64, gather: inout UnmapGather) -> UInt64 {
        let step = MockIOMMUDriver.pageSize
        let total = pageSize * count
        let first = iova / step
        var seen = false
        var last: UInt64?
        for i in 0..<(total / step) {
            guard let e = slots.removeValue(forKey: first + i) else { continue }
            if !isHuge, !seen, e & Self.markBit == 0 { driver.warnings.append("unmap starts inside a mapping at 0x\(String(iova + i * step, radix: 16))") }
            seen = true
            last = e
        }
        if !isHuge, let last, last & Self.markBit == 0 { driver.warnings.append("unmap ends inside a mapping near 0x\(String(iova + total, radix: 16))") }
        gather.add(range: iova, iova + total, pageSize: pageSize)
        return total
    }

    /// Linux `mock_domain_iova_to_phys`: the slot's PA, without the offset inside 2 KiB.
    override public func iovaToPhys(_ iova: UInt64) -> UInt64? {
        guard let e = slots[iova / MockIOMMUDriver.pageSize] else { return nil }
        return (e & Self.pfnMask) * MockIOMMUDriver.pageSize
    }

    /// Linux `mock_domain_set_dirty_tracking`: a repeat is a no-op.
    override public func setDirtyTracking(_ enabled: Bool) throws(IOMMUError) {
        guard flags.contains(.dirtyTracking) else { throw .invalidArgument("\(self) has no dirty operations") }
        trackingDirty = enabled
    }

    /// Linux `mock_domain_read_and_clear_dirty`: walks from `iova`; a HUGE slot stands for
    /// its whole 1 MiB IOPTE, dirty if any of its slots is, reported from the walk's
    /// position; an empty slot advances 2 KiB.
    override public func readAndClearDirty(iova: UInt64, size: UInt64, clear: Bool, _ record: ((UInt64, UInt64) -> Void)?) throws(IOMMUError) {
        guard flags.contains(.dirtyTracking) else { throw .invalidArgument("\(self) has no dirty operations") }
        if record != nil && !trackingDirty { throw .invalidArgument("dirty tracking is off") }
        let step = MockIOMMUDriver.pageSize
        let end = iova &+ size < iova ? UInt64.max : iova &+ size
        // The walk only stops at present slots (an empty one advances 2 KiB): visit those in
        // order, so a huge range over few mappings costs what is mapped.
        let present = slots.keys.filter { $0 >= iova / step && $0 < end / step }.sorted()
        var cur = iova
        for key in present {
            guard key * step >= cur else { continue }
            cur = key * step
            guard let e = slots[key] else { continue }
            let pgsize = e & Self.hugeBit != 0 ? MockIOMMUDriver.hugePageSize : step
            let head = cur & ~(pgsize - 1)
            var dirty = false
            var k = head
            while k < head + pgsize {
                if let x = slots[k / step], x & Self.dirtyBit != 0 { dirty = true; break }
                k += step
            }
            if dirty {
                record?(cur, pgsize)
                if clear {
                    k = head
                    while k < head + pgsize {
                        if let x = slots[k / step] { slots[k / step] = x & ~Self.dirtyBit }
                        k += step
                    }
                }
            }
            cur = head &+ pgsize
            if cur < head { break }
        }
    }

    /// The selftest's DIRTY command: marks the slot with `key` dirty if it is present.
    public func markDirty(slot key: UInt64) -> Bool {
        guard let e = slots[key] else { return false }
        slots[key] = e | Self.dirtyBit
        return true
    }

    override public func free() {
        if !slots.isEmpty { driver.warnings.append("\(self) freed with \(slots.count) IOPTEs") }
        slots = [:]
    }
}

/// A mock nested domain (Linux `struct mock_iommu_domain_nested`): four IOTLB ids the user's
/// data sets and its invalidations clear, over a mock paging parent or a mock vIOMMU.
public final class MockNestedDomain: MockDomain, @unchecked Sendable {
    public let parent: MockPagingDomain
    let madeFrom: MockVIOMMU?
    /// The IOTLB slots (`iotlb[MOCK_NESTED_DOMAIN_IOTLB_NUM]`).
    public private(set) var iotlb: [UInt32]

    /// `struct iommu_hwpt_invalidate_selftest` {flags, iotlb_id}, type 0xdeadbeef.
    public static let invalidateDataType: UInt32 = 0xdeadbeef
    public static let invalidateFlagAll: UInt32 = 1

    init(driver: MockIOMMUDriver, parent: MockPagingDomain, viommu: MockVIOMMU?, flags: DomainFlags, dataType: UInt32,
         data: [UInt8]) throws(IOMMUError) {
        guard dataType == MockIOMMUDriver.hwptDataSelftest else { throw .notSupported("nested data type 0x\(String(dataType, radix: 16))") }
        guard data.count == 4 else { throw .invalidArgument("iommu_hwpt_selftest is 4 bytes") }
        let value = UInt32(data[0]) | UInt32(data[1]) << 8 | UInt32(data[2]) << 16 | UInt32(data[3]) << 24
        self.parent = parent
        self.madeFrom = viommu
        iotlb = [UInt32](repeating: value, count: 4)
        super.init(driver: driver, type: .nested, flags: flags)
    }

    override var viommu: MockVIOMMU? { madeFrom }
    override public var description: String { "mock nested domain \(id)" }

    override public var userInvalidationDataType: UInt32? { Self.invalidateDataType }
    override public var userInvalidationEntrySize: Int { 8 }

    /// Linux `mock_viommu_cache_invalidate_user`'s nested sibling: unknown flags are
    /// EOPNOTSUPP, an id beyond 3 EINVAL (even with FLAG_ALL), then one slot or all go.
    override public func cacheInvalidateUser(entry: [UInt8]) throws(IOMMUError) {
        let flags = UInt32(entry[0]) | UInt32(entry[1]) << 8 | UInt32(entry[2]) << 16 | UInt32(entry[3]) << 24
        let slot = UInt32(entry[4]) | UInt32(entry[5]) << 8 | UInt32(entry[6]) << 16 | UInt32(entry[7]) << 24
        guard flags & ~Self.invalidateFlagAll == 0 else { throw .notSupported("invalidation flags 0x\(String(flags, radix: 16))") }
        guard slot < 4 else { throw .invalidArgument("IOTLB id \(slot) is beyond 3") }
        if flags & Self.invalidateFlagAll != 0 {
            for i in iotlb.indices { iotlb[i] = 0 }
        } else {
            iotlb[Int(slot)] = 0
        }
    }
}
