import Testing
import Platform
@testable import Formats

/// A record of `kind` with every field its kind carries set to a distinctive value.
private func sample(_ kind: SMMUEventID) -> SMMUEventRecord {
    let f = kind.fields
    var e = SMMUEventRecord(kind, sid: 0xFEDC_BA98)
    if f.contains(.ssid) || f.contains(.substreamWithoutSSV) { e.ssid = 0xABCDE }
    if f.contains(.stall) { e.stag = 0xBEEF; e.stall = true }
    if f.contains(.access) { e.privileged = true; e.instruction = true; e.read = true }
    if f.contains(.read) { e.read = true }
    if f.contains(.stage) { e.s2 = true; e.eventClass = SMMUEventClass.tt.rawValue }
    if f.contains(.ttRead) { e.ttRead = true }
    if f.contains(.reason16) { e.reason = 0x1234 }
    if f.contains(.reason32) { e.reason = 0x8765_4321 }
    if f.contains(.inputAddress) { e.inputAddress = 0xFFFF_0000_1234_5678 }
    if f.contains(.inputPage) { e.inputAddress = 0xFFFF_0000_1234_5000 }
    if f.contains(.ipa) { e.ipa = 0x000F_FFFF_FFFF_F000 }
    if f.contains(.fetchAddress) { e.fetchAddress = 0x000F_FFFF_FFFF_FFF8 }
    return e
}

@Suite("SMMUv3 event records and PRI queue entries (IHI 0070 §7.3, chapter 8)")
struct SMMUv3EventTests {
    @Test("every event kind round-trips with all its fields", arguments: SMMUEventID.allCases)
    func roundTrip(kind: SMMUEventID) {
        let e = sample(kind)
        #expect(SMMUEventRecord.decode(e.encode()) == e)
        #expect(e.kind == kind)
        #expect(e.encode().w0 & 0xFF == UInt64(kind.rawValue))
        #expect(e.encode().w0 >> 32 == 0xFEDC_BA98)
    }

    @Test("F_TRANSLATION as Linux decodes it: SSV 11, SSID 31:12, SID 63:32; STAG 15:0, STALL 31, RnW 35, CLASS 41:40; InputAddr; IPA 51:12")
    func translationGolden() {
        let e = SMMUEventRecord(.fTranslation, sid: 0x55, ssid: 0x12, stag: 1, stall: true, read: true,
                                eventClass: .input, inputAddress: 0x1234_5678_9000)
        #expect(e.encode() == RawEvent(0x0000_0055_0001_2810, 0x0000_0208_8000_0001, 0x1234_5678_9000, 0))
        let p = SMMUEventRecord(.fPermission, sid: 1, privileged: true, instruction: true, s2: true, eventClass: .tt, ttRead: true,
                                inputAddress: 0x1000, ipa: 0x2000)
        // PnU 33, InD 34, S2 39, CLASS TT (1) 41:40, TT_READ 44
        let word1: UInt64 = 1 << 33 | 1 << 34 | 1 << 39 | 1 << 40 | 1 << 44
        #expect(p.encode() == RawEvent(0x13 | 1 << 32, word1, 0x1000, 0x2000))
        #expect(SMMUEventRecord.decode(p.encode()).eventClassValue == .tt)
    }

    @Test("configuration and fetch events: C_BAD_STE carries SID/SSID only; F_CD_FETCH FetchAddr 51:3; C_BAD_SUBSTREAMID has no SSV; F_STREAM_DISABLED no SSID")
    func configEvents() {
        #expect(SMMUEventRecord(.cBadSTE, sid: 3).encode() == RawEvent(0x04 | 3 << 32, 0, 0, 0))
        #expect(SMMUEventRecord(.cBadSTE, sid: 3, ssid: 1, inputAddress: 0x1000).encode() == RawEvent(0x04 | 1 << 11 | 1 << 12 | 3 << 32, 0, 0, 0))
        #expect(SMMUEventRecord(.fCDFetch, sid: 0, fetchAddress: 0x4_0000_0047).encode().w3 == 0x4_0000_0040)
        #expect(SMMUEventRecord(.cBadSubstreamID, sid: 2, ssid: 0x77).encode() == RawEvent(0x08 | 0x77 << 12 | 2 << 32, 0, 0, 0))
        #expect(SMMUEventRecord(.fStreamDisabled, sid: 2, ssid: 0x77).encode() == RawEvent(0x06 | 2 << 32, 0, 0, 0))
        #expect(SMMUEventID.cBadSTE.description == "C_BAD_STE" && SMMUEventID.fVMSFetch.description == "F_VMS_FETCH")
    }

    @Test("a record decodes only its kind's fields; SSV == 0 means no SubstreamID; unknown IDs keep SID and SSID")
    func decodeIgnoresOtherFields() {
        let raw = RawEvent(0x04 | 0xABCDE << 12 | 9 << 32, .max, .max, .max)
        #expect(SMMUEventRecord.decode(raw) == SMMUEventRecord(.cBadSTE, sid: 9))
        let unknown = SMMUEventRecord.decode(RawEvent(0xEE | 1 << 11 | 5 << 12 | 9 << 32, .max, .max, .max))
        #expect(unknown.kind == nil && unknown.id == 0xEE && unknown.sid == 9 && unknown.ssid == 5 && unknown.inputAddress == 0)
    }

    @Test("any 32 bytes decode without trapping (10^5 random)")
    func randomEventsNeverTrap() {
        var rng = SeededRNG(seed: 0xE7)
        let ids = SMMUEventID.allCases.map(\.rawValue)
        var known = 0
        for i in 0..<100_000 {
            var w0 = rng.next()
            if i % 2 == 0 { w0 = (w0 & ~0xFF) | UInt64(ids[Int(rng.next(below: UInt64(ids.count)))]) }
            let e = SMMUEventRecord.decode(RawEvent(w0, rng.next(), rng.next(), rng.next()))
            if e.kind != nil {
                known += 1
                // Re-encoding a decoded record and decoding again is stable.
                #expect(SMMUEventRecord.decode(e.encode()) == e)
            }
        }
        #expect(known >= 50_000)
    }

    // MARK: PRI queue

    @Test("a PRIQ entry: SID 31:0, SSID 51:32, PRIV 58, EXEC 59, READ 60, WRITE 61, LAST 62, SSV 63; PRG index 8:0, address 63:12")
    func priqGolden() {
        let p = PRIQEntry(sid: 0x0102, ssid: 5, privileged: true, execute: true, read: true, write: true, last: true,
                          groupIndex: 0x1AB, address: 0x7FFF_F000)
        #expect(p.encode() == RawCommand(0xFC00_0005_0000_0102, 0x7FFF_F1AB))
        #expect(PRIQEntry.decode(p.encode()) == p)
        let q = PRIQEntry(sid: 7, ssid: nil, read: true, write: false, last: false, groupIndex: 3, address: 0xFFFF_FFFF_FFFF_F000)
        #expect(q.encode() == RawCommand(7 | 1 << 60, 0xFFFF_FFFF_FFFF_F003))
        #expect(PRIQEntry.decode(q.encode()) == q)
    }

    @Test("a Stop PASID marker has a PASID and Last with no access; without a PASID it is a page request")
    func stopMarker() {
        #expect(PRIQEntry(sid: 1, ssid: 4, read: false, write: false, last: true, groupIndex: 0, address: 0).isStopMarker)
        #expect(!PRIQEntry(sid: 1, ssid: nil, read: false, write: false, last: true, groupIndex: 0, address: 0).isStopMarker)
        #expect(!PRIQEntry(sid: 1, ssid: 4, read: true, write: false, last: true, groupIndex: 0, address: 0).isStopMarker)
    }

    @Test("any 16 bytes decode as a PRIQ entry and round-trip modulo Reserved bits (10^5 random)")
    func randomPRIQ() {
        var rng = SeededRNG(seed: 0x991)
        for _ in 0..<100_000 {
            let raw = RawCommand(rng.next(), rng.next())
            let p = PRIQEntry.decode(raw)
            let back = p.encode()
            // Reserved bits (word 0 57:52, and SSID bits when SSV == 0; word 1 11:9) are dropped.
            var keep0: UInt64 = 0xFC00_0000_FFFF_FFFF
            if raw.w0 >> 63 != 0 { keep0 |= 0x000F_FFFF_0000_0000 }
            #expect(back == RawCommand(raw.w0 & keep0, raw.w1 & ~0xE00))
        }
    }
}
