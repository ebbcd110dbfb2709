import Platform
import Formats
import Hardware

/// The guest's command queue traffic through IOMMU_HWPT_INVALIDATE on the vIOMMU (Linux
/// arm-smmu-v3-iommufd.c `arm_vsmmu_cache_invalidate`, `arm_vsmmu_convert_user_cmd`).
extension ArmVSMMU {
    /// Linux `CMDQ_BATCH_ENTRIES` (BITS_PER_LONG): commands go to the queue in batches of
    /// one less, each ended by a CMD_SYNC.
    static let batchEntries = 64

    /// Each command is converted in place (below); every 63 converted commands, and after
    /// the last, the batch goes to the real queue with a CMD_SYNC. The first command that
    /// does not convert stops everything with EIO: `entry_num` is then its index, and the
    /// commands converted since the last batch was issued are counted done although they
    /// never reached the queue (6.17 `goto out` skips them). A batch that fails to issue
    /// (the sync timed out) reports one less than the commands converted.
    func invalidateUserCommands(_ entries: [[UInt8]]) -> (done: Int, error: IOMMUError?) {
        var cmds: [(UInt64, UInt64)] = []
        cmds.reserveCapacity(entries.count)
        for e in entries {
            var b = e
            if b.count < 16 { b += [UInt8](repeating: 0, count: 16 - b.count) }
            cmds.append((Self.le64(b, 0), Self.le64(b, 8)))
        }
        let end = cmds.count
        var cur = 0, last = 0
        while cur != end {
            do { cmds[cur] = try convert(cmds[cur]) } catch { return (cur, error) }
            cur += 1
            if cur != end && cur - last != Self.batchEntries - 1 { continue }
            do { try issue(cmds[last..<cur]) } catch { return (cur - 1, error) }
            last = cur
        }
        return (cur, nil)
    }

    /// Linux `arm_vsmmu_convert_user_cmd`: TLBI_NSNH_ALL becomes TLBI_NH_ALL of the VMID
    /// (word 1 cleared); TLBI_NH_VA/VAA/ALL/ASID get the VMID in place of the guest's;
    /// ATC_INV, CFGI_CD and CFGI_CD_ALL get the physical StreamID of the vSID (a vSID with
    /// no vDEVICE: EIO); any other opcode (CFGI_STE, TLBI_S12_VMALL, TLBI_S2_IPA, EL2 forms,
    /// CMD_SYNC, PRI_RESP, RESUME...) is EIO. Other fields pass as the guest wrote them;
    /// what the unit finds illegal in them it refuses (CERROR_ILL, skipped).
    func convert(_ cmd: (UInt64, UInt64)) throws(IOMMUError) -> (UInt64, UInt64) {
        var (w0, w1) = cmd
        let vmidField = UInt64(0xFFFF) << 32, sidField = UInt64(0xFFFF_FFFF) << 32
        switch UInt8(truncatingIfNeeded: w0) {
        case SMMUCommandOpcode.tlbiNSNHAll.rawValue:
            w0 = UInt64(SMMUCommandOpcode.tlbiNHAll.rawValue) | UInt64(vmid) << 32
            w1 = 0
        case SMMUCommandOpcode.tlbiNHVA.rawValue, SMMUCommandOpcode.tlbiNHVAA.rawValue,
             SMMUCommandOpcode.tlbiNHAll.rawValue, SMMUCommandOpcode.tlbiNHASID.rawValue:
            w0 = (w0 & ~vmidField) | UInt64(vmid) << 32
        case SMMUCommandOpcode.atcInv.rawValue, SMMUCommandOpcode.cfgiCD.rawValue, SMMUCommandOpcode.cfgiCDAll.rawValue:
            let vsid = UInt32(truncatingIfNeeded: w0 >> 32)
            guard let sid = sid(forVSID: vsid) else { throw .ioError("no vDEVICE with vSID \(vsid) on \(self)") }
            w0 = (w0 & ~sidField) | UInt64(sid) << 32
        default:
            throw .ioError("guest command opcode 0x\(String(UInt8(truncatingIfNeeded: w0), radix: 16)) is not forwarded")
        }
        return (w0, w1)
    }

    /// Linux `arm_smmu_cmdq_issue_cmdlist(..., sync = true)`.
    private func issue(_ batch: ArraySlice<(UInt64, UInt64)>) throws(IOMMUError) {
        let q = smmu.cmdq
        try smmu.platform.withHardware { () throws(IOMMUError) in
            for (w0, w1) in batch { try q.issueRaw(w0, w1) }
            try q.sync()
        }
    }
}
