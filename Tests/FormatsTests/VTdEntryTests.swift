import Testing
@testable import Formats

private let mask52 = PageTableGeometry.addressMask(width: 52)
private let mask48 = PageTableGeometry.addressMask(width: 48)
private let mask39 = PageTableGeometry.addressMask(width: 39)

@Suite("Scalable root entry (VT-d §9.2)")
struct ScalableRootEntryTests {
    @Test("LP is bit 0 with LCTP at 63:12, UP is bit 64 with UCTP at 127:76")
    func layout() {
        let e = ScalableRootEntry(lower: 0x1234_5FFF, upper: 0x0008_6789_A000)
        #expect(e.lo == 0x1234_5001)
        #expect(e.hi == 0x0008_6789_A001)
        #expect(e.lowerPresent && e.upperPresent)
        #expect(e.lowerContextTable == 0x1234_5000)
        #expect(e.upperContextTable == 0x0008_6789_A000)
        #expect(ScalableRootEntry.size == 16)
    }

    @Test("an absent half is all zero and not present")
    func absentHalves() {
        let e = ScalableRootEntry(lower: nil, upper: 0x5000)
        #expect(e.lo == 0)
        #expect(!e.lowerPresent)
        #expect(e.upperPresent)
        let f = ScalableRootEntry(lower: 0x5000, upper: nil)
        #expect(f.hi == 0)
        #expect(!f.upperPresent)
    }

    @Test("devfn 0-127 use the lower half and 128-255 the upper half",
          arguments: [UInt8(0), 1, 127, 128, 200, 255])
    func halves(devfn: UInt8) {
        let e = ScalableRootEntry(lower: 0x1000, upper: nil)
        let h = e.half(for: devfn)
        if devfn < 128 {
            #expect(h.present && h.table == 0x1000)
        } else {
            #expect(!h.present && h.table == 0)
        }
    }

    @Test("each of bits 11:1 (and 75:65) is reserved, only in the half it belongs to", arguments: Array(UInt64(1)...11))
    func reservedLowBits(bit: UInt64) {
        let base = ScalableRootEntry(lower: 0x1000, upper: 0x2000)
        var lo = base; lo.lo |= 1 << bit
        #expect(lo.reservedBitsSet(for: 0, addressMask: mask52))
        #expect(!lo.reservedBitsSet(for: 128, addressMask: mask52))
        var hi = base; hi.hi |= 1 << bit
        #expect(hi.reservedBitsSet(for: 255, addressMask: mask52))
        #expect(!hi.reservedBitsSet(for: 127, addressMask: mask52))
    }

    @Test("pointer bits above the host address width are reserved")
    func reservedPointerBits() {
        for bit in UInt64(39)...63 {
            let e = ScalableRootEntry(lo: 0x1001 | 1 << bit, hi: 0x2001 | 1 << bit)
            #expect(e.reservedBitsSet(for: 0, addressMask: mask39), "bit \(bit)")
            #expect(e.reservedBitsSet(for: 200, addressMask: mask39), "bit \(bit)")
            #expect(e.reservedBitsSet(for: 0, addressMask: mask52) == (bit >= 52), "bit \(bit)")
        }
        #expect(!ScalableRootEntry(lo: 0x7F_FFFF_F001, hi: 0).reservedBitsSet(for: 0, addressMask: mask39))
    }
}

@Suite("Scalable context entry (VT-d §9.4)")
struct ScalableContextEntryTests {
    @Test("every field lands at its documented bit position")
    func fullLayout() {
        let e = ScalableContextEntry(present: true, fpd: true, deviceTLB: true, pasidEnable: true, pageRequest: true,
                                     pdts: 5, pasidDirectory: 0x000A_BCDE_F000, ridPASID: 0x12345, ridPriv: true)
        #expect(e.val.0 == 0x000A_BCDE_F000 | 1 | 1 << 1 | 1 << 2 | 1 << 3 | 1 << 4 | 5 << 9)
        #expect(e.val.1 == 0x12345 | 1 << 20)
        #expect(e.val.2 == 0)
        #expect(e.val.3 == 0)
        #expect(e.present && e.faultProcessingDisable && e.deviceTLBEnable && e.pasidEnable && e.pageRequestEnable)
        #expect(e.pdts == 5)
        #expect(e.pasidDirectory == 0x000A_BCDE_F000)
        #expect(e.ridPASID == 0x12345)
        #expect(e.ridPriv)
        #expect(!e.reservedBitsSet(addressMask: mask52))
        #expect(ScalableContextEntry.size == 32)
    }

    @Test("each flag sets exactly its own bit",
          arguments: [("P", UInt64(1) << 0), ("FPD", 1 << 1), ("DTE", 1 << 2), ("PASIDE", 1 << 3), ("PRE", 1 << 4)])
    func flags(name: String, bit: UInt64) {
        let e = ScalableContextEntry(present: name == "P", fpd: name == "FPD", deviceTLB: name == "DTE",
                                     pasidEnable: name == "PASIDE", pageRequest: name == "PRE", pdts: 0, pasidDirectory: 0)
        #expect(e.val.0 == bit)
        #expect(e.val.1 == 0)
    }

    @Test("PDTS gives a directory of 2^(PDTS+7) entries covering at most 2^20 PASIDs", arguments: Array(UInt8(0)...7))
    func pdts(pdts: UInt8) {
        let e = ScalableContextEntry(pdts: pdts, pasidDirectory: 0x1000)
        #expect((e.val.0 >> 9) & 7 == UInt64(pdts))
        #expect(e.pasidDirectoryEntries == 1 << (UInt32(pdts) + 7))
        #expect(e.pasidLimit == min(UInt32(1) << (UInt32(pdts) + 13), 1 << 20))
    }

    @Test("RID_PASID is limited to 20 bits and cannot spill into RID_PRIV")
    func ridPASIDWidth() {
        let e = ScalableContextEntry(pdts: 0, pasidDirectory: 0, ridPASID: 0xFFFF_FFFF)
        #expect(e.val.1 == 0xFFFFF)
        #expect(!e.ridPriv)
    }

    @Test("each of bits 8:5 is reserved", arguments: Array(UInt64(5)...8))
    func reservedLow(bit: UInt64) {
        var e = ScalableContextEntry(pdts: 0, pasidDirectory: 0x1000)
        e.val.0 |= 1 << bit
        #expect(e.reservedBitsSet(addressMask: mask52))
    }

    @Test("each of bits 127:85 is reserved", arguments: Array(UInt64(21)...63))
    func reservedHigh(bit: UInt64) {
        var e = ScalableContextEntry(pdts: 0, pasidDirectory: 0x1000)
        e.val.1 |= 1 << bit
        #expect(e.reservedBitsSet(addressMask: mask52))
    }

    @Test("any bit in 255:128 is reserved", arguments: [UInt64(0), 17, 63])
    func reservedUpper(bit: UInt64) {
        var a = ScalableContextEntry(pdts: 0, pasidDirectory: 0x1000)
        a.val.2 = 1 << bit
        #expect(a.reservedBitsSet(addressMask: mask52))
        var b = ScalableContextEntry(pdts: 0, pasidDirectory: 0x1000)
        b.val.3 = 1 << bit
        #expect(b.reservedBitsSet(addressMask: mask52))
    }

    @Test("PASID directory pointer bits above the address width are reserved")
    func reservedPointer() {
        let e = ScalableContextEntry(pdts: 0, pasidDirectory: 1 << 45)
        #expect(e.reservedBitsSet(addressMask: mask39))
        #expect(!e.reservedBitsSet(addressMask: mask48))
    }

    @Test("equality compares all four quadwords")
    func equality() {
        let a = ScalableContextEntry(val0: 1, val1: 2, val2: 3, val3: 4)
        #expect(a == ScalableContextEntry(val0: 1, val1: 2, val2: 3, val3: 4))
        #expect(a != ScalableContextEntry(val0: 1, val1: 2, val2: 3, val3: 5))
        #expect(a != ScalableContextEntry(val0: 1, val1: 2, val2: 0, val3: 4))
    }
}

@Suite("PASID directory entry (VT-d §9.5)")
struct PASIDDirectoryEntryTests {
    @Test("P is bit 0, FPD bit 1 and the table pointer 63:12")
    func layout() {
        let e = PASIDDirectoryEntry(table: 0x0001_2345_6FFF, present: true, fpd: true)
        #expect(e.raw == 0x0001_2345_6003)
        #expect(e.present && e.faultProcessingDisable)
        #expect(e.table == 0x0001_2345_6000)
        #expect(PASIDDirectoryEntry(table: 0x5000, present: false).raw == 0x5000)
        #expect(!e.reservedBitsSet(addressMask: mask52))
    }

    @Test("each of bits 11:2 is reserved", arguments: Array(UInt64(2)...11))
    func reservedBits(bit: UInt64) {
        let e = PASIDDirectoryEntry(raw: PASIDDirectoryEntry(table: 0x5000).raw | 1 << bit)
        #expect(e.reservedBitsSet(addressMask: mask52))
    }

    @Test("table pointer bits above the address width are reserved")
    func reservedPointer() {
        #expect(PASIDDirectoryEntry(table: 1 << 40).reservedBitsSet(addressMask: mask39))
        #expect(!PASIDDirectoryEntry(table: 1 << 38).reservedBitsSet(addressMask: mask39))
    }

    @Test("a PASID indexes the directory with bits 19:6 and the table with bits 5:0",
          arguments: [UInt32(0), 63, 64, 0x12345, 0xFFFFF])
    func indices(pasid: UInt32) {
        let i = PASIDDirectoryEntry.indices(of: pasid)
        #expect(i.directory == UInt64(pasid >> 6))
        #expect(i.table == UInt64(pasid & 63))
        #expect(i.directory * 64 + i.table == UInt64(pasid))
    }
}

@Suite("PASID-table entry (VT-d §9.6)")
struct PASIDEntryTests {
    @Test("make places every field at its documented bit position")
    func fullLayout() {
        let e = PASIDEntry.make(pgtt: .nested, did: DomainID(0xBEEF), secondStageTable: 0x0000_1234_5000 | 0xFFF,
                                secondStageLevels: 5, firstStageTable: 0x0000_6789_A000, firstStageLevels: 5,
                                fpd: true, supervisorRequests: true, executeRequests: true,
                                secondStageAD: true, pageWalkSnoop: true)
        #expect(e.val[0] == 0x0000_1234_5000 | 1 | 1 << 1 | 3 << 2 | 3 << 6 | 1 << 9)
        #expect(e.val[1] == 0xBEEF | 1 << 23)
        #expect(e.val[2] == 0x0000_6789_A000 | 1 | 1 << 1 | 1 << 2)
        for i in 3..<8 { #expect(e.val[i] == 0) }
        #expect(e.present && e.faultProcessingDisable && e.secondStageAD)
        #expect(e.aw == 3)
        #expect(e.secondStageLevels == 5)
        #expect(e.pgtt == .nested)
        #expect(e.secondStageTable == 0x0000_1234_5000)
        #expect(e.did == DomainID(0xBEEF))
        #expect(e.supervisorRequests && e.executeRequests)
        #expect(e.fspm == 1)
        #expect(e.firstStageLevels == 5)
        #expect(e.firstStageTable == 0x0000_6789_A000)
        #expect(!e.reservedBitsSet(addressMask: mask52))
        #expect(PASIDEntry.size == 64)
    }

    @Test("EAFE is val[2] bit 7 and WPE val[2] bit 4; neither is reserved")
    func eafeAndWPE() {
        let e = PASIDEntry.make(pgtt: .nested, did: DomainID(1), secondStageTable: 0x1000, firstStageTable: 0x2000,
                                extendedAccessedFlag: true)
        #expect(e.val[2] == 0x2000 | 1 << 7)
        #expect(e.extendedAccessedFlag && !e.writeProtect)
        var w = PASIDEntry.make(pgtt: .nested, did: DomainID(1), secondStageTable: 0x1000, firstStageTable: 0x2000)
        #expect(!w.extendedAccessedFlag)
        w.val[2] |= 1 << 4
        #expect(w.writeProtect)
        #expect(!e.reservedBitsSet(addressMask: mask52) && !w.reservedBitsSet(addressMask: mask52))
    }

    @Test("AW encodes 3/4/5 second-stage levels as 1/2/3 in bits 4:2",
          arguments: [(3, UInt64(1)), (4, 2), (5, 3)])
    func aw(levels: Int, aw: UInt64) {
        let e = PASIDEntry.make(pgtt: .secondStage, did: DomainID(1), secondStageTable: 0x1000, secondStageLevels: levels)
        #expect((e.val[0] >> 2) & 7 == aw)
        #expect(e.secondStageLevels == levels)
    }

    @Test("AW values other than 1-3 give no second-stage level count", arguments: [UInt64(0), 4, 5, 6, 7])
    func awInvalid(aw: UInt64) {
        let e = PASIDEntry(words: [1 | aw << 2 | 2 << 6])
        #expect(e.secondStageLevels == nil)
    }

    @Test("PGTT occupies bits 8:6", arguments: PGTT.allCases)
    func pgtt(pgtt: PGTT) {
        let e = PASIDEntry.make(pgtt: pgtt, did: DomainID(0))
        #expect((e.val[0] >> 6) & 7 == UInt64(pgtt.rawValue))
        #expect(e.pgtt == pgtt)
        #expect(e.rawPGTT == pgtt.rawValue)
    }

    @Test("FSPM 0 is 4-level, 1 is 5-level, others are invalid")
    func fspm() {
        #expect(PASIDEntry.make(pgtt: .firstStage, did: DomainID(0), firstStageLevels: 4).firstStageLevels == 4)
        #expect(PASIDEntry.make(pgtt: .firstStage, did: DomainID(0), firstStageLevels: 5).val[2] & 0xC == 0x4)
        #expect(PASIDEntry(words: [0, 0, 2 << 2]).firstStageLevels == nil)
        #expect(PASIDEntry(words: [0, 0, 3 << 2]).firstStageLevels == nil)
    }

    @Test("DID occupies bits 15:0 of the second quadword")
    func did() {
        let e = PASIDEntry.make(pgtt: .passThrough, did: DomainID(0xFFFF))
        #expect(e.val[1] == 0xFFFF)
        #expect(e.did == DomainID(0xFFFF))
    }

    static let reservedPositions: [(word: Int, bit: UInt64)] =
        [(0, 10), (0, 11)] + (UInt64(16)...22).map { (1, $0) } + [(2, 5), (2, 6), (2, 8), (2, 9), (2, 10), (2, 11)]
        + (3..<8).flatMap { w in [(w, UInt64(0)), (w, 31), (w, 63)] }

    @Test("each documented reserved bit makes the entry invalid", arguments: reservedPositions)
    func reservedBits(word: Int, bit: UInt64) {
        var e = PASIDEntry.make(pgtt: .secondStage, did: DomainID(1), secondStageTable: 0x1000)
        #expect(!e.reservedBitsSet(addressMask: mask52))
        e.val[word] |= 1 << bit
        #expect(e.reservedBitsSet(addressMask: mask52))
    }

    @Test("bits that are defined fields are not reserved",
          arguments: [(0, UInt64(1)), (0, 5), (0, 9), (1, 23), (1, 24), (1, 25), (1, 26), (1, 30), (1, 31), (1, 40),
                      (2, 0), (2, 1), (2, 4), (2, 7)])
    func definedBitsNotReserved(word: Int, bit: UInt64) {
        var e = PASIDEntry.make(pgtt: .secondStage, did: DomainID(1), secondStageTable: 0x1000)
        e.val[word] |= 1 << bit
        #expect(!e.reservedBitsSet(addressMask: mask52))
    }

    @Test("pointer bits above the address width are checked only for the stages the PGTT uses",
          arguments: PGTT.allCases)
    func pointerBitsPerPGTT(pgtt: PGTT) {
        let high: UInt64 = 1 << 50
        let ss = PASIDEntry.make(pgtt: pgtt, did: DomainID(1), secondStageTable: high)
        let fs = PASIDEntry.make(pgtt: pgtt, did: DomainID(1), firstStageTable: high)
        let usesSecond = pgtt == .secondStage || pgtt == .nested
        let usesFirst = pgtt == .firstStage || pgtt == .nested
        #expect(ss.reservedBitsSet(addressMask: mask48) == usesSecond)
        #expect(fs.reservedBitsSet(addressMask: mask48) == usesFirst)
        #expect(!ss.reservedBitsSet(addressMask: mask52))
        #expect(!fs.reservedBitsSet(addressMask: mask52))
    }

    @Test("words round-trip and quadword pairs are taken in order")
    func wordsAndPairs() {
        let w: [UInt64] = [1, 2, 3, 4, 5, 6, 7, 8]
        let e = PASIDEntry(words: w)
        #expect(e.words == w)
        #expect(e == PASIDEntry(words: w))
        #expect(e != PASIDEntry(words: [1, 2, 3, 4, 5, 6, 7, 9]))
        let pairs = e.quadwordPairs
        #expect(pairs.count == 4)
        #expect(pairs.map { $0.0 } == [1, 3, 5, 7])
        #expect(pairs.map { $0.1 } == [2, 4, 6, 8])
        #expect(PASIDEntry().words == Array(repeating: 0, count: 8))
    }
}
