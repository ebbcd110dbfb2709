import Platform
import Formats
import Hardware

/// Where translations of a domain may be cached (Linux `struct cache_tag`,
/// drivers/iommu/intel/cache.c): the IOTLB of a unit under a DID and PASID, or a device's
/// TLB. A nest parent also carries its nested children's tags (`nestingIOTLB`,
/// `nestingDeviceTLB`: the child's DID), since a change of the parent's second stage
/// changes every nested translation built on it. Tags are counted so one per (kind, unit,
/// DID, PASID, device) exists however often it is assigned.
struct CacheTag: Equatable {
    enum Kind: Equatable { case iotlb, deviceTLB, nestingIOTLB, nestingDeviceTLB }
    var kind: Kind
    var unit: Int
    var did: DomainID
    var pasid: UInt32
    var device: RequesterID
    var users: Int
}

/// What every VT-d domain with a DID shares (Linux `struct dmar_domain`): one DID per unit
/// it is attached on (reference counted by attachments, freed after the invalidation of
/// its last use), the PASID entries pointing at it, and cache tags that say what to
/// invalidate. Subclasses give the PASID entry and the compatibility rules: second-stage
/// and first-stage paging domains, and nested domains.
class VTdDMARDomain: VTdDomain, @unchecked Sendable {
    /// DID, attachment count, and whether a failed invalidation may have left entries tagged
    /// with it (then it is quarantined, not freed, on its last release), per unit index.
    var unitDIDs: [Int: (did: DomainID, users: Int, tainted: Bool)] = [:]
    /// The (unit, requester ID, PASID) entries that point at this domain (Linux `dev_pasids`):
    /// only these hold a DID reference.
    var entries: Set<UInt64> = []
    var tags: [CacheTag] = []
    /// Tags on units in caching mode (which cache non-present entries): then new mappings
    /// of a second-stage domain must be flushed too. Kept so the map path need not scan.
    @exclusivity(unchecked) var cachingModeTags = 0
    /// IOTLB entries of this domain are tagged by (DID, PASID) and invalidated with
    /// PASID-based descriptors (Linux `intel_domain_is_fs_paging`); otherwise by DID alone.
    let taggedByPASID: Bool

    init(driver: VTdDriver, type: DomainType, flags: DomainFlags, pageSizes: UInt64, apertureEnd: UInt64, taggedByPASID: Bool) {
        self.taggedByPASID = taggedByPASID
        super.init(driver: driver, type: type, flags: flags, pageSizes: pageSizes, apertureEnd: apertureEnd)
    }

    /// The DID of this domain on unit `index`, if attached there.
    func did(on index: Int) -> DomainID? { unitDIDs[index]?.did }

    // MARK: What subclasses provide

    /// Throws unless unit `u` can use this domain for `device` (Linux
    /// `paging_domain_compatible`, and the nested setup checks).
    func checkCompatible(_ u: IntelIOMMU, device: Device) throws(IOMMUError) {}

    /// The PASID entry of this domain under `did` on unit `u`.
    func makeEntry(did: DomainID, unit u: IntelIOMMU) -> PASIDEntry { PASIDEntry() }

    /// The size of the page mapping `iova`, or nil (a paging domain's own tables).
    func mappedPageSize(_ iova: UInt64) -> UInt64? { nil }

    /// Tags were assigned for (`device`, `pasid`) under `did` (a nested domain adds the
    /// matching nesting tags to its parent) or are being removed.
    func tagsAssigned(unit: Int, did: DomainID, pasid: UInt32, device: Device) {}
    func tagsUnassigned(unit: Int, did: DomainID, pasid: UInt32, device: Device) {}

    // MARK: Flushes (VTdDMARDomain+Flush.swift)

    /// The flush of an unmap (Linux `intel_iommu_tlb_sync`); IH as `flushHint` says.
    override func iotlbSync(_ gather: inout UnmapGather) throws(IOMMUError) {
        if gather.start < gather.end {
            try flushRange(start: gather.start, end: gather.end - 1, hint: flushHint(gather))
        }
    }

    /// Linux `intel_flush_iotlb_all`.
    override func flushAll() throws(IOMMUError) {
        try flushRange(start: 0, end: .max, hint: false)
    }

    // MARK: Attach

    /// Points (`device`, `pasid`) at this domain: take a DID reference on the unit, program
    /// the entry (hitless when the hardware allows), add cache tags, then let the old domain
    /// drop its tags and DID reference. On failure the old configuration stays.
    override func setTranslation(_ device: Device, pasid: UInt32, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        let u = try driver.iommu(for: device)
        try checkCompatible(u, device: device)
        let did = try acquireDID(u)
        let entry = makeEntry(did: did, unit: u)
        var exposed = false
        let path: UpdatePath
        do { path = try u.programEntry(device, pasid: pasid, entry, exposed: &exposed) } catch {
            releaseDID(u, invalidated: !exposed)
            throw error
        }
        entries.insert(Self.entryKey(u.index, device.requesterID, pasid))
        let ats = device.ats && u.extendedCapability.deviceTLB
        addTag(.iotlb, unit: u.index, did: did, pasid: pasid, device: device.requesterID)
        if ats { addTag(.deviceTLB, unit: u.index, did: did, pasid: pasid, device: device.requesterID) }
        tagsAssigned(unit: u.index, did: did, pasid: pasid, device: device)
        if let old = old as? VTdDomain, old !== self { old.removeDevice(device, pasid: pasid, invalidated: true) }
        return path
    }

    static func entryKey(_ unit: Int, _ rid: RequesterID, _ pasid: UInt32) -> UInt64 {
        UInt64(unit) << 40 | UInt64(rid.rawValue) << 20 | UInt64(pasid)
    }

    override func removeDevice(_ device: Device, pasid: UInt32, invalidated: Bool) {
        guard let u = try? driver.iommu(for: device), let did = unitDIDs[u.index]?.did,
              entries.remove(Self.entryKey(u.index, device.requesterID, pasid)) != nil else { return }
        removeTag(.iotlb, unit: u.index, did: did, pasid: pasid, device: device.requesterID)
        removeTag(.deviceTLB, unit: u.index, did: did, pasid: pasid, device: device.requesterID)
        tagsUnassigned(unit: u.index, did: did, pasid: pasid, device: device)
        releaseDID(u, invalidated: invalidated)
    }

    /// The unit, device and PASID of an entry key.
    func target(_ key: UInt64) throws(IOMMUError) -> (IntelIOMMU, Device, UInt32) {
        let index = Int(key >> 40), rid = RequesterID(rawValue: UInt16(truncatingIfNeeded: key >> 20)), pasid = UInt32(key & 0xFFFFF)
        guard index < driver.units.count, let core = driver.core,
              let device = core.device(driver: driver, unit: index, requesterID: rid) else {
            throw .noDevice("no device \(rid) on unit \(index)")
        }
        return (driver.units[index], device, pasid)
    }

    /// Rewrites every PASID entry pointing here (after a change of what `makeEntry` gives),
    /// with the invalidations `programEntry` issues; on failure the entries already changed
    /// are written back by `undo` and the error is thrown.
    func reprogramEntries(undo: () -> Void) throws(IOMMUError) {
        var done: [(IntelIOMMU, Device, UInt32)] = []
        do {
            for key in entries.sorted() {
                let (u, device, pasid) = try target(key)
                guard let did = did(on: u.index) else { continue }
                var exposed = false
                _ = try u.programEntry(device, pasid: pasid, makeEntry(did: did, unit: u), exposed: &exposed)
                done.append((u, device, pasid))
            }
        } catch {
            undo()
            for (u, device, pasid) in done {
                guard let did = did(on: u.index) else { continue }
                var exposed = false
                _ = try? u.programEntry(device, pasid: pasid, makeEntry(did: did, unit: u), exposed: &exposed)
            }
            throw error
        }
    }

    /// One more attachment on `u`: the existing DID, or a new one (Linux `domain_attach_iommu`).
    private func acquireDID(_ u: IntelIOMMU) throws(IOMMUError) -> DomainID {
        if let info = unitDIDs[u.index] {
            unitDIDs[u.index] = (info.did, info.users + 1, info.tainted)
            return info.did
        }
        let did = try u.allocateDID()
        unitDIDs[u.index] = (did, 1, false)
        return did
    }

    /// One attachment fewer on `u`; the last one returns the DID (Linux `domain_detach_iommu`).
    /// Every use of the DID was torn down with its own invalidation before this point.
    private func releaseDID(_ u: IntelIOMMU, invalidated: Bool) {
        guard let info = unitDIDs[u.index] else { return }
        if info.users > 1 {
            unitDIDs[u.index] = (info.did, info.users - 1, info.tainted || !invalidated)
            return
        }
        unitDIDs[u.index] = nil
        u.releaseDID(info.did, invalidated: invalidated && !info.tainted)
    }

    private func tagIndex(_ kind: CacheTag.Kind, unit: Int, did: DomainID, pasid: UInt32, device: RequesterID) -> Int? {
        tags.firstIndex { $0.kind == kind && $0.unit == unit && $0.did == did && $0.pasid == pasid && $0.device == device }
    }

    func addTag(_ kind: CacheTag.Kind, unit: Int, did: DomainID, pasid: UInt32, device: RequesterID) {
        if let i = tagIndex(kind, unit: unit, did: did, pasid: pasid, device: device) {
            tags[i].users += 1
            return
        }
        // Keep tags of one unit together so flushes batch per unit (Linux `cache_tag_assign`).
        let tag = CacheTag(kind: kind, unit: unit, did: did, pasid: pasid, device: device, users: 1)
        if driver.units[unit].capability.cachingMode { cachingModeTags += 1 }
        if let last = tags.lastIndex(where: { $0.unit == unit }) { tags.insert(tag, at: last + 1) } else { tags.append(tag) }
    }

    func removeTag(_ kind: CacheTag.Kind, unit: Int, did: DomainID, pasid: UInt32, device: RequesterID) {
        guard let i = tagIndex(kind, unit: unit, did: did, pasid: pasid, device: device) else { return }
        tags[i].users -= 1
        if tags[i].users == 0 {
            tags.remove(at: i)
            if driver.units[unit].capability.cachingMode { cachingModeTags -= 1 }
        }
    }
}
