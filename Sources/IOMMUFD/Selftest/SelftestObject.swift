import Platform
import Kernel

/// The selftest's mock device object (Linux `struct selftest_obj`, `IOMMUFD_OBJ_SELFTEST`):
/// a mock device the test made with MOCK_DOMAIN, bound to the context (its DEVICE object)
/// and attached. Only the test commands look it up; IOMMU_DESTROY of it is never EBUSY and
/// takes the device away: detached, unbound (a live vDEVICE tombstoned), released.
public final class SelftestObject: IOMMUFDObject {
    /// The mock device (nil only while MOCK_DOMAIN makes it).
    public internal(set) var device: Device?
    let driver: MockIOMMUDriver
    /// Its DEVICE object while bound.
    var idev: DeviceObject?

    init(driver: MockIOMMUDriver) {
        self.driver = driver
        super.init(type: .selftest)
    }

    override func destroy(_ ctx: IOMMUFDContext) {
        if let d = idev, !d.isDestroyed { ctx.unbind(d) }
        idev = nil
        if let device { try? driver.core?.release(device) }
        device = nil
    }
}

/// An access the test made (Linux `struct selftest_access`): an ACCESS object behind a file
/// of its own, and the ranges pinned through it (`items`, numbered from 0).
final class SelftestAccess {
    let access: AccessObject
    var items: [(id: UInt32, iova: UInt64, length: UInt64)] = []
    var nextItemID: UInt32 = 0

    init(access: AccessObject) { self.access = access }

    /// The IOAS unmaps [iova, iova + length): every item overlapping it is unpinned and
    /// forgotten (Linux `iommufd_test_access_unmap`).
    func unmapped(_ iova: UInt64, _ length: UInt64) {
        let last = iova &+ (length &- 1)
        for item in items where item.iova <= last && iova <= item.iova &+ (item.length &- 1) {
            access.unpinPages(iova: item.iova, length: item.length)
        }
        items.removeAll { $0.iova <= last && iova <= $0.iova &+ ($0.length &- 1) }
    }
}

extension IOMMUFDContext {
    /// The mock driver registered with the core, if this system has the selftest (Linux:
    /// CONFIG_IOMMUFD_TEST).
    var mockDriver: MockIOMMUDriver? {
        for d in core.drivers { if let m = d as? MockIOMMUDriver { return m } }
        return nil
    }

    /// MOCK_DOMAIN and MOCK_DOMAIN_FLAGS (Linux `iommufd_test_mock_domain`): the selftest
    /// object takes ID N first (visible last), the new device is bound (DEVICE N+1) and
    /// attached to `ptID` (an automatic HWPT takes N+2). Returns (stdev, hwpt, idev).
    func mockDomain(_ mock: MockIOMMUDriver, ptID: UInt32, flags: UInt32) throws(Errno) -> (UInt32, UInt32, UInt32) {
        let s = SelftestObject(driver: mock)
        try reserve(s)
        do throws(Errno) {
            let device: Device
            do throws(IOMMUError) { device = try mock.createDevice(flags: MockDeviceFlags(rawValue: flags)) } catch { throw Errno(error) }
            s.device = device
            let idevID = try bind(device)
            s.idev = try get(idevID, .device, as: DeviceObject.self)
            let hwpt = try attach(idevID, to: ptID)
            finalize(s)
            return (s.id, hwpt, idevID)
        } catch {
            abort(s)
            s.destroy(self)
            throw error
        }
    }
}
