/// Decoding Command queue entries and detecting illegal commands (IHI 0070 §4.1.3–§4.1.7 and
/// the per-command ILLEGAL conditions of §4.2–§4.7). Any 16 bytes decode without trapping: a
/// command is either decoded or rejected with the reason for its CERROR_ILL.
///
/// Choices where the architecture leaves one to the implementation:
/// - Non-zero Reserved fields (§4.1.5 permits ignoring or CERROR_ILL): CERROR_ILL unless the
///   decoder is asked not to check (`checkReservedFields: false`).
/// - CMD_ATC_INV with Size > 52 (permitted to raise CERROR_ILL): CERROR_ILL.
/// - Out-of-range StreamID/SubstreamID parameters (§4.1.7) are CONSTRAINED UNPREDICTABLE
///   between "no effect" and "some other value", never CERROR_ILL: they decode, and the
///   hardware model gives them no effect.

/// The Command queue error codes of SMMU_CMDQ_CONS.ERR (§7.1; Linux `CMDQ_ERR_CERROR_*_IDX`).
public enum CERROR: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// CMDQ_ERR_CERROR_NONE_IDX.
    case none = 0
    /// CERROR_ILL: an illegal command (Linux skips it by rewriting it as a CMD_SYNC).
    case ill = 1
    /// CERROR_ABT: an abort on command fetch (Linux retries).
    case abt = 2
    /// CERROR_ATC_INV_SYNC: a CMD_SYNC could not complete because an ATC invalidation timed out.
    case atcInvSync = 3

    public var description: String {
        switch self {
        case .none: return "No error"
        case .ill: return "Illegal command"
        case .abt: return "Abort on command fetch"
        case .atcInvSync: return "ATC invalidate timeout"
        }
    }
}

/// Why a command is illegal; each raises CERROR_ILL.
public struct IllegalCommand: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Reason: Error, Equatable, Sendable {
        /// A Reserved (or IMPLEMENTATION DEFINED, none implemented) opcode.
        case reservedOpcode
        /// An opcode the architecture defines that this SMMU does not offer on its
        /// Non-secure queue (Secure-only, EL3, MPAM, DPT commands) or a command whose feature
        /// is absent (stage 1, stage 2, Hyp, ATS, PRI, stalls).
        case notSupported
        /// SSec == 1 on the Non-secure Command queue.
        case secureStream
        /// A Reserved field is non-zero (`word` 0 or 1, `bits` the offending bits).
        case reservedField(word: Int, bits: UInt64)
        /// CMD_PRI_RESP with Resp == 0b11.
        case reservedResponse
        /// CMD_SYNC with CS == 0b11.
        case reservedCompletionSignal
        /// A range TLBI with TG != 0 and NUM == SCALE == TTL == 0, or TG = 16 KiB with TTL == 1.
        case reservedRangeEncoding
        /// CMD_ATC_INV with Size > 52.
        case atcSizeOutOfRange(UInt8)
    }

    public var opcode: UInt8
    public var reason: Reason
    /// The error reported in SMMU_CMDQ_CONS.ERR.
    public var cerror: CERROR { .ill }

    public init(opcode: UInt8, reason: Reason) { self.opcode = opcode; self.reason = reason }

    public var description: String { "CERROR_ILL: opcode 0x\(String(opcode, radix: 16)) \(reason)" }
}

extension SMMUCommand {
    /// Decodes `raw` as the Non-secure Command queue of an SMMU with `features` consumes it.
    /// - Complexity: O(1), no allocation.
    public static func decode(_ raw: RawCommand, features f: SMMUv3Features,
                              checkReservedFields: Bool = true) -> Result<SMMUCommand, IllegalCommand> {
        let w0 = raw.w0, w1 = raw.w1
        let opByte = raw.opcode
        func fail(_ r: IllegalCommand.Reason) -> Result<SMMUCommand, IllegalCommand> { .failure(IllegalCommand(opcode: opByte, reason: r)) }
        guard let op = SMMUCommandOpcode(rawValue: opByte) else {
            return fail(Self.architectedButUnavailable(opByte) ? .notSupported : .reservedOpcode)
        }
        // Feature gates (§4.3–§4.7).
        switch op {
        case .cfgiCD, .cfgiCDAll, .tlbiNHAll, .tlbiNHASID, .tlbiNHVA, .tlbiNHVAA:
            if !f.stage1 { return fail(.notSupported) }
        case .tlbiEL2All, .tlbiEL2ASID, .tlbiEL2VA, .tlbiEL2VAA:
            if !f.hyp { return fail(.notSupported) }
        case .tlbiS12VMAll, .tlbiS2IPA:
            if !f.stage2 { return fail(.notSupported) }
        case .atcInv:
            if !f.ats { return fail(.notSupported) }
        case .priResp:
            if !f.pri { return fail(.notSupported) }
        case .resume, .stallTerm:
            if f.stallModel == .terminateOnly { return fail(.notSupported) }
        default:
            break
        }
        // SSec, where the command has it, must be 0 on the Non-secure queue.
        switch op {
        case .prefetchConfig, .prefetchAddr, .cfgiSTE, .cfgiSTERange, .cfgiCD, .cfgiCDAll, .resume, .stallTerm:
            if w0 & (1 << 10) != 0 { return fail(.secureStream) }
        default:
            break
        }
        if checkReservedFields {
            let (a0, a1) = Self.fieldMasks(op)
            if w0 & ~a0 != 0 { return fail(.reservedField(word: 0, bits: w0 & ~a0)) }
            if w1 & ~a1 != 0 { return fail(.reservedField(word: 1, bits: w1 & ~a1)) }
        }
        let sid = UInt32(truncatingIfNeeded: w0 >> 32)
        let ssid: UInt32? = w0 & (1 << 11) != 0 ? UInt32((w0 >> 12) & 0xFFFFF) : nil
        let vmid = UInt16(truncatingIfNeeded: w0 >> 32)
        let asid = UInt16(truncatingIfNeeded: w0 >> 48)
        switch op {
        case .prefetchConfig:
            return .success(.prefetchConfig(sid: sid, ssid: ssid))
        case .prefetchAddr:
            return .success(.prefetchAddr(sid: sid, ssid: ssid, address: w1 & ~0xFFF, size: UInt8(w1 & 0x1F),
                                          stride: UInt8((w1 >> 5) & 0x1F)))
        case .cfgiSTE:
            return .success(.cfgiSTE(sid: sid, leaf: w1 & 1 != 0))
        case .cfgiSTERange:
            return .success(.cfgiSTERange(sid: sid, range: UInt8(w1 & 0x1F)))
        case .cfgiCD:
            return .success(.cfgiCD(sid: sid, ssid: UInt32((w0 >> 12) & 0xFFFFF), leaf: w1 & 1 != 0))
        case .cfgiCDAll:
            return .success(.cfgiCDAll(sid: sid))
        case .tlbiNHAll:
            return .success(.tlbiNHAll(vmid: vmid))
        case .tlbiNHASID:
            return .success(.tlbiNHASID(vmid: vmid, asid: asid))
        case .tlbiEL2All:
            return .success(.tlbiEL2All)
        case .tlbiEL2ASID:
            return .success(.tlbiEL2ASID(asid: asid))
        case .tlbiS12VMAll:
            return .success(.tlbiS12VMAll(vmid: vmid))
        case .tlbiNSNHAll:
            return .success(.tlbiNSNHAll)
        case .tlbiNHVA, .tlbiNHVAA, .tlbiEL2VA, .tlbiEL2VAA, .tlbiS2IPA:
            let r: TLBIAddress
            switch Self.decodeRange(w0, w1, ipa: op == .tlbiS2IPA, features: f, checkReservedFields: checkReservedFields) {
            case .success(let v): r = v
            case .failure(let reason): return fail(reason)
            }
            switch op {
            case .tlbiNHVA: return .success(.tlbiNHVA(vmid: vmid, asid: asid, r))
            case .tlbiNHVAA: return .success(.tlbiNHVAA(vmid: vmid, r))
            case .tlbiEL2VA: return .success(.tlbiEL2VA(asid: asid, r))
            case .tlbiEL2VAA: return .success(.tlbiEL2VAA(r))
            default: return .success(.tlbiS2IPA(vmid: vmid, r))
            }
        case .atcInv:
            let size = UInt8(w1 & 0x3F)
            if size > 52 { return fail(.atcSizeOutOfRange(size)) }
            return .success(.atcInv(sid: sid, ssid: ssid, global: w0 & (1 << 9) != 0, address: w1 & ~0xFFF, size: size))
        case .priResp:
            guard let response = PRIResponse(rawValue: UInt8((w1 >> 12) & 3)) else { return fail(.reservedResponse) }
            return .success(.priResp(sid: sid, ssid: ssid, groupIndex: UInt16(w1 & 0x1FF), response: response))
        case .resume:
            let retry = w0 & (1 << 12) != 0
            return .success(.resume(sid: sid, stag: UInt16(truncatingIfNeeded: w1),
                                    action: retry ? .retry : .terminate(abort: w0 & (1 << 13) != 0)))
        case .stallTerm:
            return .success(.stallTerm(sid: sid))
        case .sync:
            guard let cs = SyncCompletionSignal(rawValue: UInt8((w0 >> 12) & 3)) else { return fail(.reservedCompletionSignal) }
            return .success(.sync(CommandSync(signal: cs, msiAddress: w1, msiData: UInt32(truncatingIfNeeded: w0 >> 32),
                                              msiAttr: UInt8((w0 >> 24) & 0xF), msh: UInt8((w0 >> 22) & 3))))
        }
    }

    /// Opcodes the architecture defines that this Non-secure, non-MPAM, non-DPT SMMU does not
    /// accept: CMD_CFGI_VMS_PIDM, CMD_TLBI_EL3_*, the Secure-queue CMD_TLBI_S_* and
    /// CMD_TLBI_SNH_ALL, CMD_DPTI_*.
    @inlinable
    static func architectedButUnavailable(_ op: UInt8) -> Bool {
        switch op {
        case 0x07, 0x18, 0x1A, 0x50...0x53, 0x58, 0x5A, 0x60, 0x70, 0x73: return true
        default: return false
        }
    }

    /// The bits of each word that belong to a field of `op` (everything else is Reserved).
    @inlinable
    static func fieldMasks(_ op: SMMUCommandOpcode) -> (UInt64, UInt64) {
        let opc: UInt64 = 0xFF
        let ssec: UInt64 = 1 << 10
        let ssv: UInt64 = 1 << 11 | BitField.genmask(31, 12)
        let sid = BitField.genmask(63, 32)
        let vmid = BitField.genmask(47, 32)
        let asid = BitField.genmask(63, 48)
        let range0 = BitField.genmask(16, 12) | BitField.genmask(24, 20)
        let range1: UInt64 = 1 | BitField.genmask(11, 8)
        switch op {
        case .prefetchConfig: return (opc | ssec | ssv | sid, 0)
        case .prefetchAddr: return (opc | ssec | ssv | sid, BitField.genmask(9, 0) | BitField.genmask(63, 12))
        case .cfgiSTE: return (opc | ssec | sid, 1)
        case .cfgiSTERange: return (opc | ssec | sid, 0x1F)
        case .cfgiCD: return (opc | ssec | BitField.genmask(31, 12) | sid, 1)
        case .cfgiCDAll: return (opc | ssec | sid, 0)
        case .tlbiNHAll, .tlbiS12VMAll: return (opc | vmid, 0)
        case .tlbiNHASID: return (opc | vmid | asid, 0)
        case .tlbiNHVA: return (opc | range0 | vmid | asid, range1 | BitField.genmask(63, 12))
        case .tlbiNHVAA: return (opc | range0 | vmid, range1 | BitField.genmask(63, 12))
        case .tlbiEL2All, .tlbiNSNHAll: return (opc, 0)
        case .tlbiEL2ASID: return (opc | asid, 0)
        case .tlbiEL2VA: return (opc | range0 | asid, range1 | BitField.genmask(63, 12))
        case .tlbiEL2VAA: return (opc | range0, range1 | BitField.genmask(63, 12))
        case .tlbiS2IPA: return (opc | range0 | vmid, range1 | BitField.genmask(51, 12))
        case .atcInv: return (opc | 1 << 9 | ssv | sid, BitField.genmask(5, 0) | BitField.genmask(63, 12))
        case .priResp: return (opc | ssv | sid, BitField.genmask(8, 0) | BitField.genmask(13, 12))
        case .resume: return (opc | ssec | BitField.genmask(13, 12) | sid, 0xFFFF)
        case .stallTerm: return (opc | ssec | sid, 0)
        case .sync: return (opc | BitField.genmask(13, 12) | BitField.genmask(27, 22) | BitField.genmask(63, 32),
                            CommandSync.msiAddressMask)
        }
    }

    /// The range fields of a TLBI by address (§4.4.1.1).
    @inlinable
    static func decodeRange(_ w0: UInt64, _ w1: UInt64, ipa: Bool, features f: SMMUv3Features,
                            checkReservedFields: Bool) -> Result<TLBIAddress, IllegalCommand.Reason> {
        let num = UInt8((w0 >> 12) & 0x1F), scale = UInt8((w0 >> 20) & 0x1F)
        let ttl = UInt8((w1 >> 8) & 3), tg = UInt8((w1 >> 10) & 3)
        if checkReservedFields {
            // Without RIL, or with TG == 0, NUM/SCALE/TTL (and TG) are RES0.
            let range0 = w0 & (BitField.genmask(16, 12) | BitField.genmask(24, 20))
            if !f.rangeInvalidation && range0 != 0 { return .failure(.reservedField(word: 0, bits: range0)) }
            if !f.rangeInvalidation && (ttl | tg) != 0 { return .failure(.reservedField(word: 1, bits: w1 & BitField.genmask(11, 8))) }
            if tg == 0 && range0 != 0 { return .failure(.reservedField(word: 0, bits: range0)) }
            if tg == 0 && ttl != 0 { return .failure(.reservedField(word: 1, bits: w1 & BitField.genmask(9, 8))) }
        }
        let granule = f.rangeInvalidation ? TLBIGranule(rawValue: tg) : nil
        if granule != nil && num == 0 && scale == 0 && ttl == 0 { return .failure(.reservedRangeEncoding) }
        if granule == .size16K && ttl == 1 { return .failure(.reservedRangeEncoding) }
        let addressMask: UInt64 = ipa ? BitField.genmask(51, 12) : BitField.genmask(63, 12)
        return .success(TLBIAddress(address: w1 & addressMask, leaf: w1 & 1 != 0, granule: granule,
                                    ttl: granule == nil ? 0 : ttl, num: granule == nil ? 0 : num,
                                    scale: granule == nil ? 0 : scale))
    }
}
