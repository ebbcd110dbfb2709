import Testing
@testable import Formats

@Suite("Fault records (VT-d §11.4.14)")
struct FaultRecordTests {
    @Test("fields land at their 128-bit positions: FI 63:12, SID 79:64, PRIV 93, EXE 94, PP 95, FR 103:96, PV 123:104, T 126, F 127")
    func bitPositions() {
        let r = FaultRecord(source: RequesterID(rawValue: 0xBEEF), reason: 0x5A, address: 0x0000_1234_5678_9ABC,
                            pasid: PASID(0xABCDE), isRead: true, execute: true, privileged: true)
        let (lo, hi) = r.encode()
        #expect(lo == 0x0000_1234_5678_9000)
        #expect(hi & 0xFFFF == 0xBEEF)                        // SID 79:64
        #expect((hi >> (93 - 64)) & 1 == 1)                    // PRIV
        #expect((hi >> (94 - 64)) & 1 == 1)                    // EXE
        #expect((hi >> (95 - 64)) & 1 == 1)                    // PP
        #expect((hi >> (96 - 64)) & 0xFF == 0x5A)              // FR 103:96
        #expect((hi >> (104 - 64)) & 0xFFFFF == 0xABCDE)       // PV 123:104
        #expect((hi >> (126 - 64)) & 1 == 1)                   // T: read
        #expect(hi >> (127 - 64) == 1)                         // F
        #expect(hi == UInt64(0xBEEF) | 1 << 29 | 1 << 30 | 1 << 31 | 0x5A << 32 | 0xABCDE << 40 | 1 << 62 | 1 << 63)
    }

    @Test("a write without PASID clears T, PP and PV")
    func writeWithoutPASID() {
        let r = FaultRecord(source: RequesterID(rawValue: 0x0100), reason: 0x71, address: 0x5000, pasid: nil, isRead: false)
        let (lo, hi) = r.encode()
        #expect(lo == 0x5000)
        #expect(hi == UInt64(0x0100) | 0x71 << 32 | 1 << 63)
    }

    static let records: [FaultRecord] = [
        FaultRecord(source: RequesterID(bus: 0, device: 2, function: 0), reason: 0x79, address: 0x1000, pasid: nil, isRead: true),
        FaultRecord(source: RequesterID(bus: 0xFF, device: 31, function: 7), reason: 0xFF, address: 0x000F_FFFF_FFFF_F000,
                    pasid: PASID(0xFFFFF), isRead: false, execute: true, privileged: false),
        FaultRecord(source: RequesterID(rawValue: 0x1234), reason: 0x38, address: 0, pasid: PASID.noPASID, isRead: false,
                    execute: false, privileged: true),
        FaultRecord(source: RequesterID(rawValue: 0x8001), reason: 0x85, address: 0xFFFF_FFFF_FFFF_F000, pasid: PASID(1),
                    isRead: true, execute: true, privileged: true),
    ]

    @Test("a record decodes back to an equal value", arguments: records)
    func roundTrip(r: FaultRecord) {
        let (lo, hi) = r.encode()
        #expect(FaultRecord.decode(lo, hi) == r)
    }

    @Test("a record with F clear decodes to nil")
    func faultBitClear() {
        let (lo, hi) = Self.records[1].encode()
        #expect(FaultRecord.decode(lo, hi & ~(1 << 63)) == nil)
        #expect(FaultRecord.decode(0, 0) == nil)
    }

    @Test("the faulting address keeps only bits 63:12")
    func addressMasked() {
        let r = FaultRecord(source: RequesterID(rawValue: 1), reason: 1, address: 0x1FFF, pasid: nil, isRead: true)
        #expect(r.address == 0x1000)
        #expect(FaultRecord.decode(0x2FFF, 1 << 63)?.address == 0x2000)
    }
}

@Suite("Capability registers (VT-d §11.4.2, §11.4.3)")
struct CapabilityTests {
    @Test("CAP fields written by make read back and sit at their bit positions")
    func capDefault() {
        let c = VTdCapability.make()
        #expect(c.sagaw == 0b01100)
        #expect((c.raw >> 8) & 0x1F == 0b01100)
        #expect(c.supportsSecondStage(levels: 4))
        #expect(c.supportsSecondStage(levels: 5))
        #expect(!c.supportsSecondStage(levels: 3))
        #expect(!c.supportsSecondStage(levels: 6))
        #expect(c.mgaw == 57)
        #expect((c.raw >> 16) & 0x3F == 56)
        #expect(c.numberOfFaultRecords == 8)
        #expect((c.raw >> 40) & 0xFF == 7)
        #expect(c.faultRecordingOffset == VTdRegister.faultRecording)
        #expect((c.raw >> 24) & 0x3FF == UInt64(VTdRegister.faultRecording / 16))
        #expect(c.maximumAddressMask == 18)
        #expect((c.raw >> 48) & 0x3F == 18)
        #expect(c.numberOfDomains == 1 << 16)
        #expect(c.raw & 7 == 6)
        #expect(c.secondStageLargePages == 0b11)
        #expect(c.pageSelectiveInvalidation)
        #expect(!c.cachingMode)
        #expect(c.firstStage1GPages)
        #expect(c.firstStage5Level)
    }

    @Test("CAP make with other parameters reads back those values")
    func capCustom() {
        let c = VTdCapability.make(domainIDBits: 8, sagawLevels: [3], mgaw: 39, faultRecords: 256,
                                   faultRecordingOffset: 0x400, largePages2M: true, largePages1G: false,
                                   maxAddressMask: 63, cachingMode: true)
        #expect(c.sagaw == 0b00010)
        #expect(c.supportsSecondStage(levels: 3))
        #expect(!c.supportsSecondStage(levels: 4))
        #expect(c.mgaw == 39)
        #expect(c.numberOfFaultRecords == 256)
        #expect(c.faultRecordingOffset == 0x400)
        #expect(c.maximumAddressMask == 63)
        #expect(c.numberOfDomains == 256)
        #expect(c.cachingMode)
        #expect(c.raw & (1 << 7) != 0)
        #expect(c.secondStageLargePages == 0b01)
        #expect(!c.firstStage1GPages)
    }

    @Test("ECAP fields written by make read back and sit at their bit positions")
    func ecapDefault() {
        let e = VTdExtendedCapability.make()
        #expect(e.pasidBits == 20)
        #expect((e.raw >> 35) & 0x1F == 19)
        #expect(e.queuedInvalidation && e.raw & (1 << 1) != 0)
        #expect(e.deviceTLB && e.passThrough && e.nested && e.pageRequests)
        #expect(e.executeRequests && e.supervisorRequests)
        #expect(e.pasid && e.raw & (1 << 40) != 0)
        #expect(e.scalableMode && e.raw & (1 << 43) != 0)
        #expect(e.secondStageAD && e.secondStage && e.firstStage)
        #expect(e.iotlbRegisterOffset == VTdRegister.iotlbRegisters)
        #expect((e.raw >> 8) & 0x3FF == UInt64(VTdRegister.iotlbRegisters / 16))
    }

    @Test("ECAP make with features off and a smaller PASID size reads back", arguments: [1, 8, 16, 20])
    func ecapCustom(bits: Int) {
        let e = VTdExtendedCapability.make(passThrough: false, nested: false, pageRequests: false, deviceTLB: false,
                                           pasidBits: bits, firstStage: false, secondStage: true, secondStageAD: false)
        #expect(e.pasidBits == bits)
        #expect(!e.passThrough && !e.nested && !e.pageRequests && !e.deviceTLB)
        #expect(!e.firstStage && e.secondStage && !e.secondStageAD)
        #expect(e.raw & (1 << 6) == 0)
        #expect(e.raw & (1 << 47) == 0)
    }

    @Test("register helpers encode RTADDR mode, FSTS fault index and IQA fields")
    func registerHelpers() {
        #expect(VTdRootTableAddress.mode(0x1000 | VTdRootTableAddress.scalableMode) == 1)
        #expect(VTdRootTableAddress.mode(VTdRootTableAddress.abortDMAMode) == 3)
        #expect(VTdFaultStatus.faultRecordIndex(0xAB00 | VTdFaultStatus.primaryPendingFault) == 0xAB)
        #expect(VTdQueueAddress.make(base: 0x1234_5FFF, sizeOrder: 3, wide: true) == 0x1234_5000 | 1 << 11 | 3)
        #expect(VTdQueueAddress.make(base: 0x1000, sizeOrder: 9, wide: false) == 0x1000 | 1)
        #expect(VTdGlobal.translationEnable == 1 << 31)
        #expect(VTdGlobal.queuedInvalidationEnable == 1 << 26)
    }

    @Test("scalable-mode fault reasons carry the codes Linux prints")
    func faultReasonCodes() {
        #expect(VTdFaultReason.smPASIDEntryAccessError.rawValue == 0x58)
        #expect(VTdFaultReason.smSecondStageReserved.rawValue == 0x7A)
        #expect(VTdFaultReason.smFirstStageNotPresent.rawValue == 0x71)
        #expect(VTdFaultReason.smContextEntryNotPresent.description.hasPrefix("0x41 "))
        #expect(VTdFaultReason.rootTableInvalid.description.hasPrefix("0x08 "))
        #expect(Set(VTdFaultReason.allCases.map(\.name)).count == VTdFaultReason.allCases.count)
    }
}

@Suite("Identifiers")
struct IdentifierTests {
    @Test("bus, device and function pack as bus << 8 | device << 3 | function",
          arguments: [(UInt8(0), UInt8(0), UInt8(0)), (0x3A, 0x1F, 5), (0xFF, 31, 7), (1, 2, 3), (0x80, 0x10, 0)])
    func packing(bus: UInt8, device: UInt8, function: UInt8) {
        let r = RequesterID(bus: bus, device: device, function: function)
        #expect(r.rawValue == UInt16(bus) << 8 | UInt16(device) << 3 | UInt16(function))
        #expect(r.bus == bus)
        #expect(r.device == device)
        #expect(r.function == function)
        #expect(r.devfn == device << 3 | function)
        #expect(RequesterID(rawValue: r.rawValue) == r)
    }

    @Test("out-of-range device and function numbers are masked, not spilled into other fields")
    func masking() {
        let r = RequesterID(bus: 1, device: 0xFF, function: 0xFF)
        #expect(r.bus == 1)
        #expect(r.device == 31)
        #expect(r.function == 7)
    }

    @Test("requester IDs print as bb:dd.f in hex and order by raw value")
    func description() {
        #expect(RequesterID(bus: 0x3A, device: 0x1F, function: 5).description == "3a:1f.5")
        #expect(RequesterID(bus: 0, device: 2, function: 0).description == "00:02.0")
        #expect(RequesterID(rawValue: 1) < RequesterID(rawValue: 0x100))
    }

    @Test("PASID accepts values below 2^20 and rejects anything larger",
          arguments: [UInt32(0), 1, 0xFFFFF, 0x100000, 0x100001, UInt32.max])
    func pasidLimit(value: UInt32) {
        let p = PASID(value)
        if value < 1 << 20 {
            #expect(p?.rawValue == value)
        } else {
            #expect(p == nil)
        }
    }

    @Test("PASID(truncating:) keeps the low 20 bits and noPASID is 0")
    func pasidTruncating() {
        #expect(PASID(truncating: 0x123_4567).rawValue == 0x3_4567)
        #expect(PASID.noPASID.rawValue == 0)
        #expect(PASID.bits == 20)
        #expect(PASID.limit == 1 << 20)
        #expect(PASID(5)! < PASID(6)!)
    }

    @Test("domain IDs keep their 16-bit value and order")
    func domainID() {
        #expect(DomainID(0xFFFF).rawValue == 0xFFFF)
        #expect(DomainID(1) < DomainID(2))
        #expect(DomainID(7).description == "DID 7")
    }
}
