import Testing
import Formats
import Hardware
import Kernel
import IOMMUFD

/// User-controlled sizes and values at their extremes: an errno, never a trap, never an
/// allocation or a loop sized by the user, and nothing out of step afterwards.
@Suite struct InputBoundsTests {
    typealias C = IOMMUFDContext

    @Test func vfioMapDMAOfTheLargestSizesIsAnErrnoNotATrap() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, ioas).rc == 0)
        #expect(rig.vfioMapDMA(va: 0, iova: 0x10_0000, size: .max) == -Errno.EINVAL)
        #expect(rig.vfioMapDMA(va: 0xFFF, iova: 0x10_0000, size: .max - 0xFFF) == -Errno.EINVAL)
        #expect(rig.vfioMapDMA(va: 1 << 63, iova: 0x10_0000, size: 1 << 63) == -Errno.EOVERFLOW)
    }

    @Test func ioasMapOfHugeUnbackedLengthsIsLazyAndAnAttachFailsFastWithNothingLeft() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        let ram = try rig.touchedRAM(64 << 10)
        // 1 TiB whose first 64 KiB exist: lazy, nothing pinned.
        #expect(rig.map(ioas, va: ram, length: 1 << 40, iova: 1 << 41).rc == 0)
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let id = try rig.ctx.bind(dev)
        #expect(throws: Errno(Errno.EFAULT)) { try rig.ctx.attach(id, to: ioas) }
        #expect(rig.ctx.ledger.chargedPages == 0 && rig.process.pinnedPages == 0)
    }

    @Test func allowIOVAsTakesAHundredThousandRangesInNLogNAndRefusesAnOverlapAmongThem() throws {
        let rig = try IOMMUFDRig(memory: 128 << 20)
        let ioas = try rig.ioasAlloc()
        let n = 100_000
        let buf = try rig.touchedRAM(UInt64(n) * 16)
        var bytes = StructBytes(bytes: [UInt8](repeating: 0, count: n * 16))
        for i in 0..<n {
            // Given in reverse order, disjoint.
            let start = UInt64(n - i) << 20
            bytes.set64(16 * i, start); bytes.set64(16 * i + 8, start + 0xFFFF)
        }
        _ = bytes.bytes.withUnsafeBytes { rig.process.copyOut(to: buf, from: $0) }
        let ok = rig.run(.ioasAllowIOVAs) { $0.set32(4, ioas); $0.set32(8, UInt32(n)); $0.set64(16, buf) }
        #expect(ok.rc == 0)
        #expect(rig.map(ioas, va: 0x4000_0000, length: 4096).iova == 1 << 20)
        // The last range made to overlap the first.
        bytes.set64(16 * (n - 1) + 8, 1 << 21)
        _ = bytes.bytes.withUnsafeBytes { rig.process.copyOut(to: buf, from: $0) }
        #expect(rig.run(.ioasAllowIOVAs) { $0.set32(4, ioas); $0.set32(8, UInt32(n)); $0.set64(16, buf) }.rc == -Errno.EINVAL)
    }

    @Test func pasidZeroIsTheRID() throws {
        let rig = try IOMMUFDRig()
        let (dev, ep) = try rig.addDevice("accel", dev: 3, pasids: 1 << 8)
        let id = try rig.ctx.bind(dev)
        let ioas = try rig.ioasAlloc()
        let ram = try rig.guestRAM(64 << 10)
        #expect(rig.map(ioas, va: ram, length: 64 << 10, iova: 0x10_0000).rc == 0)
        let h = try rig.ctx.attach(id, to: ioas, pasid: PASID(truncating: 0))
        #expect(try rig.ctx.deviceObject(id).attachedHWPT?.id == h)
        #expect(rig.dma(ep, write: 0x10_0000)?.fault == nil)
        try rig.ctx.detach(id, pasid: PASID(truncating: 0))
        #expect(try rig.ctx.deviceObject(id).attachedHWPT == nil)
        #expect(rig.machine.oracle.violations.isEmpty)
    }

    @Test func aType1UnmapThatWouldSplitBelowTheIOASAlignmentIsEINVALAndChangesNothing() throws {
        let rig = try IOMMUFDRig()
        let ioas = try rig.ioasAlloc()
        #expect(rig.vfioIOAS(UAPI.vfioIOASSet, ioas).rc == 0)
        #expect(rig.ctx.ioctl(C.vfioSetIOMMU, value: 1) == 0)
        let (dev, ep) = try rig.addDevice("nic", dev: 1)
        try rig.ctx.attach(try rig.ctx.bind(dev), to: ioas)
        let ram = try rig.guestRAM(64 << 10)
        #expect(rig.vfioMapDMA(va: ram, iova: 0x10_0000, size: 0x4000) == 0)
        let r = rig.vfioUnmapDMA(iova: 0x10_1800, size: 0x1000)
        #expect(r.rc == -Errno.EINVAL)
        #expect(try rig.ioasObject(ioas).mappings.map(\.length) == [0x4000])
        #expect(rig.dma(ep, write: 0x10_1800)?.fault == nil)
        machineChecksIOAS(rig, ioas)
        // An aligned partial unmap splits and unmaps just that part.
        let part = rig.vfioUnmapDMA(iova: 0x10_1000, size: 0x1000)
        #expect(part.rc == 0 && part.size == 0x1000)
        #expect(rig.dma(ep, write: 0x10_1000)?.fault != nil && rig.dma(ep, write: 0x10_2000)?.fault == nil)
        machineChecksIOAS(rig, ioas)
    }

    func machineChecksIOAS(_ rig: IOMMUFDRig, _ ioas: UInt32, sourceLocation: SourceLocation = #_sourceLocation) {
        guard let o = rig.ctx.object(ioas) as? IOAS else { return }
        rig.machine.oracle.checkIOAS(o, context: "test")
        #expect(rig.machine.oracle.violations.isEmpty, "\(rig.machine.oracle.violations)", sourceLocation: sourceLocation)
    }

    @Test func aContextDroppedWithoutCloseReleasesWhatItHeld() throws {
        let rig = try IOMMUFDRig()
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let domains = rig.core.liveDomains.count
        let ram = try rig.touchedRAM(64 << 10)
        do {
            let ctx = IOMMUFDContext(core: rig.core, memory: rig.process)
            let id = try ctx.bind(dev)
            var s = StructBytes(size: IOMMUFDCommand.ioasAlloc.size)
            try ctx.call(.ioasAlloc, &s)
            try ctx.attach(id, to: s.u32(8))
            var map = StructBytes(size: IOMMUFDCommand.ioasMap.size)
            map.set32(4, UAPI.mapReadable | UAPI.mapWriteable); map.set32(8, s.u32(8)); map.set64(16, ram); map.set64(24, 64 << 10)
            try ctx.call(.ioasMap, &map)
            #expect(rig.process.pinnedPages == 16)
        }
        #expect(rig.process.pinnedPages == 0 && rig.core.liveDomains.count == domains && dev.boundContext == nil)
    }
}
