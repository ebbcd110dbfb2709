// SMMUv3 event queue (IHI 0070 §3.5.2 queue full and overflow, §3.12 fault models: record,
// stall, terminate; chapter 7.3 event records). A fault is recorded when its stage's record
// control says so (CD.R for stage 1, STE.S2R for stage 2; configuration errors always), as
// the architected record written at EVTQ_PROD. A full queue drops the event and toggles
// PROD.OVFLG (if the previous overflow was acknowledged through CONS.OVACKFLG); the unit never
// stops. An abort writing the queue makes GERROR.EVTQ_ABT_ERR active and drops the event.
import Platform
import Formats

extension SMMUv3Unit {
    /// Ends a faulting transaction: stalls it (stage control S, with the stall model), or
    /// records the event (stage control R) and terminates it.
    func terminate(_ fault: SMMUFault, sid: UInt32, ssid: UInt32?, address: UInt64, access: DMAAccess,
                   ste: STECacheEntry?, cd: CDCacheEntry?) -> SMMUv3TranslationResult {
        var record = true, stall = false
        if answeringTranslationRequest && !fault.configuration {
            // ATS Translation Requests: translation-related faults are neither recorded nor
            // stalled; the completion carries no rights (IHI 0070 §3.9.1.2).
            countersStorage.pointee.faultsNotRecorded &+= 1
            return .terminated(fault.event)
        }
        if !fault.configuration {
            if fault.s2 {
                record = ste?.has(STECacheEntry.s2R) ?? true
                stall = ste?.has(STECacheEntry.s2S) ?? false
            } else if let cd {
                record = cd.has(CDCacheEntry.record)
                stall = cd.has(CDCacheEntry.stall)
            }
        }
        let event = SMMUEventRecord(fault.event, sid: sid, ssid: ssid, privileged: access.contains(.privileged),
                                    instruction: access.contains(.execute), read: !access.contains(.write), s2: fault.s2,
                                    eventClass: fault.eventClass, ttRead: fault.ttRead, inputAddress: address,
                                    ipa: fault.ipa, fetchAddress: fault.fetchAddress)
        if stall && features.stallModel != .terminateOnly {
            return stallTransaction(event, sid: sid, ssid: ssid, address: address, access: access)
        }
        if record { writeEvent(event) } else { countersStorage.pointee.faultsNotRecorded &+= 1 }
        platform.trace.record(TraceEvent(time: scheduler.now, kind: record ? .faultRecorded : .faultDropped, track: trackID,
                                         a: UInt64(fault.event.rawValue), b: address, c: UInt64(sid)))
        return .terminated(fault.event)
    }

    /// Writes `event` at EVTQ_PROD. Returns whether it was written.
    @discardableResult
    func writeEvent(_ event: SMMUEventRecord) -> Bool {
        let c = countersStorage
        guard eventQueueEnabled else { c.pointee.eventsLost &+= 1; return false }
        if evtq.isFull {
            c.pointee.eventsLost &+= 1
            if (evtq.prod ^ evtq.cons) & SMMUv3Bits.queueOverflow == 0 {
                evtq.prod ^= SMMUv3Bits.queueOverflow
                c.pointee.eventQueueOverflows &+= 1
            }
            return false
        }
        let raw = event.encode()
        let address = evtq.entryAddress(evtq.prod)
        do {
            try memory.deviceStore(address, raw.w0)
            try memory.deviceStore(address + 8, raw.w1)
            try memory.deviceStore(address + 16, raw.w2)
            try memory.deviceStore(address + 24, raw.w3)
        } catch {
            c.pointee.eventsLost &+= 1
            raiseGlobalError(SMMUv3Bits.gerrorEVTQAbort)
            return false
        }
        evtq.prod = (evtq.prod & SMMUv3Bits.queueOverflow) | evtq.next(evtq.prod)
        c.pointee.eventsRecorded &+= 1
        signalEventQueue()
        return true
    }

    /// The event queue interrupt, coalesced until its handler runs.
    func signalEventQueue() {
        guard irqCtrlAck & SMMUv3Bits.irqEVTQ != 0, !evtqInterruptPending else { return }
        evtqInterruptPending = true
        let delivered = signal(evtqIRQCfg, msiAbortBit: SMMUv3Bits.gerrorMSIEVTQAbort) { [ref] in
            guard let unit = ref.target else { return }
            unit.evtqInterruptPending = false
            unit.onEventQueueInterrupt?()
        }
        if !delivered { evtqInterruptPending = false }
    }
}
