import Platform
import Formats
import Hardware

/// Page requests from the PRI queue (IHI 0070 chapter 8; Linux `arm_smmu_priq_thread`,
/// `arm_smmu_handle_ppr`).
///
/// Mainline Linux answers every PRI request PRI_RESP_DENY; this follows the posted SMMUv3
/// PRI series instead (J-P. Brucker, "iommu/arm-smmu-v3: Add support for PRI"): each request
/// becomes the core's `PageFault` on the device's fault queue, a Stop PASID marker is dropped,
/// and a request the driver cannot hand to the core (unknown StreamID, a master without PRI
/// or not on a fault queue) is answered Response Failure (PRI_RESP_DENY) when it ends its
/// group, so the function stops asking.
extension ArmSMMUDevice {
    /// The PRI queue interrupt thread (Linux `arm_smmu_priq_thread`): entries from CONS to
    /// PROD, CONS published after each (room for the device at once); when PROD.OVFLG differs
    /// from CONS.OVACKFLG requests were lost, so partial groups are dropped (their last
    /// request may be among the lost; the unit answered it itself) and the overflow is
    /// acknowledged by copying OVFLG into OVACKFLG once the queue is empty.
    func handlePRIQueue() {
        guard priqFrame != 0 else { return }
        let mask: UInt32 = (1 << (priqLog2 + 1)) - 1
        let indexMask: UInt32 = (1 << priqLog2) - 1
        let overflow = SMMUv3Bits.queueOverflow
        while true {
            let prod = unit.read32(SMMUv3Register.priqProd)
            var cons = unit.read32(SMMUv3Register.priqCons)
            while (cons ^ prod) & mask != 0 {
                let slot = priqFrame + UInt64(cons & indexMask) * PRIQEntry.size
                let raw = RawCommand((try? load(slot)) ?? 0, (try? load(slot + 8)) ?? 0)
                cons = (cons & overflow) | ((cons + 1) & mask)
                unit.write32(SMMUv3Register.priqCons, cons)
                handlePageRequest(PRIQEntry.decode(raw))
            }
            let now = unit.read32(SMMUv3Register.priqProd)
            guard (now ^ cons) & mask == 0 else { continue }
            if (now ^ cons) & overflow != 0 {
                priQueueOverflows += 1
                if let q = iopfQueue { driver?.core?.discardPartialFaults(q) }
                unit.write32(SMMUv3Register.priqCons, (cons & mask) | (now & overflow))
            }
            return
        }
    }

    /// One PRI queue entry (Linux `arm_smmu_handle_ppr` of the PRI series).
    func handlePageRequest(_ entry: PRIQEntry) {
        pageRequestsHandled += 1
        if entry.isStopMarker {
            stopMarkersDropped += 1
            return
        }
        guard let master = masters[entry.sid], master.priEnabled, master.device.reportsPageFaults, let core = driver?.core else {
            badPageRequests += 1
            if entry.last { sendPRIResponse(sid: entry.sid, ssid: entry.ssid, groupIndex: entry.groupIndex, .responseFailure) }
            return
        }
        var flags: PageFault.Flags = []
        if entry.last { flags.insert(.lastPage) }
        if entry.ssid != nil { flags.formUnion([.pasidValid, .needsPASID]) }
        var perms: FaultPermissions = []
        if entry.read { perms.insert(.read) }
        if entry.write { perms.insert(.write) }
        if entry.execute { perms.insert(.exec) }
        if entry.privileged { perms.insert(.priv) }
        core.reportPageFault(master.device, PageFault(flags: flags, pasid: PASID(truncating: entry.ssid ?? 0),
                                                      groupIndex: entry.groupIndex, permissions: perms, address: entry.address))
    }

    /// CMD_PRI_RESP for a page request group. Like every response it is published without a
    /// CMD_SYNC (Linux `arm_smmu_page_response`: "PRI_RESP is fire and forget").
    func sendPRIResponse(sid: UInt32, ssid: UInt32?, groupIndex: UInt16, _ response: PRIResponse) {
        issueWithoutSync(.priResp(sid: sid, ssid: ssid, groupIndex: groupIndex & 0x1FF, response: response))
    }

    /// CMD_RESUME for a stalled transaction (IHI 0070 §4.6.2): retry or abort.
    /// The page requests of (`master`, `ssid`) drained before the SSID's next use, the SMMUv3
    /// counterpart of VT-d's `intel_iommu_drain_pasid_prq` (the PRI series' PRIQ flush on a
    /// PASID stop; mainline has no PRI). The device has stopped the PASID and the CD is
    /// invalid. (1) ATC_INV for the SSID + CMD_SYNC: the invalidation's completion travels up
    /// behind every page request the function sent before it (PCIe posted ordering), and the
    /// request travels down behind every PRG response sent before it, so once the sync
    /// completes nothing of the old use is in the fabric: requests are in the PRI queue (or
    /// were lost to an overflow), responses have arrived. (2) The PRI queue is handled: every
    /// request reaches the core. (3) The core's fault work is flushed. (4) The SSID's partial
    /// groups, which will never complete, are dropped. Again while the queue overflowed.
    func drainPageRequests(_ master: ArmSMMUMaster, ssid: UInt32) {
        guard master.priEnabled, priqFrame != 0, let core = driver?.core else { return }
        pageRequestDrains += 1
        let pasid: PASID? = ssid == 0 ? nil : PASID(truncating: ssid)
        defer { core.discardPartialFaults(master.device, pasid: pasid) }
        for _ in 0..<8 {
            fenceFabric(master, ssid: ssid)
            let overflowBefore = priQueueOverflows
            handlePRIQueue()
            core.flushFaultWork(master.device)
            guard priQueueOverflows != overflowBefore else { return }
        }
    }

    /// ATC_INV of the SSID (the ATC must lose its entries anyway) or, without ATS, a bare
    /// CMD_SYNC, waited for.
    private func fenceFabric(_ master: ArmSMMUMaster, ssid: UInt32) {
        if master.atsEnabled {
            do { try atcInvalidateMaster(master, ssid: ssid) } catch { pageRequestDrainErrors += 1 }
        } else {
            do { try platform.withHardware { () throws(IOMMUError) in try cmdq.sync() } } catch { pageRequestDrainErrors += 1 }
        }
    }

    /// CMD_STALL_TERM for `sid`, then CMD_SYNC (so nothing is held once it returns).
    func terminateStalls(sid: UInt32) {
        do {
            try platform.withHardware { () throws(IOMMUError) in try cmdq.issueAndSync(.stallTerm(sid: sid)) }
            stallTerminations += 1
        } catch { responsesLost += 1 }
    }

    func sendResume(sid: UInt32, stag: UInt16, retry: Bool) {
        issueWithoutSync(.resume(sid: sid, stag: stag, action: retry ? .retry : .terminate(abort: true)))
    }

    /// Linux `arm_smmu_cmdq_issue_cmd` without sync: the command is written and PROD
    /// published; nothing waits for it. A failure to write is counted.
    func issueWithoutSync(_ command: SMMUCommand) {
        do {
            try platform.withHardware { () throws(IOMMUError) in
                try cmdq.issue(command)
                cmdq.publish()
            }
        } catch { responsesLost += 1 }
    }
}
