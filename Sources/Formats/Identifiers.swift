/// A PCIe requester ID (bus:device.function), the source-id of a request.
/// Corresponds to VT-d "Source-ID" (SID) and Linux `PCI_DEVID(bus, devfn)`.
public struct RequesterID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public init(bus: UInt8, device: UInt8, function: UInt8) {
        rawValue = UInt16(bus) << 8 | UInt16(device & 0x1F) << 3 | UInt16(function & 7)
    }
    public var bus: UInt8 { UInt8(rawValue >> 8) }
    /// Device and function, `devfn` in Linux.
    public var devfn: UInt8 { UInt8(rawValue & 0xFF) }
    public var device: UInt8 { devfn >> 3 }
    public var function: UInt8 { devfn & 7 }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String {
        let hex = { (v: UInt8, w: Int) -> String in
            let s = String(v, radix: 16); return String(repeating: "0", count: max(0, w - s.count)) + s }
        return "\(hex(bus, 2)):\(hex(device, 2)).\(function)"
    }
}

/// A Process Address Space ID (20 bits). Corresponds to the PCIe PASID TLP prefix and
/// VT-d PASID-table indexing; Linux `ioasid_t`.
public struct PASID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    /// Number of PASID bits the architecture allows (PCIe, VT-d: 20).
    public static let bits = 20
    public static let limit: UInt32 = 1 << 20
    /// Returns nil for values that do not fit in 20 bits.
    public init?(_ value: UInt32) {
        guard value < Self.limit else { return nil }
        rawValue = value
    }
    public init(truncating value: UInt32) { rawValue = value & (Self.limit - 1) }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "PASID \(rawValue)" }
    /// Linux `IOMMU_NO_PASID`: the PASID used as RID_PASID for requests without a PASID.
    public static let noPASID = PASID(truncating: 0)
}

/// A VT-d domain identifier: the tag of IOTLB, PASID-cache and context-cache entries.
/// Corresponds to the DID field of PASID-table entries and invalidation descriptors (16 bits).
public struct DomainID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(_ rawValue: UInt16) { self.rawValue = rawValue }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "DID \(rawValue)" }
}
