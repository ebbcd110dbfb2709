import Platform
import Formats

/// What an ATS translation request gets back (PCIe ATS Translation Completion).
public enum ATSCompletion: Equatable, Sendable {
    /// A translation for the page holding the address: its physical base, size and rights.
    case translated(physical: UInt64, pageShift: UInt8, permissions: PagePermissions)
    /// Success with R = W = 0: nothing is accessible there now; the device may ask for the
    /// page with a page request.
    case noAccess
    /// Unsupported Request: ATS is not enabled for the device (DTE clear) or the context or
    /// PASID configuration is broken (recorded as a fault).
    case unsupportedRequest
}

/// ATS on the unit (VT-d §4.2): translation requests and translated requests.
extension VTdUnit {
    /// The context entry of `source`, through the context cache.
    func contextEntry(_ source: RequesterID) -> Result<ContextCacheEntry, FetchFault> {
        if let hit = contextCache.lookup(UInt64(source.rawValue), 0) { return .success(hit.pointee.payload) }
        return fetchContext(source)
    }

    /// Answers a translation request (VT-d §4.2.3): walks as for an untranslated request
    /// of the same kind, without recording page-level faults; the completion carries the
    /// page and its rights, or no rights when it is not accessible now.
    public func atsTranslate(source: RequesterID, pasid: PASID?, address: UInt64, write: Bool,
                             privileged: Bool = false, execute: Bool = false) -> ATSCompletion {
        countersStorage.pointee.atsTranslations &+= 1
        guard translationEnabled else { return .translated(physical: address & ~0xFFF, pageShift: 12, permissions: .all) }
        switch contextEntry(source) {
        case .failure(let f):
            if !f.fpd { noteFault(f.reason, source: source, pasid: pasid, address: address, access: .read, fpd: false) }
            return .unsupportedRequest
        case .success(let ctx):
            guard ctx.flags & ContextCacheEntry.deviceTLB != 0 else {
                let fpd = ctx.flags & ContextCacheEntry.fpd != 0
                noteFault(.smDTEClear, source: source, pasid: pasid, address: address, access: .read, fpd: fpd)
                return .unsupportedRequest
            }
        }
        var access: DMAAccess = write ? [.read, .write] : .read
        if privileged { access.insert(.privileged) }
        if execute { access.insert(.execute) }
        var fpd = false
        switch translateNoRecord(source: source, pasid: pasid, address: address, access: access, fpd: &fpd) {
        case .translated(let pa, let shift, let perms):
            let base = pa & ~((UInt64(1) << UInt64(shift)) - 1)
            return .translated(physical: base, pageShift: shift, permissions: perms)
        case .fault(let reason):
            // Page-level conditions (walk and rights, codes 0x70 up) are not faults for a
            // translation request; entry-level ones are.
            if reason.rawValue >= 0x70 { return .noAccess }
            noteFault(reason, source: source, pasid: pasid, address: address, access: access, fpd: fpd)
            return .unsupportedRequest
        }
    }

    /// A translated request: `physical` came from the device's TLB for `address`. Allowed only
    /// when the context entry enables device TLBs (VT-d §4.2.4); then it goes to memory
    /// without a walk. Returns the fault when refused.
    public func translatedAccess(source: RequesterID, pasid: PASID?, address: UInt64, physical: UInt64,
                                 buffer: UnsafeMutableRawBufferPointer, write: Bool) -> DMAFault? {
        let c = countersStorage
        let now = scheduler.now
        let access: DMAAccess = write ? .write : .read
        var refused: VTdFaultReason?
        if translationEnabled {
            switch contextEntry(source) {
            case .failure(let f):
                refused = f.reason
                noteFault(f.reason, source: source, pasid: pasid, address: physical, access: access, fpd: f.fpd)
            case .success(let ctx):
                if ctx.flags & ContextCacheEntry.deviceTLB == 0 {
                    refused = .smDTEClear
                    noteFault(.smDTEClear, source: source, pasid: pasid, address: physical, access: access,
                              fpd: ctx.flags & ContextCacheEntry.fpd != 0)
                }
            }
        }
        if refused == nil && physical & ~(addressMask | 0xFFF) != 0 { refused = .smAddressBeyondMax }
        if let refused {
            c.pointee.translatedRequestsRefused &+= 1
            reportAccess(DMAAccessRecord(source: source, pasid: pasid, address: address, length: UInt64(buffer.count),
                                         access: access, physical: nil, fault: refused, time: now, translated: true))
            return DMAFault(address: address, reason: refused)
        }
        do {
            if write { try memory.deviceWrite(physical, from: UnsafeRawBufferPointer(buffer)) } else {
                try memory.deviceRead(physical, into: buffer)
            }
        } catch {
            return DMAFault(address: address, reason: nil)
        }
        c.pointee.translatedRequests &+= 1
        c.pointee.dmaBytes &+= UInt64(buffer.count)
        reportAccess(DMAAccessRecord(source: source, pasid: pasid, address: address, length: UInt64(buffer.count),
                                     access: access, physical: physical, fault: nil, time: now, translated: true))
        return nil
    }
}
