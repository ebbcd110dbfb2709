import Testing
@testable import Formats

private let mask52 = PageTableGeometry.addressMask(width: 52)
private let mask39 = PageTableGeometry.addressMask(width: 39)

@Suite("Page-table geometry")
struct PageTableGeometryTests {
    @Test("each level resolves 9 bits above the 4 KiB offset")
    func shifts() {
        #expect((1...5).map { PageTableGeometry.shift(level: $0) } == [12, 21, 30, 39, 48])
        #expect(PageTableGeometry.span(level: 1) == 4096)
        #expect(PageTableGeometry.span(level: 2) == 2 << 20)
        #expect(PageTableGeometry.span(level: 3) == 1 << 30)
    }

    @Test("index picks the 9 address bits of a level")
    func index() {
        let a: UInt64 = (0x1AB << 48) | (0x155 << 39) | (0x0AA << 30) | (0x1FF << 21) | (0x001 << 12) | 0xFFF
        #expect(PageTableGeometry.index(a, level: 5) == 0x1AB)
        #expect(PageTableGeometry.index(a, level: 4) == 0x155)
        #expect(PageTableGeometry.index(a, level: 3) == 0x0AA)
        #expect(PageTableGeometry.index(a, level: 2) == 0x1FF)
        #expect(PageTableGeometry.index(a, level: 1) == 0x001)
    }

    @Test("addressMask keeps bits width-1..12 and clamps the width to 12...52")
    func addressMask() {
        #expect(PageTableGeometry.addressMask(width: 52) == 0x000F_FFFF_FFFF_F000)
        #expect(PageTableGeometry.addressMask(width: 48) == 0x0000_FFFF_FFFF_F000)
        #expect(PageTableGeometry.addressMask(width: 39) == 0x0000_007F_FFFF_F000)
        #expect(PageTableGeometry.addressMask(width: 64) == 0x000F_FFFF_FFFF_F000)
        #expect(PageTableGeometry.addressMask(width: 0) == 0)
    }
}

@Suite("Second-stage format (VT-d §9.8)")
struct SecondStageFormatTests {
    typealias F = SecondStageFormat

    @Test("the documented bit constants: R 0, W 1, X 2, PS 7, A 8, D 9, SNP 11")
    func constants() {
        #expect(F.r == 1 << 0)
        #expect(F.w == 1 << 1)
        #expect(F.x == 1 << 2)
        #expect(F.ps == 1 << 7)
        #expect(F.accessedBit == 1 << 8)
        #expect(F.dirtyBit == 1 << 9)
        #expect(F.snp == 1 << 11)
    }

    static let perms: [PagePermissions] = [[.read], [.write], [.read, .write], [.read, .execute], [.read, .write, .execute]]

    @Test("a 4 KiB leaf encodes R/W/X at bits 0-2 and the address at 51:12, and decodes back",
          arguments: perms)
    func leaf4K(perms: PagePermissions) {
        let addr: UInt64 = 0x000A_BCDE_F123_4000
        let raw = F.leaf(address: addr, permissions: perms, level: 1)
        #expect(raw & 0x000F_FFFF_FFFF_F000 == addr)
        #expect((raw & F.r != 0) == perms.contains(.read))
        #expect((raw & F.w != 0) == perms.contains(.write))
        #expect((raw & F.x != 0) == perms.contains(.execute))
        #expect(raw & F.ps == 0)
        #expect(raw & ~(0x000F_FFFF_FFFF_F000 | 7) == 0)
        let d = F.decode(raw, level: 1, addressMask: mask52)
        #expect(d.present)
        #expect(d.leaf)
        #expect(!d.reserved)
        #expect(d.address == addr)
        // Second stage has no U/S: user is always allowed.
        #expect(d.permissions == perms.union(.user))
    }

    @Test("a superpage leaf sets PS (bit 7) and decodes as a leaf at its level", arguments: [2, 3])
    func superpageLeaf(level: Int) {
        let addr: UInt64 = 7 << 30
        let raw = F.leaf(address: addr, permissions: .readWrite, level: level)
        #expect(raw == addr | F.ps | F.r | F.w)
        let d = F.decode(raw, level: level, addressMask: mask52)
        #expect(d.present && d.leaf && !d.reserved)
        #expect(d.address == addr)
        #expect(d.permissions == [.read, .write, .user])
    }

    @Test("a table entry is address | R | W and decodes as a non-leaf at levels 2-5", arguments: [2, 3, 4, 5])
    func tableEntry(level: Int) {
        let addr: UInt64 = 0x0000_1234_5678_9000
        let raw = F.table(address: addr | 0xFFF)
        #expect(raw == addr | 3)
        let d = F.decode(raw, level: level, addressMask: mask52)
        #expect(d.present && !d.leaf && !d.reserved)
        #expect(d.address == addr)
        #expect(d.permissions.contains(.read) && d.permissions.contains(.write))
        #expect(!d.permissions.contains(.execute))
    }

    @Test("an entry is present only when R or W is set", arguments: [UInt64(0), 1 << 2, 1 << 7, 0xFFFF_F000, 1, 2, 3])
    func presence(raw: UInt64) {
        #expect(F.decode(raw, level: 1, addressMask: mask52).present == (raw & 3 != 0))
    }

    @Test("address bits above the host address width are reserved", arguments: [1, 2, 3, 4])
    func addressAboveWidth(level: Int) {
        let base = level == 1 ? F.leaf(address: 0x1000, permissions: .readWrite, level: 1) : F.table(address: 0x1000)
        for bit in UInt64(39)...51 {
            #expect(F.decode(base | 1 << bit, level: level, addressMask: mask39).reserved, "bit \(bit)")
            #expect(!F.decode(base | 1 << bit, level: level, addressMask: mask52).reserved, "bit \(bit)")
        }
        #expect(!F.decode(base | 1 << 38, level: level, addressMask: mask39).reserved)
    }

    @Test("PS at level 4 or 5 is reserved", arguments: [4, 5])
    func psAtTopLevels(level: Int) {
        let raw = F.table(address: 0x5000) | F.ps
        let d = F.decode(raw, level: level, addressMask: mask52)
        #expect(d.reserved)
        #expect(!d.leaf)
    }

    @Test("SNP (bit 11) is reserved in scalable mode", arguments: [1, 2, 3, 4])
    func snpReserved(level: Int) {
        #expect(F.decode(F.table(address: 0x5000) | F.snp, level: level, addressMask: mask52).reserved)
    }

    @Test("a 2 MiB leaf with any of address bits 20:12 set is reserved; bit 21 is not")
    func misaligned2M() {
        let base = F.leaf(address: 0x4000_0000, permissions: .readWrite, level: 2)
        for bit in UInt64(12)...20 {
            #expect(F.decode(base | 1 << bit, level: 2, addressMask: mask52).reserved, "bit \(bit)")
        }
        #expect(!F.decode(base | 1 << 21, level: 2, addressMask: mask52).reserved)
    }

    @Test("a 1 GiB leaf with any of address bits 29:12 set is reserved; bit 30 is not")
    func misaligned1G() {
        let base = F.leaf(address: 0x4000_0000, permissions: .readWrite, level: 3)
        for bit in UInt64(12)...29 {
            #expect(F.decode(base | 1 << bit, level: 3, addressMask: mask52).reserved, "bit \(bit)")
        }
        #expect(!F.decode(base | 1 << 30, level: 3, addressMask: mask52).reserved)
    }

    @Test("a table pointer at level 2 or 3 may use address bits 20:12 freely")
    func tableAddressBitsNotReserved() {
        for level in [2, 3] {
            #expect(!F.decode(F.table(address: 0x1F_F000), level: level, addressMask: mask52).reserved)
        }
    }

    @Test("accessed and dirty bits do not change decoding")
    func adBitsIgnored() {
        let raw = F.leaf(address: 0x3000, permissions: .readWrite, level: 1)
        #expect(F.decode(raw | F.accessedBit | F.dirtyBit, level: 1, addressMask: mask52) ==
                F.decode(raw, level: 1, addressMask: mask52))
    }
}

@Suite("First-stage format (x86-64 paging, VT-d §9.7)")
struct FirstStageFormatTests {
    typealias F = FirstStageFormat

    @Test("the documented bit constants: P 0, R/W 1, U/S 2, A 5, D 6, PS 7, XD 63")
    func constants() {
        #expect(F.p == 1 << 0)
        #expect(F.rw == 1 << 1)
        #expect(F.us == 1 << 2)
        #expect(F.accessedBit == 1 << 5)
        #expect(F.dirtyBit == 1 << 6)
        #expect(F.ps == 1 << 7)
        #expect(F.xd == 1 << 63)
    }

    static let perms: [PagePermissions] = [[.read], [.read, .write], [.read, .user], [.read, .execute], .all]

    @Test("a 4 KiB leaf sets P, R/W for write, U/S for user, XD unless execute, and decodes back",
          arguments: perms)
    func leaf4K(perms: PagePermissions) {
        let addr: UInt64 = 0x000F_EDCB_A987_6000
        let raw = F.leaf(address: addr, permissions: perms, level: 1)
        #expect(raw & F.p != 0)
        #expect((raw & F.rw != 0) == perms.contains(.write))
        #expect((raw & F.us != 0) == perms.contains(.user))
        #expect((raw & F.xd != 0) == !perms.contains(.execute))
        #expect(raw & F.ps == 0)
        #expect(raw & 0x000F_FFFF_FFFF_F000 == addr)
        let d = F.decode(raw, level: 1, addressMask: mask52)
        #expect(d.present && d.leaf && !d.reserved)
        #expect(d.address == addr)
        #expect(d.permissions == perms.union(.read))
    }

    @Test("bit 12 of a 4 KiB leaf is an address bit")
    func bit12IsAddressAt4K() {
        let d = F.decode(F.leaf(address: 0x1000, permissions: .readWrite, level: 1), level: 1, addressMask: mask52)
        #expect(d.address == 0x1000)
        #expect(!d.reserved)
    }

    @Test("a superpage leaf sets PS and decodes as a leaf at its level", arguments: [2, 3])
    func superpageLeaf(level: Int) {
        let addr: UInt64 = 3 << 30
        let raw = F.leaf(address: addr, permissions: .all, level: level)
        #expect(raw == addr | F.p | F.rw | F.us | F.ps)
        let d = F.decode(raw, level: level, addressMask: mask52)
        #expect(d.present && d.leaf && !d.reserved)
        #expect(d.address == addr)
        #expect(d.permissions == .all)
    }

    @Test("bit 12 of a superpage is PAT: not reserved and not part of the address", arguments: [2, 3])
    func patBit(level: Int) {
        let raw = F.leaf(address: 1 << 30, permissions: .readWrite, level: level) | 1 << 12
        let d = F.decode(raw, level: level, addressMask: mask52)
        #expect(!d.reserved)
        #expect(d.address == 1 << 30)
    }

    @Test("a table entry is address | P | R/W | U/S and grants everything", arguments: [2, 3, 4, 5])
    func tableEntry(level: Int) {
        let addr: UInt64 = 0x0000_0ABC_DEF0_1000
        let raw = F.table(address: addr | 0xFFF)
        #expect(raw == addr | 7)
        let d = F.decode(raw, level: level, addressMask: mask52)
        #expect(d.present && !d.leaf && !d.reserved)
        #expect(d.address == addr)
        #expect(d.permissions == .all)
    }

    @Test("an entry is present only when P is set")
    func presence() {
        #expect(!F.decode(F.rw | F.us | 0x5000, level: 1, addressMask: mask52).present)
        #expect(!F.decode(0, level: 3, addressMask: mask52).present)
        #expect(F.decode(F.p, level: 1, addressMask: mask52).present)
    }

    @Test("address bits above the host address width are reserved", arguments: [1, 2, 3, 4, 5])
    func addressAboveWidth(level: Int) {
        let base = level == 1 ? F.leaf(address: 0x1000, permissions: .readWrite, level: 1) : F.table(address: 0x1000)
        for bit in UInt64(39)...51 {
            #expect(F.decode(base | 1 << bit, level: level, addressMask: mask39).reserved, "bit \(bit)")
        }
        #expect(!F.decode(base | 1 << 38, level: level, addressMask: mask39).reserved)
    }

    @Test("PS in a PML4 or PML5 entry is reserved", arguments: [4, 5])
    func psAtTopLevels(level: Int) {
        let d = F.decode(F.table(address: 0x5000) | F.ps, level: level, addressMask: mask52)
        #expect(d.reserved)
        #expect(!d.leaf)
    }

    @Test("a 2 MiB page with any of bits 20:13 set is reserved")
    func misaligned2M() {
        let base = F.leaf(address: 0x20_0000, permissions: .readWrite, level: 2)
        for bit in UInt64(13)...20 {
            #expect(F.decode(base | 1 << bit, level: 2, addressMask: mask52).reserved, "bit \(bit)")
        }
        #expect(!F.decode(base | 1 << 21, level: 2, addressMask: mask52).reserved)
    }

    @Test("a 1 GiB page with any of bits 29:13 set is reserved")
    func misaligned1G() {
        let base = F.leaf(address: 0x4000_0000, permissions: .readWrite, level: 3)
        for bit in UInt64(13)...29 {
            #expect(F.decode(base | 1 << bit, level: 3, addressMask: mask52).reserved, "bit \(bit)")
        }
        #expect(!F.decode(base | 1 << 30, level: 3, addressMask: mask52).reserved)
    }

    @Test("accessed and dirty bits do not change decoding")
    func adBitsIgnored() {
        let raw = F.leaf(address: 0x3000, permissions: .readWrite, level: 1)
        #expect(F.decode(raw | F.accessedBit | F.dirtyBit, level: 1, addressMask: mask52) ==
                F.decode(raw, level: 1, addressMask: mask52))
    }
}
