/// Garbage in the victim's SMMUv3 structures: its STE (IHI 0070 §5.2) and the L1 stream table
/// descriptor of its span (§5.1), its CD table (CDs §5.4, L1 CD descriptors §5.4.1) and the
/// page tables of its domains, written under a live device whose DMA, ATS translation
/// requests, page requests and (on the stall variant) stalled transactions go through them.
/// The unit must refuse (C_BAD_STE, C_BAD_CD, F_TRANSLATION... in the event queue, §7.3) or
/// translate, never trap; the driver handles every event (Linux `arm_smmu_evtq_thread`,
/// `arm_smmu_handle_event`); the bystander, on its own L1 span, stays isolated and correct;
/// nothing leaks.
enum SMMUv3TablesTarget {
    /// Linear CD table (64 SSIDs), no stalls, PASID domain without fault handler.
    final class Rig: HoldsFuzzRig { let rig: FuzzRig; init() throws { rig = try FuzzRig(.smmuv3) } }
    /// A `dma-can-stall` victim (CD.S set by `arm_smmu_write_cd_entry` when the master can
    /// stall), 2048 SSIDs (a 2-level CD table, `arm_smmu_alloc_cd_tables`), a PASID domain
    /// whose faults a handler answers.
    final class StallRig: HoldsFuzzRig {
        let rig: FuzzRig
        init() throws { rig = try FuzzRig(.smmuv3, victimPASIDs: 2048, canStall: true, pasidFaultHandler: true) }
    }

    static func run(_ input: inout FuzzInput, _ result: inout FuzzResult) {
        if input.u8() & 3 == 3 {
            RigPool.with(StallRig.self, &result) { r, _ in
                tableGarbage(r.rig, &input)
            }
        } else {
            RigPool.with(Rig.self, &result) { r, _ in
                tableGarbage(r.rig, &input)
            }
        }
    }

    /// Up to 64 operations: corrupt a live word or any word of the victim's frames, let the
    /// victim access memory, invalidate every cache (so the next walk reads the garbage, as
    /// after the CFGI_STE / CFGI_CD / TLBI the owner of the tables would issue), or let time pass.
    static func tableGarbage(_ rig: FuzzRig, _ input: inout FuzzInput) {
        var ops = 0
        while !input.isEmpty && ops < 64 {
            ops += 1
            switch input.u8() % 8 {
            case 0, 1: rig.corruptLive(&input)
            case 2: rig.corrupt(&input)
            case 3, 4, 5: rig.victimAccess(&input)
            case 6: try? rig.machine.smmuDriver?.flushAllCaches()
            default: rig.settle(UInt64(input.u16()) * 100)
            }
        }
    }
}
