/// SMMUv3 Event queue records, 32 bytes (IHI 0070 §7.3; Linux arm-smmu-v3.h `EVTQ_*`,
/// `EVT_ID_*` and `arm_smmu_decode_event`).
///
/// Common fields: word 0 EventID 7:0, SSV 11, SubstreamID 31:12, StreamID 63:32. Fault records
/// carry in word 1: STAG 15:0, Stall 31, PnU 33, InD 34, RnW 35, S2 39, CLASS 41:40, TTRnW 44
/// (F_PERMISSION); word 2: InputAddr 63:0; word 3: IPA 51:12 (translation faults) or
/// FetchAddr 51:3 (fetch aborts). F_UUT, F_STE_FETCH, F_CD_FETCH and F_VMS_FETCH carry an
/// IMPLEMENTATION DEFINED Reason in word 1 bits 15:0, F_CFG_CONFLICT in bits 31:0.
/// C_BAD_SUBSTREAMID has a SubstreamID but no SSV bit; F_STREAM_DISABLED has no SubstreamID.
/// F_BAD_ATS_TREQ and E_PAGE_REQUEST are modelled with their InputAddr[63:12] only (their
/// requested-permission and Span fields are not: Linux reads neither).
/// Each kind carries only its own fields (`fields`); encoding writes them and decoding reads
/// them, so any 32 bytes decode without trapping.

/// Event numbers (§7.3; Linux `EVT_ID_*` for those the driver names).
public enum SMMUEventID: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case fUUT = 0x01
    case cBadStreamID = 0x02        // EVT_ID_BAD_STREAMID_CONFIG
    case fSTEFetch = 0x03           // EVT_ID_STE_FETCH_FAULT
    case cBadSTE = 0x04             // EVT_ID_BAD_STE_CONFIG
    case fBadATSTReq = 0x05
    case fStreamDisabled = 0x06     // EVT_ID_STREAM_DISABLED_FAULT
    case fTranslForbidden = 0x07
    case cBadSubstreamID = 0x08     // EVT_ID_BAD_SUBSTREAMID_CONFIG
    case fCDFetch = 0x09            // EVT_ID_CD_FETCH_FAULT
    case cBadCD = 0x0A              // EVT_ID_BAD_CD_CONFIG
    case fWalkEABT = 0x0B
    case fTranslation = 0x10        // EVT_ID_TRANSLATION_FAULT
    case fAddrSize = 0x11           // EVT_ID_ADDR_SIZE_FAULT
    case fAccess = 0x12             // EVT_ID_ACCESS_FAULT
    case fPermission = 0x13         // EVT_ID_PERMISSION_FAULT
    case fTLBConflict = 0x20
    case fCfgConflict = 0x21
    case ePageRequest = 0x24
    case fVMSFetch = 0x25           // EVT_ID_VMS_FETCH_FAULT

    /// The architecture's name, as Linux's `event_str` prints it.
    public var description: String {
        switch self {
        case .fUUT: return "F_UUT"
        case .cBadStreamID: return "C_BAD_STREAMID"
        case .fSTEFetch: return "F_STE_FETCH"
        case .cBadSTE: return "C_BAD_STE"
        case .fBadATSTReq: return "F_BAD_ATS_TREQ"
        case .fStreamDisabled: return "F_STREAM_DISABLED"
        case .fTranslForbidden: return "F_TRANSL_FORBIDDEN"
        case .cBadSubstreamID: return "C_BAD_SUBSTREAMID"
        case .fCDFetch: return "F_CD_FETCH"
        case .cBadCD: return "C_BAD_CD"
        case .fWalkEABT: return "F_WALK_EABT"
        case .fTranslation: return "F_TRANSLATION"
        case .fAddrSize: return "F_ADDR_SIZE"
        case .fAccess: return "F_ACCESS"
        case .fPermission: return "F_PERMISSION"
        case .fTLBConflict: return "F_TLB_CONFLICT"
        case .fCfgConflict: return "F_CFG_CONFLICT"
        case .ePageRequest: return "E_PAGE_REQUEST"
        case .fVMSFetch: return "F_VMS_FETCH"
        }
    }

    /// The fields a record of this kind carries.
    public var fields: SMMUEventRecord.Fields {
        switch self {
        case .fUUT: return [.ssid, .access, .reason16, .inputAddress]
        case .cBadStreamID, .cBadSTE, .cBadCD: return [.ssid]
        case .fSTEFetch, .fCDFetch, .fVMSFetch: return [.ssid, .reason16, .fetchAddress]
        case .fBadATSTReq, .ePageRequest: return [.ssid, .inputPage]
        case .fStreamDisabled: return []
        case .fTranslForbidden: return [.read, .inputAddress]
        case .cBadSubstreamID: return [.substreamWithoutSSV]
        case .fWalkEABT: return [.ssid, .stall, .access, .stage, .inputAddress, .fetchAddress]
        case .fTranslation, .fAddrSize, .fAccess: return [.ssid, .stall, .access, .stage, .inputAddress, .ipa]
        case .fPermission: return [.ssid, .stall, .access, .stage, .ttRead, .inputAddress, .ipa]
        case .fTLBConflict: return [.ssid, .access, .stage, .inputAddress, .ipa]
        case .fCfgConflict: return [.ssid, .reason32]
        }
    }
}

/// CLASS (word 1 bits 41:40): which access of a translation faulted.
public enum SMMUEventClass: UInt8, Sendable, CaseIterable {
    /// A CD fetch (through stage 2).
    case cd = 0
    /// A stage 1 translation table walk (through stage 2); `EVTQ_1_CLASS_TT`.
    case tt = 1
    /// The input address of the transaction.
    case input = 2
}

/// A raw Event queue record: four little-endian 64-bit words.
public struct RawEvent: Equatable, Sendable {
    public var w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64
    public static let size: UInt64 = 32
    @inlinable public init(_ w0: UInt64, _ w1: UInt64, _ w2: UInt64, _ w3: UInt64) {
        self.w0 = w0; self.w1 = w1; self.w2 = w2; self.w3 = w3
    }
}

/// A decoded event record (Linux `struct arm_smmu_event`).
public struct SMMUEventRecord: Equatable, Sendable {
    /// Which fields a kind of record carries.
    public struct Fields: OptionSet, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// SSV 11 and SubstreamID 31:12.
        public static let ssid = Fields(rawValue: 1 << 0)
        /// SubstreamID 31:12 without SSV (C_BAD_SUBSTREAMID).
        public static let substreamWithoutSSV = Fields(rawValue: 1 << 1)
        /// STAG 15:0 and Stall 31.
        public static let stall = Fields(rawValue: 1 << 2)
        /// PnU 33, InD 34, RnW 35.
        public static let access = Fields(rawValue: 1 << 3)
        /// RnW 35 alone.
        public static let read = Fields(rawValue: 1 << 4)
        /// S2 39 and CLASS 41:40.
        public static let stage = Fields(rawValue: 1 << 5)
        /// TTRnW 44.
        public static let ttRead = Fields(rawValue: 1 << 6)
        /// Reason 15:0 / 31:0 of word 1.
        public static let reason16 = Fields(rawValue: 1 << 7)
        public static let reason32 = Fields(rawValue: 1 << 8)
        /// InputAddr 63:0 / 63:12.
        public static let inputAddress = Fields(rawValue: 1 << 9)
        public static let inputPage = Fields(rawValue: 1 << 10)
        /// IPA 51:12 / FetchAddr 51:3 of word 3.
        public static let ipa = Fields(rawValue: 1 << 11)
        public static let fetchAddress = Fields(rawValue: 1 << 12)
    }

    /// EventID (any value decodes; `kind` is nil for numbers this model does not know).
    public var id: UInt8
    public var sid: UInt32
    /// SubstreamID, nil when SSV == 0.
    public var ssid: UInt32?
    /// STAG: the token CMD_RESUME must quote (with `stall`).
    public var stag: UInt16
    public var stall: Bool
    /// PnU: privileged; InD: instruction; RnW: read.
    public var privileged: Bool
    public var instruction: Bool
    public var read: Bool
    /// S2: the fault is at stage 2; CLASS: what faulted.
    public var s2: Bool
    public var eventClass: UInt8
    /// TTRnW: a stage 1 walk read (1) or HTTU write (0) faulted at stage 2 (F_PERMISSION).
    public var ttRead: Bool
    /// IMPLEMENTATION DEFINED reason.
    public var reason: UInt32
    public var inputAddress: UInt64
    public var ipa: UInt64
    public var fetchAddress: UInt64

    public init(id: UInt8, sid: UInt32, ssid: UInt32? = nil, stag: UInt16 = 0, stall: Bool = false,
                privileged: Bool = false, instruction: Bool = false, read: Bool = false, s2: Bool = false,
                eventClass: UInt8 = 0, ttRead: Bool = false, reason: UInt32 = 0, inputAddress: UInt64 = 0,
                ipa: UInt64 = 0, fetchAddress: UInt64 = 0) {
        self.id = id; self.sid = sid; self.ssid = ssid; self.stag = stag; self.stall = stall
        self.privileged = privileged; self.instruction = instruction; self.read = read; self.s2 = s2
        self.eventClass = eventClass; self.ttRead = ttRead; self.reason = reason
        self.inputAddress = inputAddress; self.ipa = ipa; self.fetchAddress = fetchAddress
    }

    /// A record of `kind` as the SMMU writes it: fields the kind does not carry are dropped and
    /// addresses are truncated to their fields.
    public init(_ kind: SMMUEventID, sid: UInt32, ssid: UInt32? = nil, stag: UInt16 = 0, stall: Bool = false,
                privileged: Bool = false, instruction: Bool = false, read: Bool = false, s2: Bool = false,
                eventClass: SMMUEventClass = .input, ttRead: Bool = false, reason: UInt32 = 0,
                inputAddress: UInt64 = 0, ipa: UInt64 = 0, fetchAddress: UInt64 = 0) {
        self.init(id: kind.rawValue, sid: sid, ssid: ssid, stag: stag, stall: stall, privileged: privileged,
                  instruction: instruction, read: read, s2: s2, eventClass: eventClass.rawValue, ttRead: ttRead,
                  reason: reason, inputAddress: inputAddress, ipa: ipa, fetchAddress: fetchAddress)
        // Keep only what a record of this kind carries, as the SMMU would write it.
        self = Self.decode(encode())
    }

    @inlinable public var kind: SMMUEventID? { SMMUEventID(rawValue: id) }
    @inlinable public var eventClassValue: SMMUEventClass? { SMMUEventClass(rawValue: eventClass) }

    @inlinable static var ipaMask: UInt64 { BitField.genmask(51, 12) }
    @inlinable static var fetchMask: UInt64 { BitField.genmask(51, 3) }

    /// The record as the SMMU writes it; fields the kind does not carry are left zero.
    public func encode() -> RawEvent {
        let f = kind?.fields ?? [.ssid]
        var w0 = UInt64(id) | UInt64(sid) << 32
        var w1: UInt64 = 0, w2: UInt64 = 0, w3: UInt64 = 0
        if f.contains(.ssid), let ssid { w0 |= 1 << 11 | UInt64(ssid & 0xFFFFF) << 12 }
        if f.contains(.substreamWithoutSSV) { w0 |= UInt64((ssid ?? 0) & 0xFFFFF) << 12 }
        if f.contains(.stall) { w1 |= UInt64(stag) | (stall ? 1 << 31 : 0) }
        if f.contains(.access) { w1 |= (privileged ? 1 << 33 : 0) | (instruction ? 1 << 34 : 0) }
        if f.contains(.access) || f.contains(.read) { w1 |= read ? 1 << 35 : 0 }
        if f.contains(.stage) { w1 |= (s2 ? 1 << 39 : 0) | UInt64(eventClass & 3) << 40 }
        if f.contains(.ttRead) { w1 |= ttRead ? 1 << 44 : 0 }
        if f.contains(.reason16) { w1 |= UInt64(reason & 0xFFFF) }
        if f.contains(.reason32) { w1 |= UInt64(reason) }
        if f.contains(.inputAddress) { w2 = inputAddress }
        if f.contains(.inputPage) { w2 = inputAddress & ~0xFFF }
        if f.contains(.ipa) { w3 = ipa & Self.ipaMask }
        if f.contains(.fetchAddress) { w3 = fetchAddress & Self.fetchMask }
        return RawEvent(w0, w1, w2, w3)
    }

    /// Decodes any 32 bytes. An unknown EventID keeps its number, StreamID and SubstreamID.
    /// - Complexity: O(1), no allocation.
    public static func decode(_ raw: RawEvent) -> SMMUEventRecord {
        let id = UInt8(truncatingIfNeeded: raw.w0)
        let f = SMMUEventID(rawValue: id)?.fields ?? [.ssid]
        var e = SMMUEventRecord(id: id, sid: UInt32(truncatingIfNeeded: raw.w0 >> 32))
        let ssidBits = UInt32((raw.w0 >> 12) & 0xFFFFF)
        if f.contains(.ssid) && raw.w0 & (1 << 11) != 0 { e.ssid = ssidBits }
        if f.contains(.substreamWithoutSSV) { e.ssid = ssidBits }
        if f.contains(.stall) { e.stag = UInt16(truncatingIfNeeded: raw.w1); e.stall = raw.w1 & (1 << 31) != 0 }
        if f.contains(.access) {
            e.privileged = raw.w1 & (1 << 33) != 0
            e.instruction = raw.w1 & (1 << 34) != 0
        }
        if f.contains(.access) || f.contains(.read) { e.read = raw.w1 & (1 << 35) != 0 }
        if f.contains(.stage) { e.s2 = raw.w1 & (1 << 39) != 0; e.eventClass = UInt8((raw.w1 >> 40) & 3) }
        if f.contains(.ttRead) { e.ttRead = raw.w1 & (1 << 44) != 0 }
        if f.contains(.reason16) { e.reason = UInt32(raw.w1 & 0xFFFF) }
        if f.contains(.reason32) { e.reason = UInt32(truncatingIfNeeded: raw.w1) }
        if f.contains(.inputAddress) { e.inputAddress = raw.w2 }
        if f.contains(.inputPage) { e.inputAddress = raw.w2 & ~0xFFF }
        if f.contains(.ipa) { e.ipa = raw.w3 & ipaMask }
        if f.contains(.fetchAddress) { e.fetchAddress = raw.w3 & fetchMask }
        return e
    }
}
