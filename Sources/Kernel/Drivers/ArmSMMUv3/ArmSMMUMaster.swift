import Platform
import Formats
import Hardware

/// Per-device state of the SMMUv3 driver (Linux `struct arm_smmu_master` with its one
/// `arm_smmu_stream`): the StreamID, where its STE is and what it holds, and its CD table.
///
/// The StreamID is the device's requester ID, as Linux's `iommu-map` gives for PCI. The CD
/// table is linear and made on the first stage 1 attach (Linux `arm_smmu_alloc_cd_tables`
/// from `arm_smmu_get_cd_ptr`); this slice holds one CD (SSID 0, S1CDMax 0): SubstreamIDs
/// come with `set_dev_pasid`.
final class ArmSMMUMaster {
    /// The core's device (it outlives this state, which goes at release).
    unowned(unsafe) let device: Device
    let sid: UInt32
    let unitIndex: Int
    let steAddress: UInt64
    /// The STE words as last written (the entry writer's `current`).
    var ste: [UInt64]
    /// The CD table (0: none yet) and CD 0 as last written.
    var cdTable: UInt64 = 0
    var cd0 = [UInt64](repeating: 0, count: 8)

    init(device: Device, sid: UInt32, unitIndex: Int, steAddress: UInt64, ste: [UInt64]) {
        self.device = device; self.sid = sid; self.unitIndex = unitIndex; self.steAddress = steAddress; self.ste = ste
    }

    /// Whether the STE in force translates at stage 1 through the CD table (V, Config 0b1x1).
    var steUsesCDTable: Bool { ste[0] & 1 != 0 && (ste[0] >> 1) & 1 != 0 }
}

extension ArmSMMUDevice {
    /// Linux `arm_smmu_probe_device` for one PCI stream: the StreamID is checked against the
    /// table, its level 2 array made (2-level tables, `arm_smmu_init_sid_strtab`) and the
    /// STE read back (abort, as the table was made).
    func probe(_ device: Device) throws(IOMMUError) -> ArmSMMUMaster {
        let sid = UInt32(device.requesterID.rawValue)
        guard masters[sid] == nil else { throw .exists("StreamID 0x\(String(sid, radix: 16)) is already probed on \(name)") }
        guard let address = try steAddress(sid, create: true) else { throw .noMemory("stream table for \(device)") }
        var words = [UInt64](repeating: 0, count: 8)
        for i in 0..<8 { words[i] = try load(address + UInt64(i) * 8) }
        let master = ArmSMMUMaster(device: device, sid: sid, unitIndex: index, steAddress: address, ste: words)
        // Whatever the STE held (nothing should), it aborts now.
        _ = try writeSTE(master, .abort())
        masters[sid] = master
        device.driverData = master
        return master
    }

    /// Linux `arm_smmu_release_device`: the core already attached the blocked domain (abort
    /// STE, which no longer names the CD table; its CFGI_STE dropped every CD cached through
    /// it), so the CD table can go.
    func release(_ master: ArmSMMUMaster) {
        if master.ste[0] != StreamTableEntry.abort().data[0] { _ = try? writeSTE(master, .abort()) }
        if master.cdTable != 0 {
            try? platform.frames.free(master.cdTable)
            master.cdTable = 0
        }
        masters[master.sid] = nil
        master.device.driverData = nil
    }

    /// The master's CD table, made (zeroed: every CD invalid) on first use.
    func ensureCDTable(_ master: ArmSMMUMaster) throws(IOMMUError) -> UInt64 {
        if master.cdTable != 0 { return master.cdTable }
        do { master.cdTable = try platform.frames.allocate(.pasidTable) } catch { throw .noMemory("CD table for \(master.device)") }
        master.cd0 = [UInt64](repeating: 0, count: 8)
        return master.cdTable
    }
}
