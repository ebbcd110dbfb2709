import Testing
import Formats
import Kernel
import IOMMUFD

/// IOAS rules (drivers/iommu/iommufd/ioas.c, io_pagetable.c), through the ioctl entry.
@Suite struct IOASTests {
    @Test func iovaRangesOfAFreshIOASIsEverythingAndEMSGSIZEReportsTheCountNeeded() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let devID = try rig.ctx.bind(dev)
        let fresh = rig.run(.ioasIOVARanges) { $0.set32(4, ioas) }
        #expect(fresh.rc == -Errno.EMSGSIZE && fresh.out.u32(8) == 1)
        // Attaching a VT-d device reserves its interrupt window and the IOVA beyond the aperture.
        try rig.ctx.attach(devID, to: ioas)
        let buffer = try rig.guestRAM(4096)
        let query = rig.run(.ioasIOVARanges) { $0.set32(4, ioas) }
        #expect(query.rc == -Errno.EMSGSIZE)
        let n = Int(query.out.u32(8))
        #expect(n == 2)
        let list = rig.run(.ioasIOVARanges) { $0.set32(4, ioas); $0.set32(8, UInt32(n)); $0.set64(16, buffer) }
        #expect(list.rc == 0 && list.out.u64(24) == 4096)
        let ranges = StructBytes(bytes: rig.read(va: buffer, count: 32))
        #expect(ranges.u64(0) == 0 && ranges.u64(8) == 0xFEDF_FFFF && ranges.u64(16) == 0xFEF0_0000)
    }

    @Test func mapWithoutADomainPinsNothingAndMapsEvenUnbackedMemory() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        let m = rig.map(ioas, va: 0x7000_0000_0000, length: 1 << 20)
        #expect(m.rc == 0 && m.iova >= 4096)
        #expect(rig.ctx.ledger.chargedPages == 0 && rig.process.pinnedPages == 0)
    }

    @Test func fixedIOVAOverAMappingIsEEXISTAndOverAReservedRangeIsEINVAL() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        let va = try rig.guestRAM(1 << 20)
        #expect(rig.map(ioas, va: va, length: 8192, iova: 0x10_0000).rc == 0)
        #expect(rig.map(ioas, va: va, length: 4096, iova: 0x10_1000).rc == -Errno.EEXIST)
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        try rig.ctx.attach(try rig.ctx.bind(dev), to: ioas)
        #expect(rig.map(ioas, va: va, length: 4096, iova: 0xFEE0_0000).rc == -Errno.EINVAL)
        #expect(rig.map(ioas, va: va, length: 4096, iova: 0x20_0800).rc == -Errno.EINVAL) // below the 4 KiB alignment
    }

    @Test func automaticIOVAKeepsTheUserAddressHugePageAlignmentAndSkipsPageZero() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        let small = rig.map(ioas, va: 0x4000_1000, length: 4096)
        #expect(small.rc == 0 && small.iova == 0x1000)
        let huge = rig.map(ioas, va: 0x4020_0000, length: 4 << 20)
        #expect(huge.rc == 0 && huge.iova % (2 << 20) == 0)
    }

    @Test func allowIOVAsRestrictsAutomaticPlacementAndRefusesOverlapsAndReservedRanges() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        let buf = try rig.guestRAM(4096)
        func allow(_ pairs: [(UInt64, UInt64)]) -> Int32 {
            var bytes = StructBytes(bytes: [UInt8](repeating: 0, count: 16 * pairs.count))
            for (i, p) in pairs.enumerated() { bytes.set64(16 * i, p.0); bytes.set64(16 * i + 8, p.1) }
            _ = bytes.bytes.withUnsafeBytes { rig.process.copyOut(to: buf, from: $0) }
            return rig.run(.ioasAllowIOVAs) { $0.set32(4, ioas); $0.set32(8, UInt32(pairs.count)); $0.set64(16, buf) }.rc
        }
        #expect(allow([(0x100_0000, 0x1FF_FFFF)]) == 0)
        let m = rig.map(ioas, va: 0x4000_0000, length: 4096)
        #expect(m.iova == 0x100_0000)
        #expect(allow([(0x1000, 0x1FFF), (0x1800, 0x2FFF)]) == -Errno.EINVAL)
        #expect(allow([(0x5000, 0x5000)]) == -Errno.EINVAL)
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        try rig.ctx.attach(try rig.ctx.bind(dev), to: ioas)
        #expect(allow([(0xFE00_0000, 0xFFFF_FFFF)]) == -Errno.EADDRINUSE)
        #expect(rig.run(.ioasAllowIOVAs) { $0.set32(4, ioas); $0.set32(8, 1); $0.set64(16, 0xdead_0000) }.rc == -Errno.EFAULT)
    }

    @Test func unmapMustCoverWholeMappingsAndZeroToU64MaxUnmapsAll() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        let va = try rig.guestRAM(1 << 20)
        #expect(rig.map(ioas, va: va, length: 16384, iova: 0x10_0000).rc == 0)
        #expect(rig.map(ioas, va: va, length: 4096, iova: 0x20_0000).rc == 0)
        #expect(rig.unmap(ioas, iova: 0x10_1000, length: 4096).rc == -Errno.ENOENT)   // inside a mapping
        #expect(rig.unmap(ioas, iova: 0x30_0000, length: 4096).rc == -Errno.ENOENT)   // nothing there
        #expect(rig.unmap(ioas, iova: 0x10_0000, length: 0).rc == -Errno.EINVAL)
        #expect(rig.unmap(ioas, iova: 1, length: .max).rc == -Errno.EOVERFLOW)
        let partial = rig.unmap(ioas, iova: 0x0F_0000, length: 0x2_0000)              // a superset of one mapping
        #expect(partial.rc == 0 && partial.length == 16384)
        let all = rig.unmap(ioas, iova: 0, length: .max)
        #expect(all.rc == 0 && all.length == 4096)
        let empty = rig.unmap(ioas, iova: 0, length: .max)
        #expect(empty.rc == 0 && empty.length == 0)
    }

    @Test func copySharesThePagesAndMayStartInsideAMappingButNotOverAHole() throws {
        let rig = try IOMMUFDRig()
        let a = try rig.ioasAlloc(), b = try rig.ioasAlloc()
        let va = try rig.guestRAM(1 << 20)
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let devID = try rig.ctx.bind(dev)
        try rig.ctx.attach(devID, to: a)
        #expect(rig.map(a, va: va, length: 8 * 4096, iova: 0x10_0000).rc == 0)
        let pinned = rig.ctx.ledger.chargedPages
        #expect(pinned == 8)
        let (rc, out) = rig.run(.ioasCopy) { s in
            s.set32(4, UAPI.mapReadable | UAPI.mapFixedIOVA); s.set32(8, b); s.set32(12, a)
            s.set64(16, 2 * 4096); s.set64(24, 0x40_0000); s.set64(32, 0x10_2000)
        }
        #expect(rc == 0 && out.u64(24) == 0x40_0000)
        // A second domain on B maps the same pages without pinning or charging them again.
        let (dev2, _) = try rig.addDevice("disk", dev: 2)
        try rig.ctx.attach(try rig.ctx.bind(dev2), to: b)
        #expect(rig.ctx.ledger.chargedPages == pinned)
        let hole = rig.run(.ioasCopy) { s in
            s.set32(4, UAPI.mapReadable); s.set32(8, b); s.set32(12, a); s.set64(16, 16 * 4096); s.set64(32, 0x10_0000)
        }
        #expect(hole.rc == -Errno.ENOENT)
    }

    @Test func theFirstDomainPinsAndChargesEveryPageAndTheLimitIsENOMEMWithNothingLeft() throws {
        let rig = try IOMMUFDRig(ledger: PinLedger(limitPages: 16))
        let ioas = try rig.ioasAlloc()
        let va = try rig.guestRAM(1 << 20)
        #expect(rig.map(ioas, va: va, length: 32 * 4096, iova: 0x10_0000).rc == 0)
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let devID = try rig.ctx.bind(dev)
        #expect(throws: Errno(Errno.ENOMEM)) { try rig.ctx.attach(devID, to: ioas) }
        #expect(rig.ctx.ledger.chargedPages == 0 && rig.process.pinnedPages == 0)
        #expect(rig.unmap(ioas, iova: 0, length: .max).rc == 0)
        try rig.ctx.attach(devID, to: ioas)
        #expect(rig.map(ioas, va: va, length: 8 * 4096).rc == 0)
        #expect(rig.ctx.ledger.chargedPages == 8 && rig.process.pinnedPages == 8)
        #expect(rig.map(ioas, va: va, length: 16 * 4096).rc == -Errno.ENOMEM)
        #expect(rig.ctx.ledger.chargedPages == 8)
    }

    @Test func mappingUnmappedUserMemoryIntoADomainIsEFAULTAndLeavesNothing() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        try rig.ctx.attach(try rig.ctx.bind(dev), to: ioas)
        let va = try rig.guestRAM(4 * 4096)
        #expect(rig.map(ioas, va: va, length: 8 * 4096).rc == -Errno.EFAULT)
        let ioasObject = try #require(rig.ctx.object(ioas) as? IOAS)
        #expect(ioasObject.areaCount == 0 && rig.ctx.ledger.chargedPages == 0 && rig.process.pinnedPages == 0)
    }

    @Test func hugePagesOptionCannotBeDisabledWithMappingsInADomainAndRlimitModeNeedsAnEmptyContext() throws {
        let rig = try IOMMUFDRig()
        #expect(rig.run(.option) { $0.set32(4, UAPI.optionRlimitMode); $0.set64(16, 1) }.rc == 0)
        let ioas = try rig.ioasAlloc()
        #expect(rig.run(.option) { $0.set32(4, UAPI.optionRlimitMode); $0.set64(16, 0) }.rc == -Errno.EBUSY)
        #expect(rig.run(.option) { $0.set32(4, UAPI.optionRlimitMode); $0.set32(12, ioas) }.rc == -Errno.EOPNOTSUPP)
        let get = rig.run(.option) { $0.set32(4, UAPI.optionRlimitMode); $0.set16(8, UAPI.optionOpGet) }
        #expect(get.rc == 0 && get.out.u64(16) == 1)
        let va = try rig.guestRAM(1 << 20)
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        try rig.ctx.attach(try rig.ctx.bind(dev), to: ioas)
        #expect(rig.map(ioas, va: va, length: 4096).rc == 0)
        #expect(rig.run(.option) { $0.set32(4, UAPI.optionHugePages); $0.set32(12, ioas); $0.set64(16, 0) }.rc == -Errno.EINVAL)
        #expect(rig.run(.option) { $0.set32(4, UAPI.optionHugePages); $0.set32(12, ioas); $0.set64(16, 2) }.rc == -Errno.EINVAL)
        #expect(rig.ctx.ledger.mmPages == 1)
    }

    @Test func contiguousMemoryIsMappedWithTwoMiBPagesUnlessHugePagesAreDisabled() throws {
        let rig = try IOMMUFDRig(memory: 128 << 20)
        let va = try rig.process.mmapContiguous(length: 4 << 20, permissions: .readWrite)
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let devID = try rig.ctx.bind(dev)
        let ioas = try rig.ioasAlloc()
        let hwpt = rig.hwptAlloc(dev: devID, pt: ioas)
        #expect(hwpt.rc == 0)
        let tables = rig.machine.platform.frames.inUse(.pageTable)
        #expect(rig.map(ioas, va: va, length: 4 << 20, iova: 0x4000_0000).rc == 0)
        // Two 2 MiB leaves need no last-level table.
        #expect(rig.machine.platform.frames.inUse(.pageTable) - tables <= 2)
        let other = try rig.ioasAlloc()
        #expect(rig.run(.option) { $0.set32(4, UAPI.optionHugePages); $0.set32(12, other); $0.set64(16, 0) }.rc == 0)
        _ = rig.hwptAlloc(dev: devID, pt: other)
        let before = rig.machine.platform.frames.inUse(.pageTable)
        #expect(rig.map(other, va: va, length: 4 << 20, iova: 0x4000_0000).rc == 0)
        #expect(rig.machine.platform.frames.inUse(.pageTable) - before >= 2 + 2)
    }
}
