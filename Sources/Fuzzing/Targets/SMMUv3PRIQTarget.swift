import Platform
import Formats
import Hardware
import Kernel

/// PRI page requests from a misbehaving device into an SMMUv3's PRI queue (IHI 0070 chapter
/// 8; PCIe PRI): garbage request fields (SSV and any SubstreamID, any address, PRG index,
/// Last, R/W/Exec/Priv, SSIDs not set up, stop markers, indices reused), floods past the
/// queue's 256 entries (PROD.OVFLG, §3.5.2; the unit answers a lost Last request itself),
/// and the device's own ATS accesses that fault and ask for pages. The unit writes PRIQ
/// entries; the driver's PRI thread (`arm_smmu_priq_thread`, `arm_smmu_handle_ppr` of the PRI
/// series, ArmSMMUDevice+PRI.swift) hands them to the core's IO page fault queue, whose
/// handler on the victim's PASID domain answers through CMD_PRI_RESP.
/// Checks: no trap; after the input the PASID is stopped and detached (the drain drops its
/// partial groups; the oracle flags a stale partial merged into a later group) and attached
/// again, and a well-formed page request group from the victim is answered (the queue did
/// not wedge); then the bystander, the oracle and the frames, as FuzzRig checks them.
enum SMMUv3PRIQTarget {
    final class Rig: HoldsFuzzRig {
        let rig: FuzzRig
        init() throws {
            rig = try FuzzRig(.smmuv3, victimPASIDs: 64, pasidFaultHandler: true)
        }

        /// The PASID drained and the queue probed before the rig's own checks.
        func finishInput(_ result: inout FuzzResult) {
            drainAndProbe(rig, &result)
            rig.finishInput(&result)
        }
    }

    static func run(_ input: inout FuzzInput, _ result: inout FuzzResult) {
        RigPool.with(Rig.self, &result) { r, _ in
            requests(r.rig, &input)
        }
    }

    /// Up to 48 operations: one garbage request, a flood, the victim's own faulting access,
    /// a PASID stop and drain, or time passing.
    static func requests(_ rig: FuzzRig, _ input: inout FuzzInput) {
        guard let unit = rig.machine.smmuUnits.first else { return }
        // The device breaks the PRI protocol as it likes: more requests than its credits,
        // indices still in use, requests after a stop; responses it never asked for are
        // not the kernel's fault.
        // Injected requests are a breach too (their answers are unexpected): never none.
        rig.victimEndpoint.misbehaviour = Misbehaviour(rawValue: input.u8() & Misbehaviour.all.rawValue).union(.requestsAfterStop)
        var ops = 0, floods = 0
        while !input.isEmpty && ops < 48 {
            ops += 1
            switch input.u8() % 8 {
            case 0, 1, 2: unit.pageRequest(garbageRequest(rig, &input))
            case 3 where floods < 2:
                // A flood without the driver running in between: past 256 entries the queue
                // overflows (IHI 0070 §3.5.2) and Last requests are answered by the unit.
                // (Two per input: each costs as much as hundreds of other operations.)
                floods += 1
                let n = 1 + input.below(320)
                let template = garbageRequest(rig, &input)
                let step = input.u8()
                for i in 0..<n {
                    var e = template
                    e.groupIndex = (template.groupIndex &+ UInt16(truncatingIfNeeded: i) &* UInt16(step)) & 0x1FF
                    e.address = template.address &+ UInt64(i) << 12
                    e.last = step & 1 == 0 || i % 4 == 3
                    unit.pageRequest(e)
                }
            case 3, 4, 5: rig.victimAccess(&input)
            case 6:
                if input.u8() & 3 == 0 {
                    var result = FuzzResult()
                    rig.cyclePASID(&result)
                }
            default: rig.settle(UInt64(input.u16()) * 100)
            }
        }
    }

    /// One PRIQ entry as the victim's PCIe function could send it: its own StreamID (now and
    /// then one nobody owns: `arm_smmu_handle_ppr` answers an unknown stream DENY), any SSID.
    static func garbageRequest(_ rig: FuzzRig, _ input: inout FuzzInput) -> PRIQEntry {
        let own = UInt32(rig.victimEndpoint.requesterID.rawValue)
        let flags = input.u8()
        let sid: UInt32 = flags & 0x80 != 0 && input.u8() & 7 == 0 ? own &+ 1 + UInt32(input.u8()) : own
        let ssid: UInt32?
        switch input.u8() & 3 {
        case 0: ssid = nil
        case 1: ssid = rig.victimPASID?.rawValue
        case 2: ssid = UInt32(input.u8() & 0x3F)
        default: ssid = input.u32() & 0xFFFFF
        }
        let group: UInt16 = flags & 0x40 != 0 ? input.u16() & 0x1FF : UInt16(input.u8() & 3)
        return PRIQEntry(sid: sid, ssid: ssid, privileged: flags & 1 != 0, execute: flags & 2 != 0, read: flags & 4 != 0,
                         write: flags & 8 != 0, last: flags & 0x10 != 0, groupIndex: group, address: rig.victimAddress(&input))
    }

    /// After the garbage: the victim's PASID is stopped, drained and attached again, then a
    /// well-formed access to a page its domain does not map sends a page request group (no
    /// misbehaviour), which the handler must answer: the access ends with an answer, not by
    /// waiting for one forever.
    static func drainAndProbe(_ rig: FuzzRig, _ result: inout FuzzResult) {
        guard let pasid = rig.victimPASID, let handler = rig.faultHandler else {
            rig.victimEndpoint.misbehaviour = []
            return
        }
        rig.settle(2_000_000)
        rig.victimEndpoint.resetATS()
        rig.cyclePASID(&result)
        // From here the device behaves: an unexpected answer to its probe is a violation.
        rig.victimEndpoint.misbehaviour = []
        let groups = handler.groups
        var outcome: ATSAccessOutcome?
        rig.victimEndpoint.atsAccess(pasid: pasid, address: 0x30_0000, length: 4096, write: true) { outcome = $0.outcome }
        // Software runs too (the PRI thread, the fault work): `Scheduler.wait` runs hardware only.
        for _ in 0..<100 where outcome == nil { rig.settle(500_000) }
        guard let o = outcome else {
            result.fail("a well-formed page request from the victim got no answer after the input (PRI queue wedged?)")
            return
        }
        if handler.groups == groups || o == .noAccess || o == .unsupportedRequest {
            result.fail("a well-formed page request from the victim did not reach its PASID's fault handler (\(o))")
        }
    }
}
