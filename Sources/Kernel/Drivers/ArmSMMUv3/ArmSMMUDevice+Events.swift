import Platform
import Formats
import Hardware

extension ArmSMMUDevice {
    /// The event queue interrupt thread (Linux `arm_smmu_evtq_thread`): reads records from
    /// CONS until CONS = PROD, reports each as the core's fault for the master that owns its
    /// StreamID (Linux `arm_smmu_find_master`; records of unknown StreamIDs are counted), then
    /// acknowledges an overflow by copying PROD.OVFLG into CONS.OVACKFLG.
    func handleEventQueue() {
        let mask: UInt32 = (1 << (evtqLog2 + 1)) - 1
        let indexMask: UInt32 = (1 << evtqLog2) - 1
        while true {
            let prod = unit.read32(SMMUv3Register.evtqProd)
            var cons = unit.read32(SMMUv3Register.evtqCons)
            if (prod ^ cons) & mask == 0 {
                if (prod ^ cons) & SMMUv3Bits.queueOverflow != 0 {
                    eventOverflows += 1
                    unit.write32(SMMUv3Register.evtqCons, (cons & mask) | (prod & SMMUv3Bits.queueOverflow))
                }
                return
            }
            while (cons ^ prod) & mask != 0 {
                let slot = evtqFrame + UInt64(cons & indexMask) * RawEvent.size
                let raw = RawEvent((try? load(slot)) ?? 0, (try? load(slot + 8)) ?? 0, (try? load(slot + 16)) ?? 0, (try? load(slot + 24)) ?? 0)
                report(SMMUEventRecord.decode(raw), raw: raw)
                cons = (cons & SMMUv3Bits.queueOverflow) | ((cons + 1) & mask)
            }
            // Consumed up to PROD; OVACKFLG takes PROD.OVFLG (Linux `queue_sync_cons_out`
            // after `Q_OVF(q->prod)`).
            if (prod ^ cons) & SMMUv3Bits.queueOverflow != 0 { eventOverflows += 1 }
            unit.write32(SMMUv3Register.evtqCons, (cons & mask) | (prod & SMMUv3Bits.queueOverflow))
        }
    }

    private func report(_ event: SMMUEventRecord, raw: RawEvent) {
        eventsHandled += 1
        guard let master = masters[event.sid], let driver, let core = driver.core else {
            // A stall of an unknown stream stays held, as in Linux (`arm_smmu_handle_event`
            // returns -EINVAL); only STEs this driver wrote can stall.
            unknownStreamEvents += 1
            return
        }
        if event.stall, let fault = Self.stallFault(event) {
            guard master.stallEnabled else {
                // A stall the driver never asked for: the master is not `stall_enabled`, so
                // its STE or CD was not written to stall (IHI 0070 §5.4 CD.S, STE.S1STALLD);
                // garbage there did it. Reported to the core, its answer would go out as the
                // master's CMD_PRI_RESP naming the STAG as a PRG index (a response the device
                // never asked for), or nowhere (Linux `arm_smmu_page_response` WARNs and
                // leaves it held). Terminate it with CMD_RESUME (Action = Abort, §4.6.2) as a
                // master without a fault handler would get.
                strayStallsTerminated += 1
                sendResume(sid: event.sid, stag: fault.groupIndex, retry: false)
                return
            }
            // Linux `arm_smmu_handle_event`: a stalled translation, address size, access or
            // permission fault is a page request of one page (LAST, PRG index = STAG) for
            // the IOPF pipeline; `arm_smmu_page_response` answers it with CMD_RESUME. A master
            // not on a fault queue gets Invalid Request from the core, so abort.
            stallFaultsReported += 1
            core.reportPageFault(master.device, fault)
            return
        }
        if !event.stall, let vm = master.vmaster, !event.s2, Self.forwardable(event) {
            // Linux `arm_smmu_handle_event` → `arm_vmaster_report_event`: a stage 1 event
            // of a nested master goes to its vIOMMU with the vSID in place of the SID. If
            // no vEVENTQ takes it, Linux dumps it (here: the core's fault report below).
            if (try? vm.vsmmu.reportGuestEvent(raw, vsid: vm.vsid)) != nil {
                guestEventsReported += 1
                return
            }
        }
        let record = FaultRecord(source: master.device.requesterID, reason: event.id, address: event.inputAddress,
                                 pasid: event.ssid.map { PASID(truncating: $0) }, isRead: event.read,
                                 execute: event.instruction, privileged: event.privileged)
        core.reportFault(driver: driver, unit: index, record: record, event: event)
    }

    /// The events `arm_smmu_handle_event` handles at all (6.17): the configuration errors
    /// a guest's STE or CD can cause and the four translation-related faults.
    static func forwardable(_ event: SMMUEventRecord) -> Bool {
        switch event.kind {
        case .cBadSTE?, .fStreamDisabled?, .cBadSubstreamID?, .cBadCD?, .fTranslation?, .fAddrSize?, .fAccess?, .fPermission?:
            return true
        default: return false
        }
    }

    /// The core's page fault for a stall event (Linux `arm_smmu_handle_event`): only the four
    /// translation-related fault kinds; nil for anything else (reported as an ordinary fault).
    static func stallFault(_ event: SMMUEventRecord) -> PageFault? {
        switch event.kind {
        case .fTranslation?, .fAddrSize?, .fAccess?, .fPermission?: break
        default: return nil
        }
        var perms: FaultPermissions = event.read ? .read : .write
        if event.instruction { perms.insert(.exec) }
        if event.privileged { perms.insert(.priv) }
        var flags: PageFault.Flags = .lastPage
        if event.ssid != nil { flags.insert(.pasidValid) }
        return PageFault(flags: flags, pasid: PASID(truncating: event.ssid ?? 0), groupIndex: event.stag,
                         permissions: perms, address: event.inputAddress, privateData: UInt64(event.stag))
    }

    /// The global error interrupt (Linux `arm_smmu_gerror_handler`): a command queue error
    /// is skipped (`arm_smmu_cmdq_skip_err`); every active error is acknowledged in GERRORN.
    func handleGlobalError() {
        let gerror = unit.read32(SMMUv3Register.gerror), gerrorn = unit.read32(SMMUv3Register.gerrorn)
        let active = (gerror ^ gerrorn) & SMMUv3Bits.gerrorMask
        guard active != 0 else { return }
        globalErrors += 1
        if active & SMMUv3Bits.gerrorCMDQ != 0 { cmdq.skipError() }
        let now = unit.read32(SMMUv3Register.gerrorn)
        unit.write32(SMMUv3Register.gerrorn, now ^ ((gerror ^ now) & SMMUv3Bits.gerrorMask))
    }
}
