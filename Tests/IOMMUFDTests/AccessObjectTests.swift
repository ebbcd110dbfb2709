import Testing
import Formats
import Hardware
import Kernel
import IOMMUFD

/// In-kernel users of an IOAS (drivers/iommu/iommufd/device.c iommufd_access_*,
/// io_pagetable.c iopt_unmap_iova_range): pins, reads and writes through the IOAS, and the
/// unmap notification they must answer by unpinning.
@Suite struct AccessObjectTests {
    /// An IOAS with a domain and 16 KiB of guest RAM mapped at 0x10_0000.
    struct Setup {
        let rig: IOMMUFDRig
        let ioas: UInt32
        let hwpt: HWPTPaging
        let ram: UInt64
    }

    static func setup(flags: UInt32 = IOMMUFDRig.rw) throws -> Setup {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        let (_, hwpt, _) = try rig.attachedDevice(to: ioas)
        let ram = try rig.touchedRAM(64 << 10)
        try #require(rig.map(ioas, va: ram, length: 16384, iova: 0x10_0000, flags: flags).rc == 0)
        return Setup(rig: rig, ioas: ioas, hwpt: hwpt, ram: ram)
    }

    @Test func pinPagesReturnsTheFramesTheDomainMapsAndAddsNoSecondPinOrCharge() throws {
        let s = try Self.setup()
        let charged = s.rig.ctx.ledger.chargedPages, pinned = s.rig.process.pinnedPages
        let access = try s.rig.ctx.createAccess(ioasID: s.ioas, needsPinPages: true, onUnmap: nil)
        let frames = try access.pinPages(iova: 0x10_1000, length: 8192, write: true)
        #expect(frames.count == 2)
        for (i, f) in frames.enumerated() {
            #expect(s.rig.core.iovaToPhys(s.hwpt.domain, 0x10_1000 + UInt64(i) * 4096) == f)
        }
        #expect(s.rig.ctx.ledger.chargedPages == charged && s.rig.process.pinnedPages == pinned)
        #expect(access.pinCount == 1)
        access.unpinPages(iova: 0x10_1000, length: 8192)
        #expect(access.pinCount == 0)
        #expect(throws: Errno(Errno.EINVAL)) { _ = try access.pinPages(iova: 0x10_0000, length: 0, write: false) }
        #expect(throws: Errno(Errno.ENOENT)) { _ = try s.rig.ctx.createAccess(ioasID: 999, needsPinPages: true, onUnmap: nil) }
    }

    @Test func pinningOverAHoleOrPastTheLastMappingIsENOENTAndPinsNothing() throws {
        let s = try Self.setup()
        #expect(s.rig.map(s.ioas, va: s.ram + 0x8000, length: 4096, iova: 0x10_5000).rc == 0) // a hole at 0x10_4000
        let access = try s.rig.ctx.createAccess(ioasID: s.ioas, needsPinPages: true, onUnmap: nil)
        #expect(throws: Errno(Errno.ENOENT)) { _ = try access.pinPages(iova: 0x10_3000, length: 3 * 4096, write: false) }
        #expect(throws: Errno(Errno.ENOENT)) { _ = try access.pinPages(iova: 0x10_4000, length: 4096, write: false) }
        #expect(throws: Errno(Errno.ENOENT)) { _ = try access.pinPages(iova: 0x10_5000, length: 2 * 4096, write: false) }
        #expect(throws: Errno(Errno.ENOENT)) { _ = try access.pinPages(iova: 0x20_0000, length: 4096, write: false) }
        #expect(access.pinCount == 0)
        // Two mappings that touch are one range for an access.
        #expect(s.rig.map(s.ioas, va: s.ram + 0xC000, length: 4096, iova: 0x10_4000).rc == 0)
        #expect(try access.pinPages(iova: 0x10_3000, length: 3 * 4096, write: false).count == 3)
    }

    @Test func writingThroughAReadOnlyMappingIsEPERMForPinsAndForRW() throws {
        let s = try Self.setup(flags: UAPI.mapReadable)
        let access = try s.rig.ctx.createAccess(ioasID: s.ioas, needsPinPages: true, onUnmap: nil)
        #expect(throws: Errno(Errno.EPERM)) { _ = try access.pinPages(iova: 0x10_0000, length: 4096, write: true) }
        #expect(try access.pinPages(iova: 0x10_0000, length: 4096, write: false).count == 1)
        var bytes: [UInt8] = [1, 2, 3, 4]
        #expect(throws: Errno(Errno.EPERM)) { try access.rw(iova: 0x10_0010, buffer: &bytes, write: true) }
        try access.rw(iova: 0x10_0010, buffer: &bytes, write: false)
        // Write-only: reads are refused.
        #expect(s.rig.map(s.ioas, va: s.ram + 0x8000, length: 4096, iova: 0x20_0000, flags: UAPI.mapWriteable).rc == 0)
        #expect(throws: Errno(Errno.EPERM)) { _ = try access.pinPages(iova: 0x20_0000, length: 4096, write: false) }
        #expect(throws: Errno(Errno.EPERM)) { try access.rw(iova: 0x20_0000, buffer: &bytes, write: false) }
        try access.rw(iova: 0x20_0000, buffer: &bytes, write: true)
    }

    @Test func rwReadsAndWritesGuestMemoryThroughTheIOASAcrossPagesAndMappingsWithoutKeepingPins() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        let ram = try rig.touchedRAM(64 << 10)
        // No domain: rw pins only for the copy.
        #expect(rig.map(ioas, va: ram, length: 8192, iova: 0x10_0000).rc == 0)
        #expect(rig.map(ioas, va: ram + 0x4000, length: 8192, iova: 0x10_2000).rc == 0)
        let access = try rig.ctx.createAccess(ioasID: ioas, needsPinPages: false, onUnmap: nil)
        var out = [UInt8](0..<100)
        try access.rw(iova: 0x10_1FD0, buffer: &out, write: true)      // crosses into the second mapping
        #expect(rig.read(va: ram + 0x1FD0, count: 0x30) == Array(out[0..<0x30]))
        #expect(rig.read(va: ram + 0x4000, count: 100 - 0x30) == Array(out[0x30...]))
        _ = [UInt8](repeating: 0xA5, count: 16).withUnsafeBytes { rig.process.copyOut(to: ram + 0x5000, from: $0) }
        var back = [UInt8](repeating: 0, count: 16)
        try access.rw(iova: 0x10_3000, buffer: &back, write: false)
        #expect(back == [UInt8](repeating: 0xA5, count: 16))
        #expect(rig.process.pinnedPages == 0 && rig.ctx.ledger.chargedPages == 0)
        #expect(throws: Errno(Errno.ENOENT)) { try access.rw(iova: 0x10_3FF8, buffer: &back, write: false) } // runs past
        var none: [UInt8] = []
        #expect(throws: Errno(Errno.EINVAL)) { try access.rw(iova: 0x10_0000, buffer: &none, write: false) }
    }

    @Test func unmappingAPinnedRangeAsksTheAccessToUnpinAndSucceedsOnceItHas() throws {
        let s = try Self.setup()
        var calls: [(UInt64, UInt64)] = []
        var access: AccessObject?
        access = try s.rig.ctx.createAccess(ioasID: s.ioas, needsPinPages: true) { iova, length in
            calls.append((iova, length))
            access?.unpinPages(iova: 0x10_1000, length: 4096)   // exactly what it pinned
        }
        _ = try access!.pinPages(iova: 0x10_1000, length: 4096, write: false)
        let r = s.rig.unmap(s.ioas, iova: 0x10_0000, length: 16384)
        #expect(r.rc == 0 && r.length == 16384)
        // One call, with the whole mapping's range.
        #expect(calls.count == 1 && calls.first?.0 == 0x10_0000 && calls.first?.1 == 16384)
        #expect(access!.pinCount == 0 && s.rig.process.pinnedPages == 0 && s.rig.ctx.ledger.chargedPages == 0)
        // Mappings without pins are unmapped without asking.
        #expect(s.rig.map(s.ioas, va: s.ram, length: 4096, iova: 0x10_0000).rc == 0)
        #expect(s.rig.unmap(s.ioas, iova: 0, length: .max).rc == 0)
        #expect(calls.count == 1)
    }

    @Test func anAccessThatNeverUnpinsMakesTheUnmapEDEADLKAndTheMappingStaysClosedToNewPins() throws {
        let s = try Self.setup()
        var calls = 0
        let access = try s.rig.ctx.createAccess(ioasID: s.ioas, needsPinPages: true) { _, _ in calls += 1 }
        _ = try access.pinPages(iova: 0x10_0000, length: 4096, write: false)
        #expect(s.rig.unmap(s.ioas, iova: 0x10_0000, length: 16384).rc == -Errno.EDEADLK)
        #expect(calls >= 100)
        #expect(try s.rig.ioasObject(s.ioas).areaCount == 1)
        // The unmap left it marked as going: new pins and rw are EINVAL.
        #expect(throws: Errno(Errno.EINVAL)) { _ = try access.pinPages(iova: 0x10_2000, length: 4096, write: false) }
        var b = [UInt8](repeating: 0, count: 4)
        #expect(throws: Errno(Errno.EINVAL)) { try access.rw(iova: 0x10_2000, buffer: &b, write: false) }
        // Once it unpins, the unmap goes through.
        access.unpinPages(iova: 0x10_0000, length: 4096)
        #expect(s.rig.unmap(s.ioas, iova: 0x10_0000, length: 16384).rc == 0)
    }

    @Test
    func anUnansweredUnmapNotifiesTheAccess101TimesBeforeEDEADLK() throws {
        let s = try Self.setup()
        var calls = 0
        let access = try s.rig.ctx.createAccess(ioasID: s.ioas, needsPinPages: true) { _, _ in calls += 1 }
        _ = try access.pinPages(iova: 0x10_0000, length: 4096, write: false)
        #expect(s.rig.unmap(s.ioas, iova: 0x10_0000, length: 16384).rc == -Errno.EDEADLK)
        #expect(calls == 101)
    }

    @Test func destroyingAnIOASWithAnAccessIsEBUSYUntilTheAccessIsGone() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        let access = try rig.ctx.createAccess(ioasID: ioas, needsPinPages: true, onUnmap: nil)
        #expect(rig.run(.destroy) { $0.set32(4, ioas) }.rc == -Errno.EBUSY)
        #expect(rig.run(.destroy) { $0.set32(4, access.id) }.rc == -Errno.EBUSY) // its creator holds it
        // An access that pins pages needs page alignment.
        #expect(try rig.ioasObject(ioas).iovaAlignment == 4096)
        rig.ctx.destroyAccess(access)
        #expect(rig.ctx.object(access.id) == nil)
        #expect(try rig.ioasObject(ioas).iovaAlignment == 1)
        #expect(rig.run(.destroy) { $0.set32(4, ioas) }.rc == 0)
    }

    @Test func replacingTheIOASUnmapsEverythingFromTheOldOneFirstThenPinsComeFromTheNewOne() throws {
        let rig = try IOMMUFDRig()
        let a = try rig.ioasAlloc(), b = try rig.ioasAlloc()
        let ram = try rig.touchedRAM(64 << 10)
        #expect(rig.map(a, va: ram, length: 8192, iova: 0x10_0000).rc == 0)
        #expect(rig.map(b, va: ram + 0x8000, length: 8192, iova: 0x10_0000).rc == 0)
        var calls: [(UInt64, UInt64)] = []
        var access: AccessObject?
        access = try rig.ctx.createAccess(ioasID: a, needsPinPages: true) { iova, length in
            calls.append((iova, length))
            access?.unpinPages(iova: 0x10_0000, length: 4096)
        }
        let old = try access!.pinPages(iova: 0x10_0000, length: 4096, write: false)
        #expect(rig.process.pinnedPages == 1)
        #expect(throws: Errno(Errno.ENOENT)) { try rig.ctx.replaceAccessIOAS(access!, ioasID: 999) }
        let ioasA = try rig.ioasObject(a)
        #expect(calls.isEmpty && access!.ioas === ioasA)
        try rig.ctx.replaceAccessIOAS(access!, ioasID: b)
        #expect(calls.count == 1 && calls[0].0 == 0 && calls[0].1 == .max)
        #expect(access!.pinCount == 0 && rig.process.pinnedPages == 0)
        let new = try access!.pinPages(iova: 0x10_0000, length: 4096, write: false)
        #expect(new != old)
        // The access now holds B, not A.
        #expect(rig.run(.destroy) { $0.set32(4, a) }.rc == 0)
        #expect(rig.run(.destroy) { $0.set32(4, b) }.rc == -Errno.EBUSY)
        // Replacing with the IOAS it already has changes nothing.
        try rig.ctx.replaceAccessIOAS(access!, ioasID: b)
        #expect(calls.count == 1 && access!.pinCount == 1)
    }
}
