import Testing
import Platform
@testable import Formats

/// A full-featured SMMU: stage 1 and 2, 2-level tables, Hyp, ATS/PRI, 16-bit IDs, HTTU with
/// dirty state, configurable stalls, 20 SSID bits, 48-bit OAS, 4 KiB granule.
let smmuFull = SMMUv3Features()

@Suite("SMMUv3 STE (IHI 0070 §5.2)")
struct SMMUv3STETests {
    // MARK: Golden words

    @Test("a CD-table STE has Linux's bits: V 0, Config 3:1, S1Fmt 5:4, S1ContextPtr 51:6, S1CDMax 63:59; S1DSS, S1CIR/COR/CSH, S1STALLD 27, EATS 29:28")
    func cdTableGolden() {
        let e = StreamTableEntry.cdTable(contextPointer: 0x0000_1234_5678_9AC0, format: .twoLevel64K, s1CDMax: 20,
                                         s1DSS: .ssid0, ats: true, stallDisable: true)
        // 1 | 5 << 1 | 2 << 4 | ptr | 20 << 59
        #expect(e.data[0] == 0xA000_1234_5678_9AEB)
        // S1DSS 2 | S1CIR 1 << 2 | S1COR 1 << 4 | S1CSH 3 << 6 | S1STALLD 1 << 27 | EATS 1 << 28
        #expect(e.data[1] == 0x1800_00D6)
        #expect(e.data[2] == 0)   // NS-EL1: S2VMID 0
        for i in 3..<8 { #expect(e.data[i] == 0) }
        #expect(e.valid && e.config == .s1Trans && e.stage1Translates && !e.stage2Translates)
        #expect(e.s1Fmt == .twoLevel64K && e.s1CDMax == 20 && e.s1ContextPointer == 0x0000_1234_5678_9AC0)
        #expect(e.s1DSS == .ssid0 && e.s1CIR == 1 && e.s1COR == 1 && e.s1CSH == 3)
        #expect(e.s1StallDisable && e.eats == .translate && e.rawSTRW == 0)
        #expect(e.validity(features: smmuFull) == nil)
    }

    @Test("EL2 StreamWorld sets STRW 31:30 = 0b10; SHCFG 45:44 = incoming only with S1DSS bypass")
    func cdTableEL2() {
        let e = StreamTableEntry.cdTable(contextPointer: 0x1000, format: .linear, s1CDMax: 0, s1DSS: .bypass,
                                         el2: true, shcfgIncoming: true)
        let word1: UInt64 = 1 | 1 << 2 | 1 << 4 | 3 << 6 | 2 << 30 | 1 << 44
        #expect(e.data[1] == word1)
        #expect(e.streamWorld(e2h: true, features: smmuFull) == .el2E2H)
        #expect(e.streamWorld(e2h: false, features: smmuFull) == .el2)
        var noHyp = smmuFull; noHyp.hyp = false
        #expect(e.streamWorld(e2h: true, features: noHyp) == .nsEL1)
        let f = StreamTableEntry.cdTable(contextPointer: 0x1000, format: .linear, s1CDMax: 0, s1DSS: .terminate,
                                         shcfgIncoming: true)
        #expect(f.shcfg == 0)
    }

    @Test("an S2 STE: S2VMID 15:0, S2T0SZ 37:32, S2SL0 39:38, S2IR0/OR0/SH0 45:40, S2TG 47:46, S2PS 50:48, S2AA64 51, S2PTW 54, S2R 58; S2TTB 51:4")
    func s2Golden() {
        let t = StreamTableEntry.S2Translation.granule4K(levels: 4, outputBits: 48)
        #expect(t == StreamTableEntry.S2Translation(t0sz: 16, sl0: 2, ps: 5))
        let e = StreamTableEntry.s2Domain(vmid: 0x1234, translation: t, ttb: 0x0000_00AB_CDEF_0000)
        #expect(e.data[0] == 0xD)   // V | 6 << 1
        #expect(e.data[1] == 0)
        // 0x1234 | 16 << 32 | 2 << 38 | 1 << 40 | 1 << 42 | 3 << 44 | 5 << 48 | 1 << 51 | 1 << 54 | 1 << 58
        #expect(e.data[2] == 0x044D_3590_0000_1234)
        #expect(e.data[3] == 0x0000_00AB_CDEF_0000)
        #expect(e.s2VMID == 0x1234 && e.s2T0SZ == 16 && e.s2SL0 == 2 && e.s2Granule == .size4K && e.s2PS == 5)
        #expect(e.s2AA64 && e.s2PTW && e.s2R && !e.s2S && !e.s2ENDI && !e.s2AFFD && !e.s2HA && !e.s2HD)
        #expect(e.s2Translation == StreamTableEntry.S2Translation(t0sz: 16, sl0: 2, ir0: 1, or0: 1, sh0: 3, ps: 5))
        #expect(e.validity(features: smmuFull) == nil)
        let three = StreamTableEntry.S2Translation.granule4K(levels: 3, outputBits: 40)
        #expect(three.t0sz == 25 && three.sl0 == 1 && three.ps == 2)
    }

    @Test("S2 flags: S2AFFD 53, S2HD 55, S2HA 56, S2S 57, S2ENDI 52, S2FWB 25, EATS; abort and bypass entries")
    func s2FlagsAndSimpleEntries() {
        var e = StreamTableEntry.s2Domain(vmid: 1, translation: .granule4K(levels: 3, outputBits: 48), ttb: 0x1000,
                                          ats: true, stall: true, forcedWriteBack: true, shcfgIncoming: true)
        let word1: UInt64 = 1 << 25 | 1 << 28 | 1 << 44
        #expect(e.data[1] == word1)
        #expect(e.data[2] & (1 << 57) != 0)
        e.s2AFFD = true; e.s2HD = true; e.s2HA = true; e.s2ENDI = true
        let flags: UInt64 = 1 << 53 | 1 << 55 | 1 << 56 | 1 << 52
        #expect(e.data[2] & flags == flags)
        #expect(StreamTableEntry.abort().data[0] == 1)
        #expect(StreamTableEntry.abort().words == [1, 0, 0, 0, 0, 0, 0, 0])
        #expect(StreamTableEntry.bypass().data[0] == 0x9)
        #expect(StreamTableEntry.bypass(shcfgIncoming: true).data[1] == 1 << 44)
    }

    @Test("a nested STE keeps the S2 words, takes only the nesting-allowed vSTE bits, and sets MEV 19")
    func nested() {
        let s2 = StreamTableEntry.s2Domain(vmid: 7, translation: .granule4K(levels: 4, outputBits: 48), ttb: 0x8000)
        let vste = StreamTableEntry.cdTable(contextPointer: 0x4000_0000, format: .linear, s1CDMax: 4, s1DSS: .bypass)
        // Config in the vSTE is replaced; a stray STRW and SHCFG are not nesting-allowed.
        let n = StreamTableEntry.nested(stage2: s2, vste0: vste.data[0], vste1: vste.data[1] | 2 << 30 | 3 << 44)
        #expect(n.config == .nested && n.stage1Translates && n.stage2Translates)
        #expect(n.s1ContextPointer == 0x4000_0000 && n.s1CDMax == 4 && n.s1DSS == .bypass)
        #expect(n.mev && n.rawSTRW == 0 && n.shcfg == 0)
        #expect(n.data[2] == s2.data[2] && n.data[3] == s2.data[3])
        #expect(n.validity(features: smmuFull) == nil)
    }

    @Test("every setter writes only its own field", arguments: 0..<24)
    func settersAreIsolated(field: Int) {
        var e = StreamTableEntry(words: Array(repeating: 0xFFFF_FFFF_FFFF_FFFF, count: 8))
        let before = e
        switch field {
        case 0: e.valid = false
        case 1: e.rawConfig = 0
        case 2: e.rawS1Fmt = 0
        case 3: e.s1ContextPointer = 0
        case 4: e.s1CDMax = 0
        case 5: e.rawS1DSS = 0
        case 6: e.s1CIR = 0
        case 7: e.s1CSH = 0
        case 8: e.mev = false
        case 9: e.s1StallDisable = false
        case 10: e.rawEATS = 0
        case 11: e.rawSTRW = 0
        case 12: e.shcfg = 0
        case 13: e.s2VMID = 0
        case 14: e.s2T0SZ = 0
        case 15: e.s2SL0 = 0
        case 16: e.rawS2TG = 0
        case 17: e.s2PS = 0
        case 18: e.s2AA64 = false
        case 19: e.s2S = false
        case 20: e.s2TTB = 0
        case 21: e.ppar = false
        case 22: e.memAttr = 0
        default: e.privCfg = 0
        }
        var changed = 0
        for i in 0..<8 { changed += (before.data[i] ^ e.data[i]).nonzeroBitCount }
        let widths = [1, 3, 2, 46, 5, 2, 2, 2, 1, 1, 2, 2, 2, 16, 6, 2, 2, 3, 1, 1, 48, 1, 4, 2]
        #expect(changed == widths[field])
    }

    // MARK: Validity (C_BAD_STE)

    @Test("V == 0 is invalid; Config 0b000 and the reserved 0b001–0b011 abort without being ILLEGAL")
    func invalidAndReservedConfig() {
        #expect(StreamTableEntry().validity(features: smmuFull) == .invalid)
        for cfg in UInt8(0)...3 {
            var e = StreamTableEntry(); e.valid = true; e.rawConfig = cfg
            e.data[2] = .max   // garbage in ignored fields
            #expect(e.validity(features: smmuFull) == nil, "Config \(cfg)")
            #expect(e.effectiveConfig == .abort)
        }
    }

    @Test("stages the SMMU does not implement are ILLEGAL")
    func unimplementedStages() {
        var s1Only = smmuFull; s1Only.stage2 = false
        var s2Only = smmuFull; s2Only.stage1 = false
        let s1 = StreamTableEntry.cdTable(contextPointer: 0x1000, format: .linear, s1CDMax: 0, s1DSS: .terminate)
        let s2 = StreamTableEntry.s2Domain(vmid: 1, translation: .granule4K(levels: 4, outputBits: 48), ttb: 0x1000)
        #expect(s1.validity(features: s2Only) == .stage1NotImplemented)
        #expect(s2.validity(features: s1Only) == .stage2NotImplemented)
        #expect(StreamTableEntry.nested(stage2: s2, vste0: s1.data[0], vste1: s1.data[1]).validity(features: s1Only) == .stage2NotImplemented)
        #expect(StreamTableEntry.bypass().validity(features: s2Only) == nil)
    }

    @Test("S1 rules: S1CDMax ≤ SSIDSIZE, 2-level CD tables need CD2L, S1STALLD needs a configurable stall model, S1ContextPtr within OAS (IAS when nested)")
    func stage1Rules() {
        var e = StreamTableEntry.cdTable(contextPointer: 0x1000, format: .twoLevel4K, s1CDMax: 11, s1DSS: .ssid0)
        var f = smmuFull; f.ssidBits = 10
        #expect(e.validity(features: f) == .s1CDMaxTooLarge(11))
        f.ssidBits = 0   // no substreams: S1CDMax and S1Fmt are IGNORED
        #expect(e.validity(features: f) == nil)
        f = smmuFull; f.twoLevelCDTable = false
        #expect(e.validity(features: f) == .twoLevelCDTableNotSupported)
        e.rawS1Fmt = 3   // reserved, behaves as linear: not ILLEGAL
        #expect(e.validity(features: f) == nil && e.s1Fmt == .linear)
        e.s1StallDisable = true
        #expect(e.validity(features: smmuFull) == nil)
        f = smmuFull; f.stallModel = .terminateOnly
        #expect(e.validity(features: f) == .stallDisableNotConfigurable)
        f.stallModel = .stallForced
        #expect(e.validity(features: f) == .stallDisableNotConfigurable)
        e.s1StallDisable = false
        e.s1ContextPointer = 1 << 48
        #expect(e.validity(features: smmuFull) == .contextPointerOutOfRange)
        f = smmuFull; f.outputAddressBits = 52
        #expect(e.validity(features: f) == nil)
    }

    @Test("ATS rules: split-stage ATS only for Config 0b111 without S2S; full ATS not with a stalling stage 2; ignored without IDR0.ATS")
    func atsRules() {
        let s2 = StreamTableEntry.s2Domain(vmid: 1, translation: .granule4K(levels: 4, outputBits: 48), ttb: 0x1000)
        var e = s2; e.rawEATS = 2
        #expect(e.validity(features: smmuFull) == .splitStageATSNotAllowed)
        var n = StreamTableEntry.nested(stage2: s2, vste0: 0x1000, vste1: 0); n.rawEATS = 2
        #expect(n.validity(features: smmuFull) == nil)
        n.s2S = true
        #expect(n.validity(features: smmuFull) == .splitStageATSNotAllowed)
        n.rawEATS = 1
        #expect(n.validity(features: smmuFull) == .fullATSWithStage2Stall)
        var noATS = smmuFull; noATS.ats = false
        #expect(n.validity(features: noATS) == nil)
        e.rawEATS = 3   // DPT not implemented: behaves as 0b00
        #expect(e.validity(features: smmuFull) == nil)
    }

    @Test("STRW 0bx1 is ILLEGAL only where STRW is used (stage 1 only, Hyp implemented)")
    func strw() {
        var e = StreamTableEntry.cdTable(contextPointer: 0x1000, format: .linear, s1CDMax: 0, s1DSS: .terminate)
        e.rawSTRW = 1
        #expect(e.validity(features: smmuFull) == .reservedStreamWorld)
        e.rawSTRW = 3
        #expect(e.validity(features: smmuFull) == .reservedStreamWorld)
        var noHyp = smmuFull; noHyp.hyp = false
        #expect(e.validity(features: noHyp) == nil)
        var s2 = StreamTableEntry.s2Domain(vmid: 1, translation: .granule4K(levels: 4, outputBits: 48), ttb: 0)
        s2.rawSTRW = 3
        #expect(s2.validity(features: smmuFull) == nil)
    }

    @Test("S2 stall rules follow IDR0.STALL_MODEL")
    func s2Stall() {
        let t = StreamTableEntry.S2Translation.granule4K(levels: 4, outputBits: 48)
        var f = smmuFull; f.stallModel = .terminateOnly
        #expect(StreamTableEntry.s2Domain(vmid: 1, translation: t, ttb: 0, stall: true).validity(features: f) == .stage2StallNotSupported)
        f.stallModel = .stallForced
        #expect(StreamTableEntry.s2Domain(vmid: 1, translation: t, ttb: 0).validity(features: f) == .stage2StallForced)
        #expect(StreamTableEntry.s2Domain(vmid: 1, translation: t, ttb: 0, stall: true).validity(features: f) == nil)
    }

    @Test("S2 table format, HTTU, granule, S2TTB range, endianness, VMID width")
    func s2Rules() {
        let base = StreamTableEntry.s2Domain(vmid: 1, translation: .granule4K(levels: 4, outputBits: 48), ttb: 0x1000)
        var e = base; e.s2AA64 = false
        #expect(e.validity(features: smmuFull) == .stage2AArch32NotSupported)
        e = base; e.s2HD = true
        var f = smmuFull; f.httu = .accessFlag
        #expect(e.validity(features: f) == .stage2HTTUNotSupported)
        e.s2HD = false; e.s2HA = true
        #expect(e.validity(features: f) == nil)
        f.httu = .none
        #expect(e.validity(features: f) == .stage2HTTUNotSupported)
        e = base; e.rawS2TG = 3
        #expect(e.validity(features: smmuFull) == .stage2GranuleNotSupported(3))
        e.rawS2TG = TranslationGranule.size64K.rawValue
        #expect(e.validity(features: smmuFull) == .stage2GranuleNotSupported(1))
        e = base; e.s2TTB = 1 << 48
        #expect(e.validity(features: smmuFull) == .stage2TableOutOfRange)
        e.s2PS = 2; e.s2TTB = 1 << 40   // S2PS 40 bits
        #expect(e.validity(features: smmuFull) == .stage2TableOutOfRange)
        e.s2TTB = (1 << 40) - 16
        #expect(e.validity(features: smmuFull) == nil)
        e = base; e.s2ENDI = true
        #expect(e.validity(features: smmuFull) == .stage2EndiannessNotSupported)
        f = smmuFull; f.endianness = .mixed
        #expect(e.validity(features: f) == nil)
        e = base; e.s2VMID = 0x100
        f = smmuFull; f.vmid16 = false
        #expect(e.validity(features: f) == .vmidTooWide)
        #expect(StreamTableEntry.bypass().validity(features: f) == nil)
    }

    @Test("S2T0SZ must lie in [MAX(16, 64 − IAS), 39] and agree with S2SL0 (4 KiB: SL0 0b10 level 0 for IPA 40–48 bits, 0b01 level 1 for 31–43, 0b00 level 2 for 25–34)")
    func s2WalkConsistency() {
        let f = smmuFull   // IAS 48
        for t0sz in UInt8(0)...63 {
            for sl0 in UInt8(0)...3 {
                var e = StreamTableEntry.s2Domain(vmid: 1, translation: .init(t0sz: t0sz, sl0: sl0, ps: 5), ttb: 0)
                e.s2T0SZ = t0sz
                let ia = 64 - Int(t0sz)
                let expected: BadSTEReason?
                if t0sz < 16 || t0sz > 39 {
                    expected = .s2T0SZOutOfRange(t0sz)
                } else {
                    let ok: Bool
                    switch sl0 {
                    case 2: ok = (40...52).contains(ia)
                    case 1: ok = (31...43).contains(ia)
                    case 0: ok = (22...34).contains(ia)
                    default: ok = false
                    }
                    expected = ok ? nil : .stage2WalkInconsistent
                }
                #expect(e.validity(features: f) == expected, "T0SZ \(t0sz) SL0 \(sl0)")
            }
        }
        var small = smmuFull; small.outputAddressBits = 40
        let e = StreamTableEntry.s2Domain(vmid: 1, translation: .granule4K(levels: 4, outputBits: 40), ttb: 0)
        #expect(e.validity(features: small) == .s2T0SZOutOfRange(16))
        // 40-bit IPA from level 1: two concatenated tables, as Linux's io-pgtable does.
        #expect(StreamTableEntry.s2ConcatenatedTables(t0sz: 24, sl0: 1, granule: .size4K, features: small) == 2)
        #expect(StreamTableEntry.s2ConcatenatedTables(t0sz: 16, sl0: 2, granule: .size4K, features: smmuFull) == 1)
        #expect(StreamTableEntry.s2ConcatenatedTables(t0sz: 16, sl0: 1, granule: .size4K, features: smmuFull) == nil)
    }

    @Test("fields of a disabled stage are IGNORED: an S2-only STE with garbage S1 words and an S1-only STE with garbage S2 words are valid")
    func ignoredFields() {
        var s2 = StreamTableEntry.s2Domain(vmid: 1, translation: .granule4K(levels: 4, outputBits: 48), ttb: 0x1000)
        s2.data[0] |= 0xFFFF_FFFF_FFFF_FFF0 & ~0xE
        s2.rawConfig = 6
        s2.s1StallDisable = true
        #expect(s2.validity(features: smmuFull) == nil)
        var s1 = StreamTableEntry.cdTable(contextPointer: 0x1000, format: .linear, s1CDMax: 0, s1DSS: .terminate)
        s1.data[2] = 0xFFFF_FFFF_FFFF_0000 & ~(1 << 51)
        s1.data[3] = .max
        #expect(s1.validity(features: smmuFull) == nil)
    }

    @Test("any 64 bytes decode and validate without trapping (10^5 random entries, four feature sets)")
    func randomNeverTraps() {
        var rng = SeededRNG(seed: 0x57E)
        var features = [smmuFull]
        var f = smmuFull; f.stage1 = false; f.vmid16 = false; f.stallModel = .stallForced; features.append(f)
        f = smmuFull; f.stage2 = false; f.ssidBits = 0; f.httu = .none; f.endianness = .big; features.append(f)
        f = smmuFull; f.aarch32Tables = true; f.smallTranslationTables = true; f.granule16K = true; f.granule64K = true
        f.outputAddressBits = 52; features.append(f)
        var valid = 0
        for i in 0..<100_000 {
            var e = StreamTableEntry()
            for w in 0..<8 { e.data[w] = rng.next() }
            if i % 2 == 0 { e.valid = true; e.rawConfig = UInt8(4 + i % 4) }
            let r = e.validity(features: features[i % features.count])
            if r == nil { valid += 1 }
            _ = (e.s1Fmt, e.s1DSS, e.eats, e.s2Granule, e.s2Translation, e.streamWorld(e2h: i & 4 != 0, features: smmuFull))
            _ = CDTableLayout(ste: e, ssidBits: 20).lookup(ssid: UInt32(truncatingIfNeeded: rng.next()) & 0xFFFFF)
        }
        #expect(valid > 0)
    }
}
