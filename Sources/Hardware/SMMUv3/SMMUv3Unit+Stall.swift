// SMMUv3 stall model (IHI 0070 §3.12.2 "Stall model", §4.6.2 CMD_RESUME, §4.6.3
// CMD_STALL_TERM). A fault on a stage whose stall control is set (CD.S, allowed only with
// STE.S1STALLD clear; STE.S2S) holds the transaction and records its event with Stall = 1 and
// a STAG. CMD_RESUME with that StreamID and STAG retries it (translated again with the
// configuration and TLB as they are then) or terminates it; CMD_STALL_TERM terminates every
// transaction held for the StreamID. A stall whose event cannot be recorded (queue full or
// off), or beyond IDR5.STALL_MAX held transactions, is terminated instead.
import Platform
import Formats

/// A transaction held by the stall model.
struct StalledTransaction {
    var sid: UInt32
    var ssid: UInt32?
    var stag: UInt16
    var address: UInt64
    var access: DMAAccess
    var event: SMMUEventID?
}

extension SMMUv3Unit {
    /// Transactions currently held, as (StreamID, STAG).
    public var stalledTransactions: [(sid: UInt32, stag: UInt16)] { stalled.map { ($0.sid, $0.stag) } }

    func stallTransaction(_ event: SMMUEventRecord, sid: UInt32, ssid: UInt32?, address: UInt64,
                          access: DMAAccess) -> SMMUv3TranslationResult {
        guard stalled.count < configuration.stallMax else {
            writeEvent(event)
            return .terminated(event.kind)
        }
        var stag = nextSTAG
        while stalled.contains(where: { $0.sid == sid && $0.stag == stag }) { stag &+= 1 }
        nextSTAG = stag &+ 1
        var e = event
        e.stall = true
        e.stag = stag
        guard writeEvent(e) else { return .terminated(event.kind) }
        countersStorage.pointee.stalls &+= 1
        stalled.append(StalledTransaction(sid: sid, ssid: ssid, stag: stag, address: address, access: access, event: event.kind))
        return .stalled(stag: stag)
    }

    /// CMD_RESUME. A StreamID/STAG that names no held transaction has no effect.
    func resume(sid: UInt32, stag: UInt16, action: ResumeAction) {
        guard let i = stalled.firstIndex(where: { $0.sid == sid && $0.stag == stag }) else { return }
        let t = stalled.remove(at: i)
        switch action {
        case .retry:
            countersStorage.pointee.stallsResumed &+= 1
            let r = translate(streamID: t.sid, substreamID: t.ssid, address: t.address, access: t.access)
            resolved(t, r, translatedAgain: true)
        case .terminate:
            countersStorage.pointee.stallsTerminated &+= 1
            resolved(t, .terminated(t.event), translatedAgain: false)
        }
    }

    /// Tells the device side how a held transaction ended (or that it stalled again).
    private func resolved(_ t: StalledTransaction, _ r: SMMUv3TranslationResult, translatedAgain: Bool) {
        onStallResolved?(t.sid, t.stag, r)
        endpoints[t.sid]?.stallResolved(stag: t.stag, result: r, translatedAgain: translatedAgain)
    }

    /// CMD_STALL_TERM: every transaction held for `sid` is terminated.
    func terminateStalls(sid: UInt32) {
        let held = stalled.filter { $0.sid == sid }
        stalled.removeAll { $0.sid == sid }
        for t in held {
            countersStorage.pointee.stallsTerminated &+= 1
            resolved(t, .terminated(t.event), translatedAgain: false)
        }
    }

    /// SMMUEN cleared: nothing stays held.
    func terminateAllStalls() {
        let held = stalled
        stalled = []
        for t in held {
            countersStorage.pointee.stallsTerminated &+= 1
            resolved(t, .terminated(t.event), translatedAgain: false)
        }
    }
}
