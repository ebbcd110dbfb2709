/// A raw invalidation-queue descriptor: 128 bits in legacy format (qw2, qw3 zero) or 256 bits
/// when IQA_REG.DW = 1 (VT-d spec §6.5.2).
public struct RawDescriptor: Equatable, Sendable {
    public var qw0: UInt64, qw1: UInt64, qw2: UInt64, qw3: UInt64
    public init(_ qw0: UInt64, _ qw1: UInt64, _ qw2: UInt64 = 0, _ qw3: UInt64 = 0) {
        self.qw0 = qw0; self.qw1 = qw1; self.qw2 = qw2; self.qw3 = qw3
    }
    /// Descriptor type: bits 3:0 with bits 11:9 as the high part (VT-d §6.5.2).
    public var type: UInt8 { UInt8(qw0 & 0xF) | UInt8((qw0 >> 9) & 7) << 4 }
}

/// Why a descriptor could not be decoded; hardware reports these as an invalidation queue
/// error (FSTS.IQE) with the IQEI code in IQERCD (VT-d §11.4.9).
public enum DescriptorError: Error, Equatable, Sendable {
    /// Reserved or unsupported descriptor type.
    case invalidType(UInt8)
    /// Reserved bits set, or a reserved granularity.
    case reservedBits(type: UInt8)
    /// A 256-bit-only descriptor type in a 128-bit queue.
    case needsWideDescriptors(type: UInt8)
}

/// Context-cache invalidation granularity (descriptor type 1, G bits 5:4).
public enum ContextCacheGranularity: Equatable, Sendable {
    case global
    case domain(DomainID)
    /// Device-selective: source-id with function mask FM (0: none masked, 1: bit 2, 2: bits 2:1, 3: bits 2:0).
    case device(DomainID, RequesterID, functionMask: UInt8)
}

/// IOTLB invalidation granularity (descriptor type 2, G bits 5:4).
public enum IOTLBGranularity: Equatable, Sendable {
    case global
    case domain(DomainID)
    /// Page-selective within the domain: `address` aligned to 2^`addressMask` pages.
    case page(DomainID, address: UInt64, addressMask: UInt8, invalidationHint: Bool)
}

/// PASID-cache invalidation granularity (descriptor type 7, G bits 5:4).
public enum PASIDCacheGranularity: Equatable, Sendable {
    /// All PASIDs tagged with the DID (G = 0).
    case domain(DomainID)
    /// One PASID tagged with the DID (G = 1).
    case pasid(DomainID, PASID)
    /// Everything (G = 3).
    case global
}

/// PASID-based IOTLB invalidation granularity (descriptor type 6, G bits 5:4).
public enum PASIDIOTLBGranularity: Equatable, Sendable {
    /// All non-global mappings of the PASID within the DID (G = 2).
    case pasid
    /// Page-selective within the PASID (G = 3).
    case page(address: UInt64, addressMask: UInt8, invalidationHint: Bool)
}

/// Invalidation wait descriptor fields (type 5).
public struct InvalidationWait: Equatable, Sendable {
    /// IF: set ICS.IWC and raise the invalidation-completion event.
    public var interrupt: Bool
    /// SW: write `statusData` to `statusAddress`.
    public var statusWrite: Bool
    /// FN: later descriptors wait until this one completes.
    public var fence: Bool
    /// PD: page-request drain (VT-d §7.10).
    public var pageDrain: Bool
    public var statusData: UInt32
    /// 4-byte aligned.
    public var statusAddress: UInt64

    public init(interrupt: Bool = false, statusWrite: Bool = true, fence: Bool = true, pageDrain: Bool = false,
                statusData: UInt32 = 1, statusAddress: UInt64 = 0) {
        self.interrupt = interrupt; self.statusWrite = statusWrite; self.fence = fence
        self.pageDrain = pageDrain; self.statusData = statusData; self.statusAddress = statusAddress
    }
}

/// Page group response (type 9), sent to a device through the invalidation queue.
public struct PageGroupResponse: Equatable, Sendable {
    public var requester: RequesterID
    public var pasid: PASID?
    /// Response code: 0 success, 1 invalid request, 0xF response failure (PCIe PRG response).
    public var responseCode: UInt8
    public var groupIndex: UInt16
    public init(requester: RequesterID, pasid: PASID?, responseCode: UInt8, groupIndex: UInt16) {
        self.requester = requester; self.pasid = pasid; self.responseCode = responseCode; self.groupIndex = groupIndex
    }
}

/// VT-d queued-invalidation descriptors (VT-d spec §6.5.2; bit positions as Linux
/// drivers/iommu/intel/iommu.h `QI_*` macros encode them).
public enum InvalidationDescriptor: Equatable, Sendable {
    case contextCache(ContextCacheGranularity)
    case iotlb(IOTLBGranularity, drainReads: Bool = false, drainWrites: Bool = false)
    /// Device-TLB invalidation without PASID (type 3). `sizeBit` S: the range size is
    /// encoded in the address's low set bits (PCIe ATS invalidate request).
    case deviceTLB(source: RequesterID, pfsid: UInt16, queueDepth: UInt8, address: UInt64, sizeBit: Bool)
    case pasidCache(PASIDCacheGranularity)
    case pasidIOTLB(DomainID, PASID, PASIDIOTLBGranularity)
    case pasidDeviceTLB(source: RequesterID, pfsid: UInt16, queueDepth: UInt8, pasid: PASID, address: UInt64, sizeBit: Bool, global: Bool)
    case wait(InvalidationWait)
    case pageGroupResponse(PageGroupResponse)

    @inlinable public static var contextCacheType: UInt8 { 1 }
    @inlinable public static var iotlbType: UInt8 { 2 }
    @inlinable public static var deviceTLBType: UInt8 { 3 }
    @inlinable public static var interruptEntryCacheType: UInt8 { 4 }
    @inlinable public static var waitType: UInt8 { 5 }
    @inlinable public static var pasidIOTLBType: UInt8 { 6 }
    @inlinable public static var pasidCacheType: UInt8 { 7 }
    @inlinable public static var pasidDeviceTLBType: UInt8 { 8 }
    @inlinable public static var pageGroupResponseType: UInt8 { 9 }

    /// The type code.
    public var type: UInt8 {
        switch self {
        case .contextCache: return Self.contextCacheType
        case .iotlb: return Self.iotlbType
        case .deviceTLB: return Self.deviceTLBType
        case .pasidCache: return Self.pasidCacheType
        case .pasidIOTLB: return Self.pasidIOTLBType
        case .pasidDeviceTLB: return Self.pasidDeviceTLBType
        case .wait: return Self.waitType
        case .pageGroupResponse: return Self.pageGroupResponseType
        }
    }

    // MARK: Encode

    public func encode() -> RawDescriptor {
        let t = UInt64(type)
        switch self {
        case .contextCache(let g):
            switch g {
            case .global: return RawDescriptor(t | 1 << 4, 0)
            case .domain(let did): return RawDescriptor(t | 2 << 4 | UInt64(did.rawValue) << 16, 0)
            case .device(let did, let sid, let fm):
                return RawDescriptor(t | 3 << 4 | UInt64(did.rawValue) << 16 | UInt64(sid.rawValue) << 32 | UInt64(fm & 3) << 48, 0)
            }
        case .iotlb(let g, let dr, let dw):
            var q0 = t | (dr ? 1 << 7 : 0) | (dw ? 1 << 6 : 0)
            var q1: UInt64 = 0
            switch g {
            case .global: q0 |= 1 << 4
            case .domain(let did): q0 |= 2 << 4 | UInt64(did.rawValue) << 16
            case .page(let did, let addr, let am, let ih):
                q0 |= 3 << 4 | UInt64(did.rawValue) << 16
                q1 = (addr & ~0xFFF) | (ih ? 1 << 6 : 0) | UInt64(am & 0x3F)
            }
            return RawDescriptor(q0, q1)
        case .deviceTLB(let sid, let pfsid, let qdep, let addr, let s):
            let q0 = t | UInt64(pfsid & 0xF) << 12 | UInt64(qdep & 0x1F) << 16 | UInt64(sid.rawValue) << 32
                | UInt64(pfsid >> 4 & 0xFFF) << 52
            return RawDescriptor(q0, (addr & ~0xFFF) | (s ? 1 : 0))
        case .pasidCache(let g):
            switch g {
            case .domain(let did): return RawDescriptor(t | 0 << 4 | UInt64(did.rawValue) << 16, 0)
            case .pasid(let did, let pasid):
                return RawDescriptor(t | 1 << 4 | UInt64(did.rawValue) << 16 | UInt64(pasid.rawValue) << 32, 0)
            case .global: return RawDescriptor(t | 3 << 4, 0)
            }
        case .pasidIOTLB(let did, let pasid, let g):
            var q0 = t | UInt64(did.rawValue) << 16 | UInt64(pasid.rawValue) << 32
            switch g {
            case .pasid: return RawDescriptor(q0 | 2 << 4, 0)
            case .page(let addr, let am, let ih):
                q0 |= 3 << 4
                return RawDescriptor(q0, (addr & ~0xFFF) | (ih ? 1 << 6 : 0) | UInt64(am & 0x3F))
            }
        case .pasidDeviceTLB(let sid, let pfsid, let qdep, let pasid, let addr, let s, let global):
            let q0 = t | UInt64(qdep & 0x1F) << 4 | UInt64(pfsid & 0xF) << 12 | UInt64(sid.rawValue) << 16
                | UInt64(pasid.rawValue) << 32 | UInt64(pfsid >> 4 & 0xFFF) << 52
            return RawDescriptor(q0, (addr & ~0xFFF) | (s ? 1 << 11 : 0) | (global ? 1 : 0))
        case .wait(let w):
            var q0 = t | UInt64(w.statusData) << 32
            if w.interrupt { q0 |= 1 << 4 }
            if w.statusWrite { q0 |= 1 << 5 }
            if w.fence { q0 |= 1 << 6 }
            if w.pageDrain { q0 |= 1 << 7 }
            return RawDescriptor(q0, w.statusAddress & ~3)
        case .pageGroupResponse(let r):
            var q0 = t | UInt64(r.responseCode & 0xF) << 12 | UInt64(r.requester.rawValue) << 16
            if let p = r.pasid { q0 |= 1 << 4 | UInt64(p.rawValue) << 32 }
            return RawDescriptor(q0, UInt64(r.groupIndex & 0x1FF) << 3)
        }
    }

    // MARK: Decode

    /// Decodes `raw`; `wide` says whether the queue holds 256-bit descriptors. Reserved bits
    /// (including qw2/qw3 of a 256-bit descriptor) make the descriptor invalid.
    public static func decode(_ raw: RawDescriptor, wide: Bool) -> Result<InvalidationDescriptor, DescriptorError> {
        let t = raw.type
        let q0 = raw.qw0, q1 = raw.qw1
        if wide && (raw.qw2 != 0 || raw.qw3 != 0) { return .failure(.reservedBits(type: t)) }
        let g = (q0 >> 4) & 3
        let did = DomainID(UInt16(truncatingIfNeeded: q0 >> 16))
        func reserved(_ v: UInt64, _ mask: UInt64) -> Bool { v & mask != 0 }
        switch t {
        case contextCacheType:
            guard !reserved(q0, 0xFFFC_0000_0000_FFC0), q1 == 0 else { return .failure(.reservedBits(type: t)) }
            switch g {
            case 1: return .success(.contextCache(.global))
            case 2: return .success(.contextCache(.domain(did)))
            case 3:
                return .success(.contextCache(.device(did, RequesterID(rawValue: UInt16(truncatingIfNeeded: q0 >> 32)),
                                                      functionMask: UInt8((q0 >> 48) & 3))))
            default: return .failure(.reservedBits(type: t))
            }
        case iotlbType:
            guard !reserved(q0, 0xFFFF_FFFF_0000_FF00), !reserved(q1, 0xF80) else { return .failure(.reservedBits(type: t)) }
            let dr = q0 & (1 << 7) != 0, dw = q0 & (1 << 6) != 0
            switch g {
            case 1: return .success(.iotlb(.global, drainReads: dr, drainWrites: dw))
            case 2: return .success(.iotlb(.domain(did), drainReads: dr, drainWrites: dw))
            case 3:
                let am = UInt8(q1 & 0x3F)
                return .success(.iotlb(.page(did, address: q1 & ~0xFFF, addressMask: am, invalidationHint: q1 & (1 << 6) != 0),
                                       drainReads: dr, drainWrites: dw))
            default: return .failure(.reservedBits(type: t))
            }
        case deviceTLBType:
            guard !reserved(q0, 0x000F_0000_FFE0_0FF0), !reserved(q1, 0xFFE) else { return .failure(.reservedBits(type: t)) }
            let pfsid = UInt16((q0 >> 12) & 0xF) | UInt16((q0 >> 52) & 0xFFF) << 4
            return .success(.deviceTLB(source: RequesterID(rawValue: UInt16(truncatingIfNeeded: q0 >> 32)), pfsid: pfsid,
                                       queueDepth: UInt8((q0 >> 16) & 0x1F), address: q1 & ~0xFFF, sizeBit: q1 & 1 != 0))
        case waitType:
            guard !reserved(q0, 0xFFFF_FF00), !reserved(q1, 3) else { return .failure(.reservedBits(type: t)) }
            return .success(.wait(InvalidationWait(interrupt: q0 & (1 << 4) != 0, statusWrite: q0 & (1 << 5) != 0,
                                                   fence: q0 & (1 << 6) != 0, pageDrain: q0 & (1 << 7) != 0,
                                                   statusData: UInt32(truncatingIfNeeded: q0 >> 32), statusAddress: q1)))
        case pasidIOTLBType, pasidCacheType, pasidDeviceTLBType:
            guard wide else { return .failure(.needsWideDescriptors(type: t)) }
            let pasid = PASID(truncating: UInt32(truncatingIfNeeded: q0 >> 32))
            if t == pasidIOTLBType {
                guard !reserved(q0, 0xFFF0_0000_0000_FFC0), !reserved(q1, 0xF80) else { return .failure(.reservedBits(type: t)) }
                switch g {
                case 2: return .success(.pasidIOTLB(did, pasid, .pasid))
                case 3:
                    return .success(.pasidIOTLB(did, pasid, .page(address: q1 & ~0xFFF, addressMask: UInt8(q1 & 0x3F),
                                                                  invalidationHint: q1 & (1 << 6) != 0)))
                default: return .failure(.reservedBits(type: t))
                }
            } else if t == pasidCacheType {
                guard !reserved(q0, 0xFFF0_0000_0000_FFC0), q1 == 0 else { return .failure(.reservedBits(type: t)) }
                switch g {
                case 0: return .success(.pasidCache(.domain(did)))
                case 1: return .success(.pasidCache(.pasid(did, pasid)))
                case 3: return .success(.pasidCache(.global))
                default: return .failure(.reservedBits(type: t))
                }
            } else {
                guard !reserved(q1, 0x7FE) else { return .failure(.reservedBits(type: t)) }
                let pfsid = UInt16((q0 >> 12) & 0xF) | UInt16((q0 >> 52) & 0xFFF) << 4
                return .success(.pasidDeviceTLB(source: RequesterID(rawValue: UInt16(truncatingIfNeeded: q0 >> 16)), pfsid: pfsid,
                                                queueDepth: UInt8((q0 >> 4) & 0x1F), pasid: pasid, address: q1 & ~0xFFF,
                                                sizeBit: q1 & (1 << 11) != 0, global: q1 & 1 != 0))
            }
        case pageGroupResponseType:
            guard !reserved(q0, 0xFFF0_0000_0000_0FE0), !reserved(q1, 0xFFFF_FFFF_FFFF_F003) else { return .failure(.reservedBits(type: t)) }
            let hasPASID = q0 & (1 << 4) != 0
            return .success(.pageGroupResponse(PageGroupResponse(
                requester: RequesterID(rawValue: UInt16(truncatingIfNeeded: q0 >> 16)),
                pasid: hasPASID ? PASID(truncating: UInt32(truncatingIfNeeded: q0 >> 32)) : nil,
                responseCode: UInt8((q0 >> 12) & 0xF), groupIndex: UInt16((q1 >> 3) & 0x1FF))))
        default:
            return .failure(.invalidType(t))
        }
    }
}
