import Platform
import Formats
import Hardware

/// An SVA domain (drivers/iommu/intel/svm.c): a first-stage PASID entry pointing at the
/// process's page tables, under the shared DID 1 (`FLPT_DEFAULT_DID`), so IOTLB entries are
/// tagged by (DID 1, PASID). The mmu-notifier path invalidates a range with PASID-based
/// IOTLB and device-TLB invalidations per (unit, device, PASID) it is attached on.
final class VTdSVADomain: VTdDomain, @unchecked Sendable {
    unowned(unsafe) let process: Process
    /// Where it is attached: unit index, device, PASID, ATS.
    private var uses: [(unit: Int, rid: RequesterID, pasid: UInt32, ats: Bool)] = []

    init(driver: VTdDriver, process: Process) {
        self.process = process
        super.init(driver: driver, type: .sva)
    }

    override func setTranslation(_ device: Device, pasid: UInt32, old: IOMMUDomain?) throws(IOMMUError) -> UpdatePath {
        guard pasid != 0 else { throw .invalidArgument("an SVA domain attaches to a PASID") }
        let u = try driver.iommu(for: device)
        guard u.extendedCapability.firstStage else { throw .incompatible("\(u.name) has no first-stage translation") }
        let entry = PASIDEntry.make(pgtt: .firstStage, did: DomainIDAllocator.shared, firstStageTable: process.pageTableRoot,
                                    firstStageLevels: 4, pageWalkSnoop: true)
        var exposed = false
        let path = try u.programEntry(device, pasid: pasid, entry, exposed: &exposed)
        uses.append((u.index, device.requesterID, pasid, device.ats && u.extendedCapability.deviceTLB))
        if let old = old as? VTdDomain, old !== self { old.removeDevice(device, pasid: pasid, invalidated: true) }
        return path
    }

    override func removeDevice(_ device: Device, pasid: UInt32, invalidated: Bool) {
        guard let u = try? driver.iommu(for: device),
              let i = uses.firstIndex(where: { $0.unit == u.index && $0.rid == device.requesterID && $0.pasid == pasid }) else { return }
        uses.remove(at: i)
    }

    /// Linux `intel_arch_invalidate_secondary_tlbs` → `cache_tag_flush_range`.
    override func invalidateRange(start: UInt64, end: UInt64) throws(IOMMUError) {
        let (address, mask) = VTdDMARDomain.psiRange(start: start, end: end)
        var firstError: IOMMUError?
        for unitIndex in Set(uses.map(\.unit)).sorted() {
            let u = driver.units[unitIndex]
            var ds: [InvalidationDescriptor] = []
            var pasidsDone = Set<UInt32>()
            for use in uses where use.unit == unitIndex {
                let p = PASID(truncating: use.pasid)
                if pasidsDone.insert(use.pasid).inserted {
                    ds.append(mask <= u.capability.maximumAddressMask
                              ? .pasidIOTLB(DomainIDAllocator.shared, p, .page(address: address, addressMask: mask, invalidationHint: false))
                              : .pasidIOTLB(DomainIDAllocator.shared, p, .pasid))
                }
                if use.ats && !u.bugs.contains(.skipDeviceTLBInvalidation) {
                    ds.append(u.deviceTLBInvalidation(use.rid, pasid: use.pasid, address: address, mask: mask))
                }
            }
            do { try u.queue.submitAndWait(ds) } catch { if firstError == nil { firstError = error } }
        }
        if let firstError { throw firstError }
    }
}
