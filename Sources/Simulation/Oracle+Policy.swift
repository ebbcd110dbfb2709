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
        for (key, w) in windows where w.current == me || w.previous == me {
            let device = (key >> 40) << 16 | (key >> 20 & 0xFFFF)
            if untrustedDevices.contains(device) {
                let rid = RequesterID(rawValue: UInt16(truncatingIfNeeded: key >> 20))
                violate("deferred-unmap-untrusted", "\(domain) deferred the unmap of \(Self.hex(iova)) although untrusted \(rid) on unit \(key >> 40) can still reach it")
                return
            }
        }
    }
}
