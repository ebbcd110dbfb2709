import Platform
import Formats
import Hardware

/// Where translations of a domain may be cached (Linux `struct cache_tag`,
/// drivers/iommu/intel/cache.c): the IOTLB of a unit under a DID and PASID, or a device's
/// TLB. Tags are counted so one per (unit, DID, PASID, device) exists however often it is
/// assigned.
struct CacheTag: Equatable {
    enum Kind: Equatable { case iotlb, deviceTLB }
    var kind: Kind
    var unit: Int
    var did: DomainID
    var pasid: UInt32
    var device: RequesterID
    var users: Int
}

/// A second-stage paging domain (Linux `struct dmar_domain` with second-stage tables): a
/// VT-d page table in physical memory, one DID per unit it is attached on (reference
/// counted by attachments, freed after the invalidation of its last use), and cache tags
/// that say what to invalidate on unmap.
final class VTdPagingDomain: VTdDomain, @unchecked Sendable {
    let pageTable: IOPageTable<SecondStageFormat>
    let levels: Int
    /// DID, attachment count, and whether a failed invalidation may have left entries tagged
    /// with it (then it is quarantined, not freed, on its last release), per unit index.
    var unitDIDs: [Int: (did: DomainID, users: Int, tainted: Bool)] = [:]
    /// The (unit, requester ID, PASID) entries that point at this domain (Linux `dev_pasids`):
    /// only these hold a DID reference.
    var entries: Set<UInt64> = []
    var tags: [CacheTag] = []
    /// Tags on units in caching mode (which cache non-present entries): then new mappings
    /// must be flushed too. Kept so the map path need not scan the tags.
    @exclusivity(unchecked) var cachingModeTags = 0
    /// Dirty tracking is on: every PASID entry of the domain has SSADE set
    /// (VTdPagingDomain+Dirty.swift).
    var dirtyTrackingEnabled = false

    init(driver: VTdDriver, type: DomainType, flags: DomainFlags, levels: Int, maxLeafLevel: Int, addressWidth: Int) throws(IOMMUError) {
        do {
            pageTable = try IOPageTable(memory: driver.platform.memory, frames: driver.platform.frames, levels: levels,
                                        maxLeafLevel: maxLeafLevel, addressWidth: addressWidth,
                                        ownerTag: driver.platform.frames.makeOwnerTag())
        } catch { throw .noMemory("page-table root") }
        if driver.core?.injectedBugs.contains(.freeTablesOutsideGather) == true { pageTable.freesUnlinkedTablesAtOnce = true }
        self.levels = levels
        var sizes: UInt64 = 1 << 12
        if maxLeafLevel >= 2 { sizes |= 1 << 21 }
        if maxLeafLevel >= 3 { sizes |= 1 << 30 }
        super.init(driver: driver, type: type, flags: flags, pageSizes: sizes, apertureEnd: pageTable.inputLimit - 1)
    }

    public override var tableOwnerTag: UInt32 { pageTable.ownerTag }

    /// The DID of this domain on unit `index`, if attached there.
    func did(on index: Int) -> DomainID? { unitDIDs[index]?.did }

    // MARK: Attach

    /// Checks the unit can walk this domain's tables (Linux `paging_domain_compatible`).
    func checkCompatible(_ u: IntelIOMMU) throws(IOMMUError) {
        guard u.extendedCapability.secondStage, u.capability.supportsSecondStage(levels: levels) else {
            throw .incompatible("\(u.name) cannot walk \(levels)-level second-stage tables")
        }
        let large = u.capability.secondStageLargePages
        if pageSizes & (1 << 21) != 0 && large & 1 == 0 { throw .incompatible("\(u.name) has no 2 MiB pages") }
        if pageSizes & (1 << 30) != 0 && large & 2 == 0 { throw .incompatible("\(u.name) has no 1 GiB pages") }
        guard pageTable.addressMask & ~PageTableGeometry.addressMask(width: u.unit.configuration.hostAddressWidth) == 0 else {
            throw .incompatible("\(u.name) has a narrower host address width")
        }
        // Linux `paging_domain_compatible`: a dirty-tracking domain needs SSADS.
        if flags.contains(.dirtyTracking) && !u.extendedCapability.secondStageAD {
            throw .incompatible("\(u.name) cannot track dirty pages (no SSADS)")
        }
    }

    /// Points (`device`, `pasid`) at this domain: take a DID reference on the unit, program
    /// the entry (hitless when the hardware allows), add cache tags, then let the old domain
    /// drop its tags and DID reference. On failure the old configuration stays.
    override func setTranslation(_ device: Device, pasid: UInt32, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        let u = try driver.iommu(for: device)
        try checkCompatible(u)
        let did = try acquireDID(u)
        let entry = makeEntry(did: did)
        var exposed = false
        let path: UpdatePath
        do { path = try u.programEntry(device, pasid: pasid, entry, exposed: &exposed) } catch {
            releaseDID(u, invalidated: !exposed)
            throw error
        }
        entries.insert(Self.entryKey(u.index, device.requesterID, pasid))
        addTag(.iotlb, unit: u.index, did: did, pasid: pasid, device: device.requesterID)
        if device.ats && u.extendedCapability.deviceTLB {
            addTag(.deviceTLB, unit: u.index, did: did, pasid: pasid, device: device.requesterID)
        }
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
        releaseDID(u, invalidated: invalidated)
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

    private func addTag(_ kind: CacheTag.Kind, unit: Int, did: DomainID, pasid: UInt32, device: RequesterID) {
        if let i = tagIndex(kind, unit: unit, did: did, pasid: pasid, device: device) {
            tags[i].users += 1
            return
        }
        // Keep tags of one unit together so flushes batch per unit.
        let tag = CacheTag(kind: kind, unit: unit, did: did, pasid: pasid, device: device, users: 1)
        if driver.units[unit].capability.cachingMode { cachingModeTags += 1 }
        if let last = tags.lastIndex(where: { $0.unit == unit }) { tags.insert(tag, at: last + 1) } else { tags.append(tag) }
    }

    private func removeTag(_ kind: CacheTag.Kind, unit: Int, did: DomainID, pasid: UInt32, device: RequesterID) {
        guard let i = tagIndex(kind, unit: unit, did: did, pasid: pasid, device: device) else { return }
        tags[i].users -= 1
        if tags[i].users == 0 {
            tags.remove(at: i)
            if driver.units[unit].capability.cachingMode { cachingModeTags -= 1 }
        }
    }

    // MARK: Map and unmap

    override func mapPages(iova: UInt64, physical: UInt64, pageSize: UInt64, count: UInt64,
                           permissions: PagePermissions) throws(IOMMUError) -> UInt64 {
        let (size, o) = pageSize.multipliedReportingOverflow(by: count)
        guard !o else { throw .invalidArgument("mapping size overflows") }
        do {
            try pageTable.map(iova: iova, physical: physical, size: size, permissions: permissions)
        } catch {
            switch error {
            case .alreadyMapped(let at): throw .exists("0x\(String(at, radix: 16)) is already mapped in \(self)")
            case .outOfMemory: throw .noMemory("page-table page")
            case .outOfRange: throw .outOfRange("mapping beyond the table's reach")
            case .misaligned, .noAccess: throw .invalidArgument("\(error)")
            }
        }
        return size
    }

    override func unmapPages(iova: UInt64, pageSize: UInt64, count: UInt64, gather: inout UnmapGather) -> UInt64 {
        let (size, o) = pageSize.multipliedReportingOverflow(by: count)
        guard !o else { return 0 }
        let before = gather.end
        do { return try pageTable.unmap(iova: iova, size: size, gather: &gather) } catch {
            // A superpage split ran out of frames: report what was cleared before it.
            return gather.end > max(before, iova) ? gather.end - iova : 0
        }
    }

    override func iotlbSync(_ gather: inout UnmapGather) throws(IOMMUError) {
        if gather.start < gather.end {
            try flushRange(start: gather.start, end: gather.end - 1, hint: gather.freedTables.isEmpty)
        }
    }

    override func syncMap(iova: UInt64, size: UInt64) throws(IOMMUError) {
        // Caching-mode hardware may cache non-present entries: flush the new range (Linux
        // `cache_tag_flush_range_np`). Otherwise nothing is needed (no write buffer).
        guard cachingModeTags > 0 else { return }
        try flushRange(start: iova, end: iova + size - 1, hint: true)
    }

    override func flushAll() throws(IOMMUError) {
        try flushRange(start: 0, end: .max, hint: false)
    }

    override func iovaToPhys(_ iova: UInt64) -> UInt64? { pageTable.translate(iova)?.physical }

    override func setDirtyTracking(_ enabled: Bool) throws(IOMMUError) { try setSSADE(enabled) }

    override func readAndClearDirty(iova: UInt64, size: UInt64, clear: Bool, _ record: ((UInt64, UInt64) -> Void)?) throws(IOMMUError) {
        try readAndClearDBits(iova: iova, size: size, clear: clear, record)
    }

    override func free() {
        var gather = UnmapGather()
        pageTable.destroy(into: &gather)
        for t in gather.freedTables { try? driver.platform.frames.free(t) }
    }

    // MARK: Invalidation

    /// Page-selective address and mask covering [start, end] (Linux
    /// `calculate_psi_aligned_address`): the smallest naturally aligned power-of-two block
    /// of pages holding both ends.
    static func psiRange(start: UInt64, end: UInt64) -> (address: UInt64, mask: UInt8) {
        let first = start >> 12, last = end >> 12
        // The lowest shift at which both page numbers agree: one past the highest differing bit.
        let differing = first ^ last
        let mask = UInt8(min(52, differing == 0 ? 0 : 64 - differing.leadingZeroBitCount))
        return ((first >> UInt64(mask)) << UInt64(mask + 12), mask)
    }

    /// Invalidates [start, end] wherever the tags say it may be cached (Linux
    /// `cache_tag_flush_range`): second-stage IOTLB entries are tagged by DID alone, so one
    /// page-selective descriptor per (unit, DID), domain-selective when the range is too
    /// large for the unit's MAMV or the unit has no PSI; device TLBs per device and PASID.
    /// Descriptors are batched per unit and each batch waited for.
    /// Whether `u` can invalidate [start, end] page-selectively with `mask` (not the whole
    /// space, PSI supported, mask within MAMV); else domain-selective.
    @inline(__always)
    private static func pageSelective(_ u: IntelIOMMU, start: UInt64, end: UInt64, mask: UInt8) -> Bool {
        !(start == 0 && end == .max) && u.capability.pageSelectiveInvalidation && mask <= u.capability.maximumAddressMask
    }

    /// The IOTLB descriptor for second-stage entries tagged `did`: page-selective over
    /// `address`/`mask` when `psi`, else domain-selective.
    @inline(__always)
    private static func iotlbInvalidation(_ did: DomainID, psi: Bool, address: UInt64, mask: UInt8,
                                          hint: Bool) -> InvalidationDescriptor {
        .iotlb(psi ? .page(did, address: address, addressMask: mask, invalidationHint: hint) : .domain(did))
    }

    func flushRange(start: UInt64, end: UInt64, hint: Bool) throws(IOMMUError) {
        let (address, mask) = Self.psiRange(start: start, end: end)
        if tags.count == 1, case let t = tags[0], t.kind == .iotlb {
            // The common case, one device behind one unit without a device TLB: one
            // descriptor, built in place.
            let failure = driver.unitRefs[t.unit]._withUnsafeGuaranteedRef { u -> IOMMUError? in
                var d = Self.iotlbInvalidation(t.did, psi: Self.pageSelective(u, start: start, end: end, mask: mask),
                                               address: address, mask: mask, hint: hint)
                return withUnsafePointer(to: &d) { p -> IOMMUError? in
                    do throws(IOMMUError) { try u.queue.submitAndWait(UnsafeBufferPointer(start: p, count: 1)) } catch { return error }
                    return nil
                }
            }
            if let failure { throw failure }
            return
        }
        var i = 0
        var firstError: IOMMUError?
        while i < tags.count {
            let unitIndex = tags[i].unit
            var last = i
            while last < tags.count && tags[last].unit == unitIndex { last += 1 }
            // The unit without reference counting (the driver keeps it alive), and its
            // descriptors built on the stack (no allocation per flush).
            let result = driver.unitRefs[unitIndex]._withUnsafeGuaranteedRef { u in
                withUnsafeTemporaryAllocation(of: InvalidationDescriptor.self, capacity: last - i) { batch -> IOMMUError? in
                    let whole = start == 0 && end == .max
                    let psi = Self.pageSelective(u, start: start, end: end, mask: mask)
                    guard let base = batch.baseAddress else { return nil }
                    var n = 0
                    for k in i..<last {
                        let t = tags[k]
                        switch t.kind {
                        case .iotlb:
                            // Second-stage entries are tagged by DID alone: one descriptor per DID.
                            if tags[i..<k].contains(where: { $0.kind == .iotlb && $0.did == t.did }) { continue }
                            (base + n).initialize(to: Self.iotlbInvalidation(t.did, psi: psi, address: address, mask: mask, hint: hint))
                        case .deviceTLB:
                            if u.bugs.contains(.skipDeviceTLBInvalidation) { continue }
                            (base + n).initialize(to: u.deviceTLBInvalidation(t.device, pasid: t.pasid, address: whole ? 0 : address, mask: whole ? 52 : mask))
                        }
                        n += 1
                    }
                    defer { base.deinitialize(count: n) }
                    do throws(IOMMUError) { try u.queue.submitAndWait(UnsafeBufferPointer(rebasing: batch[0..<n])) } catch { return error }
                    return nil
                }
            }
            if let result, firstError == nil { firstError = result }
            i = last
        }
        if let firstError { throw firstError }
    }
}
