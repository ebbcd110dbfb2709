/// An SMMUv3 PRI queue entry, 16 bytes: one PCIe Page Request as the SMMU records it (IHI 0070
/// chapter 8; Linux arm-smmu-v3.h `PRIQ_0_*`, `PRIQ_1_*` and `arm_smmu_handle_ppr`).
///
/// - word 0: StreamID 31:0, SubstreamID 51:32, Priv 58, Exec 59, Read 60, Write 61, Last 62,
///   SSV 63.
/// - word 1: PRGIndex 8:0, page address 63:12.
///
/// A request with a PASID (SSV == 1) and Last == 1, Read == Write == 0 is a PCIe Stop PASID
/// marker; without a PASID the same bits are an ordinary page request. When SSV == 0 the
/// SubstreamID is UNKNOWN and Exec and Priv are 0.
public struct PRIQEntry: Equatable, Sendable {
    public var sid: UInt32
    /// SubstreamID, nil when SSV == 0.
    public var ssid: UInt32?
    public var privileged: Bool
    public var execute: Bool
    public var read: Bool
    public var write: Bool
    /// Last: the final request of its page request group; the one software answers with
    /// CMD_PRI_RESP.
    public var last: Bool
    /// PRGIndex (9 bits).
    public var groupIndex: UInt16
    /// The page address, 4 KiB aligned.
    public var address: UInt64

    public static let size: UInt64 = 16

    public init(sid: UInt32, ssid: UInt32?, privileged: Bool = false, execute: Bool = false, read: Bool,
                write: Bool, last: Bool, groupIndex: UInt16, address: UInt64) {
        self.sid = sid; self.ssid = ssid.map { $0 & 0xFFFFF }
        self.privileged = privileged; self.execute = execute; self.read = read; self.write = write
        self.last = last; self.groupIndex = groupIndex & 0x1FF; self.address = address & ~0xFFF
    }

    /// A Stop PASID marker: needs no response and is not a fault.
    @inlinable public var isStopMarker: Bool { ssid != nil && last && !read && !write }

    public func encode() -> RawCommand {
        var w0 = UInt64(sid)
        if let ssid { w0 |= 1 << 63 | UInt64(ssid & 0xFFFFF) << 32 }
        if privileged { w0 |= 1 << 58 }
        if execute { w0 |= 1 << 59 }
        if read { w0 |= 1 << 60 }
        if write { w0 |= 1 << 61 }
        if last { w0 |= 1 << 62 }
        return RawCommand(w0, (address & ~0xFFF) | UInt64(groupIndex & 0x1FF))
    }

    /// Decodes any 16 bytes (Reserved bits 57:52 of word 0 and 11:9 of word 1 are ignored).
    /// - Complexity: O(1).
    public static func decode(_ raw: RawCommand) -> PRIQEntry {
        let w0 = raw.w0, w1 = raw.w1
        return PRIQEntry(sid: UInt32(truncatingIfNeeded: w0),
                         ssid: w0 & (1 << 63) != 0 ? UInt32((w0 >> 32) & 0xFFFFF) : nil,
                         privileged: w0 & (1 << 58) != 0, execute: w0 & (1 << 59) != 0,
                         read: w0 & (1 << 60) != 0, write: w0 & (1 << 61) != 0, last: w0 & (1 << 62) != 0,
                         groupIndex: UInt16(w1 & 0x1FF), address: w1 & ~0xFFF)
    }
}
