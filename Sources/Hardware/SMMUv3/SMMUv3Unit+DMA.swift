// DMA from endpoints through an SMMUv3 (IHI 0070 §3.9.1 ATS, §3.12.2 stalls, §5.2 STE.EATS,
// §6.3.9 CR0.ATSCHK). Untranslated requests are translated TLP by TLP and copied to or from
// physical memory; a stalled one is held by the stall model and completed (or terminated)
// when software resolves it, through the endpoint's `stallResolved`. ATS Translation Requests
// are answered as completions: configuration errors are recorded and answered Unsupported
// Request, translation faults are not recorded and give a completion without rights, and
// STE.EATS = 0 gives F_BAD_ATS_TREQ. Translated requests go to memory without a walk when
// STE.EATS allows it (checked only with CR0.ATSCHK = 1, as Linux sets it), else
// F_TRANSL_FORBIDDEN.
import Platform
import Formats

extension SMMUv3Unit {
    /// Makes `checker` see every access, as unit number `index`. The checker must outlive the
    /// unit's DMA (the machine owns both).
    public func attachChecker(_ checker: DMAAccessChecker, index: Int) { accessWatch.attach(checker, index: index) }

    @inline(__always)
    func reportAccess(_ record: DMAAccessRecord) { accessWatch.report(record) }

    /// A DMA read of `buffer.count` bytes at `address` from StreamID `sid` (with SubstreamID
    /// `ssid`), page by page. Stops at the first fault or stall and returns the bytes moved
    /// and the fault; a stalled page is completed later (see `completeStalled`).
    public func dmaRead(streamID sid: UInt32, substreamID ssid: UInt32?, address: UInt64,
                        into buffer: UnsafeMutableRawBufferPointer, access: DMAAccess = .read) -> (transferred: Int, fault: DMAFault?) {
        transfer(sid: sid, ssid: ssid, address: address, count: buffer.count, access: access.union(.read)) { (pa: UInt64, offset: Int, n: Int) throws(MemoryError) in
            try memory.deviceRead(pa, into: UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<offset + n]))
        }
    }

    /// A DMA write of `bytes` at `address` (see `dmaRead`).
    public func dmaWrite(streamID sid: UInt32, substreamID ssid: UInt32?, address: UInt64,
                         from bytes: UnsafeRawBufferPointer, access: DMAAccess = .write) -> (transferred: Int, fault: DMAFault?) {
        transfer(sid: sid, ssid: ssid, address: address, count: bytes.count, access: access.union(.write)) { (pa: UInt64, offset: Int, n: Int) throws(MemoryError) in
            try memory.deviceWrite(pa, from: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n]))
        }
    }

    @inline(__always)
    private func transfer(sid: UInt32, ssid: UInt32?, address: UInt64, count: Int, access: DMAAccess,
                          copy: (UInt64, Int, Int) throws(MemoryError) -> Void) -> (transferred: Int, fault: DMAFault?) {
        var done = 0
        let now = scheduler.now
        let source = RequesterID(rawValue: UInt16(truncatingIfNeeded: sid))
        let pasid = ssid.map { PASID(truncating: $0) }
        while done < count {
            let (iova, o) = address.addingReportingOverflow(UInt64(done))
            guard !o else { return (done, DMAFault(address: address, event: .fAddrSize)) }
            let chunk = min(count - done, Int(4096 - (iova & 0xFFF)))
            switch translate(streamID: sid, substreamID: ssid, address: iova, access: access) {
            case .translated(let pa, _, _):
                do { try copy(pa, done, chunk) } catch {
                    return (done, DMAFault(address: iova))
                }
                countersStorage.pointee.dmaBytes &+= UInt64(chunk)
                reportAccess(DMAAccessRecord(source: source, pasid: pasid, address: iova, length: UInt64(chunk),
                                             access: access, physical: pa, fault: nil, time: now))
            case .terminated(let event):
                reportAccess(DMAAccessRecord(source: source, pasid: pasid, address: iova, length: UInt64(chunk),
                                             access: access, physical: nil, fault: nil, time: now, event: event))
                platform.trace.record(TraceEvent(time: now, kind: .dmaFault, track: trackID, a: iova,
                                                 b: UInt64(event?.rawValue ?? 0), c: ssid.map { UInt64($0) } ?? .max))
                return (done, DMAFault(address: iova, event: event))
            case .stalled(let stag):
                return (done, reportStall(streamID: sid, substreamID: ssid, address: iova, length: chunk, access: access, stag: stag))
            }
            done += chunk
        }
        return (done, nil)
    }

    /// Completes a stalled access that software resolved: with a translation, `buffer` is
    /// moved to or from memory at `physical`; a translation that failed again is reported; a
    /// termination by software is not (its fault was seen when it stalled). The endpoint calls
    /// it from its `stallResolved`. Returns the fault when it did not complete.
    public func completeStalled(streamID sid: UInt32, substreamID ssid: UInt32?, address: UInt64,
                                result: SMMUv3TranslationResult, translatedAgain: Bool = true,
                                buffer: UnsafeMutableRawBufferPointer, write: Bool) -> DMAFault? {
        let now = scheduler.now
        let source = RequesterID(rawValue: UInt16(truncatingIfNeeded: sid))
        let pasid = ssid.map { PASID(truncating: $0) }
        let access: DMAAccess = write ? .write : .read
        switch result {
        case .translated(let pa, _, _):
            do {
                if write { try memory.deviceWrite(pa, from: UnsafeRawBufferPointer(buffer)) } else { try memory.deviceRead(pa, into: buffer) }
            } catch {
                return DMAFault(address: address)
            }
            countersStorage.pointee.dmaBytes &+= UInt64(buffer.count)
            reportAccess(DMAAccessRecord(source: source, pasid: pasid, address: address, length: UInt64(buffer.count),
                                         access: access, physical: pa, fault: nil, time: now))
            return nil
        case .terminated(let event):
            if translatedAgain {
                reportAccess(DMAAccessRecord(source: source, pasid: pasid, address: address, length: UInt64(buffer.count),
                                             access: access, physical: nil, fault: nil, time: now, event: event))
            }
            return DMAFault(address: address, event: event)
        case .stalled(let stag):
            // Stalled again on the retry: a new fault, as of now.
            return reportStall(streamID: sid, substreamID: ssid, address: address, length: buffer.count, access: access, stag: stag)
        }
    }

    /// A transaction that just stalled under `stag`: the stall is the translation's fault as
    /// of now, so the checker sees it here (a later termination by software is not another
    /// fault). Returns the fault the device holds the TLP under.
    public func reportStall(streamID sid: UInt32, substreamID ssid: UInt32?, address: UInt64, length: Int,
                            access: DMAAccess, stag: UInt16) -> DMAFault {
        let event = stalled.last(where: { $0.sid == sid && $0.stag == stag })?.event
        reportAccess(DMAAccessRecord(source: RequesterID(rawValue: UInt16(truncatingIfNeeded: sid)), pasid: ssid.map { PASID(truncating: $0) },
                                     address: address, length: UInt64(max(0, length)), access: access, physical: nil, fault: nil,
                                     time: scheduler.now, event: event))
        return DMAFault(address: address, event: event, stallTag: stag)
    }

    // MARK: ATS

    /// Answers an ATS Translation Request from `sid` (IHI 0070 §3.9.1).
    public func atsTranslate(streamID sid: UInt32, substreamID ssid: UInt32?, address: UInt64, write: Bool,
                             privileged: Bool = false, execute: Bool = false) -> ATSCompletion {
        let c = countersStorage
        c.pointee.atsTranslations &+= 1
        // SMMUEN = 0: ATS is not available (GBPA applies to transactions, not to requests).
        guard smmuEnabled else { return .unsupportedRequest }
        let ste: STECacheEntry
        if let hit = steCache.lookup(UInt64(sid), 0) {
            ste = hit.pointee.payload
        } else {
            switch fetchSTE(sid) {
            case .success(let e): ste = e
            case .failure(let f):
                _ = terminate(f, sid: sid, ssid: ssid, address: address, access: .read, ste: nil, cd: nil)
                return .unsupportedRequest
            }
        }
        guard ste.config & 0b100 != 0 else { return .unsupportedRequest }
        // EATS = 0 (or a bypass STE, which has no ATS): F_BAD_ATS_TREQ, answered UR.
        guard ste.eats != 0, ste.config != 0b100 else {
            _ = terminate(.config(.fBadATSTReq), sid: sid, ssid: ssid, address: address, access: .read, ste: ste, cd: nil)
            return .unsupportedRequest
        }
        var access: DMAAccess = write ? [.read, .write] : .read
        if privileged { access.insert(.privileged) }
        if execute { access.insert(.execute) }
        answeringTranslationRequest = true
        defer { answeringTranslationRequest = false }
        switch translate(streamID: sid, substreamID: ssid, address: address, access: access) {
        case .translated(let pa, let shift, let perms):
            let base = pa & ~((UInt64(1) << UInt64(shift)) - 1)
            return .translated(physical: base, pageShift: shift, permissions: perms)
        case .terminated(let event):
            // Configuration errors were recorded: UR. Translation faults: no rights.
            switch event {
            case .fTranslation?, .fAddrSize?, .fAccess?, .fPermission?: return .noAccess
            default: return .unsupportedRequest
            }
        case .stalled:
            return .noAccess // Not reached: nothing stalls while answering a request.
        }
    }

    /// A translated request: `physical` came from the endpoint's ATC for `address`. With
    /// CR0.ATSCHK the STE must allow full ATS (EATS = 0b01); a split-stage STE would send it
    /// through stage 2, which the model does not support (Linux never sets EATS = 0b10).
    public func translatedAccess(streamID sid: UInt32, substreamID ssid: UInt32?, address: UInt64, physical: UInt64,
                                 buffer: UnsafeMutableRawBufferPointer, write: Bool) -> DMAFault? {
        let c = countersStorage
        let now = scheduler.now
        let access: DMAAccess = write ? .write : .read
        let source = RequesterID(rawValue: UInt16(truncatingIfNeeded: sid))
        let pasid = ssid.map { PASID(truncating: $0) }
        var refused: SMMUEventID?? = nil
        if !smmuEnabled {
            if gbpa & SMMUv3Bits.gbpaAbort != 0 { refused = .some(nil) }
        } else if cr0ack & SMMUv3Bits.cr0ATSCHK != 0 {
            var ste: STECacheEntry?
            if let hit = steCache.lookup(UInt64(sid), 0) { ste = hit.pointee.payload } else {
                switch fetchSTE(sid) {
                case .success(let e): ste = e
                case .failure(let f):
                    _ = terminate(f, sid: sid, ssid: ssid, address: address, access: access, ste: nil, cd: nil)
                    refused = .some(f.event)
                }
            }
            if let ste {
                if ste.config & 0b100 == 0 {
                    refused = .some(nil)
                } else if ste.config != 0b100 && ste.eats != 1 {
                    _ = terminate(.config(.fTranslForbidden), sid: sid, ssid: ssid, address: address, access: access, ste: ste, cd: nil)
                    refused = .some(.fTranslForbidden)
                }
            }
        }
        if let refused {
            c.pointee.translatedRequestsRefused &+= 1
            reportAccess(DMAAccessRecord(source: source, pasid: pasid, address: address, length: UInt64(buffer.count),
                                         access: access, physical: nil, fault: nil, time: now, translated: true, event: refused))
            return DMAFault(address: address, event: refused)
        }
        do {
            if write { try memory.deviceWrite(physical, from: UnsafeRawBufferPointer(buffer)) } else { try memory.deviceRead(physical, into: buffer) }
        } catch {
            return DMAFault(address: address)
        }
        c.pointee.translatedRequests &+= 1
        c.pointee.dmaBytes &+= UInt64(buffer.count)
        reportAccess(DMAAccessRecord(source: source, pasid: pasid, address: address, length: UInt64(buffer.count),
                                     access: access, physical: physical, fault: nil, time: now, translated: true))
        return nil
    }
}
