import Platform
import Formats
import Hardware

/// What every VT-d domain can be asked when a device leaves it.
class VTdDomain: IOMMUDomain, @unchecked Sendable {
    /// The driver outlives its domains (both belong to one machine); not counted, so the
    /// map/unmap path pays no reference counting for it.
    unowned(unsafe) let driver: VTdDriver

    init(driver: VTdDriver, type: DomainType, flags: DomainFlags = [], pageSizes: UInt64 = 0, apertureEnd: UInt64 = 0) {
        self.driver = driver
        super.init(type: type, flags: flags, owner: ObjectIdentifier(driver), pageSizes: pageSizes, apertureEnd: apertureEnd)
    }

    /// (`device`, `pasid`) no longer uses this domain; `invalidated` tells whether the
    /// caches were flushed of its old entry.
    func removeDevice(_ device: Device, pasid: UInt32, invalidated: Bool) {}

    /// Points (`device`, `pasid`) at this domain, replacing `old`; RID traffic uses
    /// RID_PASID 0. Each VT-d domain kind implements this once.
    func setTranslation(_ device: Device, pasid: UInt32, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        throw .notSupported("\(self) cannot be attached")
    }

    override func attach(_ device: Device, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        try setTranslation(device, pasid: 0, old: old)
    }

    override func setDevicePASID(_ device: Device, pasid: PASID, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        try setTranslation(device, pasid: pasid.rawValue, old: old)
    }
}

/// The static blocking domain (Linux `blocking_domain` in intel/iommu.c): attaching it tears
/// the device's RID_PASID entry down; its PASID operation tears a PASID entry down. It never
/// fails: if the invalidation does not complete, the old DID is quarantined.
final class VTdBlockedDomain: VTdDomain, @unchecked Sendable {
    init(driver: VTdDriver) {
        super.init(driver: driver, type: .blocked)
        id = -1
    }

    override var description: String { "blocked domain" }

    override func setTranslation(_ device: Device, pasid: UInt32, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        let u = try driver.iommu(for: device)
        let ok = u.removeEntry(device, pasid: pasid)
        (old as? VTdDomain)?.removeDevice(device, pasid: pasid, invalidated: ok)
        return .removed
    }
}

/// The static identity domain (Linux `identity_domain`): a pass-through PASID entry under
/// the shared DID 1 (`FLPT_DEFAULT_DID`), which is never allocated nor freed.
final class VTdIdentityDomain: VTdDomain, @unchecked Sendable {
    init(driver: VTdDriver) {
        super.init(driver: driver, type: .identity)
        id = -2
    }

    override var description: String { "identity domain" }

    override func setTranslation(_ device: Device, pasid: UInt32, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        let u = try driver.iommu(for: device)
        guard u.extendedCapability.passThrough else { throw .incompatible("\(u.name) has no pass-through") }
        let entry = PASIDEntry.make(pgtt: .passThrough, did: DomainIDAllocator.shared)
        var exposed = false
        let path = try u.programEntry(device, pasid: pasid, entry, exposed: &exposed)
        (old as? VTdDomain)?.removeDevice(device, pasid: pasid, invalidated: true)
        return path
    }

    override func iovaToPhys(_ iova: UInt64) -> UInt64? { iova }
}
