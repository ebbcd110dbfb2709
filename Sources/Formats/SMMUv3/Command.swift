/// SMMUv3 Command queue entries, 16 bytes (IHI 0070 chapter 4; Linux arm-smmu-v3.h
/// `CMDQ_OP_*`, `CMDQ_*_0_*`/`CMDQ_*_1_*` masks and `arm_smmu_cmdq_build_cmd`).
///
/// Common fields of word 0: opcode 7:0, SSec 10 (must be 0 on the Non-secure queue), SSV 11,
/// SubstreamID 31:12, StreamID 63:32. TLB invalidations: NUM 16:12, SCALE 24:20, VMID 47:32,
/// ASID 63:48; word 1 Leaf 0, TTL 9:8, TG 11:10, address 63:12 (an IPA: 51:12). The rest is
/// given per command below. Decoding and CERROR_ILL detection are in Command+Decode.swift.

/// A raw Command queue entry: two little-endian 64-bit words.
public struct RawCommand: Equatable, Sendable {
    public var w0: UInt64
    public var w1: UInt64
    public static let size: UInt64 = 16
    @inlinable public init(_ w0: UInt64, _ w1: UInt64) { self.w0 = w0; self.w1 = w1 }
    /// The opcode, bits 7:0.
    @inlinable public var opcode: UInt8 { UInt8(truncatingIfNeeded: w0) }
}

/// Command opcodes (§4.1.1), named as Linux's `CMDQ_OP_*` (and the architecture's CMD_*).
public enum SMMUCommandOpcode: UInt8, Sendable, CaseIterable {
    case prefetchConfig = 0x01      // CMDQ_OP_PREFETCH_CFG
    case prefetchAddr = 0x02        // CMD_PREFETCH_ADDR (Linux never issues it)
    case cfgiSTE = 0x03             // CMDQ_OP_CFGI_STE
    case cfgiSTERange = 0x04        // CMDQ_OP_CFGI_ALL is CMD_CFGI_STE_RANGE with Range = 31
    case cfgiCD = 0x05              // CMDQ_OP_CFGI_CD
    case cfgiCDAll = 0x06           // CMDQ_OP_CFGI_CD_ALL
    case tlbiNHAll = 0x10           // CMDQ_OP_TLBI_NH_ALL
    case tlbiNHASID = 0x11          // CMDQ_OP_TLBI_NH_ASID
    case tlbiNHVA = 0x12            // CMDQ_OP_TLBI_NH_VA
    case tlbiNHVAA = 0x13           // CMDQ_OP_TLBI_NH_VAA
    case tlbiEL2All = 0x20          // CMDQ_OP_TLBI_EL2_ALL
    case tlbiEL2ASID = 0x21         // CMDQ_OP_TLBI_EL2_ASID
    case tlbiEL2VA = 0x22           // CMDQ_OP_TLBI_EL2_VA
    case tlbiEL2VAA = 0x23          // CMD_TLBI_EL2_VAA
    case tlbiS12VMAll = 0x28        // CMDQ_OP_TLBI_S12_VMALL
    case tlbiS2IPA = 0x2A           // CMDQ_OP_TLBI_S2_IPA
    case tlbiNSNHAll = 0x30         // CMDQ_OP_TLBI_NSNH_ALL
    case atcInv = 0x40              // CMDQ_OP_ATC_INV
    case priResp = 0x41             // CMDQ_OP_PRI_RESP
    case resume = 0x44              // CMDQ_OP_RESUME
    case stallTerm = 0x45           // CMD_STALL_TERM
    case sync = 0x46                // CMDQ_OP_CMD_SYNC
}

/// The granule a range TLB invalidation names (TG, word 1 bits 11:10). Note the encoding
/// differs from TCR.TG0: 0b01 4 KiB, 0b10 16 KiB, 0b11 64 KiB; 0b00 means no range and no TTL.
public enum TLBIGranule: UInt8, Sendable, CaseIterable {
    case size4K = 1
    case size16K = 2
    case size64K = 3
    @inlinable public var shift: UInt64 { self == .size4K ? 12 : self == .size16K ? 14 : 16 }
}

/// The address part of CMD_TLBI_{NH,EL2}_VA{A} and CMD_TLBI_S2_IPA (§4.4.1.1): with a
/// granule, a range of (NUM + 1) × 2^SCALE granules from `address` and a level hint TTL;
/// without, a single address at any level.
public struct TLBIAddress: Equatable, Sendable {
    /// The VA (bits 63:12) or IPA (bits 51:12); bits 11:0 are zero.
    public var address: UInt64
    /// Leaf: only last-level entries need invalidating.
    public var leaf: Bool
    /// TG; nil encodes 0b00.
    public var granule: TLBIGranule?
    /// TTL: 0 any level, else the level (1–3) of the leaf entries.
    public var ttl: UInt8
    /// NUM (5 bits) and SCALE (5 bits).
    public var num: UInt8
    public var scale: UInt8

    public init(address: UInt64, leaf: Bool, granule: TLBIGranule? = nil, ttl: UInt8 = 0, num: UInt8 = 0, scale: UInt8 = 0) {
        self.address = address & ~0xFFF; self.leaf = leaf; self.granule = granule
        self.ttl = ttl & 3; self.num = num & 0x1F; self.scale = scale & 0x1F
    }

    /// Bytes invalidated from `address` when TG names a granule: (NUM+1) × 2^SCALE × granule.
    @inlinable
    public var rangeBytes: UInt64? {
        guard let granule else { return nil }
        return (UInt64(num) + 1) << (UInt64(scale) + granule.shift)
    }
}

/// CMD_PRI_RESP Resp (word 1 bits 13:12). Linux `enum pri_resp`: PRI_RESP_DENY = 0,
/// PRI_RESP_FAIL = 1, PRI_RESP_SUCC = 2; 0b11 is ILLEGAL.
public enum PRIResponse: UInt8, Sendable, CaseIterable {
    /// 0b00, Linux PRI_RESP_DENY: PCIe Response Failure (the function disables its PRI).
    case responseFailure = 0
    /// 0b01, Linux PRI_RESP_FAIL: PCIe Invalid Request.
    case invalidRequest = 1
    /// 0b10, Linux PRI_RESP_SUCC: PCIe Success.
    case success = 2

    /// The PCIe PRG response code the endpoint receives.
    @inlinable public var pcieCode: PageResponseCode {
        switch self {
        case .responseFailure: return .responseFailure
        case .invalidRequest: return .invalidRequest
        case .success: return .success
        }
    }
}

/// CMD_RESUME's action (word 0: Ac bit 12, Ab bit 13). Linux encodes it as a 2-bit
/// `CMDQ_RESUME_0_RESP`: TERM = 0, RETRY = 1, ABORT = 2.
public enum ResumeAction: Equatable, Sendable {
    /// Ac = 1: retry the transaction as if it had just arrived (Ab is IGNORED).
    case retry
    /// Ac = 0: terminate, with an abort to the device (Ab = 1) or RAZ/WI (Ab = 0).
    case terminate(abort: Bool)
}

/// CMD_SYNC completion signal, CS (word 0 bits 13:12); 0b11 is ILLEGAL.
public enum SyncCompletionSignal: UInt8, Sendable, CaseIterable {
    /// SIG_NONE (`CMDQ_SYNC_0_CS_NONE`).
    case none = 0
    /// SIG_IRQ (`CMDQ_SYNC_0_CS_IRQ`): an interrupt; with a non-zero MSIAddress, a 32-bit
    /// write of MSIData there (Linux points it at the CMD_SYNC itself to poll).
    case irq = 1
    /// SIG_SEV (`CMDQ_SYNC_0_CS_SEV`): a WFE wake-up event (SIG_NONE without SMMU_IDR0.SEV).
    case sev = 2
}

/// CMD_SYNC's parameters: CS 13:12, MSH 23:22, MSIAttr 27:24, MSIData 63:32; MSIAddr 51:2.
public struct CommandSync: Equatable, Sendable {
    public var signal: SyncCompletionSignal
    /// MSIAddress, 4-byte aligned (bits 51:2).
    public var msiAddress: UInt64
    public var msiData: UInt32
    /// MSIAttr (STE.MemAttr encoding; Linux: 0xF, `ARM_SMMU_MEMATTR_OIWB`).
    public var msiAttr: UInt8
    /// MSH (Linux: 0b11, `ARM_SMMU_SH_ISH`).
    public var msh: UInt8

    public init(signal: SyncCompletionSignal, msiAddress: UInt64 = 0, msiData: UInt32 = 0, msiAttr: UInt8 = 0, msh: UInt8 = 0) {
        self.signal = signal; self.msiAddress = msiAddress & Self.msiAddressMask; self.msiData = msiData
        self.msiAttr = msiAttr & 0xF; self.msh = msh & 3
    }

    /// What `arm_smmu_cmdq_build_sync_cmd` issues: with an MSI address (MSI polling), SIG_IRQ
    /// writing 0 to it; else SIG_SEV. MSH inner shareable, MSIAttr outer/inner write-back.
    public static func linux(msiAddress: UInt64?) -> CommandSync {
        CommandSync(signal: msiAddress == nil ? .sev : .irq, msiAddress: msiAddress ?? 0, msiData: 0, msiAttr: 0xF, msh: 3)
    }

    @inlinable public static var msiAddressMask: UInt64 { BitField.genmask(51, 2) }
}

/// A decoded command. `SubstreamID?` is nil when SSV == 0.
public enum SMMUCommand: Equatable, Sendable {
    /// CMD_PREFETCH_CONFIG(StreamID, SubstreamID, SSV).
    case prefetchConfig(sid: UInt32, ssid: UInt32?)
    /// CMD_PREFETCH_ADDR: 2^Size translations at a stride of 2^(12+Stride) from `address`
    /// (word 1: Size 4:0, Stride 9:5, Addr 63:12).
    case prefetchAddr(sid: UInt32, ssid: UInt32?, address: UInt64, size: UInt8, stride: UInt8)
    /// CMD_CFGI_STE(StreamID, Leaf): Leaf 0 also invalidates the L1STD.
    case cfgiSTE(sid: UInt32, leaf: Bool)
    /// CMD_CFGI_STE_RANGE(StreamID, Range): 2^(Range+1) StreamIDs aligned to the range;
    /// Range 31 is CMD_CFGI_ALL.
    case cfgiSTERange(sid: UInt32, range: UInt8)
    /// CMD_CFGI_CD(StreamID, SubstreamID, Leaf). No SSV: the SubstreamID indexes the CD table.
    case cfgiCD(sid: UInt32, ssid: UInt32, leaf: Bool)
    /// CMD_CFGI_CD_ALL(StreamID).
    case cfgiCDAll(sid: UInt32)
    case tlbiNHAll(vmid: UInt16)
    case tlbiNHASID(vmid: UInt16, asid: UInt16)
    case tlbiNHVA(vmid: UInt16, asid: UInt16, TLBIAddress)
    case tlbiNHVAA(vmid: UInt16, TLBIAddress)
    case tlbiEL2All
    case tlbiEL2ASID(asid: UInt16)
    case tlbiEL2VA(asid: UInt16, TLBIAddress)
    case tlbiEL2VAA(TLBIAddress)
    case tlbiS12VMAll(vmid: UInt16)
    /// CMD_TLBI_S2_IPA(VMID, IPA, Leaf) with the range fields.
    case tlbiS2IPA(vmid: UInt16, TLBIAddress)
    case tlbiNSNHAll
    /// CMD_ATC_INV: 4096 × 2^Size bytes at `address` (aligned to the span); Size 52 is all
    /// (`ATC_INV_SIZE_ALL`). Global (word 0 bit 9) applies only with a SubstreamID.
    case atcInv(sid: UInt32, ssid: UInt32?, global: Bool, address: UInt64, size: UInt8)
    /// CMD_PRI_RESP: PRGIndex word 1 bits 8:0, Resp 13:12.
    case priResp(sid: UInt32, ssid: UInt32?, groupIndex: UInt16, response: PRIResponse)
    /// CMD_RESUME(StreamID, STAG, Action, Abort): STAG word 1 bits 15:0.
    case resume(sid: UInt32, stag: UInt16, action: ResumeAction)
    /// CMD_STALL_TERM(StreamID): terminate every stalled transaction of the stream.
    case stallTerm(sid: UInt32)
    case sync(CommandSync)

    /// CMD_CFGI_ALL.
    public static let cfgiAll = SMMUCommand.cfgiSTERange(sid: 0, range: 31)

    public var opcode: SMMUCommandOpcode {
        switch self {
        case .prefetchConfig: return .prefetchConfig
        case .prefetchAddr: return .prefetchAddr
        case .cfgiSTE: return .cfgiSTE
        case .cfgiSTERange: return .cfgiSTERange
        case .cfgiCD: return .cfgiCD
        case .cfgiCDAll: return .cfgiCDAll
        case .tlbiNHAll: return .tlbiNHAll
        case .tlbiNHASID: return .tlbiNHASID
        case .tlbiNHVA: return .tlbiNHVA
        case .tlbiNHVAA: return .tlbiNHVAA
        case .tlbiEL2All: return .tlbiEL2All
        case .tlbiEL2ASID: return .tlbiEL2ASID
        case .tlbiEL2VA: return .tlbiEL2VA
        case .tlbiEL2VAA: return .tlbiEL2VAA
        case .tlbiS12VMAll: return .tlbiS12VMAll
        case .tlbiS2IPA: return .tlbiS2IPA
        case .tlbiNSNHAll: return .tlbiNSNHAll
        case .atcInv: return .atcInv
        case .priResp: return .priResp
        case .resume: return .resume
        case .stallTerm: return .stallTerm
        case .sync: return .sync
        }
    }

    // MARK: Encode

    @inlinable static func sidField(_ sid: UInt32) -> UInt64 { UInt64(sid) << 32 }
    @inlinable static func ssidFields(_ ssid: UInt32?) -> UInt64 {
        guard let ssid else { return 0 }
        return 1 << 11 | UInt64(ssid & 0xFFFFF) << 12
    }
    @inlinable static func rangeWord0(_ r: TLBIAddress) -> UInt64 { UInt64(r.num) << 12 | UInt64(r.scale) << 20 }
    @inlinable static func rangeWord1(_ r: TLBIAddress, ipa: Bool) -> UInt64 {
        let addressMask: UInt64 = ipa ? BitField.genmask(51, 12) : BitField.genmask(63, 12)
        return (r.address & addressMask) | (r.leaf ? 1 : 0) | UInt64(r.ttl) << 8 | UInt64(r.granule?.rawValue ?? 0) << 10
    }

    /// The two words as the driver writes them into the queue.
    public func encode() -> RawCommand {
        let op = UInt64(opcode.rawValue)
        switch self {
        case .prefetchConfig(let sid, let ssid):
            return RawCommand(op | Self.ssidFields(ssid) | Self.sidField(sid), 0)
        case .prefetchAddr(let sid, let ssid, let address, let size, let stride):
            return RawCommand(op | Self.ssidFields(ssid) | Self.sidField(sid),
                              (address & ~0xFFF) | UInt64(size & 0x1F) | UInt64(stride & 0x1F) << 5)
        case .cfgiSTE(let sid, let leaf):
            return RawCommand(op | Self.sidField(sid), leaf ? 1 : 0)
        case .cfgiSTERange(let sid, let range):
            return RawCommand(op | Self.sidField(sid), UInt64(range & 0x1F))
        case .cfgiCD(let sid, let ssid, let leaf):
            return RawCommand(op | UInt64(ssid & 0xFFFFF) << 12 | Self.sidField(sid), leaf ? 1 : 0)
        case .cfgiCDAll(let sid):
            return RawCommand(op | Self.sidField(sid), 0)
        case .tlbiNHAll(let vmid), .tlbiS12VMAll(let vmid):
            return RawCommand(op | UInt64(vmid) << 32, 0)
        case .tlbiNHASID(let vmid, let asid):
            return RawCommand(op | UInt64(vmid) << 32 | UInt64(asid) << 48, 0)
        case .tlbiNHVA(let vmid, let asid, let r):
            return RawCommand(op | Self.rangeWord0(r) | UInt64(vmid) << 32 | UInt64(asid) << 48, Self.rangeWord1(r, ipa: false))
        case .tlbiNHVAA(let vmid, let r):
            return RawCommand(op | Self.rangeWord0(r) | UInt64(vmid) << 32, Self.rangeWord1(r, ipa: false))
        case .tlbiEL2All, .tlbiNSNHAll:
            return RawCommand(op, 0)
        case .tlbiEL2ASID(let asid):
            return RawCommand(op | UInt64(asid) << 48, 0)
        case .tlbiEL2VA(let asid, let r):
            return RawCommand(op | Self.rangeWord0(r) | UInt64(asid) << 48, Self.rangeWord1(r, ipa: false))
        case .tlbiEL2VAA(let r):
            return RawCommand(op | Self.rangeWord0(r), Self.rangeWord1(r, ipa: false))
        case .tlbiS2IPA(let vmid, let r):
            return RawCommand(op | Self.rangeWord0(r) | UInt64(vmid) << 32, Self.rangeWord1(r, ipa: true))
        case .atcInv(let sid, let ssid, let global, let address, let size):
            return RawCommand(op | (global ? 1 << 9 : 0) | Self.ssidFields(ssid) | Self.sidField(sid),
                              (address & ~0xFFF) | UInt64(size & 0x3F))
        case .priResp(let sid, let ssid, let group, let response):
            return RawCommand(op | Self.ssidFields(ssid) | Self.sidField(sid),
                              UInt64(group & 0x1FF) | UInt64(response.rawValue) << 12)
        case .resume(let sid, let stag, let action):
            let resp: UInt64
            switch action {
            case .retry: resp = 1
            case .terminate(let abort): resp = abort ? 2 : 0
            }
            return RawCommand(op | resp << 12 | Self.sidField(sid), UInt64(stag))
        case .stallTerm(let sid):
            return RawCommand(op | Self.sidField(sid), 0)
        case .sync(let s):
            return RawCommand(op | UInt64(s.signal.rawValue) << 12 | UInt64(s.msh & 3) << 22 | UInt64(s.msiAttr & 0xF) << 24
                              | UInt64(s.msiData) << 32, s.msiAddress & CommandSync.msiAddressMask)
        }
    }
}
