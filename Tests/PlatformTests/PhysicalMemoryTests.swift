import Testing
@testable import Platform

@Suite("PhysicalMemory")
struct PhysicalMemoryTests {
    static let size: UInt64 = 64 << 20
    static let badSizes: [UInt64] = [0, 1, 4095, 4097, 8191, PhysicalMemory.maximumSize + 4096, UInt64.max]
    static let nearMax: [UInt64] = [UInt64.max, UInt64.max - 1, UInt64.max - 3, UInt64.max - 7, UInt64.max - 4095, 1 << 63]

    func makeMemory(size: UInt64 = PhysicalMemoryTests.size) throws -> PhysicalMemory {
        try PhysicalMemory(size: size)
    }


    // Buffer helpers (untyped throws, so the tests need no typed-throws closures).
    static func write(_ m: PhysicalMemory, _ pa: UInt64, _ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try m.write(pa, from: $0) }
    }
    static func deviceWrite(_ m: PhysicalMemory, _ pa: UInt64, _ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try m.deviceWrite(pa, from: $0) }
    }
    static func read(_ m: PhysicalMemory, _ pa: UInt64, _ bytes: inout [UInt8]) throws {
        try bytes.withUnsafeMutableBytes { try m.read(pa, into: $0) }
    }
    static func deviceRead(_ m: PhysicalMemory, _ pa: UInt64, _ bytes: inout [UInt8]) throws {
        try bytes.withUnsafeMutableBytes { try m.deviceRead(pa, into: $0) }
    }

    // MARK: Construction

    @Test("a valid size gives the matching frame count and nothing backed")
    func validInit() throws {
        let m = try makeMemory()
        #expect(m.size == Self.size)
        #expect(m.frameCount == Self.size / 4096)
        #expect(m.backedFrameCount == 0)
        #expect(!m.isBacked(frame: 0))
    }

    @Test("sizes that are zero, not a multiple of 4 KiB or above 1 TiB are rejected",
          arguments: PhysicalMemoryTests.badSizes)
    func invalidInit(size: UInt64) {
        #expect(throws: MemoryError.outOfRange(address: size)) { _ = try PhysicalMemory(size: size) }
    }

    // MARK: Little-endian CPU access

    @Test("a 64-bit store is laid out little-endian and loads back at every width")
    func store64LittleEndian() throws {
        let m = try makeMemory()
        try m.store64(0x1000, 0x0807_0605_0403_0201)
        for i in 0..<8 {
            #expect(try m.load8(0x1000 + UInt64(i)) == UInt8(i + 1))
        }
        #expect(try m.load64(0x1000) == 0x0807_0605_0403_0201)
        #expect(try m.load32(0x1000) == 0x0403_0201)
        #expect(try m.load32(0x1004) == 0x0807_0605)
        #expect(try m.load16(0x1006) == 0x0807)
    }

    @Test("a 32-bit store is laid out little-endian and round-trips")
    func store32LittleEndian() throws {
        let m = try makeMemory()
        try m.store32(0x2002, 0x1122_3344)
        #expect(try m.load8(0x2002) == 0x44)
        #expect(try m.load8(0x2003) == 0x33)
        #expect(try m.load8(0x2004) == 0x22)
        #expect(try m.load8(0x2005) == 0x11)
        #expect(try m.load32(0x2002) == 0x1122_3344)
        // Neighbouring bytes are untouched.
        #expect(try m.load8(0x2001) == 0)
        #expect(try m.load8(0x2006) == 0)
    }

    @Test("a 16-bit store is laid out little-endian and round-trips")
    func store16LittleEndian() throws {
        let m = try makeMemory()
        try m.store16(0x3001, 0xBEEF)
        #expect(try m.load8(0x3001) == 0xEF)
        #expect(try m.load8(0x3002) == 0xBE)
        #expect(try m.load16(0x3001) == 0xBEEF)
    }

    @Test("an 8-bit store writes exactly one byte")
    func store8() throws {
        let m = try makeMemory()
        try m.store64(0x4000, .max)
        try m.store8(0x4003, 0x5A)
        #expect(try m.load8(0x4003) == 0x5A)
        #expect(try m.load64(0x4000) == 0xFFFF_FFFF_5AFF_FFFF)
    }

    @Test("generic store and load round-trip each integer width",
          arguments: [UInt64(0), 0x7F, 0x1234_5678_9ABC_DEF0, .max])
    func genericRoundTrip(value: UInt64) throws {
        let m = try makeMemory()
        try m.store(0x5000, UInt8(truncatingIfNeeded: value))
        try m.store(0x5010, UInt16(truncatingIfNeeded: value))
        try m.store(0x5020, UInt32(truncatingIfNeeded: value))
        try m.store(0x5030, value)
        try m.store(0x5040, Int64(bitPattern: value))
        #expect(try m.load(0x5000, as: UInt8.self) == UInt8(truncatingIfNeeded: value))
        #expect(try m.load(0x5010, as: UInt16.self) == UInt16(truncatingIfNeeded: value))
        #expect(try m.load(0x5020, as: UInt32.self) == UInt32(truncatingIfNeeded: value))
        #expect(try m.load(0x5030, as: UInt64.self) == value)
        #expect(try m.load(0x5040, as: Int64.self) == Int64(bitPattern: value))
    }

    // MARK: Backing

    @Test("a CPU store backs its frame on first touch, only that frame")
    func storeBacksFrame() throws {
        let m = try makeMemory()
        #expect(!m.isBacked(frame: 5))
        try m.store32(5 * 4096 + 100, 7)
        #expect(m.isBacked(frame: 5))
        #expect(!m.isBacked(frame: 4))
        #expect(!m.isBacked(frame: 6))
        #expect(m.backedFrameCount == 1)
        // A second store to the same frame does not back anything more.
        try m.store32(5 * 4096 + 200, 8)
        #expect(m.backedFrameCount == 1)
    }

    @Test("a CPU store straddling a frame boundary backs both frames")
    func straddlingStoreBacksBoth() throws {
        let m = try makeMemory()
        try m.store64(0x1FFC, 0xAABB_CCDD_1122_3344)
        #expect(m.isBacked(frame: 1))
        #expect(m.isBacked(frame: 2))
        #expect(m.backedFrameCount == 2)
        #expect(try m.load64(0x1FFC) == 0xAABB_CCDD_1122_3344)
        #expect(try m.deviceLoad(0x1FFC, as: UInt64.self) == 0xAABB_CCDD_1122_3344)
    }

    @Test("a CPU load of an unbacked frame reads zero and does not back it")
    func loadUnbackedReadsZero() throws {
        let m = try makeMemory()
        #expect(try m.load64(0x10_0000) == 0)
        #expect(try m.load8(0x10_0FFF) == 0)
        #expect(!m.isBacked(frame: 0x100))
        #expect(m.backedFrameCount == 0)
    }

    @Test("isBacked is false for frame numbers beyond the end")
    func isBackedOutOfRange() throws {
        let m = try makeMemory()
        #expect(!m.isBacked(frame: m.frameCount))
        #expect(!m.isBacked(frame: .max))
    }

    @Test("populate backs a frame idempotently and rejects frames beyond the end")
    func populate() throws {
        let m = try makeMemory()
        try m.populate(frame: 3)
        try m.populate(frame: 3)
        #expect(m.isBacked(frame: 3))
        #expect(m.backedFrameCount == 1)
        #expect(try m.deviceLoad(3 * 4096, as: UInt64.self) == 0)
        #expect(throws: MemoryError.outOfRange(address: m.frameCount << 12)) { try m.populate(frame: m.frameCount) }
    }

    @Test("discard zeroes and unbacks a frame so devices can no longer reach it")
    func discardZeroesAndUnbacks() throws {
        let m = try makeMemory()
        try m.store64(7 * 4096 + 8, 0xDEAD_BEEF)
        try m.store64(8 * 4096, 0x1234)
        #expect(m.backedFrameCount == 2)
        try m.discard(frame: 7)
        #expect(!m.isBacked(frame: 7))
        #expect(m.isBacked(frame: 8))
        #expect(m.backedFrameCount == 1)
        #expect(try m.load64(7 * 4096 + 8) == 0)
        #expect(throws: MemoryError.unbacked(address: 7 * 4096 + 8)) { _ = try m.deviceLoad(7 * 4096 + 8, as: UInt64.self) }
        // The neighbouring frame keeps its data.
        #expect(try m.load64(8 * 4096) == 0x1234)
        #expect(throws: MemoryError.outOfRange(address: m.frameCount << 12)) { try m.discard(frame: m.frameCount) }
    }

    // MARK: Range checks

    @Test("CPU accesses past the end throw outOfRange, including one straddling the end")
    func cpuOutOfRange() throws {
        let m = try makeMemory()
        let end = m.size
        #expect(throws: MemoryError.outOfRange(address: end)) { _ = try m.load8(end) }
        #expect(throws: MemoryError.outOfRange(address: end - 4)) { _ = try m.load64(end - 4) }
        #expect(throws: MemoryError.outOfRange(address: end - 1)) { try m.store16(end - 1, 1) }
        // The last bytes themselves are fine.
        try m.store64(end - 8, 42)
        #expect(try m.load64(end - 8) == 42)
        #expect(m.isBacked(frame: m.frameCount - 1))
    }

    @Test("accesses at addresses near UInt64.max throw outOfRange instead of trapping",
          arguments: PhysicalMemoryTests.nearMax)
    func nearMaxAddress(address: UInt64) throws {
        let m = try makeMemory()
        #expect(throws: MemoryError.outOfRange(address: address)) { _ = try m.load64(address) }
        #expect(throws: MemoryError.outOfRange(address: address)) { try m.store64(address, 1) }
        #expect(throws: MemoryError.outOfRange(address: address)) { _ = try m.load8(address) }
        #expect(throws: MemoryError.outOfRange(address: address)) { _ = try m.deviceLoad(address, as: UInt64.self) }
        #expect(throws: MemoryError.outOfRange(address: address)) { try m.deviceStore(address, UInt32(1)) }
        let bytes: [UInt8] = Array(repeating: 0xAA, count: 16)
        #expect(throws: MemoryError.outOfRange(address: address)) {
            try Self.deviceWrite(m, address, bytes)
        }
        #expect(throws: MemoryError.outOfRange(address: address)) {
            try Self.write(m, address, bytes)
        }
        var out = [UInt8](repeating: 0, count: 16)
        #expect(throws: MemoryError.outOfRange(address: address)) {
            try Self.deviceRead(m, address, &out)
        }
        #expect(throws: MemoryError.outOfRange(address: address)) {
            try Self.read(m, address, &out)
        }
        #expect(m.backedFrameCount == 0)
    }

    // MARK: Device access

    @Test("device loads and stores of an unbacked frame throw unbacked and write nothing")
    func deviceUnbacked() throws {
        let m = try makeMemory()
        let pa: UInt64 = 0x20_0010
        #expect(throws: MemoryError.unbacked(address: pa)) { _ = try m.deviceLoad(pa, as: UInt32.self) }
        #expect(throws: MemoryError.unbacked(address: pa)) { try m.deviceStore(pa, UInt64(0xFF)) }
        #expect(!m.isBacked(frame: pa >> 12))
        #expect(try m.load64(pa) == 0)
    }

    @Test("device loads and stores of a backed frame round-trip little-endian")
    func deviceBackedRoundTrip() throws {
        let m = try makeMemory()
        try m.populate(frame: 9)
        let pa: UInt64 = 9 * 4096 + 0x40
        try m.deviceStore(pa, UInt32(0xA1B2_C3D4))
        #expect(try m.deviceLoad(pa, as: UInt32.self) == 0xA1B2_C3D4)
        #expect(try m.load8(pa) == 0xD4)
        #expect(try m.load8(pa + 3) == 0xA1)
        try m.store64(pa + 8, 0x0102_0304_0506_0708)
        #expect(try m.deviceLoad(pa + 8, as: UInt64.self) == 0x0102_0304_0506_0708)
    }

    @Test("a device access straddling into an unbacked frame throws unbacked at that frame")
    func deviceStraddleUnbacked() throws {
        let m = try makeMemory()
        try m.populate(frame: 1)
        #expect(throws: MemoryError.unbacked(address: 0x2000)) { _ = try m.deviceLoad(0x1FFC, as: UInt64.self) }
        #expect(throws: MemoryError.unbacked(address: 0x2000)) { try m.deviceStore(0x1FFE, UInt32(0xFFFF_FFFF)) }
        // Nothing of the failed store landed in the backed frame.
        #expect(try m.load16(0x1FFE) == 0)
    }

    @Test("device accesses past the end throw outOfRange, including one straddling the end")
    func deviceOutOfRange() throws {
        let m = try makeMemory()
        let end = m.size
        try m.populate(frame: m.frameCount - 1)
        #expect(throws: MemoryError.outOfRange(address: end)) { _ = try m.deviceLoad(end, as: UInt8.self) }
        #expect(throws: MemoryError.outOfRange(address: end - 2)) { _ = try m.deviceLoad(end - 2, as: UInt32.self) }
        #expect(throws: MemoryError.outOfRange(address: end - 7)) { try m.deviceStore(end - 7, UInt64(1)) }
        #expect(try m.deviceLoad(end - 8, as: UInt64.self) == 0)
    }

    @Test("deviceWrite is all-or-nothing when part of the range is unbacked")
    func deviceWriteAllOrNothing() throws {
        let m = try makeMemory()
        try m.populate(frame: 1)
        let payload = [UInt8](repeating: 0xCC, count: 64)
        #expect(throws: MemoryError.unbacked(address: 0x2000)) {
            try Self.deviceWrite(m, 0x1FE0, payload)
        }
        #expect(try m.load64(0x1FE0) == 0)
        #expect(try m.load64(0x1FF8) == 0)
        #expect(!m.isBacked(frame: 2))
    }

    @Test("deviceWrite and deviceRead copy payloads across backed frames")
    func deviceWriteReadBacked() throws {
        let m = try makeMemory()
        try m.populate(frame: 1)
        try m.populate(frame: 2)
        let payload = (0..<100).map { UInt8($0) }
        try Self.deviceWrite(m, 0x1FD0, payload)
        var back = [UInt8](repeating: 0, count: 100)
        try Self.deviceRead(m, 0x1FD0, &back)
        #expect(back == payload)
        #expect(try m.load8(0x1FD0 + 99) == 99)
    }

    @Test("deviceRead of an unbacked frame throws unbacked and leaves the buffer untouched")
    func deviceReadUnbacked() throws {
        let m = try makeMemory()
        var out = [UInt8](repeating: 0x77, count: 32)
        #expect(throws: MemoryError.unbacked(address: 0x30_0000)) {
            try Self.deviceRead(m, 0x30_0000, &out)
        }
        #expect(out.allSatisfy { $0 == 0x77 })
    }

    @Test("deviceFetchOr64 sets bits and returns the old value; unbacked or misaligned throw")
    func deviceFetchOr() throws {
        let m = try makeMemory()
        try m.store64(0x1008, 0x10)
        #expect(try m.deviceFetchOr64(0x1008, 0x3) == 0x10)
        #expect(try m.load64(0x1008) == 0x13)
        #expect(throws: MemoryError.misaligned(address: 0x100C)) { _ = try m.deviceFetchOr64(0x100C, 1) }
        #expect(throws: MemoryError.unbacked(address: 0x5000)) { _ = try m.deviceFetchOr64(0x5000, 1) }
    }

    // MARK: Atomics

    @Test("compareExchange64 swaps when the expected value matches and reports the old value")
    func cmpxchg64Success() throws {
        let m = try makeMemory()
        try m.store64(0x1010, 5)
        let r = try m.compareExchange64(0x1010, expected: 5, desired: 0xFFFF_0000_FFFF_0000)
        #expect(r.exchanged)
        #expect(r.original == 5)
        #expect(try m.load64(0x1010) == 0xFFFF_0000_FFFF_0000)
    }

    @Test("compareExchange64 fails on a mismatch, returns the value found and writes nothing")
    func cmpxchg64Failure() throws {
        let m = try makeMemory()
        try m.store64(0x1010, 9)
        let r = try m.compareExchange64(0x1010, expected: 5, desired: 1)
        #expect(!r.exchanged)
        #expect(r.original == 9)
        #expect(try m.load64(0x1010) == 9)
    }

    @Test("compareExchange64 on an unbacked frame compares against zero and backs it")
    func cmpxchg64Unbacked() throws {
        let m = try makeMemory()
        let r = try m.compareExchange64(0x40_0000, expected: 0, desired: 77)
        #expect(r.exchanged)
        #expect(r.original == 0)
        #expect(m.isBacked(frame: 0x400))
        #expect(try m.deviceLoad(0x40_0000, as: UInt64.self) == 77)
    }

    @Test("compareExchange64 rejects misaligned and out-of-range addresses")
    func cmpxchg64Errors() throws {
        let m = try makeMemory()
        #expect(throws: MemoryError.misaligned(address: 0x1004)) { _ = try m.compareExchange64(0x1004, expected: 0, desired: 1) }
        #expect(throws: MemoryError.outOfRange(address: m.size)) { _ = try m.compareExchange64(m.size, expected: 0, desired: 1) }
        #expect(throws: MemoryError.outOfRange(address: UInt64.max - 7)) {
            _ = try m.compareExchange64(UInt64.max - 7, expected: 0, desired: 1)
        }
    }

    @Test("compareExchange128 swaps both quadwords on a match")
    func cmpxchg128Success() throws {
        let m = try makeMemory()
        try m.store64(0x2000, 0x1111)
        try m.store64(0x2008, 0x2222)
        let r = try m.compareExchange128(0x2000, expected: (0x1111, 0x2222), desired: (0xAAAA, 0xBBBB))
        #expect(r.exchanged)
        #expect(r.original.0 == 0x1111)
        #expect(r.original.1 == 0x2222)
        #expect(try m.load64(0x2000) == 0xAAAA)
        #expect(try m.load64(0x2008) == 0xBBBB)
    }

    @Test("compareExchange128 fails when either quadword differs and returns both found values",
          arguments: [(UInt64(0x1111), UInt64(0x9999)), (0x9999, 0x2222), (0, 0)])
    func cmpxchg128Failure(expected: (UInt64, UInt64)) throws {
        let m = try makeMemory()
        try m.store64(0x2000, 0x1111)
        try m.store64(0x2008, 0x2222)
        let r = try m.compareExchange128(0x2000, expected: expected, desired: (0xAAAA, 0xBBBB))
        #expect(!r.exchanged)
        #expect(r.original.0 == 0x1111)
        #expect(r.original.1 == 0x2222)
        #expect(try m.load64(0x2000) == 0x1111)
        #expect(try m.load64(0x2008) == 0x2222)
    }

    @Test("compareExchange128 rejects addresses not 16-byte aligned", arguments: [UInt64(0x2008), 0x2001, 0x2004])
    func cmpxchg128Misaligned(address: UInt64) throws {
        let m = try makeMemory()
        #expect(throws: MemoryError.misaligned(address: address)) {
            _ = try m.compareExchange128(address, expected: (0, 0), desired: (1, 1))
        }
        #expect(try m.load64(address & ~7) == 0)
    }

    @Test("compareExchange128 rejects out-of-range addresses")
    func cmpxchg128OutOfRange() throws {
        let m = try makeMemory()
        #expect(throws: MemoryError.outOfRange(address: m.size)) {
            _ = try m.compareExchange128(m.size, expected: (0, 0), desired: (1, 1))
        }
        #expect(throws: MemoryError.outOfRange(address: UInt64.max - 15)) {
            _ = try m.compareExchange128(UInt64.max - 15, expected: (0, 0), desired: (1, 1))
        }
    }

    // MARK: Bulk

    @Test("bulk write then read round-trips a buffer spanning several frames and backs them")
    func bulkWriteRead() throws {
        let m = try makeMemory()
        var rng = SeededRNG(seed: 3)
        let data = (0..<10_000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let pa: UInt64 = 0x10_0F00
        try Self.write(m, pa, data)
        var back = [UInt8](repeating: 0, count: data.count)
        try Self.read(m, pa, &back)
        #expect(back == data)
        // Frames 0x100 ... (pa + 9999) >> 12 are backed.
        let first = pa >> 12, last = (pa + UInt64(data.count) - 1) >> 12
        #expect(m.backedFrameCount == Int(last - first + 1))
        for f in first...last { #expect(m.isBacked(frame: f)) }
        #expect(try m.load8(pa + 5000) == data[5000])
    }

    @Test("bulk read of unbacked memory reads zero without backing")
    func bulkReadUnbacked() throws {
        let m = try makeMemory()
        var back = [UInt8](repeating: 0xEE, count: 5000)
        try Self.read(m, 0x80_0000, &back)
        #expect(back.allSatisfy { $0 == 0 })
        #expect(m.backedFrameCount == 0)
    }

    @Test("zero clears a range and backs its frames")
    func zeroRange() throws {
        let m = try makeMemory()
        try m.store64(0x3000, .max)
        try m.store64(0x3FF8, .max)
        try m.zero(0x3000, count: 0x1000)
        #expect(try m.load64(0x3000) == 0)
        #expect(try m.load64(0x3FF8) == 0)
        try m.zero(0x9000, count: 0x2000)
        #expect(m.isBacked(frame: 9))
        #expect(m.isBacked(frame: 10))
        #expect(throws: MemoryError.outOfRange(address: m.size - 8)) { try m.zero(m.size - 8, count: 16) }
    }
}
