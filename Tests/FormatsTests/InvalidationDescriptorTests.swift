import Testing
@testable import Formats

private let sid = RequesterID(bus: 0x3A, device: 0x1F, function: 5)   // 0x3AFD
private let sidRaw = UInt64(0x3AFD)
private let did = DomainID(0xABCD)
private let pasid = PASID(0xFEDCB)!

/// One descriptor with the raw quadwords the spec (and Linux `QI_*` macros) give for it.
struct DescriptorCase: Sendable, CustomTestStringConvertible {
    let name: String
    let descriptor: InvalidationDescriptor
    let qw0: UInt64
    let qw1: UInt64
    var testDescription: String { name }
    var needsWide: Bool { [6, 7, 8].contains(descriptor.type) }
}

private let cases: [DescriptorCase] = [
    DescriptorCase(name: "context-cache global", descriptor: .contextCache(.global), qw0: 0x1 | 1 << 4, qw1: 0),
    DescriptorCase(name: "context-cache domain", descriptor: .contextCache(.domain(did)),
                   qw0: 0x1 | 2 << 4 | 0xABCD << 16, qw1: 0),
    // DID 31:16, SID 47:32, FM 49:48, G = 3 at 5:4.
    DescriptorCase(name: "context-cache device", descriptor: .contextCache(.device(did, sid, functionMask: 3)),
                   qw0: 0x1 | 3 << 4 | 0xABCD << 16 | sidRaw << 32 | 3 << 48, qw1: 0),
    DescriptorCase(name: "context-cache device FM 1", descriptor: .contextCache(.device(DomainID(7), sid, functionMask: 1)),
                   qw0: 0x1 | 3 << 4 | 7 << 16 | sidRaw << 32 | 1 << 48, qw1: 0),
    DescriptorCase(name: "IOTLB global, drain reads", descriptor: .iotlb(.global, drainReads: true, drainWrites: false),
                   qw0: 0x2 | 1 << 4 | 1 << 7, qw1: 0),
    DescriptorCase(name: "IOTLB domain, drain writes", descriptor: .iotlb(.domain(did), drainReads: false, drainWrites: true),
                   qw0: 0x2 | 2 << 4 | 1 << 6 | 0xABCD << 16, qw1: 0),
    // G = 3, DID 31:16; qw1 = ADDR | IH bit 6 | AM 5:0.
    DescriptorCase(name: "IOTLB page-selective",
                   descriptor: .iotlb(.page(did, address: 0x0012_3456_7000, addressMask: 9, invalidationHint: true)),
                   qw0: 0x2 | 3 << 4 | 0xABCD << 16, qw1: 0x0012_3456_7000 | 1 << 6 | 9),
    DescriptorCase(name: "IOTLB page-selective, AM 63, no hint",
                   descriptor: .iotlb(.page(DomainID(1), address: 0x8000_0000_0000_0000, addressMask: 63, invalidationHint: false),
                                      drainReads: true, drainWrites: true),
                   qw0: 0x2 | 3 << 4 | 1 << 6 | 1 << 7 | 1 << 16, qw1: 0x8000_0000_0000_0000 | 63),
    // QDEP 20:16, SID 47:32, PFSID 15:12 (low 4) and 63:52 (high 12); qw1 = ADDR | S bit 0.
    DescriptorCase(name: "device-TLB",
                   descriptor: .deviceTLB(source: sid, pfsid: 0xABCD, queueDepth: 0x1F, address: 0x7000_0000, sizeBit: true),
                   qw0: 0x3 | 0xD << 12 | 0x1F << 16 | sidRaw << 32 | 0xABC << 52, qw1: 0x7000_0000 | 1),
    DescriptorCase(name: "device-TLB, no size bit",
                   descriptor: .deviceTLB(source: RequesterID(rawValue: 0x0100), pfsid: 0, queueDepth: 0, address: 0x1000, sizeBit: false),
                   qw0: 0x3 | 0x0100 << 32, qw1: 0x1000),
    // Type 7; G 5:4 (0 domain, 1 PASID, 3 global); DID 31:16; PASID 51:32.
    DescriptorCase(name: "PASID cache domain", descriptor: .pasidCache(.domain(did)), qw0: 0x7 | 0xABCD << 16, qw1: 0),
    DescriptorCase(name: "PASID cache PASID", descriptor: .pasidCache(.pasid(did, pasid)),
                   qw0: 0x7 | 1 << 4 | 0xABCD << 16 | 0xFEDCB << 32, qw1: 0),
    DescriptorCase(name: "PASID cache global", descriptor: .pasidCache(.global), qw0: 0x7 | 3 << 4, qw1: 0),
    // Type 6; G 5:4 (2 PASID, 3 page); DID 31:16; PASID 51:32; qw1 = ADDR | IH 6 | AM 5:0.
    DescriptorCase(name: "PASID-IOTLB PASID", descriptor: .pasidIOTLB(did, pasid, .pasid),
                   qw0: 0x6 | 2 << 4 | 0xABCD << 16 | 0xFEDCB << 32, qw1: 0),
    DescriptorCase(name: "PASID-IOTLB page",
                   descriptor: .pasidIOTLB(did, PASID(0xFFFFF)!, .page(address: 0xFFFF_F000, addressMask: 3, invalidationHint: true)),
                   qw0: 0x6 | 3 << 4 | 0xABCD << 16 | 0xFFFFF << 32, qw1: 0xFFFF_F000 | 1 << 6 | 3),
    // Type 8; QDEP 8:4, PFSID 15:12 + 63:52, SID 31:16, PASID 51:32; qw1 = ADDR | S bit 11 | G bit 0.
    DescriptorCase(name: "PASID device-TLB",
                   descriptor: .pasidDeviceTLB(source: sid, pfsid: 0x1234, queueDepth: 7, pasid: pasid,
                                               address: 0x1_0000_0000, sizeBit: true, global: true),
                   qw0: 0x8 | 7 << 4 | 0x4 << 12 | sidRaw << 16 | 0xFEDCB << 32 | 0x123 << 52,
                   qw1: 0x1_0000_0000 | 1 << 11 | 1),
    DescriptorCase(name: "PASID device-TLB, no S, no G",
                   descriptor: .pasidDeviceTLB(source: sid, pfsid: 0, queueDepth: 0x1F, pasid: PASID.noPASID,
                                               address: 0x2000, sizeBit: false, global: false),
                   qw0: 0x8 | 0x1F << 4 | sidRaw << 16, qw1: 0x2000),
    // Type 5; IF 4, SW 5, FN 6, PD 7, data 63:32; qw1 = status address.
    DescriptorCase(name: "wait, all flags",
                   descriptor: .wait(InvalidationWait(interrupt: true, statusWrite: true, fence: true, pageDrain: true,
                                                      statusData: 0xCAFE_BABE, statusAddress: 0x1_2345_6788)),
                   qw0: 0x5 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 7 | 0xCAFE_BABE << 32, qw1: 0x1_2345_6788),
    DescriptorCase(name: "wait, interrupt only",
                   descriptor: .wait(InvalidationWait(interrupt: true, statusWrite: false, fence: false, pageDrain: false,
                                                      statusData: 0, statusAddress: 0)),
                   qw0: 0x5 | 1 << 4, qw1: 0),
    DescriptorCase(name: "wait, status write default",
                   descriptor: .wait(InvalidationWait(statusAddress: 0x4000)),
                   qw0: 0x5 | 1 << 5 | 1 << 6 | 1 << 32, qw1: 0x4000),
    // Type 9; PASID present 4, response code 15:12, requester 31:16, PASID 51:32; qw1 = PRG index 11:3.
    DescriptorCase(name: "page group response with PASID",
                   descriptor: .pageGroupResponse(PageGroupResponse(requester: sid, pasid: PASID(0x54321)!,
                                                                    responseCode: 0xF, groupIndex: 0x1FF)),
                   qw0: 0x9 | 1 << 4 | 0xF << 12 | sidRaw << 16 | 0x54321 << 32, qw1: 0x1FF << 3),
    DescriptorCase(name: "page group response without PASID",
                   descriptor: .pageGroupResponse(PageGroupResponse(requester: sid, pasid: nil, responseCode: 1, groupIndex: 5)),
                   qw0: 0x9 | 1 << 12 | sidRaw << 16, qw1: 5 << 3),
]

@Suite("Invalidation descriptors (VT-d §6.5.2)")
struct InvalidationDescriptorTests {
    @Test("each descriptor encodes to the documented bit positions", arguments: cases)
    func encodeBits(c: DescriptorCase) {
        let raw = c.descriptor.encode()
        #expect(raw.qw0 == c.qw0)
        #expect(raw.qw1 == c.qw1)
        #expect(raw.qw2 == 0)
        #expect(raw.qw3 == 0)
        #expect(raw.type == c.descriptor.type)
        #expect(c.qw0 & 0xF == UInt64(c.descriptor.type))
    }

    @Test("each descriptor decodes back to an equal value in a 256-bit queue", arguments: cases)
    func roundTripWide(c: DescriptorCase) {
        #expect(InvalidationDescriptor.decode(c.descriptor.encode(), wide: true) == .success(c.descriptor))
        #expect(InvalidationDescriptor.decode(RawDescriptor(c.qw0, c.qw1), wide: true) == .success(c.descriptor))
    }

    @Test("in a 128-bit queue legacy types decode back and PASID-based types need wide descriptors", arguments: cases)
    func roundTripNarrow(c: DescriptorCase) {
        let r = InvalidationDescriptor.decode(c.descriptor.encode(), wide: false)
        if c.needsWide {
            #expect(r == .failure(.needsWideDescriptors(type: c.descriptor.type)))
        } else {
            #expect(r == .success(c.descriptor))
        }
    }

    @Test("non-zero qw2 or qw3 in a 256-bit queue is a reserved-bit error", arguments: cases)
    func wideUpperQuadwords(c: DescriptorCase) {
        let raw = c.descriptor.encode()
        let t = c.descriptor.type
        #expect(InvalidationDescriptor.decode(RawDescriptor(raw.qw0, raw.qw1, 1, 0), wide: true) == .failure(.reservedBits(type: t)))
        #expect(InvalidationDescriptor.decode(RawDescriptor(raw.qw0, raw.qw1, 0, 1 << 63), wide: true) == .failure(.reservedBits(type: t)))
    }

    @Test("the type code combines bits 3:0 with bits 11:9 as its high part")
    func typeField() {
        #expect(RawDescriptor(0x5, 0).type == 5)
        #expect(RawDescriptor(0x200 | 0x1, 0).type == 0x11)
        #expect(RawDescriptor(0xE00 | 0xF, 0).type == 0x7F)
        #expect(RawDescriptor(0x1F0 | 0x2, 0).type == 2)
    }

    @Test("unknown or unsupported types are rejected as invalid",
          arguments: InvalidationDescriptorTests.invalidTypeWords)
    func invalidTypes(qw0: UInt64) {
        let t = RawDescriptor(qw0, 0).type
        #expect(InvalidationDescriptor.decode(RawDescriptor(qw0, 0), wide: false) == .failure(.invalidType(t)))
        #expect(InvalidationDescriptor.decode(RawDescriptor(qw0, 0), wide: true) == .failure(.invalidType(t)))
    }

    static let invalidTypeWords: [UInt64] = [0x0, 0x4, 0xA, 0xB, 0xC, 0xD, 0xE, 0xF, 0x201, 0xE07]

    struct ReservedCase: Sendable, CustomTestStringConvertible {
        let name: String
        let raw: RawDescriptor
        let type: UInt8
        var testDescription: String { name }
    }

    static let reservedCases: [ReservedCase] = [
        ReservedCase(name: "context-cache G=0", raw: RawDescriptor(0x1, 0), type: 1),
        ReservedCase(name: "context-cache bit 6", raw: RawDescriptor(0x1 | 1 << 4 | 1 << 6, 0), type: 1),
        ReservedCase(name: "context-cache bit 15", raw: RawDescriptor(0x1 | 1 << 4 | 1 << 15, 0), type: 1),
        ReservedCase(name: "context-cache bit 50", raw: RawDescriptor(0x1 | 3 << 4 | 1 << 50, 0), type: 1),
        ReservedCase(name: "context-cache bit 63", raw: RawDescriptor(0x1 | 3 << 4 | 1 << 63, 0), type: 1),
        ReservedCase(name: "context-cache qw1", raw: RawDescriptor(0x1 | 1 << 4, 1), type: 1),
        ReservedCase(name: "IOTLB G=0", raw: RawDescriptor(0x2, 0), type: 2),
        ReservedCase(name: "IOTLB bit 8", raw: RawDescriptor(0x2 | 1 << 4 | 1 << 8, 0), type: 2),
        ReservedCase(name: "IOTLB bit 32", raw: RawDescriptor(0x2 | 2 << 4 | 1 << 32, 0), type: 2),
        ReservedCase(name: "IOTLB qw1 bit 7", raw: RawDescriptor(0x2 | 3 << 4, 1 << 7), type: 2),
        ReservedCase(name: "IOTLB qw1 bit 11", raw: RawDescriptor(0x2 | 3 << 4, 1 << 11), type: 2),
        ReservedCase(name: "device-TLB bit 4", raw: RawDescriptor(0x3 | 1 << 4, 0), type: 3),
        ReservedCase(name: "device-TLB bit 21", raw: RawDescriptor(0x3 | 1 << 21, 0), type: 3),
        ReservedCase(name: "device-TLB bit 48", raw: RawDescriptor(0x3 | 1 << 48, 0), type: 3),
        ReservedCase(name: "device-TLB qw1 bit 1", raw: RawDescriptor(0x3, 1 << 1), type: 3),
        ReservedCase(name: "device-TLB qw1 bit 11", raw: RawDescriptor(0x3, 1 << 11), type: 3),
        ReservedCase(name: "wait bit 8", raw: RawDescriptor(0x5 | 1 << 8, 0), type: 5),
        ReservedCase(name: "wait bit 31", raw: RawDescriptor(0x5 | 1 << 31, 0), type: 5),
        ReservedCase(name: "wait qw1 bit 0", raw: RawDescriptor(0x5 | 1 << 5, 0x1001), type: 5),
        ReservedCase(name: "wait qw1 bit 1", raw: RawDescriptor(0x5 | 1 << 5, 0x1002), type: 5),
        ReservedCase(name: "PASID-IOTLB G=0", raw: RawDescriptor(0x6, 0), type: 6),
        ReservedCase(name: "PASID-IOTLB G=1", raw: RawDescriptor(0x6 | 1 << 4, 0), type: 6),
        ReservedCase(name: "PASID-IOTLB bit 6", raw: RawDescriptor(0x6 | 2 << 4 | 1 << 6, 0), type: 6),
        ReservedCase(name: "PASID-IOTLB bit 52", raw: RawDescriptor(0x6 | 2 << 4 | 1 << 52, 0), type: 6),
        ReservedCase(name: "PASID-IOTLB qw1 bit 7", raw: RawDescriptor(0x6 | 3 << 4, 1 << 7), type: 6),
        ReservedCase(name: "PASID cache G=2", raw: RawDescriptor(0x7 | 2 << 4, 0), type: 7),
        ReservedCase(name: "PASID cache bit 12", raw: RawDescriptor(0x7 | 1 << 12, 0), type: 7),
        ReservedCase(name: "PASID cache bit 63", raw: RawDescriptor(0x7 | 1 << 63, 0), type: 7),
        ReservedCase(name: "PASID cache qw1", raw: RawDescriptor(0x7, 0x1000), type: 7),
        ReservedCase(name: "PASID device-TLB qw1 bit 1", raw: RawDescriptor(0x8, 1 << 1), type: 8),
        ReservedCase(name: "PASID device-TLB qw1 bit 10", raw: RawDescriptor(0x8, 1 << 10), type: 8),
        ReservedCase(name: "page group response bit 8", raw: RawDescriptor(0x9 | 1 << 8, 0), type: 9),
        ReservedCase(name: "page group response bit 52", raw: RawDescriptor(0x9 | 1 << 52, 0), type: 9),
        ReservedCase(name: "page group response qw1 bit 0", raw: RawDescriptor(0x9, 1), type: 9),
        ReservedCase(name: "page group response qw1 bit 12", raw: RawDescriptor(0x9, 1 << 12), type: 9),
    ]

    @Test("descriptors with reserved bits or reserved granularities are rejected", arguments: reservedCases)
    func reservedBits(c: ReservedCase) {
        #expect(InvalidationDescriptor.decode(c.raw, wide: true) == .failure(.reservedBits(type: c.type)))
        if ![6, 7, 8].contains(c.type) {
            #expect(InvalidationDescriptor.decode(c.raw, wide: false) == .failure(.reservedBits(type: c.type)))
        }
    }

    @Test("PASID-based types in a 128-bit queue need wide descriptors even when otherwise valid",
          arguments: [UInt8(6), 7, 8])
    func needsWide(type: UInt8) {
        #expect(InvalidationDescriptor.decode(RawDescriptor(UInt64(type) | 3 << 4, 0), wide: false)
                == .failure(.needsWideDescriptors(type: type)))
    }

    @Test("type codes match the VT-d descriptor types")
    func typeCodes() {
        #expect(InvalidationDescriptor.contextCacheType == 1)
        #expect(InvalidationDescriptor.iotlbType == 2)
        #expect(InvalidationDescriptor.deviceTLBType == 3)
        #expect(InvalidationDescriptor.interruptEntryCacheType == 4)
        #expect(InvalidationDescriptor.waitType == 5)
        #expect(InvalidationDescriptor.pasidIOTLBType == 6)
        #expect(InvalidationDescriptor.pasidCacheType == 7)
        #expect(InvalidationDescriptor.pasidDeviceTLBType == 8)
        #expect(InvalidationDescriptor.pageGroupResponseType == 9)
    }

    @Test("a wait descriptor's status address drops bits 1:0 when encoded")
    func waitAddressAlignment() {
        let raw = InvalidationDescriptor.wait(InvalidationWait(statusAddress: 0x1003)).encode()
        #expect(raw.qw1 == 0x1000)
    }
}
