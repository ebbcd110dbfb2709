import Platform
import Formats

extension VTdUnit {
    var queueIsWide: Bool { invalidationQueueAddress & VTdQueueAddress.wideDescriptors != 0 }
    var queueBytes: UInt64 { 4096 << (invalidationQueueAddress & 7) }
    var queueBase: UInt64 { invalidationQueueAddress & ~0xFFF }
    var descriptorBytes: UInt64 { queueIsWide ? 32 : 16 }

    /// IQT_REG write (VT-d §6.5.2): bits 18:4 are the tail offset. A tail beyond the queue,
    /// or not 256-bit aligned with DW = 1, is an invalidation queue error.
    func writeQueueTail(_ value: UInt64) {
        invalidationQueueTail = value & 0x7FFF0
        guard invalidationQueueTail < queueBytes, !(queueIsWide && invalidationQueueTail & 0x10 != 0) else {
            queueError(.invalidTail)
            return
        }
        guard platform.realThreads, descriptorsHaveLatency else { kickQueue(); return }
        // Real-thread runs: the descriptors are applied inline in the writing thread. That
        // work is the unit's, done while the latency its model charges runs, so the latency
        // counts from the tail write: the wait spins until then (a CPU polls while the
        // IOMMU works; it does not do the IOMMU's work first).
        // The scheduler borrowed, not retained (it is shared by every thread).
        Unmanaged.passUnretained(scheduler)._withUnsafeGuaranteedRef { s in
            let owedBefore = s.realTimeDebtNs
            let start = HostClock.now()
            kickQueue()
            let added = s.realTimeDebtNs &- owedBefore
            s.realTimeDebtNs = owedBefore
            s.realTimeDueNs = max(s.realTimeDueNs, start &+ added)
        }
    }

    /// Starts consuming descriptors if the queue is enabled, error-free, idle and not empty.
    func kickQueue() {
        guard globalStatus & VTdGlobal.queuedInvalidationEnable != 0,
              faultStatus & VTdFaultStatus.invalidationQueueError == 0,
              !queueStepScheduled, invalidationQueueHead != invalidationQueueTail,
              invalidationQueueTail < queueBytes else { return }
        if platform.realThreads {
            // Real-thread runs: the hardware works in the thread that kicked it (which holds
            // the platform's hardware lock); its latency is owed as real time to the wait.
            fetchNextDescriptor(inline: true)
            return
        }
        queueStepScheduled = true
        scheduler.schedule(after: 0, kind: .hardware) { [ref] in ref.target?.fetchNextDescriptor() }
    }

    /// Fetches and decodes the descriptor at the head, then applies it after its latency.
    func fetchNextDescriptor(inline: Bool = false) {
        queueStepScheduled = false
        guard globalStatus & VTdGlobal.queuedInvalidationEnable != 0,
              faultStatus & VTdFaultStatus.invalidationQueueError == 0,
              invalidationQueueHead != invalidationQueueTail else { return }
        let address = queueBase + invalidationQueueHead
        var raw = RawDescriptor(0, 0)
        do {
            if queueIsWide {
                (raw.qw0, raw.qw1, raw.qw2, raw.qw3) = try memory.deviceLoad256(address)
            } else {
                raw.qw0 = try memory.deviceLoad(address, as: UInt64.self)
                raw.qw1 = try memory.deviceLoad(address + 8, as: UInt64.self)
            }
        } catch {
            queueError(.fetchError)
            return
        }
        let descriptor: InvalidationDescriptor
        switch InvalidationDescriptor.decode(raw, wide: queueIsWide) {
        case .success(let d): descriptor = d
        case .failure(.invalidType): queueError(.invalidType); return
        case .failure(.reservedBits): queueError(.reservedBits); return
        case .failure(.needsWideDescriptors): queueError(.needsWideDescriptors); return
        }
        if let reason = unsupported(descriptor) { queueError(reason); return }
        var latency = configuration.latency.descriptorLatency(descriptor.type)
        var drop = platform.faults.shouldFail(.invalidationDrop) && descriptor.type != InvalidationDescriptor.waitType
        if descriptor.type == InvalidationDescriptor.waitType && platform.faults.shouldFail(.invalidationTimeout) {
            drop = true
        }
        if platform.faults.shouldFail(.invalidationDelay) { latency &+= FaultPoint.invalidationDelayNs }
        if !descriptorFaults.isEmpty {
            switch descriptorFaults[descriptor.type] {
            case .drop?: drop = true
            case .delay(let ns)?: latency &+= ns
            case nil: break
            }
        }
        queueStepScheduled = true
        if inline {
            scheduler.realTimeDebtNs &+= latency
            complete(descriptor, raw: raw, dropped: drop)
            return
        }
        scheduler.schedule(after: latency, kind: .hardware) { [ref] in
            ref.target?.complete(descriptor, raw: raw, dropped: drop)
        }
    }

    /// The descriptor at the head is done: move on to the next.
    func advanceHead() {
        invalidationQueueHead = (invalidationQueueHead + descriptorBytes) % queueBytes
        queueStepScheduled = false
        kickQueue()
    }

    /// Applies a fetched descriptor, advances the head and moves on.
    func complete(_ descriptor: InvalidationDescriptor, raw: RawDescriptor, dropped: Bool, drained: Bool = false) {
        let c = countersStorage
        let type = descriptor.type
        let index = invalidationQueueHead / descriptorBytes
        if !dropped, !drained, case .wait(let w) = descriptor, w.pageDrain {
            // Page drain (VT-d §7.10): the wait completes only once the page requests and
            // responses in flight between devices and the unit now, and the requests on the
            // unit's own path, are out (`pageTrafficLeft`).
            let targets = pageTrafficInFlight()
            if !targets.isEmpty || pageRequestsProcessed < pageRequestsAccepted {
                c.pointee.drainsHeld &+= 1
                // Link arrivals and the internal path's progress move it on (pageTrafficLeft).
                parkedDrain = ParkedDrain(descriptor: descriptor, raw: raw, links: targets, phase: .fabric)
                queueStepScheduled = true
                return
            }
        }
        if dropped {
            c.pointee.descriptorsDropped &+= 1
            platform.trace.record(TraceEvent(time: scheduler.now, kind: .descriptorDropped, track: trackID,
                                             a: UInt64(type), b: raw.qw0, c: index))
            advanceHead()
            return
        }
        c.pointee.descriptors &+= 1
        c.pointee.descriptorsByType[Int(type)] &+= 1
        platform.trace.record(TraceEvent(time: scheduler.now, kind: .descriptorCompleted, track: trackID,
                                         a: UInt64(type), b: raw.qw0, c: index))
        switch descriptor {
        case .contextCache(let g): invalidateContextCache(g)
        case .pasidCache(let g): invalidatePASIDCache(g)
        case .iotlb(let g, _, _): invalidateIOTLB(g)
        case .pasidIOTLB(let did, let pasid, let g): invalidatePASIDIOTLB(did: did, pasid: pasid, g)
        case .wait(let w):
            if w.statusWrite {
                do { try memory.deviceStore(w.statusAddress, w.statusData) } catch {
                    queueError(.invalidWaitAddress)
                    return
                }
            }
            c.pointee.waitsCompleted &+= 1
            if w.interrupt {
                invalidationCompletionStatus |= 1
                raiseInterrupt(control: &invalidationEventControl, handler: onInvalidationEvent)
            }
        case .deviceTLB(let sid, _, _, let address, let s):
            if let port = endpoints[sid.rawValue] {
                queueStepScheduled = true
                port.receiveDeviceTLBInvalidation(pasid: nil, address: address, sizeBit: s, global: false) { [ref] in ref.target?.advanceHead() }
                return
            }
        case .pasidDeviceTLB(let sid, _, _, let pasid, let address, let s, let global):
            if let port = endpoints[sid.rawValue] {
                queueStepScheduled = true
                port.receiveDeviceTLBInvalidation(pasid: pasid, address: address, sizeBit: s, global: global) { [ref] in ref.target?.advanceHead() }
                return
            }
        case .pageGroupResponse(let r):
            sendPageResponse(r)
        }
        advanceHead()
    }

    /// A decodable descriptor this unit cannot act on, as an IQEI code.
    func unsupported(_ d: InvalidationDescriptor) -> InvalidationQueueErrorCode? {
        let mamv = configuration.capability.maximumAddressMask
        switch d {
        case .iotlb(.page(_, _, let am, _), _, _), .pasidIOTLB(_, _, .page(_, let am, _)):
            return am > mamv ? .reservedBits : nil
        case .deviceTLB, .pasidDeviceTLB:
            return configuration.extendedCapability.deviceTLB ? nil : .invalidType
        case .pageGroupResponse:
            return configuration.extendedCapability.pageRequests ? nil : .invalidType
        default:
            return nil
        }
    }

    /// Stops the queue with FSTS.IQE and the IQEI code; the head stays on the bad descriptor
    /// until software clears IQE (VT-d §6.5.2.10).
    func queueError(_ code: InvalidationQueueErrorCode) {
        queueStepScheduled = false
        countersStorage.pointee.invalidationQueueErrors &+= 1
        faultStatus |= VTdFaultStatus.invalidationQueueError
        invalidationQueueErrorRecord = UInt64(code.rawValue)
        platform.trace.record(TraceEvent(time: scheduler.now, kind: .invalidationQueueError, track: trackID,
                                         a: UInt64(code.rawValue), b: invalidationQueueHead))
        raiseInterrupt(control: &faultEventControl, handler: onFaultEvent)
    }

    // MARK: Cache invalidation

    func invalidateContextCache(_ g: ContextCacheGranularity) {
        let n: Int
        switch g {
        case .global, .domain:
            // Scalable-mode context entries carry no DID: a domain-selective request drops
            // everything (invalidating more than asked is always allowed).
            n = contextCache.removeAll { _, _, _ in true }
        case .device(_, let sid, let fm):
            let mask: UInt64 = [0xFFFF, 0xFFFB, 0xFFF9, 0xFFF8][Int(fm & 3)]
            let target = UInt64(sid.rawValue) & mask
            n = contextCache.removeAll { key0, _, _ in key0 & mask == target }
        }
        countersStorage.pointee.contextEntriesInvalidated &+= UInt64(n)
    }

    func invalidatePASIDCache(_ g: PASIDCacheGranularity) {
        let n: Int
        switch g {
        case .global: n = pasidCache.removeAll { _, _, _ in true }
        case .domain(let did): n = pasidCache.removeAll { _, _, e in e.did == did.rawValue }
        case .pasid(let did, let pasid):
            n = pasidCache.removeAll { key0, _, e in e.did == did.rawValue && UInt32(key0 & 0xFFFFF) == pasid.rawValue }
        }
        countersStorage.pointee.pasidEntriesInvalidated &+= UInt64(n)
    }

    /// IOTLB invalidation (type 2): second-stage, nested and pass-through translations of a
    /// DID (VT-d §6.5.2.3); page-selective drops every entry overlapping the range.
    func invalidateIOTLB(_ g: IOTLBGranularity) {
        invalidatePagingStructures(g)
        // Nothing cached, nothing to find (the emulator skips the probe; the model is the same).
        guard iotlb.count > 0 else { noteIOTLBRemoved(0); return }
        let covers: (UInt8) -> Bool = { $0 != PGTT.firstStage.rawValue }
        var n = 0
        switch g {
        case .global:
            n = iotlb.removeAll { _, _, _ in true }
        case .domain(let did):
            n = iotlb.removeAll { _, k1, e in Self.did(k1) == did.rawValue && covers(e.pgtt) }
        case .page(let did, let address, let am, _):
            let (lo, hi) = Self.range(address, am)
            n = removeOverlapping(lo: lo, hi: hi, probeKey1: { sizeClass in
                Self.iotlbKey1(did: did.rawValue, pasid: 0, pgtt: PGTT.secondStage.rawValue, sizeClass: sizeClass)
            }, scanForOthers: false) { k1, e in Self.did(k1) == did.rawValue && e.pgtt == PGTT.secondStage.rawValue }
            // Nested translations are tagged by their first-stage input address, which a
            // second-stage (GPA) range cannot identify: every one of the DID goes (VT-d
            // §6.5.2.3; the guest's own invalidations, forwarded with the nested DID, land here
            // too and are over-served the same way).
            if nestedEntries != 0 {
                n += iotlb.removeAll { _, k1, e in Self.did(k1) == did.rawValue && e.pgtt == PGTT.nested.rawValue }
            }
        }
        noteIOTLBRemoved(n)
    }

    /// PASID-based IOTLB invalidation (type 6): first-stage, nested and pass-through
    /// translations of a (DID, PASID) (VT-d §6.5.2.4).
    func invalidatePASIDIOTLB(did: DomainID, pasid: PASID, _ g: PASIDIOTLBGranularity) {
        invalidatePagingStructures(did: did, pasid: pasid, g)
        guard iotlb.count > 0 else { noteIOTLBRemoved(0); return }
        let covers: (UInt8) -> Bool = { $0 != PGTT.secondStage.rawValue }
        let match: (UInt64, IOTLBEntry) -> Bool = { k1, e in
            Self.did(k1) == did.rawValue && k1 & Self.pasidLessTag == 0 && UInt32(k1 & 0xFFFFF) == pasid.rawValue && covers(e.pgtt)
        }
        var n = 0
        switch g {
        case .pasid:
            n = iotlb.removeAll { _, k1, e in match(k1, e) }
        case .page(let address, let am, _):
            let (lo, hi) = Self.range(address, am)
            n = removeOverlapping(lo: lo, hi: hi, probeKey1: { sizeClass in
                Self.iotlbKey1(did: did.rawValue, pasid: pasid.rawValue, pgtt: PGTT.firstStage.rawValue, sizeClass: sizeClass)
            }, scanForOthers: false) { k1, e in match(k1, e) }
        }
        noteIOTLBRemoved(n)
    }

    /// Removes IOTLB entries overlapping `[lo, hi)` that `match`. Small ranges probe the
    /// exact tags of each size class (`probeKey1`) and scan only when entries tagged some other
    /// way may match (`scanForOthers`: nested translations, tagged per PASID, for a type-2
    /// invalidation); large ranges scan the whole IOTLB.
    private func removeOverlapping(lo: UInt64, hi: UInt64, probeKey1: (UInt64) -> UInt64, scanForOthers: Bool,
                                   match: (UInt64, IOTLBEntry) -> Bool) -> Int {
        let pages4K = (hi - lo) >> 12
        if pages4K <= 64 {
            var n = 0
            for sizeClass in UInt64(0)...2 {
                if sizeClass > 0 && superpageEntries == 0 { break }
                let shift = 12 + 9 * sizeClass
                var page = lo >> shift
                let last = (hi - 1) >> shift
                let k1 = probeKey1(sizeClass)
                while page <= last {
                    if iotlb.remove(page, k1) { n += 1 }
                    page += 1
                }
            }
            guard scanForOthers else { return n }
            n += iotlb.removeAll { k0, k1, e in
                guard k1 != probeKey1(k1 >> 52) else { return false }
                let shift = UInt64(e.pageShift)
                // Last byte, not end: the top canonical page would overflow.
                let start = k0 << shift, last = start + ((1 << shift) - 1)
                return start < hi && last >= lo && match(k1, e)
            }
            return n
        }
        return iotlb.removeAll { k0, k1, e in
            let shift = UInt64(e.pageShift)
            let start = k0 << shift, last = start + ((1 << shift) - 1)
            return start < hi && last >= lo && match(k1, e)
        }
    }

    private func noteIOTLBRemoved(_ n: Int) {
        countersStorage.pointee.iotlbEntriesInvalidated &+= UInt64(n)
        if iotlb.count == 0 { superpageEntries = 0; nestedEntries = 0 }
    }

    static func did(_ key1: UInt64) -> UInt16 { UInt16(truncatingIfNeeded: key1 >> 20) }

    /// The byte range of a page-selective invalidation: 2^AM pages from the address with its
    /// low AM page bits ignored (VT-d §6.5.2.3).
    static func range(_ address: UInt64, _ am: UInt8) -> (UInt64, UInt64) {
        let size: UInt64 = 1 << (12 + UInt64(min(am, 51)))
        let lo = address & ~(size - 1)
        let (hi, o) = lo.addingReportingOverflow(size)
        return (lo, o ? .max : hi)
    }
}

extension VTdUnit {
    /// Descriptors between head and tail: submitted and not yet fetched (for traces).
    public var invalidationQueueDepth: Int {
        guard invalidationQueueAddress != 0 else { return 0 }
        let size = queueBytes
        return Int(((invalidationQueueTail &+ size &- invalidationQueueHead) % size) / descriptorBytes)
    }
}
