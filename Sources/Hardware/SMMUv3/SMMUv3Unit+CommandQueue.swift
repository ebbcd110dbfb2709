// SMMUv3 command queue processing in virtual time, or inline with real threads (IHI 0070 §3.5
// queues, chapter 4 commands, §4.7.3 CMD_SYNC, §7.1 command queue errors). One command is
// consumed per step: fetched and decoded at CONS, applied after its latency, then CONS moves on.
// An illegal command stops the queue with CMDQ_CONS.ERR = CERROR_ILL and GERROR.CMDQ_ERR active;
// an abort on fetch gives CERROR_ABT. The queue resumes at CONS when software acknowledges
// through GERRORN. CMD_SYNC completes only once every earlier command has taken effect, including
// ATC invalidations the endpoints have not yet answered; if they do not answer within
// `atcInvalidationTimeoutNs`, CERROR_ATC_INV_SYNC with CONS left on the CMD_SYNC.
import Platform
import Formats

extension SMMUv3Unit {
    /// Starts consuming commands if the queue is enabled, error-free, idle and not empty.
    func kickCommandQueue() {
        guard commandQueueEnabled, !globalErrorActive(SMMUv3Bits.gerrorCMDQ), !commandStepScheduled, !drainingInline,
              parkedSync == nil, !cmdq.isEmpty else { return }
        if platform.realThreads {
            drainCommandQueueInline()
            return
        }
        commandStepScheduled = true
        scheduler.schedule(after: 0, kind: .hardware) { [ref] in ref.target?.fetchNextCommand() }
    }

    /// Real-thread runs (benchmarks): the unit consumes commands in the thread that kicked it
    /// (which holds the platform's hardware lock), as `VTdUnit` does its invalidation queue.
    /// Their latency counts from the start of that work: the next wait spins until then
    /// (`Scheduler.realTimeDueNs`), so the unit's own work is part of the latency, not added to
    /// it. A CMD_SYNC waiting for ATC invalidations stops the loop; it resumes from the
    /// completion event, which runs inside the driver's wait.
    func drainCommandQueueInline() {
        drainingInline = true
        defer { drainingInline = false }
        let l = configuration.latency
        let timed = l.cfgiNs | l.tlbiNs | l.syncNs | l.otherCommandNs != 0
        let start = timed ? HostClock.now() : 0
        var added: UInt64 = 0
        while commandQueueEnabled, !globalErrorActive(SMMUv3Bits.gerrorCMDQ), parkedSync == nil, !cmdq.isEmpty {
            guard let (command, opcode) = fetchCommand() else { break }
            added &+= l.commandLatency(opcode)
            apply(command, opcode: opcode)
        }
        if timed && added > 0 {
            Unmanaged.passUnretained(scheduler)._withUnsafeGuaranteedRef { s in
                s.realTimeDueNs = max(s.realTimeDueNs, start &+ added)
            }
        }
    }

    /// Fetches and decodes the command at CONS, then applies it after its latency.
    func fetchNextCommand() {
        commandStepScheduled = false
        guard commandQueueEnabled, !globalErrorActive(SMMUv3Bits.gerrorCMDQ), parkedSync == nil, !cmdq.isEmpty,
              let (command, opcode) = fetchCommand() else { return }
        commandStepScheduled = true
        scheduler.schedule(after: configuration.latency.commandLatency(opcode), kind: .hardware) { [ref] in
            ref.target?.apply(command, opcode: opcode)
        }
    }

    /// The command at CONS, decoded; nil after stopping the queue with CERROR_ABT (fetch
    /// abort) or CERROR_ILL (IHI 0070 §7.1).
    func fetchCommand() -> (SMMUCommand, UInt8)? {
        let address = cmdq.entryAddress(cmdq.cons)
        let raw: RawCommand
        do {
            raw = RawCommand(try memory.deviceLoad(address, as: UInt64.self), try memory.deviceLoad(address + 8, as: UInt64.self))
        } catch {
            commandError(.abt)
            return nil
        }
        switch SMMUCommand.decode(raw, features: features) {
        case .success(let c): return (c, raw.opcode)
        case .failure: commandError(.ill); return nil
        }
    }

    /// Stops the queue: CONS stays on the failed command, CONS.ERR says why, GERROR.CMDQ_ERR
    /// becomes active and the global error interrupt is signalled (IHI 0070 §7.1).
    func commandError(_ error: CERROR) {
        commandStepScheduled = false
        countersStorage.pointee.commandErrors &+= 1
        cmdqError = error
        platform.trace.record(TraceEvent(time: scheduler.now, kind: .invalidationQueueError, track: trackID,
                                         a: UInt64(error.rawValue), b: UInt64(cmdq.cons)))
        raiseGlobalError(SMMUv3Bits.gerrorCMDQ)
    }

    /// The command at CONS is done: move on.
    func advanceCommandQueue() {
        cmdq.cons = cmdq.next(cmdq.cons)
        commandStepScheduled = false
        kickCommandQueue()
    }

    /// Applies a decoded command, then advances (a CMD_SYNC waiting for ATC invalidations
    /// advances when they complete).
    func apply(_ command: SMMUCommand, opcode: UInt8) {
        guard commandQueueEnabled else { commandStepScheduled = false; return }
        let c = countersStorage
        c.pointee.commands &+= 1
        if Int(opcode) < c.pointee.commandsByOpcode.count { c.pointee.commandsByOpcode[Int(opcode)] &+= 1 }
        platform.trace.record(TraceEvent(time: scheduler.now, kind: .commandCompleted, track: trackID,
                                         a: UInt64(opcode), b: UInt64(cmdq.cons)))
        if dropsTLBInvalidations, (0x10...0x30).contains(opcode) {
            // Broken hardware for oracle-strength runs: the TLBI is consumed and does nothing.
            advanceCommandQueue()
            return
        }
        switch command {
        case .prefetchConfig, .prefetchAddr:
            break                                   // A hint; the model prefetches nothing.
        case .cfgiSTE(let sid, _):
            invalidateConfiguration(sids: sid...sid)
        case .cfgiSTERange(let sid, let range):
            if range >= 31 {
                invalidateAllConfiguration()
            } else {
                let span = UInt64(1) << (UInt64(range) + 1)
                let first = UInt64(sid) & ~(span - 1)
                invalidateConfiguration(sids: UInt32(first)...UInt32(min(UInt64(UInt32.max), first + span - 1)))
            }
        case .cfgiCD(let sid, let ssid, _):
            invalidateCD(sid: sid, ssid: ssid)
        case .cfgiCDAll(let sid):
            invalidateCDs(sid: sid)
        case .tlbiNHAll(let vmid):
            invalidateTLB { w, v, _ in (w == TLBWorld.nsEL1 || w == TLBWorld.nested) && v == vmid }
        case .tlbiNHASID(let vmid, let asid):
            invalidateTLB { w, v, a in (w == TLBWorld.nsEL1 || w == TLBWorld.nested) && v == vmid && a == asid }
        case .tlbiNHVA(let vmid, let asid, let r):
            invalidateTLBByVA(vmid: vmid, asid: asid, range: r)
        case .tlbiNHVAA(let vmid, let r):
            invalidateTLB(range: r) { w, v, _ in (w == TLBWorld.nsEL1 || w == TLBWorld.nested) && v == vmid }
        case .tlbiEL2All:
            invalidateTLB { w, _, _ in w == TLBWorld.el2 }
        case .tlbiEL2ASID(let asid):
            invalidateTLB { w, _, a in w == TLBWorld.el2 && a == asid }
        case .tlbiEL2VA(let asid, let r):
            invalidateTLB(range: r) { w, _, a in w == TLBWorld.el2 && a == asid }
        case .tlbiEL2VAA(let r):
            invalidateTLB(range: r) { w, _, _ in w == TLBWorld.el2 }
        case .tlbiS12VMAll(let vmid):
            invalidateTLB { w, v, _ in w != TLBWorld.el2 && v == vmid }
        case .tlbiS2IPA(let vmid, let r):
            // Stage 2 entries by IPA. Combined (nested) entries need TLBI_NH_* or
            // TLBI_S12_VMALL as well (IHI 0070 §4.4.4): they stay.
            invalidateTLB(range: r) { w, v, _ in w == TLBWorld.s2 && v == vmid }
        case .tlbiNSNHAll:
            invalidateTLB { w, _, _ in w != TLBWorld.el2 }
        case .atcInv(let sid, let ssid, let global, let address, let size):
            sendATCInvalidation(sid: sid, ssid: ssid, global: global, address: address, size: size)
        case .priResp(let sid, let ssid, let group, let response):
            sendPRIResponse(sid: sid, ssid: ssid, groupIndex: group, response: response.pcieCode)
        case .resume(let sid, let stag, let action):
            resume(sid: sid, stag: stag, action: action)
        case .stallTerm(let sid):
            terminateStalls(sid: sid)
        case .sync(let s):
            if pendingATCInvalidations > 0 {
                parkSync(s)
                return
            }
            completeSync(s)
        }
        advanceCommandQueue()
    }

    // MARK: CMD_SYNC

    /// Signals a CMD_SYNC's completion (IHI 0070 §4.7.3): CS = SIG_IRQ writes MSIData to
    /// MSIAddress when there is one (Linux polls that word), CS = SIG_SEV sends a wake-up
    /// event. The consumption of the CMD_SYNC itself (CONS moving past it) is the other
    /// completion a driver may poll.
    func completeSync(_ s: CommandSync) {
        let c = countersStorage
        c.pointee.syncsCompleted &+= 1
        switch s.signal {
        case .none:
            break
        case .irq:
            let address = s.msiAddress & CommandSync.msiAddressMask
            if features.msi && address != 0 {
                do {
                    try memory.deviceStore(address, s.msiData)
                    c.pointee.msiWrites &+= 1
                } catch {
                    raiseGlobalError(SMMUv3Bits.gerrorMSICMDQAbort)
                }
            }
        case .sev:
            if features.sev {
                c.pointee.sevEvents &+= 1
                if let h = onSEV { scheduler.schedule(after: 0, kind: .software, h) }
            }
        }
    }

    /// Holds a CMD_SYNC until the ATC invalidations before it complete.
    func parkSync(_ s: CommandSync) {
        let deadline = scheduler.now &+ configuration.latency.atcInvalidationTimeoutNs
        let id = scheduler.schedule(at: deadline, kind: .hardware) { [ref] in ref.target?.syncTimedOut() }
        parkedSync = ParkedSync(sync: s, deadline: deadline, timeout: id)
    }

    /// An ATC invalidation completed: a parked CMD_SYNC may now complete.
    func atcInvalidationCompleted() {
        let c = countersStorage
        c.pointee.atcInvalidationsCompleted &+= 1
        if pendingATCInvalidations > 0 { pendingATCInvalidations -= 1 }
        guard pendingATCInvalidations == 0, let p = parkedSync else { return }
        scheduler.cancel(p.timeout)
        parkedSync = nil
        completeSync(p.sync)
        advanceCommandQueue()
    }

    /// The endpoints did not answer in time: CERROR_ATC_INV_SYNC, CONS on the CMD_SYNC. The
    /// invalidations stay outstanding; a retried CMD_SYNC waits for them again.
    func syncTimedOut() {
        guard parkedSync != nil else { return }
        parkedSync = nil
        countersStorage.pointee.syncTimeouts &+= 1
        commandError(.atcInvSync)
    }

    /// CMD_ATC_INV: forwarded to the endpoint behind `sid`, outstanding until it completes.
    /// A StreamID with no endpoint has no ATC: nothing to wait for.
    func sendATCInvalidation(sid: UInt32, ssid: UInt32?, global: Bool, address: UInt64, size: UInt8) {
        guard let port = endpoints[sid] else { return }
        countersStorage.pointee.atcInvalidationsSent &+= 1
        pendingATCInvalidations += 1
        toEndpoint(port) { [ref, weak port] in
            guard let port else { return }
            port.receiveATCInvalidation(ssid: ssid, global: global, address: address, size: size) {
                guard let unit = ref.target else { return }
                unit.fromEndpoint(port) { [ref] in ref.target?.atcInvalidationCompleted() }
            }
        }
    }
}
