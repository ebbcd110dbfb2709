import Platform
import Formats

/// The IOMMU an endpoint sits behind: a VT-d remapping unit or an SMMUv3. An enum rather than
/// a protocol, so the per-TLP call is a switch over two concrete classes (no existential, no
/// witness table, no reference counting on the DMA path). On SMMUv3 the endpoint's requester
/// ID is its StreamID and its PASID the SubstreamID (Linux: a PCI device's StreamID is its
/// RID through the root complex's iommu-map).
public enum UpstreamUnit {
    case vtd(VTdUnit)
    case smmuv3(SMMUv3Unit)

    public var platform: PlatformContext {
        switch self {
        case .vtd(let u): return u.platform
        case .smmuv3(let u): return u.platform
        }
    }

    /// One way through the PCIe fabric between unit and endpoint.
    var linkNs: UInt64 {
        switch self {
        case .vtd(let u): return u.configuration.latency.linkNs
        case .smmuv3(let u): return u.configuration.latency.linkNs
        }
    }

    /// How long the endpoint takes to apply a device-TLB (ATC) invalidation.
    var deviceTLBInvalidationNs: UInt64 {
        switch self {
        case .vtd(let u): return u.configuration.latency.deviceTLBInvalidationNs
        case .smmuv3(let u): return u.configuration.latency.atcInvalidationNs
        }
    }

    /// Page-table memory accesses the unit's walks made so far.
    public var walkMemoryAccesses: UInt64 {
        switch self {
        case .vtd(let u): return u.counters.walkMemoryAccesses
        case .smmuv3(let u): return u.counters.walkMemoryAccesses
        }
    }

    /// The fault of a request whose address runs past 2^64 (VT-d: beyond the maximum
    /// address; SMMUv3: an address size fault, IHI 0070 §3.4).
    func overflowFault(_ address: UInt64) -> DMAFault {
        switch self {
        case .vtd: return DMAFault(address: address, reason: .smAddressBeyondMax)
        case .smmuv3: return DMAFault(address: address, event: .fAddrSize)
        }
    }

    @inline(__always)
    func dmaRead(source: RequesterID, pasid: PASID?, address: UInt64, into buffer: UnsafeMutableRawBufferPointer,
                 access: DMAAccess) -> (transferred: Int, fault: DMAFault?) {
        switch self {
        case .vtd(let u): return u.dmaRead(source: source, pasid: pasid, address: address, into: buffer, access: access)
        case .smmuv3(let u):
            return u.dmaRead(streamID: UInt32(source.rawValue), substreamID: pasid?.rawValue, address: address, into: buffer, access: access)
        }
    }

    @inline(__always)
    func dmaWrite(source: RequesterID, pasid: PASID?, address: UInt64, from bytes: UnsafeRawBufferPointer,
                  access: DMAAccess) -> (transferred: Int, fault: DMAFault?) {
        switch self {
        case .vtd(let u): return u.dmaWrite(source: source, pasid: pasid, address: address, from: bytes, access: access)
        case .smmuv3(let u):
            return u.dmaWrite(streamID: UInt32(source.rawValue), substreamID: pasid?.rawValue, address: address, from: bytes, access: access)
        }
    }

    func atsTranslate(source: RequesterID, pasid: PASID?, address: UInt64, write: Bool) -> ATSCompletion {
        switch self {
        case .vtd(let u): return u.atsTranslate(source: source, pasid: pasid, address: address, write: write)
        case .smmuv3(let u):
            return u.atsTranslate(streamID: UInt32(source.rawValue), substreamID: pasid?.rawValue, address: address, write: write)
        }
    }

    func translatedAccess(source: RequesterID, pasid: PASID?, address: UInt64, physical: UInt64,
                          buffer: UnsafeMutableRawBufferPointer, write: Bool) -> DMAFault? {
        switch self {
        case .vtd(let u):
            return u.translatedAccess(source: source, pasid: pasid, address: address, physical: physical, buffer: buffer, write: write)
        case .smmuv3(let u):
            return u.translatedAccess(streamID: UInt32(source.rawValue), substreamID: pasid?.rawValue, address: address,
                                      physical: physical, buffer: buffer, write: write)
        }
    }

    /// A page request (or stop marker) reaching the unit: VT-d's page request queue, or the
    /// SMMUv3's PRI queue (IHI 0070 §8.1, the PCIe request carried as a PRIQ entry).
    func pageRequest(_ d: PageRequestDescriptor) {
        switch self {
        case .vtd(let u): u.receivePageRequest(d)
        case .smmuv3(let u):
            u.pageRequest(PRIQEntry(sid: UInt32(d.requester.rawValue), ssid: d.pasid?.rawValue, privileged: d.privileged,
                                    execute: d.execute, read: d.read, write: d.write, last: d.lastInGroup,
                                    groupIndex: d.groupIndex, address: d.address))
        }
    }

    /// An invalidation completion nobody asked for. VT-d counts it; an SMMUv3 matches ATC
    /// invalidation completions to the ATC_INVs it sent, so a stray one is dropped.
    func unsolicitedInvalidationCompletion(from source: RequesterID) {
        if case .vtd(let u) = self { u.receiveUnsolicitedInvalidationCompletion(from: source) }
    }
}
