import Platform
import Formats

extension IOMMUCore {
    /// The page size to use at `iova`/`physical` for up to `size` bytes, and how many pages
    /// of it to use before a larger page could start (Linux `iommu_pgsize`): the largest
    /// supported size no bigger than the remaining length and the alignment of both addresses.
    @inlinable
    public static func pageSize(_ bitmap: UInt64, iova: UInt64, physical: UInt64, size: UInt64) -> (pageSize: UInt64, count: UInt64) {
        let merged = iova | physical
        // Sizes that fit the length.
        var sizes = bitmap & (size >= 1 << 63 ? .max : (UInt64(1) << (64 - size.leadingZeroBitCount)) &- 1)
        // Sizes the addresses are aligned to.
        if merged != 0 { sizes &= (merged & (~merged &+ 1)) &* 2 &- 1 }
        guard sizes != 0 else { return (0, 0) }
        let pageSize = UInt64(1) << (63 - sizes.leadingZeroBitCount)
        var length = size
        // Stop where the next larger page size could start.
        let bigger = bitmap & ~((pageSize << 1) &- 1)
        if bigger != 0 {
            let next = bigger & (~bigger &+ 1)
            // A larger page can only start where IOVA and physical address are congruent.
            guard (iova ^ physical) & (next - 1) == 0 else { return (pageSize, length / pageSize) }
            let offset = next - (merged & (next - 1))
            if offset < length, length - offset >= next { length = offset }
        }
        return (pageSize, length / pageSize)
    }

    func checkPaging(_ domain: IOMMUDomain, _ iova: UInt64, _ size: UInt64, physical: UInt64 = 0) throws(IOMMUError) {
        try checkAlive(domain)
        guard domain.type.isPaging else { throw .invalidArgument("\(domain) is not a paging domain") }
        guard domain.pageSizes != 0 else { throw .noDevice("\(domain) has no page sizes") }
        let minimum = domain.smallestPageSize
        guard size > 0, (iova | physical | size) & (minimum - 1) == 0 else {
            throw .invalidArgument("iova 0x\(String(iova, radix: 16)), size 0x\(String(size, radix: 16)) not aligned to 0x\(String(minimum, radix: 16))")
        }
        guard !physical.addingReportingOverflow(size - 1).overflow else {
            throw .outOfRange("physical range 0x\(String(physical, radix: 16)) +0x\(String(size, radix: 16)) wraps")
        }
        let (last, o) = iova.addingReportingOverflow(size - 1)
        guard !o, iova >= domain.apertureStart, last <= domain.apertureEnd else {
            throw .outOfRange("[0x\(String(iova, radix: 16)), +0x\(String(size, radix: 16))) is outside the aperture [0x\(String(domain.apertureStart, radix: 16)), 0x\(String(domain.apertureEnd, radix: 16))]")
        }
    }

    /// Maps `[iova, iova+size)` to `physical` in a paging domain (Linux `iommu_map`): page
    /// sizes chosen by `pageSize`, then `syncMap`. On failure everything this call mapped is
    /// unmapped and flushed again, and the error returned.
    public func map(_ domain: IOMMUDomain, iova: UInt64, physical: UInt64, size: UInt64,
                    permissions: PagePermissions) throws(IOMMUError) {
        try checkPaging(domain, iova, size, physical: physical)
        guard !permissions.isDisjoint(with: .readWrite) else { throw .invalidArgument("a mapping needs read or write permission") }
        observer?.mapBegan(domain, iova: iova, physical: physical, size: size, permissions: permissions)
        var mapped: UInt64 = 0
        do throws(IOMMUError) {
            if size == domain.smallestPageSize {
                // One page of the smallest size (the DMA API's common case): no size to choose.
                mapped = try domain.mapPages(iova: iova, physical: physical, pageSize: size, count: 1, permissions: permissions)
            }
            while mapped < size {
                let (pgsize, count) = Self.pageSize(domain.pageSizes, iova: iova + mapped, physical: physical + mapped, size: size - mapped)
                guard count > 0 else { throw IOMMUError.invalidArgument("no page size fits") }
                mapped += try domain.mapPages(iova: iova + mapped, physical: physical + mapped, pageSize: pgsize,
                                              count: count, permissions: permissions)
            }
            yield(KernelYield.afterMap)
            try domain.syncMap(iova: iova, size: size)
        } catch {
            // Undo: clear what was mapped, and flush the whole attempted range, since the
            // device may have used a translation of it meanwhile.
            var gather = UnmapGather()
            if mapped > 0 { _ = unmapAll(domain, iova: iova, size: mapped, gather: &gather) }
            gather.add(range: iova, iova + size, pageSize: 4096)
            observer?.tablesDetached(domain, gather.freedTables)
            let flushed: Bool
            do { try domain.iotlbSync(&gather); flushed = true } catch { flushed = false }
            // If the undo could not be invalidated, devices may keep using what was mapped:
            // say so (the range must never be handed out again) and fail with EIO.
            if !flushed { observer?.unmapFailed(domain, iova: iova, requested: size, unmapped: size) }
            observer?.mapEnded(domain, iova: iova, size: size, mapped: false)
            putPages(domain, gather.freedTables, flushed: flushed)
            if !flushed { throw .ioError("\(error); undoing the partial map could not be invalidated") }
            throw error
        }
        observer?.mapEnded(domain, iova: iova, size: size, mapped: true)
    }

    /// Unmaps `[iova, iova+size)` (Linux `iommu_unmap`): clears page-table entries up to the
    /// first hole, gathering the range and freed table pages, then `iotlbSync` invalidates the
    /// range and waits for completion, and only then are the tables freed. When it returns,
    /// no device can use the old translations. Returns the bytes unmapped; `ENOENT` if
    /// nothing is mapped at `iova` (and nothing changes).
    @discardableResult
    public func unmap(_ domain: IOMMUDomain, iova: UInt64, size: UInt64) throws(IOMMUError) -> UInt64 {
        var gather = UnmapGather()
        let unmapped = try clearPTEs(domain, iova: iova, size: size, gather: &gather)
        let observer = self.observer
        if !gather.freedTables.isEmpty { observer?.tablesDetached(domain, gather.freedTables) }
        if !injectedBugs.isEmpty, injectedBugs.contains(.freeTablesBeforeFlush) {
            putPages(domain, gather.freedTables, flushed: true)
            gather.freedTables.removeAll()
        }
        yield(KernelYield.afterPTEClear)
        do { try domain.iotlbSync(&gather) } catch {
            observer?.unmapFailed(domain, iova: iova, requested: size, unmapped: unmapped)
            putPages(domain, gather.freedTables, flushed: false)
            throw error
        }
        observer?.unmapEnded(domain, iova: iova, requested: size, unmapped: unmapped)
        putPages(domain, gather.freedTables, flushed: true)
        return unmapped
    }

    /// Clears `[iova, iova+size)` without invalidating (Linux `iommu_unmap_fast` with a
    /// queued gather): the caller must queue the range and the gathered table pages on a
    /// flush queue, which frees them after a flush that started later has completed
    /// (`flushDeferred`). Until then devices may still use the old translations.
    public func unmapDeferred(_ domain: IOMMUDomain, iova: UInt64, size: UInt64,
                              gather: inout UnmapGather) throws(IOMMUError) -> UInt64 {
        let before = gather.freedTables.count
        let unmapped = try clearPTEs(domain, iova: iova, size: size, gather: &gather)
        yield(KernelYield.afterPTEClear)
        observer?.unmapDeferred(domain, iova: iova, requested: size, unmapped: unmapped,
                                tables: gather.freedTables.count > before ? Array(gather.freedTables[before...]) : [])
        return unmapped
    }

    /// Invalidates everything `domain` may have cached and waits (Linux `fq_flush_iotlb`'s
    /// `flush_iotlb_all`). Deferred unmaps made before the call are complete when it
    /// returns without error.
    public func flushDeferred(_ domain: IOMMUDomain) throws(IOMMUError) {
        let observer = self.observer
        observer?.deferredFlushBegan(domain)
        do { try domain.flushAll() } catch {
            observer?.deferredFlushEnded(domain, completed: false)
            throw error
        }
        observer?.deferredFlushEnded(domain, completed: true)
    }

    /// Frees page-table pages whose translations were invalidated (Linux
    /// `iommu_put_pages_list`). Pages whose invalidation failed may still be reachable from
    /// hardware caches: they are kept with the domain and freed with it.
    public func putPages(_ domain: IOMMUDomain, _ tables: [UInt64], flushed: Bool) {
        guard !tables.isEmpty else { return }
        if flushed {
            for t in tables { try? platform.frames.free(t) }
        } else {
            domain.quarantinedTables.withLock { $0.append(contentsOf: tables) }
        }
    }

    /// The part both unmaps share: checks, announcement, and the PTE clear up to the first
    /// hole. Nothing cleared is an error and changes nothing.
    private func clearPTEs(_ domain: IOMMUDomain, iova: UInt64, size: UInt64, gather: inout UnmapGather) throws(IOMMUError) -> UInt64 {
        try checkPaging(domain, iova, size)
        observer?.unmapBegan(domain, iova: iova, size: size)
        let unmapped = unmapAll(domain, iova: iova, size: size, gather: &gather)
        guard unmapped > 0 else { throw nothingMapped(domain, iova, size) }
        return unmapped
    }

    /// Nothing was mapped at `iova` (the clear stopped at once): nothing changed; tell the
    /// observer the unmap ended with 0 bytes.
    private func nothingMapped(_ domain: IOMMUDomain, _ iova: UInt64, _ size: UInt64) -> IOMMUError {
        observer?.unmapEnded(domain, iova: iova, requested: size, unmapped: 0)
        // Still mapped: a superpage that had to be split found no frame for the new table.
        if domain.iovaToPhys(iova) != nil { return .noMemory("splitting the superpage at 0x\(String(iova, radix: 16)) in \(domain)") }
        return .notFound("nothing is mapped at 0x\(String(iova, radix: 16)) in \(domain)")
    }

    func unmapAll(_ domain: IOMMUDomain, iova: UInt64, size: UInt64, gather: inout UnmapGather) -> UInt64 {
        if size == domain.smallestPageSize {
            // One page of the smallest size: no size to choose.
            return domain.unmapPages(iova: iova, pageSize: size, count: 1, gather: &gather)
        }
        var unmapped: UInt64 = 0
        while unmapped < size {
            let (pgsize, count) = Self.pageSize(domain.pageSizes, iova: iova + unmapped, physical: 0, size: size - unmapped)
            guard count > 0 else { break }
            let n = domain.unmapPages(iova: iova + unmapped, pageSize: pgsize, count: count, gather: &gather)
            if n == 0 { break }
            unmapped += n
        }
        return unmapped
    }

    /// The physical address `iova` translates to in `domain` (Linux `iommu_iova_to_phys`):
    /// the IOVA itself for identity, nil for blocked or unmapped.
    public func iovaToPhys(_ domain: IOMMUDomain, _ iova: UInt64) -> UInt64? {
        switch domain.type {
        case .identity: return iova
        case .blocked: return nil
        default: return domain.isDestroyed ? nil : domain.iovaToPhys(iova)
        }
    }

    // MARK: Faults

    /// A driver reports a non-recoverable fault read from `unit`'s fault-recording registers;
    /// it is logged for the device that caused it (Linux `report_iommu_fault` / dmar_fault).
    /// An SMMUv3 driver passes the architected event too (`event`), with its StreamID as the
    /// record's requester ID.
    public func reportFault(driver: any IOMMUDriver, unit: Int, record: FaultRecord, event: SMMUEventRecord? = nil) {
        let fault = ReportedFault(time: platform.scheduler.now, unit: unit, record: record, event: event)
        let dev = device(driver: driver, unit: unit, requesterID: record.source)
        if let dev {
            dev.faultCount += 1
            if dev.faults.count < dev.faultLogLimit { dev.faults.append(fault) }
        } else {
            unclaimedFaults += 1
        }
        observer?.faultReported(dev, fault)
    }
}
