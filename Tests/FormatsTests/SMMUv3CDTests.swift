import Testing
import Platform
@testable import Formats

@Suite("SMMUv3 CD and tables (IHI 0070 §5.1, §5.3, §5.4)")
struct SMMUv3CDTests {
    // MARK: CD golden words

    @Test("an S1 CD has Linux's bits: T0SZ 5:0, TG0 7:6, IR0 9:8, OR0 11:10, SH0 13:12, EPD1 30, V 31, IPS 34:32, AA64 41, HD 42, HA 43, R 45, A 46, ASET 47, ASID 63:48; TTB0 51:4; MAIR")
    func s1Golden() {
        let cd = ContextDescriptor.s1(asid: 0xBEEF, ttb: 0x0000_0012_3456_7000, dirtyTracking: true)
        #expect(cd.data[0] == 0xBEEF_EE05_C000_3510)
        #expect(cd.data[1] == 0x0000_0012_3456_7000)
        #expect(cd.data[2] == 0)
        #expect(cd.data[3] == 0xF404_FF44)
        #expect(cd.t0sz == 16 && cd.tg0 == .size4K && cd.ir0 == 1 && cd.or0 == 1 && cd.sh0 == 3)
        #expect(cd.epd1 && !cd.epd0 && cd.valid && cd.ips == 5 && cd.aa64 && cd.hd && cd.ha)
        #expect(!cd.stall && cd.record && cd.abort && cd.aset && cd.asid == 0xBEEF && cd.ttb0 == 0x0000_0012_3456_7000)
        #expect(cd.effectiveHTTU == (true, true))
        #expect(cd.mairAttribute(1) == 0xFF && cd.mairAttribute(2) == 0x04)
        #expect(cd.validity(features: smmuFull) == nil)
        let stalling = ContextDescriptor.s1(asid: 1, ttb: 0x1000, stall: true)
        #expect(stalling.data[0] & (1 << 44) != 0 && stalling.data[0] & (3 << 42) == 0)
    }

    @Test("the SVA CD with no mm faults everything: EPD0 14, S and R cleared unless stalls are forced")
    func svaCD() {
        let live = ContextDescriptor.sva(asid: 3, ttb: 0x5000, stall: true)
        #expect(live.ttb0 == 0x5000 && !live.epd0 && live.stall && live.record)
        let dead = ContextDescriptor.sva(asid: 3, ttb: nil, stall: true)
        #expect(dead.epd0 && dead.epd1 && !dead.stall && !dead.record && dead.abort && dead.ttb0 == 0)
        #expect(dead.validity(features: smmuFull) == nil)
        let forced = ContextDescriptor.sva(asid: 3, ttb: nil, stall: true, stallForced: true)
        #expect(forced.stall && forced.record)
    }

    @Test("the remaining fields: ENDI 15, T1SZ 21:16, TG1 23:22, AFFD 35, WXN 36, UWXN 37, TBI0 38, TBI1 39, PAN 40; NSCFG0/HAD0/E0PD0 64–66; NSCFG1/HAD1 128–129; TTB1")
    func otherFields() {
        var cd = ContextDescriptor()
        cd.endi = true; cd.t1sz = 0x2A; cd.rawTG1 = 2; cd.affd = true; cd.wxn = true; cd.uwxn = true
        cd.tbi0 = true; cd.tbi1 = true; cd.pan = true
        let word0: UInt64 = 1 << 15 | 0x2A << 16 | 2 << 22 | 1 << 35 | 1 << 36 | 1 << 37 | 1 << 38 | 1 << 39 | 1 << 40
        #expect(cd.data[0] == word0)
        cd.nscfg0 = true; cd.had0 = true; cd.e0pd0 = true; cd.ttb0 = .max
        #expect(cd.data[1] == 0x7 | 0x000F_FFFF_FFFF_FFF0)
        cd.nscfg1 = true; cd.had1 = true; cd.ttb1 = 0xABC0
        #expect(cd.data[2] == 0x3 | 0xABC0)
        #expect(cd.tg1 == .size16K)
    }

    // MARK: CD validity (C_BAD_CD)

    @Test("V == 0 is invalid; stall configuration must agree with the STE and IDR0")
    func cdStallRules() {
        #expect(ContextDescriptor().validity(features: smmuFull) == .invalid)
        let s = ContextDescriptor.s1(asid: 1, ttb: 0x1000, stall: true)
        #expect(s.validity(features: smmuFull, context: CDContext(stallDisabled: true)) == .stallDisabledByStream)
        var f = smmuFull; f.stallModel = .terminateOnly
        #expect(s.validity(features: f) == .stallNotSupported)
        f.stallModel = .stallForced
        #expect(ContextDescriptor.s1(asid: 1, ttb: 0x1000).validity(features: f) == .stallForced)
        var noAbort = ContextDescriptor.s1(asid: 1, ttb: 0x1000); noAbort.abort = false
        f = smmuFull; f.terminateAbortOnly = true
        #expect(noAbort.validity(features: f) == .abortRequired)
        #expect(noAbort.validity(features: smmuFull) == nil)
    }

    @Test("format, HTTU, ASID width, endianness")
    func cdFormatRules() {
        var cd = ContextDescriptor.s1(asid: 0x100, ttb: 0x1000)
        var f = smmuFull; f.asid16 = false
        #expect(cd.validity(features: f) == .asidTooWide)
        #expect(cd.validity(features: f, context: CDContext(streamWorld: .el2)) == nil)   // ASID IGNORED at EL2
        cd.asid = 1; cd.aa64 = false
        #expect(cd.validity(features: smmuFull) == .aarch32NotSupported)
        cd.aa64 = true
        #expect(cd.validity(features: smmuFull, context: CDContext(aarch32Stage2: true)) == .aarch64UnderAArch32Stage2)
        cd.hd = true; cd.ha = true
        f = smmuFull; f.httu = .accessFlag
        #expect(cd.validity(features: f) == .httuNotSupported)
        cd.hd = false
        #expect(cd.validity(features: f) == nil)
        f.httu = .none
        #expect(cd.validity(features: f) == .httuNotSupported)
        cd.ha = false; cd.endi = true
        #expect(cd.validity(features: smmuFull) == .endiannessNotSupported)
        cd.epd0 = true   // both halves disabled: ENDI IGNORED
        #expect(cd.validity(features: smmuFull) == nil)
    }

    @Test("TxSZ in [16, 39], a supported TGx and TTBx within the effective IPS (and 48 bits) for each half that walks")
    func cdWalkRules() {
        var cd = ContextDescriptor.s1(asid: 1, ttb: 0x1000)
        for t0sz in UInt8(0)...63 {
            cd.t0sz = t0sz
            #expect((cd.validity(features: smmuFull) == nil) == (16...39).contains(t0sz), "T0SZ \(t0sz)")
        }
        cd.t0sz = 16
        cd.rawTG0 = 3
        #expect(cd.validity(features: smmuFull) == .granuleNotSupported(ttb: 0, 3))
        cd.rawTG0 = 1
        #expect(cd.validity(features: smmuFull) == .granuleNotSupported(ttb: 0, 1))
        cd.rawTG0 = 0
        cd.ttb0 = 1 << 48
        #expect(cd.validity(features: smmuFull) == .tableOutOfRange(ttb: 0))
        cd.ttb0 = 1 << 40; cd.ips = 2
        #expect(cd.validity(features: smmuFull) == .tableOutOfRange(ttb: 0))
        cd.epd0 = true   // TTB0 half IGNORED
        #expect(cd.validity(features: smmuFull) == nil)
        cd.epd1 = false  // TTB1 half walks: T1SZ 0 is out of range
        #expect(cd.validity(features: smmuFull) == .txszOutOfRange(ttb: 1, 0))
        cd.t1sz = 25
        #expect(cd.validity(features: smmuFull) == nil)
        // StreamWorld EL2: EPDx are IGNORED (TTB0 walks again), TTB1 does not exist.
        #expect(cd.validity(features: smmuFull, context: CDContext(streamWorld: .el2)) == .tableOutOfRange(ttb: 0))
        var stt = smmuFull; stt.smallTranslationTables = true
        var small = ContextDescriptor.s1(asid: 1, ttb: 0x1000); small.t0sz = 48
        #expect(small.validity(features: smmuFull) == .txszOutOfRange(ttb: 0, 48))
        #expect(small.validity(features: stt) == nil)
    }

    @Test("the CD context follows the STE: S1STALLD, StreamWorld, stage 2 format")
    func contextFromSTE() {
        var ste = StreamTableEntry.cdTable(contextPointer: 0x1000, format: .linear, s1CDMax: 0, s1DSS: .terminate,
                                           stallDisable: true, el2: true)
        let c = CDContext(ste: ste, e2h: true, features: smmuFull)
        #expect(c == CDContext(streamWorld: .el2E2H, stallDisabled: true, aarch32Stage2: false))
        ste.rawConfig = 7; ste.s2AA64 = false
        #expect(CDContext(ste: ste, e2h: true, features: smmuFull).aarch32Stage2)
        #expect(CDContext(ste: ste, e2h: true, features: smmuFull).streamWorld == .nsEL1)
    }

    // MARK: CD tables

    @Test("L1CD: V 0, L2Ptr 51:12")
    func l1cd() {
        let d = L1ContextDescriptor(l2Pointer: 0x0000_0ABC_DEF1_2FFF)
        #expect(d.raw == 0x0000_0ABC_DEF1_2001)
        #expect(d.valid && d.l2Pointer == 0x0000_0ABC_DEF1_2000)
        #expect(!L1ContextDescriptor.invalid.valid)
    }

    @Test("one CD when substreams are disabled; a SubstreamID is then C_BAD_SUBSTREAMID")
    func singleCD() {
        let l = CDTableLayout(format: .twoLevel64K, s1CDMax: 0, pointer: 0x1_2340, ssidBits: 20)
        #expect(l.lookup(ssid: nil) == .cd(0x1_2340))
        #expect(l.lookup(ssid: 0) == .badSubstream)
        let noSSID = CDTableLayout(format: .linear, s1CDMax: 5, pointer: 0x8000, ssidBits: 0)
        #expect(noSSID.lookup(ssid: nil) == .cd(0x8000))
    }

    @Test("linear: the table aligned to its size, indexed by SubstreamID, out of range ≥ 2^S1CDMax")
    func linearTable() {
        let l = CDTableLayout(format: .linear, s1CDMax: 4, pointer: 0x10_0440, ssidBits: 20)
        // 16 CDs × 64 B = 1 KiB: pointer bits 9:6 are RES0 and treated as zero.
        #expect(l.lookup(ssid: 0) == .cd(0x10_0400))
        #expect(l.lookup(ssid: 3) == .cd(0x10_0400 + 3 * 64))
        #expect(l.lookup(ssid: 15) == .cd(0x10_0400 + 15 * 64))
        #expect(l.lookup(ssid: 16) == .badSubstream)
        #expect(l.lookup(ssid: 0xFFFFF) == .badSubstream)
    }

    @Test("2-level with 64 KiB leaves: L1 index SubstreamID[19:10], leaf index [9:0]; V == 0 is C_BAD_SUBSTREAMID; L2Ptr[15:12] are taken as zero")
    func twoLevel64K() {
        let l = CDTableLayout(format: .twoLevel64K, s1CDMax: 20, pointer: 0x40_0000, ssidBits: 20)
        #expect(l.lookup(ssid: 0x12345) == .l1Descriptor(address: 0x40_0000 + 0x48 * 8, index: 0x345))
        #expect(l.cdAddress(l1: L1ContextDescriptor(l2Pointer: 0x90_0000), index: 0x345) == 0x90_0000 + 0x345 * 64)
        #expect(l.cdAddress(l1: L1ContextDescriptor(l2Pointer: 0x90_F000), index: 1) == 0x90_0000 + 64)
        #expect(l.cdAddress(l1: .invalid, index: 1) == nil)
    }

    @Test("2-level with 4 KiB leaves: L1 index SubstreamID[S1CDMax−1:6]; the L1 table is aligned to its size or 64 bytes")
    func twoLevel4K() {
        let l = CDTableLayout(format: .twoLevel4K, s1CDMax: 9, pointer: 0x7000 + 0x40, ssidBits: 20)
        // 2^(9−6) = 8 L1CDs = 64 bytes: the pointer is used as is.
        #expect(l.lookup(ssid: 0x1FF) == .l1Descriptor(address: 0x7040 + 7 * 8, index: 0x3F))
        let big = CDTableLayout(format: .twoLevel4K, s1CDMax: 12, pointer: 0x7040, ssidBits: 20)
        // 64 L1CDs = 512 bytes: bits 8:6 taken as zero.
        #expect(big.lookup(ssid: 64) == .l1Descriptor(address: 0x7000 + 8, index: 0))
        #expect(big.cdAddress(l1: L1ContextDescriptor(l2Pointer: 0x3000), index: 63) == 0x3000 + 63 * 64)
    }

    @Test("Linux's CD table geometry: linear up to 1024 CDs (or without CD2L), else 64 KiB leaves")
    func linuxGeometry() {
        #expect(CDTableLayout.linuxGeometry(ssidBits: 0, twoLevelSupported: true) == (.linear, 0, 64))
        #expect(CDTableLayout.linuxGeometry(ssidBits: 10, twoLevelSupported: true) == (.linear, 10, 64 << 10))
        #expect(CDTableLayout.linuxGeometry(ssidBits: 20, twoLevelSupported: true) == (.twoLevel64K, 20, 8192))
        #expect(CDTableLayout.linuxGeometry(ssidBits: 12, twoLevelSupported: false) == (.linear, 12, 256 << 10))
    }

    // MARK: Stream tables

    @Test("L1STD: Span 4:0, L2Ptr 51:6; Span 1–11 within SPLIT+1 selects 2^(Span−1) STEs, the array aligned to its size")
    func l1std() {
        let d = L1StreamTableDescriptor(l2Pointer: 0x0000_0123_4567_8000, span: 9)
        #expect(d.raw == 0x0000_0123_4567_8009)
        #expect(d.entries(split: 8) == 256)
        #expect(d.l2Base(split: 8) == 0x0000_0123_4567_8000)
        #expect(L1StreamTableDescriptor(l2Pointer: 0x1_2340, span: 3).l2Base(split: 8) == 0x1_2300)
        #expect(L1StreamTableDescriptor.invalid.entries(split: 8) == nil)
        #expect(L1StreamTableDescriptor(raw: 12).entries(split: 10) == nil)
        #expect(L1StreamTableDescriptor(raw: 10).entries(split: 8) == nil)
        #expect(L1StreamTableDescriptor(raw: 11).entries(split: 10) == 1024)
    }

    @Test("STRTAB_BASE_CFG: LOG2SIZE 5:0, SPLIT 10:6, FMT 17:16; Linux's 2-level table with SPLIT 8")
    func strtabConfig() {
        let c = StreamTableConfig.make(address: 0x8000_0000, format: .twoLevel, log2Size: 16)
        #expect(c.cfg == 16 | 8 << 6 | 1 << 16)
        #expect(c.base == 0x8000_0000 | 1 << 62)
        #expect(c.format == .twoLevel && c.split == 8 && c.readAllocate)
        #expect(c.entries(sidBits: 32) == 256)
        #expect(c.lookup(sid: 0x1234, sidBits: 32) == .l1Descriptor(address: 0x8000_0000 + 0x12 * 8, index: 0x34))
        #expect(c.lookup(sid: 0x1_0000, sidBits: 32) == .outOfRange)
        #expect(c.steAddress(l1: L1StreamTableDescriptor(l2Pointer: 0x9000_0000, span: 9), index: 0x34) == 0x9000_0000 + 0x34 * 64)
        #expect(c.steAddress(l1: L1StreamTableDescriptor(l2Pointer: 0x9000_0000, span: 3), index: 4) == nil)
        #expect(c.steAddress(l1: .invalid, index: 0) == nil)
    }

    @Test("a linear table is aligned to its size; LOG2SIZE is capped by SIDSIZE; reserved FMT and SPLIT values behave as linear and 6")
    func linearStreamTable() {
        let c = StreamTableConfig.make(address: 0x12_3440, format: .linear, log2Size: 8)
        #expect(c.effectiveBase == 0x12_0000)   // 256 × 64 B = 16 KiB
        #expect(c.lookup(sid: 5, sidBits: 32) == .ste(0x12_0000 + 5 * 64))
        #expect(c.lookup(sid: 256, sidBits: 32) == .outOfRange)
        #expect(c.lookup(sid: 16, sidBits: 4) == .outOfRange)
        #expect(StreamTableConfig(base: 0, cfg: 3 << 16).format == .linear)
        #expect(StreamTableConfig(base: 0, cfg: 1 << 16 | 7 << 6).split == 6)
        // 2-level base alignment: the larger of 64 bytes and the L1 table (2^(20−6) × 8 = 128 KiB).
        let two = StreamTableConfig(base: 0x12_3440, cfg: 20 | 6 << 6 | 1 << 16)
        #expect(two.effectiveBase == 0x12_0000)
    }

    @Test("any 64-byte CD and any table descriptors decode and validate without trapping (10^5 random)")
    func randomNeverTraps() {
        var rng = SeededRNG(seed: 0xCD)
        var fs = smmuFull; fs.asid16 = false; fs.stallModel = .stallForced; fs.terminateAbortOnly = true
        var valid = 0
        for i in 0..<100_000 {
            var cd = ContextDescriptor()
            for w in 0..<8 { cd.data[w] = rng.next() }
            if i % 2 == 0 { cd.valid = true; cd.aa64 = true }
            let world: StreamTableEntry.StreamWorld = i % 3 == 0 ? .nsEL1 : i % 3 == 1 ? .el2 : .el2E2H
            if cd.validity(features: i % 5 == 0 ? fs : smmuFull, context: CDContext(streamWorld: world)) == nil { valid += 1 }
            _ = (cd.tg0, cd.tg1, cd.effectiveHTTU, cd.mairAttribute(UInt8(truncatingIfNeeded: i)))
            let l1 = L1ContextDescriptor(raw: rng.next())
            let layout = CDTableLayout(format: StreamTableEntry.S1Fmt(rawValue: UInt8(i % 3))!, s1CDMax: UInt8(i % 32),
                                       pointer: rng.next(), ssidBits: i % 21)
            _ = layout.lookup(ssid: UInt32(truncatingIfNeeded: rng.next()))
            _ = layout.cdAddress(l1: l1, index: UInt32(truncatingIfNeeded: rng.next()))
            let sc = StreamTableConfig(base: rng.next(), cfg: UInt32(truncatingIfNeeded: rng.next()))
            _ = sc.lookup(sid: UInt32(truncatingIfNeeded: rng.next()), sidBits: i % 33)
            _ = sc.steAddress(l1: L1StreamTableDescriptor(raw: rng.next()), index: UInt32(truncatingIfNeeded: rng.next()))
            _ = sc.entries(sidBits: i % 33)
        }
        #expect(valid > 0)
    }
}
