import Platform
import Formats
import Hardware

/// Context and PASID tables in scalable mode (drivers/iommu/intel/pasid.c, VT-d §9.4–9.6).
extension IntelIOMMU {
    var memory: PhysicalMemory { platform.memory }

    func load(_ pa: UInt64) throws(IOMMUError) -> UInt64 {
        do { return try memory.load64(pa) } catch { throw .ioError("table read at 0x\(String(pa, radix: 16)): \(error)") }
    }

    func store(_ pa: UInt64, _ v: UInt64) throws(IOMMUError) {
        do { try memory.store64(pa, v) } catch { throw .ioError("table write at 0x\(String(pa, radix: 16)): \(error)") }
    }

    func allocFrame(_ purpose: FrameAllocator.Purpose) throws(IOMMUError) -> UInt64 {
        do { return try platform.frames.allocate(purpose) } catch { throw .noMemory("\(purpose) frame on \(name)") }
    }

    func freeFrame(_ pa: UInt64) { try? platform.frames.free(pa) }

    /// Root-entry half that covers `rid` (lower: devfn 0–127, upper: 128–255).
    func rootEntrySlot(_ rid: RequesterID) -> UInt64 { rootTable + UInt64(rid.bus) * 16 + (rid.devfn >= 128 ? 8 : 0) }

    func contextTableKey(_ rid: RequesterID) -> UInt16 { UInt16(rid.bus) << 1 | (rid.devfn >= 128 ? 1 : 0) }

    /// Sets up a device (Linux `intel_pasid_alloc_table` + `domain_context_mapping`): a PASID
    /// directory sized for its PASIDs, and a present scalable-mode context entry pointing at
    /// it, present bit written last. Returns the PASID limit its tables hold.
    func probe(_ device: Device) throws(IOMMUError) -> UInt32 {
        let rid = device.requesterID
        guard devices[rid.rawValue] == nil else { throw .exists("\(rid) is already set up on \(name)") }
        let unitPASIDs: UInt64 = extendedCapability.pasid ? UInt64(1) << UInt64(extendedCapability.pasidBits) : 1
        let wanted = max(1, min(UInt64(device.maxPASIDs), unitPASIDs))
        var pdts: UInt8 = 0
        while (UInt64(1) << UInt64(pdts + 7)) * 64 < wanted && (UInt64(1) << UInt64(pdts + 8)) <= Self.maxDirectoryEntries { pdts += 1 }
        let entries = UInt64(1) << UInt64(pdts + 7)
        let rootSlot = rootEntrySlot(rid)
        var half = try load(rootSlot)
        var newTable: UInt64 = 0
        if half & 1 == 0 {
            newTable = try allocFrame(.contextTable)
        } else if !retainedContextTables.isEmpty {
            // A context table kept after a failed flush is in use again.
            retainedContextTables.removeAll { $0 == half & ~0xFFF }
        }
        let directory: UInt64
        do { directory = try allocFrame(.pasidDirectory) } catch {
            if newTable != 0 { freeFrame(newTable) }
            throw error
        }
        if newTable != 0 {
            half = newTable | 1
            try store(rootSlot, half)
        }
        contextTableUsers[contextTableKey(rid), default: 0] += 1
        let pri = device.pri && extendedCapability.pageRequests && pageRequestQueue != 0
        let entry = ScalableContextEntry(present: true, fpd: false, deviceTLB: device.ats && extendedCapability.deviceTLB,
                                         pasidEnable: extendedCapability.pasid, pageRequest: pri, pdts: pdts,
                                         pasidDirectory: directory, ridPASID: 0)
        let address = (half & ~0xFFF) + UInt64(rid.devfn & 0x7F) * 32
        try store(address + 8, entry.val.1); try store(address + 16, entry.val.2); try store(address + 24, entry.val.3)
        try store(address, entry.val.0)
        let info = VTdDeviceInfo(device: device, unit: index, pasidDirectory: directory, directoryEntries: entries, ats: device.ats, pri: pri)
        devices[rid.rawValue] = info
        device.driverData = info
        if pri, let q = iopfQueue, let core = driver?.core { try? core.iopfAddDevice(device, to: q) }
        return min(UInt32(clamping: unitPASIDs), info.pasidLimit)
    }

    /// Removes a device's context (Linux `domain_context_clear_one` + `intel_pasid_free_table`):
    /// present bit cleared, context and PASID caches for it invalidated, then the entry
    /// zeroed and its PASID tables freed; an emptied context table is unlinked and freed.
    func release(_ device: Device) {
        let rid = device.requesterID
        guard let info = devices[rid.rawValue] else { return }
        let rootSlot = rootEntrySlot(rid)
        let half = (try? load(rootSlot)) ?? 0
        var flushed = true
        if half & 1 != 0 {
            let address = (half & ~0xFFF) + UInt64(rid.devfn & 0x7F) * 32
            let v0 = (try? load(address)) ?? 0
            try? store(address, v0 & ~1)
            do {
                try queue.submitAndWait([.contextCache(.device(DomainIDAllocator.reserved, rid, functionMask: 0)), .pasidCache(.global)])
            } catch { flushed = false }
            for i in 0..<4 { try? store(address + UInt64(i) * 8, 0) }
        }
        if info.pri {
            // PRE is off now: hand what is still queued to the core, then leave the fault
            // queue, which answers every pending group (Linux `iopf_queue_remove_device`).
            handlePageRequests()
            driver?.core?.iopfRemoveDevice(device)
        }
        devices[rid.rawValue] = nil
        device.driverData = nil
        // Tables the hardware might still walk through a stale context-cache entry are kept
        // until translation is switched off (`shutdown`), never handed out again before.
        let release: (UInt64) -> Void = flushed ? { [self] in freeFrame($0) } : { [self] in retainedFrames.append($0) }
        for (_, table) in info.leafTables { release(table) }
        release(info.pasidDirectory)
        let key = contextTableKey(rid)
        contextTableUsers[key, default: 1] -= 1
        if contextTableUsers[key] == 0, half & 1 != 0 {
            contextTableUsers[key] = nil
            if flushed {
                try? store(rootSlot, 0)
                freeFrame(half & ~0xFFF)
            } else {
                // The root entry keeps pointing at the (empty) context table until shutdown.
                retainedContextTables.append(half & ~0xFFF)
            }
        }
    }

    /// Address of the PASID-table entry of (`info`, `pasid`), allocating the leaf table when
    /// asked (a new leaf is zeroed before it is linked, so hardware sees it empty).
    func pasidEntryAddress(_ info: VTdDeviceInfo, _ pasid: UInt32, create: Bool) throws(IOMMUError) -> UInt64? {
        guard pasid < info.pasidLimit else { throw .invalidArgument("PASID \(pasid) beyond the table of \(info.requesterID)") }
        let (dir, slot) = PASIDDirectoryEntry.indices(of: pasid)
        if let leaf = info.leafTables[dir] { return leaf + slot * PASIDEntry.size }
        guard create else { return nil }
        let leaf = try allocFrame(.pasidTable)
        try store(info.pasidDirectory + dir * PASIDDirectoryEntry.size, PASIDDirectoryEntry(table: leaf).raw)
        info.leafTables[dir] = leaf
        return leaf + slot * PASIDEntry.size
    }

    func readEntry(_ address: UInt64) throws(IOMMUError) -> PASIDEntry {
        var e = PASIDEntry()
        for i in 0..<8 { e.val[i] = try load(address + UInt64(i) * 8) }
        return e
    }

    /// Programs the PASID entry of (`device`, `pasid`) to `new`.
    ///
    /// - Not present: words 7…1 are written, then word 0 with the present bit (Linux
    ///   `pasid_set_present` after a barrier); non-caching-mode hardware caches no
    ///   non-present entries, so nothing needs invalidating.
    /// - Present: hitless where it is safe: when only word 0 differs (same DID) one 64-bit
    ///   store; when only the first 128 bits differ (DID, PGTT, table pointer) one 128-bit
    ///   compare-exchange, since hardware fetches the entry in 128-bit chunks at least. Then
    ///   the PASID cache and IOTLB are invalidated under the *old* DID. Otherwise the old
    ///   entry is torn down first and the new one set up (not hitless: VT-d §6.5.3.3, and
    ///   Linux's "Fix race condition during PASID entry replacement").
    ///
    /// `exposed` is set once hardware may have fetched `new` (so caches may hold entries
    /// tagged with its DID even if this call then fails).
    func programEntry(_ device: Device, pasid: UInt32, _ new: PASIDEntry, exposed: inout Bool) throws(IOMMUError) -> UpdatePath {
        guard let info = devices[device.requesterID.rawValue] else { throw .noDevice("\(device) is not set up on \(name)") }
        guard let address = try pasidEntryAddress(info, pasid, create: true) else { throw .ioError("no PASID table") }
        let old = try readEntry(address)
        guard old.present else {
            exposed = true
            try setUp(address, new)
            return .fresh
        }
        if old == new { return .unchanged }
        var path: UpdatePath = .teardownSetup
        var sameUpper = true
        for i in 3..<8 where old.val[i] != new.val[i] { sameUpper = false }
        let sameTail = sameUpper && old.val[2] == new.val[2]
        if sameTail && old.val[1] == new.val[1] {
            exposed = true
            try store(address, new.val[0])
            path = .singleWord
        } else if sameTail {
            if try switch128(address, old, new) { path = .compareExchange128; exposed = true }
        } else if sameUpper, let order = Self.stagedOrder(old, new) {
            // The first-stage pointer word differs too (first-stage and nested entries): it is
            // written on the side of the switch where the entry in force ignores it, or, when
            // both entries use it alike (first stage to first stage), just before: the unit
            // then translates with the new tables under the old DID until the switch, and the
            // flush of the old DID below drops what it cached so.
            exposed = true
            if order == .pointerFirst { try store(address + 16, new.val[2]) }
            if try switch128(address, old, new) {
                if order == .pointerAfter { try store(address + 16, new.val[2]) }
                path = .staged
            } else if order == .pointerFirst {
                try? store(address + 16, old.val[2])
            }
        }
        if path != .teardownSetup, bugs.contains(.replaceThroughNonPresent) {
            // Injected bug: a window with no translation, reported as hitless.
            try tearDown(address, old, pasid: pasid, info: info)
            try setUp(address, new)
            exposed = true
            return path
        }
        guard path != .teardownSetup else {
            do { try tearDown(address, old, pasid: pasid, info: info) } catch {
                // Keep the old configuration: make the old entry present again.
                try? store(address, old.val[0])
                throw error
            }
            exposed = true
            try setUp(address, new)
            return .teardownSetup
        }
        platform.scheduler.yieldPoint(KernelYield.afterPASIDEntryWrite)
        do { try flushEntry(old, pasid: pasid, info: info) } catch {
            // Keep the old configuration on error (the set_dev_pasid contract): put the old
            // words back, then drop what may have been cached from the new entry (tagged
            // with the new DID). The caller treats the new DID as possibly cached anyway.
            if path == .singleWord { try? store(address, old.val[0]) } else {
                _ = try? memory.compareExchange128(address, expected: (new.val[0], new.val[1]), desired: (old.val[0], old.val[1]))
                if path == .staged { try? store(address + 16, old.val[2]) }
            }
            try? flushEntry(new, pasid: pasid, info: info)
            throw error
        }
        return path
    }

    /// Switches the words carrying PGTT, second-stage pointer and DID with one 128-bit
    /// compare-exchange; false when the entry changed under it.
    private func switch128(_ address: UInt64, _ old: PASIDEntry, _ new: PASIDEntry) throws(IOMMUError) -> Bool {
        do {
            return try memory.compareExchange128(address, expected: (old.val[0], old.val[1]), desired: (new.val[0], new.val[1])).exchanged
        } catch { throw .ioError("PASID entry update: \(error)") }
    }

    enum StagedOrder { case pointerFirst, pointerAfter }

    /// When the first-stage pointer word (val[2]) can change around a 128-bit switch without
    /// a moment where the unit reads a meaningless entry: before it when the old entry
    /// ignores that word or uses it as the new one will (same PGTT), after it when the new
    /// entry ignores it. First stage against nested (one pointer host-physical, the other
    /// guest-physical) has no such order.
    static func stagedOrder(_ old: PASIDEntry, _ new: PASIDEntry) -> StagedOrder? {
        func usesPointer(_ e: PASIDEntry) -> Bool { e.pgtt == .firstStage || e.pgtt == .nested }
        if old.pgtt == .nested && new.pgtt == .nested && old.secondStageTable != new.secondStageTable { return nil }
        if !usesPointer(old) || old.pgtt == new.pgtt { return .pointerFirst }
        if !usesPointer(new) { return .pointerAfter }
        return nil
    }

    func setUp(_ address: UInt64, _ e: PASIDEntry) throws(IOMMUError) {
        for i in stride(from: 7, through: 1, by: -1) { try store(address + UInt64(i) * 8, e.val[i]) }
        try store(address, e.val[0])
    }

    /// Removes the PASID entry of (`device`, `pasid`) if present. Returns false when the
    /// invalidation failed (the caller must then not reuse the DID).
    @discardableResult
    func removeEntry(_ device: Device, pasid: UInt32) -> Bool {
        guard let info = devices[device.requesterID.rawValue],
              let address = try? pasidEntryAddress(info, pasid, create: false),
              let old = try? readEntry(address), old.present || old.val[1] != 0 else { return true }
        if old.present, bugs.contains(.releaseDIDBeforeFlush) { releaseDIDEarly(old.did) }
        // A non-present entry with fields left is one whose teardown flush failed: flush again.
        do { try tearDown(address, old, pasid: pasid, info: info) } catch { return false }
        return true
    }

    /// Teardown in the order VT-d §6.5.3.3 requires: clear the present bit only, invalidate
    /// the PASID cache, IOTLB and device TLB for the old DID and wait, then zero the entry.
    func tearDown(_ address: UInt64, _ old: PASIDEntry, pasid: UInt32, info: VTdDeviceInfo) throws(IOMMUError) {
        try store(address, old.val[0] & ~1)
        platform.scheduler.yieldPoint(KernelYield.afterPresentClear)
        // On failure the entry stays non-present but unzeroed: nothing new can be cached
        // from it, and the next removal flushes it again.
        try flushEntry(old, pasid: pasid, info: info, pasidCache: !bugs.contains(.skipPASIDCacheInvalidation))
        for i in 0..<8 { try store(address + UInt64(i) * 8, 0) }
        if !bugs.contains(.skipPageRequestDrain) { drainPageRequests(info, pasid: pasid, did: old.did, pgtt: old.pgtt) }
    }

    /// Invalidates what hardware may cache from `old` (Linux `pasid_cache_invalidation_with_pasid`,
    /// `iotlb_invalidation_with_pasid` / DSI for second-stage, `devtlb_invalidation_with_pasid`).
    func flushEntry(_ old: PASIDEntry, pasid: UInt32, info: VTdDeviceInfo, pasidCache: Bool = true) throws(IOMMUError) {
        let did = old.did
        let p = PASID(truncating: pasid)
        var descriptors: [InvalidationDescriptor] = pasidCache ? [.pasidCache(.pasid(did, p))] : []
        descriptors.append(iotlbInvalidation(did: did, pasid: p, pgtt: old.pgtt))
        if info.ats && extendedCapability.deviceTLB {
            descriptors.append(deviceTLBInvalidation(info.requesterID, pasid: pasid, address: 0, mask: 52))
        }
        try queue.submitAndWait(descriptors)
    }

    /// What drops the IOTLB entries of a PASID entry with `pgtt`: second-stage and nested
    /// translations are tagged by DID (domain-selective), the others by DID and PASID.
    func iotlbInvalidation(did: DomainID, pasid: PASID, pgtt: PGTT?) -> InvalidationDescriptor {
        switch pgtt {
        case .secondStage?, .nested?: return .iotlb(.domain(did))
        default: return .pasidIOTLB(did, pasid, .pasid)
        }
    }

    /// A device-TLB invalidation of 2^`mask` pages at `address` (PCIe ATS invalidate
    /// request: with S set the range size is encoded in the low address bits).
    func deviceTLBInvalidation(_ rid: RequesterID, pasid: UInt32, address: UInt64, mask: UInt8) -> InvalidationDescriptor {
        var a = address & ~0xFFF
        if mask > 0 { a |= ((UInt64(1) << UInt64(min(63, 12 + Int(mask) - 1))) - 1) & ~0xFFF }
        if pasid == 0 {
            return .deviceTLB(source: rid, pfsid: rid.rawValue, queueDepth: 0, address: a, sizeBit: mask > 0)
        }
        return .pasidDeviceTLB(source: rid, pfsid: rid.rawValue, queueDepth: 0, pasid: PASID(truncating: pasid),
                               address: a, sizeBit: mask > 0, global: false)
    }
}
