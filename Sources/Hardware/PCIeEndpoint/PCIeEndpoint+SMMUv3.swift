import Platform
import Formats

/// A TLP an SMMUv3 holds under a STAG (IHI 0070 §3.12.2): the endpoint waits for it.
struct StalledTLP {
    var address: UInt64
    var pasid: PASID?
    var length: Int
    var write: Bool
    /// Where a streamed TLP's payload is in the staging buffer (nil for a submitted transfer).
    var stagingOffset: Int?
    /// The submitted transfer it belongs to, continued once it completes.
    var transfer: PCIeEndpoint.TransferState?
    /// The access (`atsAccess` without ATS) it belongs to, continued once it completes.
    var operation: ATSOperation? = nil
}

extension PCIeEndpoint {
    // MARK: SMMUv3EndpointPort

    public var streamID: UInt32 { UInt32(requesterID.rawValue) }
    public var smmuLink: PCIeLink? { link }

    /// CMD_ATC_INV reached the endpoint (the unit sent it down the link): 4 KiB × 2^`size`
    /// bytes at `address` (aligned to the span; size 52 covers everything), for `ssid` (nil:
    /// the entries without PASID). `global` also covers the global entries of every PASID
    /// (PCIe ATS Invalidate Request, G bit). The completion goes back up through the unit.
    public func receiveATCInvalidation(ssid: UInt32?, global: Bool, address: UInt64, size: UInt8,
                                       completion: @escaping () -> Void) {
        counters.deviceTLBInvalidations &+= 1
        atsCounters.deviceTLBInvalidations &+= 1
        let lo: UInt64, hi: UInt64
        if size >= 52 { lo = 0; hi = .max } else {
            let span = UInt64(1) << UInt64(12 + size)
            lo = address & ~(span - 1)
            hi = lo | (span - 1)
        }
        let pasid = ssid.map { PASID(truncating: $0) }
        invalidateDeviceTLB(pasid: pasid, lo: lo, hi: hi, global: global)
        platform.scheduler.schedule(after: upstream.deviceTLBInvalidationNs, kind: .hardware, completion)
    }

    /// CMD_PRI_RESP reached the endpoint: a PRG response for the group.
    public func receivePRIResponse(ssid: UInt32?, groupIndex: UInt16, response: PageResponseCode) {
        pageResponseArrived(PageGroupResponse(requester: requesterID, pasid: ssid.map { PASID(truncating: $0) },
                                              responseCode: response.rawValue, groupIndex: groupIndex))
    }

    func overflowFault(_ address: UInt64) -> DMAFault { upstream.overflowFault(address) }

    // MARK: Stalls

    func holdStalled(_ stag: UInt16, _ tlp: StalledTLP) {
        counters.stalls &+= 1
        stalledTLPs[stag] = tlp
    }

    /// TLPs currently held by the unit's stall model.
    public var stalledTransactions: Int { stalledTLPs.count }

    /// The unit resumed or terminated a held TLP: it completes (moving its payload), fails,
    /// or, stalled again, waits under its new STAG.
    public func stallResolved(stag: UInt16, result: SMMUv3TranslationResult, translatedAgain: Bool) {
        guard case .smmuv3(let unit) = upstream, let t = stalledTLPs.removeValue(forKey: stag) else { return }
        if case .stalled(let again) = result {
            // Stalled again on the retry: a new fault, seen by the checker now.
            _ = unit.reportStall(streamID: streamID, substreamID: t.pasid?.rawValue, address: t.address, length: t.length,
                                 access: t.write ? .write : .read, stag: again)
            stalledTLPs[again] = t
            return
        }
        let sid = streamID, ssid = t.pasid?.rawValue
        var fault: DMAFault?
        if let offset = t.stagingOffset {
            let n = max(0, min(t.length, staging.count - offset))
            fault = unit.completeStalled(streamID: sid, substreamID: ssid, address: t.address, result: result, translatedAgain: translatedAgain,
                                         buffer: UnsafeMutableRawBufferPointer(rebasing: staging[offset..<offset + n]), write: t.write)
            if fault == nil {
                if t.write { counters.bytesWritten &+= UInt64(n) } else { counters.bytesRead &+= UInt64(n) }
            }
            if let op = t.operation {
                if let fault {
                    counters.faulted &+= 1
                    finish(op, .fault(fault))
                } else {
                    counters.stallsCompleted &+= 1
                    op.done += n
                    advance(op)
                }
                return
            }
        } else if let s = t.transfer {
            let r = s.request
            let start = s.done, end = s.done + t.length
            if t.write {
                guard end <= r.data.count else { return }
                var payload = Array(r.data[start..<end])
                fault = payload.withUnsafeMutableBytes {
                    unit.completeStalled(streamID: sid, substreamID: ssid, address: t.address, result: result,
                                         translatedAgain: translatedAgain, buffer: $0, write: true)
                }
            } else {
                guard end <= s.data.count else { return }
                fault = s.data.withUnsafeMutableBytes { all in
                    unit.completeStalled(streamID: sid, substreamID: ssid, address: t.address, result: result,
                                         translatedAgain: translatedAgain,
                                         buffer: UnsafeMutableRawBufferPointer(rebasing: all[start..<end]), write: false)
                }
            }
            if fault == nil {
                s.done = end
                if t.write { counters.bytesWritten &+= UInt64(t.length) } else { counters.bytesRead &+= UInt64(t.length) }
                let total = r.direction == .fromDevice ? r.data.count : max(0, r.length)
                if s.done < total {
                    platform.scheduler.schedule(after: chunkIntervalNs, kind: .hardware) { [ref] in ref.target?.step(s) }
                } else {
                    finishTransfer(s, nil)
                }
            } else {
                finishTransfer(s, fault)
            }
            if fault == nil { counters.stallsCompleted &+= 1 }
            return
        }
        if fault == nil { counters.stallsCompleted &+= 1 } else {
            counters.faulted &+= 1
        }
    }
}
