import Platform
import Formats
import Hardware

extension ArmSMMUDevice {
    /// Linux `arm_smmu_set_pasid`, shared by stage 1 and SVA domains: prepare (ATS for the
    /// CD table, `cd_needs_ats`; the master listed on `domain` with `ssid`), CD[ssid] through
    /// the entry writer (a replace of one PASID's domain is a CD rewrite), then the STE made a
    /// CD-table STE if it was not (S1DSS bypass for an identity RID, terminate for a blocked
    /// one; an S1 RID's STE already is one with SSID0), then commit (ATS enabled, or the
    /// ATC of `ssid` invalidated). A stage 2 RID refuses (EINVAL). A failure puts the CD back
    /// and frees a CD table this call made.
    func setPASID(_ master: ArmSMMUMaster, ssid: UInt32, domain: ArmSMMUDomain, _ cd: ContextDescriptor) throws(IOMMUError) -> UpdatePath {
        guard ssid != 0, UInt64(ssid) >> UInt64(master.ssidBits) == 0 else {
            throw .invalidArgument("PASID \(ssid) beyond \(master.ssidBits) SSID bits of \(master.device)")
        }
        guard master.rid != .s2, master.rid != .nested else {
            throw .invalidArgument("\(master.device)'s RID is on a stage 2 or nested domain; no PASIDs")
        }
        let fresh = master.cdTable == 0
        _ = try ensureCDTable(master)
        let previous = master.cd(ssid)
        let state = attachPrepare(master, ssid: ssid, new: domain, cdNeedsATS: true)
        let cdPath: UpdatePath
        do { cdPath = try writeCD(master, ssid: ssid, cd) } catch {
            attachAbort(master, state)
            if fresh && !master.steUsesCDTable { freeCDTable(master) }
            throw error
        }
        let dss: StreamTableEntry.S1DSS = master.rid == .s1 ? .ssid0 : master.rid == .identity ? .bypass : .terminate
        do { _ = try writeSTE(master, cdTableSTE(master, s1DSS: dss, ats: state.ats)) } catch {
            var back = ContextDescriptor()
            for i in 0..<8 { back.data[i] = previous[i] }
            _ = try? writeCD(master, ssid: ssid, back)
            attachAbort(master, state)
            throw error
        }
        attachCommit(master, state)
        return cdPath
    }
}
