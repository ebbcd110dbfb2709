import Platform
import Formats
import Kernel

/// The deferred-flush policy (Linux dma-iommu.c, iommu.c): unmaps are deferred to a flush
/// queue only under the lazy policy, and never in a domain an untrusted device can reach
/// (`pci_dev->untrusted` devices always get strict invalidation: a device that may be
/// malicious must not keep a window onto memory that has been handed back).
extension Oracle {
    func checkDeferral(_ domain: IOMMUDomain, iova: UInt64) {
        checks &+= 1
        if policy != .lazy {
            violate("deferred-unmap-not-lazy", "\(domain) deferred the unmap of \(Self.hex(iova)) under the \(policy) policy")
        }
        guard !untrustedDevices.isEmpty else { return }
        let me = Ref.paging(domain.id)
        // The lowest key, so the report does not depend on the dictionary's order.
        let reaching = windows.lazy.filter { (key, w) in
            (w.current == me || w.previous == me) && self.untrustedDevices.contains(Self.deviceKey(ofWindow: key))
        }.map(\.key).min()
        if let key = reaching {
            let rid = RequesterID(rawValue: UInt16(truncatingIfNeeded: key >> 20))
            violate("deferred-unmap-untrusted", "\(domain) deferred the unmap of \(Self.hex(iova)) although untrusted \(rid) on unit \(key >> 40) can still reach it")
        }
    }

    /// The DMA API contract (Linux dma-iommu.c `iommu_dma_alloc_iova`): an IOVA handed to a
    /// device lies below its DMA mask, or the device cannot reach it (it would emit another
    /// address).
    public func dmaMapped(_ device: Device, iova: UInt64, size: UInt64) {
        checks &+= 1
        let (last, overflow) = iova.addingReportingOverflow(size &- 1)
        if overflow || size == 0 || last > device.dmaMask {
            violate("iova-beyond-dma-mask", "\(device.name) was handed IOVA \(Self.hex(iova))+\(Self.hex(size)), beyond its DMA mask \(Self.hex(device.dmaMask))")
        }
    }
}
