import Platform
import Formats
import Synchronization

/// The DMA API over IOMMU domains (the counterpart of drivers/iommu/dma-iommu.c): streaming
/// mappings of pages and scatter lists for devices whose default domain is a DMA domain,
/// with IOVAs from a per-domain `IOVADomain` and strict or deferred (flush-queue) unmap.
///
/// Calls name the CPU they run on (`cpu`): per-CPU IOVA caches and flush queues are picked
/// by it. Different CPUs may call at once from real threads; one CPU slot belongs to one
/// thread at a time.
public final class IOMMUDMA: @unchecked Sendable {
    public let core: IOMMUCore
    /// CPU slots for per-CPU caches and queues.
    public let cpus: Int
    private let setup = Mutex<Void>(())

    /// Most CPU slots an instance has (Linux's `NR_CPUS` is of this order); more are capped,
    /// and a call naming a CPU beyond the slots is `EINVAL`.
    public static let maxCPUs = 1024

    public init(core: IOMMUCore, cpus: Int = 1) {
        self.core = core
        self.cpus = min(max(1, cpus), Self.maxCPUs)
    }

    // MARK: Device setup

    /// Sets the device's streaming DMA mask (Linux `dma_set_mask`): addresses the device can
    /// generate, 12 to 64 bits.
    public func setMask(_ device: Device, bits: Int) throws(IOMMUError) {
        try core.checkProbed(device)
        guard (12...64).contains(bits) else { throw .invalidArgument("DMA mask of \(bits) bits") }
        device.dmaMask = bits == 64 ? .max : (UInt64(1) << UInt64(bits)) - 1
    }

    /// The DMA state of the device's default domain, made on first use (Linux
    /// `iommu_dma_init_domain`): flush queue only for a domain flagged `deferredFlush`,
    /// a single large queue if the driver says the device's invalidations are expensive.
    /// Nil for an identity default domain (DMA addresses are physical).
    public func cookie(for device: Device) throws(IOMMUError) -> DMACookie? {
        if let c = device.dmaCookieCache { return c.takeUnretainedValue() }
        guard let g = device.group, let domain = g.defaultDomain else { throw .noDevice("\(device) is not probed") }
        guard g.domain === domain, !g.dmaOwned else {
            throw .busy("\(device)'s group is owned by a user domain; the DMA API cannot be used")
        }
        switch domain.type {
        case .identity: return nil       // every call of an identity device comes here: no lock
        case .dma: break
        default: throw .invalidArgument("\(domain) is not a DMA domain")
        }
        guard domain.pageSizes != 0, domain.pageSizes.trailingZeroBitCount < 63 else {
            throw .invalidArgument("\(domain) has no usable page size")
        }
        // First use: made under the set-up lock, so two CPUs starting at once make one cookie
        // and do not both write the device's cache.
        return setup.withLock { _ in
            if let c = domain.dmaCookie {
                device.dmaCookieCache = Unmanaged.passUnretained(c)
                return c
            }
            var options: FlushQueueOptions?
            if domain.flags.contains(.deferredFlush) {
                options = g.devices.contains(where: { $0.driver.invalidationsAreExpensive($0) }) ? .single : .perCPU
            }
            let c = DMACookie(domain: domain, core: core, cpus: cpus, queue: options)
            domain.dmaCookie = c
            device.dmaCookieCache = Unmanaged.passUnretained(c)
            return c
        }
    }

    // MARK: Pages

    /// Maps `size` bytes at `physical` for `device` and returns the DMA address (Linux
    /// `iommu_dma_map_page`): the range is widened to whole granules, an IOVA allocated
    /// below the device's mask (below 4 GiB first), and mapped with the direction's rights.
    public func mapPage(_ device: Device, physical: UInt64, size: UInt64, direction: DMADirection, cpu: Int = 0) throws(IOMMUError) -> UInt64 {
        guard size > 0 else { throw .invalidArgument("a DMA mapping of 0 bytes") }
        guard !physical.addingReportingOverflow(size - 1).overflow else { throw .invalidArgument("buffer 0x\(String(physical, radix: 16)) +\(size) wraps") }
        try checkCPU(cpu)
        return try withCookie(device, identity: { () throws(IOMMUError) in try direct(device, physical, size) }) { cookie throws(IOMMUError) in
            try mapPage(cookie, device, physical: physical, size: size, direction: direction, cpu: cpu)
        }
    }

    private func mapPage(_ cookie: DMACookie, _ device: Device, physical: UInt64, size: UInt64, direction: DMADirection, cpu: Int) throws(IOMMUError) -> UInt64 {
        let shift = cookie.granuleShift
        guard let (offset, pages) = cookie.granules(from: physical, length: size) else {
            throw .invalidArgument("buffer of \(size) bytes is too large")
        }
        let pfn = try allocateIOVA(cookie, device, pages: pages, cpu: cpu)
        let iova = pfn << shift
        do {
            try cookie.withDomain { d throws(IOMMUError) in
                try core.map(d, iova: iova, physical: physical - offset, size: pages << shift, permissions: direction.permissions)
            }
        } catch {
            release(cookie, pfn: pfn, pages: pages, after: error, cpu: cpu)
            throw error
        }
        cookie.live.insert(pfn: pfn, pages: pages, cpu: cpu)
        cookie.count(.maps, cpu: cpu)
        if let o = core.observer { o.dmaMapped(device, iova: iova, size: pages << shift) }
        return iova + offset
    }

    /// Unmaps what `mapPage` returned (Linux `iommu_dma_unmap_page`). Strict: the
    /// invalidation has completed and the IOVA is free when it returns. Deferred: the range
    /// waits in the flush queue. `ENOENT` for an address with no mapping (never mapped, or
    /// already unmapped), `EINVAL` for a size other than the mapped one; nothing changes.
    public func unmapPage(_ device: Device, address: UInt64, size: UInt64, cpu: Int = 0) throws(IOMMUError) {
        guard size > 0 else { throw .invalidArgument("a DMA unmap of 0 bytes") }
        try checkCPU(cpu)
        try withCookie(device, identity: {}) { cookie throws(IOMMUError) in
            guard let (_, pages) = cookie.granules(from: address, length: size) else {
                throw .invalidArgument("unmap of \(size) bytes is too large")
            }
            try unmapRange(cookie, pfn: address >> cookie.granuleShift, pages: pages, cpu: cpu)
        }
    }

    /// Whether `address` (as `mapPage` or `mapSG` returned it, offset included) is a live
    /// DMA mapping of `device`. An identity device has none.
    public func isMapped(_ device: Device, address: UInt64) throws(IOMMUError) -> Bool {
        guard let cookie = try cookie(for: device) else { return false }
        return cookie.live.pages(of: address >> cookie.granuleShift) != nil
    }

    // MARK: Scatter lists

    /// Maps a scatter list into one contiguous IOVA range (Linux `iommu_dma_map_sg`): each
    /// segment is widened to whole granules keeping its offset, and the segments follow
    /// each other. A bad segment (empty, wrapping) fails the call before anything changes;
    /// a failure while mapping undoes the segments already mapped.
    public func mapSG(_ device: Device, _ segments: [ScatterSegment], direction: DMADirection, cpu: Int = 0) throws(IOMMUError) -> DMAScatterMapping {
        guard !segments.isEmpty else { throw .invalidArgument("an empty scatter list") }
        try checkCPU(cpu)
        for (i, s) in segments.enumerated() {
            guard s.length > 0 else { throw .invalidArgument("scatter segment \(i) has length 0") }
            guard !s.physical.addingReportingOverflow(s.length - 1).overflow else {
                throw .invalidArgument("scatter segment \(i) at 0x\(String(s.physical, radix: 16)) +\(s.length) wraps")
            }
        }
        guard let cookie = try cookie(for: device) else {
            var addresses: [UInt64] = []
            for s in segments { addresses.append(try direct(device, s.physical, s.length)) }
            return DMAScatterMapping(addresses: addresses, lengths: segments.map(\.length), iova: 0, size: 0)
        }
        let shift = cookie.granuleShift
        var pages: UInt64 = 0
        var spans: [(offset: UInt64, pages: UInt64)] = []
        spans.reserveCapacity(segments.count)
        for (i, s) in segments.enumerated() {
            guard let g = cookie.granules(from: s.physical, length: s.length),
                  case let (t, o) = pages.addingReportingOverflow(g.pages), !o, t <= UInt64.max >> shift else {
                throw .invalidArgument("scatter list too large at segment \(i)")
            }
            spans.append(g)
            pages = t
        }
        let total = pages << shift
        let pfn = try allocateIOVA(cookie, device, pages: pages, cpu: cpu)
        let base = pfn << shift
        var cursor = base
        var addresses: [UInt64] = []
        addresses.reserveCapacity(segments.count)
        do {
            for (s, g) in zip(segments, spans) {
                let span = g.pages << shift
                try core.map(cookie.domain, iova: cursor, physical: s.physical - g.offset, size: span, permissions: direction.permissions)
                addresses.append(cursor + g.offset)
                cursor += span
            }
        } catch {
            var undoError: IOMMUError?
            if cursor > base {
                do { _ = try core.unmap(cookie.domain, iova: base, size: cursor - base) } catch { undoError = .ioError("\(error)") }
            }
            release(cookie, pfn: pfn, pages: pages, after: undoError ?? error, cpu: cpu)
            throw error
        }
        cookie.live.insert(pfn: pfn, pages: pages, cpu: cpu)
        cookie.count(.maps, cpu: cpu)
        if let o = core.observer { o.dmaMapped(device, iova: base, size: pages << shift) }
        return DMAScatterMapping(addresses: addresses, lengths: segments.map(\.length), iova: base, size: total)
    }

    /// Unmaps a scatter list mapped by `mapSG` (Linux `iommu_dma_unmap_sg`: the whole span).
    public func unmapSG(_ device: Device, _ mapping: DMAScatterMapping, cpu: Int = 0) throws(IOMMUError) {
        try checkCPU(cpu)
        guard let cookie = try cookie(for: device) else { return }
        guard mapping.size > 0 else { throw .invalidArgument("an empty scatter mapping") }
        let mask = (UInt64(1) << cookie.granuleShift) - 1
        guard mapping.iova & mask == 0, mapping.size & mask == 0 else { throw .invalidArgument("scatter mapping not granule aligned") }
        try unmapRange(cookie, pfn: mapping.iova >> cookie.granuleShift, pages: mapping.size >> cookie.granuleShift, cpu: cpu)
    }

    // MARK: Internals

    /// Gives back the IOVA of a failed map, unless the failure was a failed invalidation:
    /// then what was mapped may still be cached, and the range is never reused.
    private func release(_ cookie: DMACookie, pfn: UInt64, pages: UInt64, after error: IOMMUError, cpu: Int) {
        cookie.count(.mapFailures, cpu: cpu)
        switch error {
        case .ioError, .timedOut: cookie.lostToFailedFlush(pages: IOVADomain.roundedSize(pages), cpu: cpu)
        default: cookie.iova.free(pfn: pfn, pages: pages, cpu: cpu)
        }
    }

    /// Runs `body` with the device's DMA cookie, or `identity` when DMA addresses are
    /// physical. The fast path borrows the cached cookie without counting a reference:
    /// shared objects' reference counts are contended cache lines when CPUs map at once.
    @inline(__always)
    private func withCookie<R>(_ device: Device, identity: () throws(IOMMUError) -> R,
                               _ body: (DMACookie) throws(IOMMUError) -> R) throws(IOMMUError) -> R {
        if let cached = device.dmaCookieCache { return try cached.borrow(body) }
        guard let cookie = try cookie(for: device) else { return try identity() }
        return try body(cookie)
    }

    @inline(__always)
    private func checkCPU(_ cpu: Int) throws(IOMMUError) {
        guard cpu >= 0, cpu < cpus else { throw badCPU(cpu) }
    }

    private func badCPU(_ cpu: Int) -> IOMMUError { .invalidArgument("CPU \(cpu) is not one of the \(cpus) CPU slots") }

    /// Identity domain: DMA goes straight to physical memory (Linux dma-direct), if the
    /// device can address it.
    private func direct(_ device: Device, _ physical: UInt64, _ size: UInt64) throws(IOMMUError) -> UInt64 {
        guard physical + (size - 1) <= device.dmaMask else {
            throw .outOfRange("buffer at 0x\(String(physical, radix: 16)) is beyond \(device)'s DMA mask (no bounce buffers)")
        }
        return physical
    }

    private func unmapRange(_ cookie: DMACookie, pfn: UInt64, pages: UInt64, cpu: Int) throws(IOMMUError) {
        var found: UInt64?
        guard cookie.live.remove(pfn: pfn, pages: pages, cpu: cpu, found: &found) else {
            if let found {
                throw .invalidArgument("0x\(String(pfn << cookie.granuleShift, radix: 16)) was mapped with \(found) granule(s), not \(pages)")
            }
            throw .notFound("no DMA mapping at 0x\(String(pfn << cookie.granuleShift, radix: 16))")
        }
        if _slowPath(!core.injectedBugs.isEmpty), core.injectedBugs.contains(.freeIOVAWithoutUnmap) {
            cookie.iova.free(pfn: pfn, pages: pages, cpu: cpu)
            return
        }
        let iova = pfn << cookie.granuleShift
        let size = pages << cookie.granuleShift
        if let queue = cookie.queueRef {
            var gather = UnmapGather()
            do {
                _ = try cookie.withDomain { d throws(IOMMUError) in try core.unmapDeferred(d, iova: iova, size: size, gather: &gather) }
            } catch {
                cookie.live.insert(pfn: pfn, pages: pages, cpu: cpu)
                throw error
            }
            var tables = gather.freedTables
            if _slowPath(!core.injectedBugs.isEmpty), core.injectedBugs.contains(.freeDeferredTablesAtOnce) {
                for t in tables { try? core.platform.frames.free(t) }
                tables = []
            }
            queue._withUnsafeGuaranteedRef { $0.queue(pfn: pfn, pages: pages, tables: tables, cpu: cpu) }
        } else {
            do { _ = try cookie.withDomain { d throws(IOMMUError) in try core.unmap(d, iova: iova, size: size) } } catch {
                switch error {
                case .notFound, .noMemory:
                    // Nothing was cleared (no mapping, or no frame to split a superpage).
                    cookie.live.insert(pfn: pfn, pages: pages, cpu: cpu)
                default:
                    // The invalidation failed: the range may still be cached, so its IOVA is
                    // never handed out again.
                    cookie.lostToFailedFlush(pages: IOVADomain.roundedSize(pages), cpu: cpu)
                }
                throw error
            }
            cookie.count(.strictInvalidations, cpu: cpu)
            cookie.iova.free(pfn: pfn, pages: pages, cpu: cpu)
        }
        cookie.count(.unmaps, cpu: cpu)
    }

    /// An IOVA range of `pages` granules below the device's limit (Linux
    /// `iommu_dma_alloc_iova`): below 4 GiB first while that works for the device (then its
    /// full mask for good), the per-CPU caches flushed and retried inside the allocator;
    /// and if the space is still exhausted, the flush queue is flushed so the ranges it holds
    /// come back, and the allocation retried once (the rollover point).
    private func allocateIOVA(_ cookie: DMACookie, _ device: Device, pages: UInt64, cpu: Int) throws(IOMMUError) -> UInt64 {
        let iovad = cookie.iova
        var limit = min(device.dmaMask, cookie.domain.apertureEnd)
        if _slowPath(!core.injectedBugs.isEmpty), core.injectedBugs.contains(.ignoreDMAMask) { limit = cookie.domain.apertureEnd }
        let limitPFN = limit >> cookie.granuleShift
        guard pages <= limitPFN else {
            throw .outOfRange("\(pages) granule(s) do not fit below \(device)'s DMA limit 0x\(String(limit, radix: 16))")
        }
        if limitPFN >= iovad.dma32PFN, device.dmaTry32BitFirst.load(ordering: .relaxed) {
            if let pfn = iovad.allocate(pages: pages, limitPFN: iovad.dma32PFN - 1, cpu: cpu, flushOnFailure: false) { return pfn }
            if device.dmaTry32BitFirst.exchange(false, ordering: .relaxed) { cookie.count(.fallbacksTo64Bit, cpu: cpu) }
        }
        if let pfn = iovad.allocate(pages: pages, limitPFN: limitPFN, cpu: cpu) { return pfn }
        if let queue = cookie.queue {
            queue.rolloverFlushes.add(1, ordering: .relaxed)
            queue.flushAndFreeAll(cpu: cpu)
            if let pfn = iovad.allocate(pages: pages, limitPFN: limitPFN, cpu: cpu) { return pfn }
        }
        throw .noMemory("IOVA space below 0x\(String(limit, radix: 16)) exhausted for \(pages) granule(s)")
    }
}
