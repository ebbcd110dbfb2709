// SMMUv3 PRI queue (IHI 0070 chapter 8 "Page request queue", §3.5.2 overflow; PCIe PRI). A
// page request from an endpoint is written at PRIQ_PROD without an STE check (software
// validates the StreamID, as Linux's `arm_smmu_handle_ppr` does). When the queue is full or
// disabled the request is lost; a full queue toggles PROD.OVFLG (if the last overflow was
// acknowledged). A lost request with Last = 1 would leave its group unanswered, so the unit
// answers it itself (IHI 0070 §8.1: the SMMU generates the PRG response for a discarded
// last request): this model answers Success, so the device retries its access (and, if the
// page is still missing, asks again) instead of disabling its PRI. Stop markers need no
// answer. CMD_PRI_RESP sends a PRG response to the endpoint.
import Platform
import Formats

extension SMMUv3Unit {
    /// A PCIe Page Request (or Stop PASID marker) from an endpoint reached the unit.
    public func pageRequest(_ entry: PRIQEntry) {
        let c = countersStorage
        c.pointee.pageRequests &+= 1
        platform.trace.record(TraceEvent(time: scheduler.now, kind: .pageRequest, track: trackID, a: entry.address,
                                         b: UInt64(entry.groupIndex) | (entry.last ? 1 << 9 : 0) | (entry.isStopMarker ? 1 << 10 : 0),
                                         c: entry.ssid.map { UInt64($0) } ?? .max))
        guard features.pri else { return }
        if !priQueueEnabled || priq.isFull {
            if priQueueEnabled && (priq.prod ^ priq.cons) & SMMUv3Bits.queueOverflow == 0 {
                priq.prod ^= SMMUv3Bits.queueOverflow
                c.pointee.priQueueOverflows &+= 1
            }
            lose(entry)
            return
        }
        let raw = entry.encode()
        let address = priq.entryAddress(priq.prod)
        do {
            try memory.deviceStore(address, raw.w0)
            try memory.deviceStore(address + 8, raw.w1)
        } catch {
            raiseGlobalError(SMMUv3Bits.gerrorPRIQAbort)
            lose(entry)
            return
        }
        priq.prod = (priq.prod & SMMUv3Bits.queueOverflow) | priq.next(priq.prod)
        c.pointee.pageRequestsQueued &+= 1
        signalPRIQueue()
    }

    func lose(_ entry: PRIQEntry) {
        let c = countersStorage
        c.pointee.pageRequestsLost &+= 1
        guard entry.last, !entry.isStopMarker else { return }
        c.pointee.priAutoResponses &+= 1
        sendPRIResponse(sid: entry.sid, ssid: entry.ssid, groupIndex: entry.groupIndex, response: .success)
    }

    /// A PRG response to the endpoint behind `sid` (none connected: nowhere to go).
    func sendPRIResponse(sid: UInt32, ssid: UInt32?, groupIndex: UInt16, response: PageResponseCode) {
        guard let port = endpoints[sid] else { return }
        countersStorage.pointee.priResponsesSent &+= 1
        toEndpoint(port, pageResponse: true) { [weak port] in
            port?.receivePRIResponse(ssid: ssid, groupIndex: groupIndex, response: response)
        }
    }

    /// The PRI queue interrupt, coalesced until its handler runs.
    func signalPRIQueue() {
        guard irqCtrlAck & SMMUv3Bits.irqPRIQ != 0, !priqInterruptPending else { return }
        priqInterruptPending = true
        let delivered = signal(priqIRQCfg, msiAbortBit: SMMUv3Bits.gerrorMSIPRIQAbort) { [ref] in
            guard let unit = ref.target else { return }
            unit.priqInterruptPending = false
            unit.onPRIQueueInterrupt?()
        }
        if !delivered { priqInterruptPending = false }
    }
}
