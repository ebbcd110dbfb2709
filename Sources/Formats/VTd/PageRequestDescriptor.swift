/// A page request descriptor as the unit writes it into the page request queue (VT-d §4.2.1,
/// §7.4.1; 256 bits in scalable mode). Bit positions as Linux drivers/iommu/intel/prq.c
/// `struct page_req_dsc` reads them:
/// - qw0: type 7:0 (1), PASID present 8, requester ID 31:16, PASID 51:32, execute 52,
///   privileged 53;
/// - qw1: read 0, write 1, LPIG (last page in group) 2, PRG index 11:3, page address 63:12;
/// - qw2: private data; qw3: reserved.
public struct PageRequestDescriptor: Equatable, Sendable {
    public var requester: RequesterID
    public var pasid: PASID?
    public var read: Bool
    public var write: Bool
    public var execute: Bool
    public var privileged: Bool
    /// LPIG: the last request of its page request group.
    public var lastInGroup: Bool
    /// PRG index (9 bits).
    public var groupIndex: UInt16
    /// Page address (4 KiB aligned).
    public var address: UInt64
    public var privateData: UInt64

    @inlinable public static var type: UInt64 { 1 }
    @inlinable public static var size: UInt64 { 32 }

    public init(requester: RequesterID, pasid: PASID?, read: Bool, write: Bool, execute: Bool = false, privileged: Bool = false,
                lastInGroup: Bool, groupIndex: UInt16, address: UInt64, privateData: UInt64 = 0) {
        self.requester = requester; self.pasid = pasid; self.read = read; self.write = write
        self.execute = execute; self.privileged = privileged; self.lastInGroup = lastInGroup
        self.groupIndex = groupIndex & 0x1FF; self.address = address & ~0xFFF; self.privateData = privateData
    }

    /// A PASID stop marker (PCIe PRI: L = 1, R = W = 0): the device stopped using the PASID;
    /// it needs no response and is not a fault.
    public var isStopMarker: Bool { lastInGroup && !read && !write }

    public func encode() -> RawDescriptor {
        var q0 = Self.type | UInt64(requester.rawValue) << 16
        if let pasid { q0 |= 1 << 8 | UInt64(pasid.rawValue) << 32 }
        if execute { q0 |= 1 << 52 }
        if privileged { q0 |= 1 << 53 }
        var q1 = (address & ~0xFFF) | UInt64(groupIndex & 0x1FF) << 3
        if read { q1 |= 1 }
        if write { q1 |= 2 }
        if lastInGroup { q1 |= 4 }
        return RawDescriptor(q0, q1, privateData, 0)
    }

    /// Why a queue entry is not a page request software can act on.
    public enum DecodeError: Error, Equatable, Sendable {
        case wrongType(UInt8)
        case reservedBits
    }

    /// Decodes a queue entry (type and reserved bits checked).
    public static func decode(_ raw: RawDescriptor) -> Result<PageRequestDescriptor, DecodeError> {
        let t = UInt8(raw.qw0 & 0xFF)
        guard UInt64(t) == type else { return .failure(.wrongType(t)) }
        guard raw.qw0 & 0xFFC0_0000_0000_FE00 == 0, raw.qw3 == 0 else { return .failure(.reservedBits) }
        let pp = raw.qw0 & (1 << 8) != 0
        return .success(PageRequestDescriptor(
            requester: RequesterID(rawValue: UInt16(truncatingIfNeeded: raw.qw0 >> 16)),
            pasid: pp ? PASID(truncating: UInt32(truncatingIfNeeded: raw.qw0 >> 32)) : nil,
            read: raw.qw1 & 1 != 0, write: raw.qw1 & 2 != 0,
            execute: raw.qw0 & (1 << 52) != 0, privileged: raw.qw0 & (1 << 53) != 0,
            lastInGroup: raw.qw1 & 4 != 0, groupIndex: UInt16((raw.qw1 >> 3) & 0x1FF),
            address: raw.qw1 & ~0xFFF, privateData: raw.qw2))
    }
}

/// PCIe page request group response codes (PCIe PRI "PRG Response Message"; Linux
/// `enum iommu_page_response_code` maps onto them).
public enum PageResponseCode: UInt8, Equatable, Sendable, CaseIterable, CustomStringConvertible {
    /// The pages are resident: retry the translation.
    case success = 0
    /// The request is invalid: do not retry; the access fails.
    case invalidRequest = 1
    /// A general failure: the function disables its PRI.
    case responseFailure = 0xF

    public var description: String {
        switch self {
        case .success: return "SUCCESS"
        case .invalidRequest: return "INVALID"
        case .responseFailure: return "FAILURE"
        }
    }
}

/// PRS_REG bits (VT-d §11.4.11.4).
public enum VTdPageRequestStatus {
    /// PPR: pending page request (RW1C).
    @inlinable public static var pending: UInt32 { 1 << 0 }
    /// PRO: page request overflow (RW1C).
    @inlinable public static var overflow: UInt32 { 1 << 1 }
}

/// PQA_REG fields (VT-d §11.4.11.3): base 63:12, PQS 2:0 (the queue is 2^PQS 4 KiB pages).
public enum VTdPageRequestQueueAddress {
    public static func make(base: UInt64, sizeOrder: UInt8) -> UInt64 { (base & ~0xFFF) | UInt64(sizeOrder & 7) }
}
