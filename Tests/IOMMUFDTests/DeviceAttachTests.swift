import Testing
import Formats
import Hardware
import Kernel
import IOMMUFD

/// Bind, attach, replace and detach (drivers/iommu/iommufd/device.c), with DMA checked by
/// the oracle on every transfer.
@Suite struct DeviceAttachTests {
    @Test func dmaThroughAnAutomaticDomainReachesGuestRAMAndUnmappedIOVAFaults() throws {
        let rig = try IOMMUFDRig()
        let (dev, ep) = try rig.addDevice("nic", dev: 1)
        let devID = try rig.ctx.bind(dev)
        let ioas = try rig.ioasAlloc()
        let hwpt = try rig.ctx.attach(devID, to: ioas)
        #expect(rig.ctx.object(hwpt)?.type == .hwptPaging)
        let ram = try rig.guestRAM(1 << 20)
        #expect(rig.map(ioas, va: ram, length: 1 << 20, iova: 0x8000_0000).rc == 0)
        let ok = rig.dma(ep, write: 0x8000_1000, value: 0x77)
        #expect(ok?.fault == nil && ok?.transferred == 64)
        #expect(rig.read(va: ram + 0x1000, count: 4) == [0x77, 0x77, 0x77, 0x77])
        #expect(rig.unmap(ioas, iova: 0x8000_0000, length: 1 << 20).rc == 0)
        #expect(rig.dma(ep, write: 0x8000_1000)?.fault != nil)
        #expect(rig.machine.oracle.violations.isEmpty)
    }

    @Test func aSecondBindIsEINVALAndAGroupOwnedByAnotherContextIsEPERM() throws {
        let rig = try IOMMUFDRig()
        let (a, _) = try rig.addDevice("fn0", dev: 1, group: "g")
        let (b, _) = try rig.addDevice("fn1", dev: 2, group: "g")
        try rig.ctx.bind(a)
        #expect(throws: Errno(Errno.EINVAL)) { try rig.ctx.bind(a) }
        let other = IOMMUFDContext(core: rig.core, memory: rig.process)
        #expect(throws: Errno(Errno.EPERM)) { try other.bind(b) }
        #expect(try rig.ctx.bind(b) > 0) // the same context may bind the whole group
    }

    @Test func theDevicesOfAGroupShareOneAttachmentAndReplaceMovesThemAllWithoutBlocked() throws {
        let rig = try IOMMUFDRig()
        let (a, epA) = try rig.addDevice("fn0", dev: 1, group: "g")
        let (b, epB) = try rig.addDevice("fn1", dev: 2, group: "g")
        let ia = try rig.ctx.bind(a), ib = try rig.ctx.bind(b)
        let x = try rig.ioasAlloc(), y = try rig.ioasAlloc()
        let ram = try rig.guestRAM(64 << 10)
        #expect(rig.map(x, va: ram, length: 64 << 10, iova: 0x10_0000).rc == 0)
        #expect(rig.map(y, va: ram, length: 64 << 10, iova: 0x10_0000).rc == 0)
        let hx = rig.hwptAlloc(dev: ia, pt: x).id, hy = rig.hwptAlloc(dev: ia, pt: y).id
        try rig.ctx.attach(ia, to: hx)
        #expect(throws: Errno(Errno.EINVAL)) { try rig.ctx.attach(ib, to: hy) }
        #expect(throws: Errno(Errno.EINVAL)) { try rig.ctx.replace(ib, with: hy) } // not attached itself
        try rig.ctx.attach(ib, to: hx)
        #expect(throws: Errno(Errno.EBUSY)) { try rig.ctx.attach(ib, to: hx) }
        for _ in 0..<5 {
            try rig.ctx.replace(ia, with: hy)
            #expect(rig.dma(epA, write: 0x10_2000)?.fault == nil && rig.dma(epB, write: 0x10_3000)?.fault == nil)
            try rig.ctx.replace(ib, with: hx)
            #expect(rig.dma(epA, write: 0x10_4000)?.fault == nil && rig.dma(epB, write: 0x10_5000)?.fault == nil)
        }
        #expect(rig.core.updatePathCounts["teardownSetup", default: 0] == 0)
        #expect(rig.run(.destroy) { $0.set32(4, hx) }.rc == -Errno.EBUSY)
        try rig.ctx.detach(ia)
        try rig.ctx.detach(ib)
        try rig.ctx.detach(ib) // detaching what is not attached does nothing
        #expect(rig.run(.destroy) { $0.set32(4, hx) }.rc == 0)
        #expect(rig.machine.oracle.violations.isEmpty)
    }

    @Test func aPASIDTakesOnlyAPASIDCompatibleHWPTAndNeverAnIOAS() throws {
        let rig = try IOMMUFDRig()
        let (dev, _) = try rig.addDevice("accel", dev: 3, pasids: 1 << 8)
        let id = try rig.ctx.bind(dev)
        let ioas = try rig.ioasAlloc()
        let plain = rig.hwptAlloc(dev: id, pt: ioas).id
        let pasidHWPT = rig.hwptAlloc(dev: id, pt: ioas, flags: UAPI.hwptAllocPASID).id
        let p = PASID(truncating: 5)
        #expect(throws: Errno(Errno.EINVAL)) { try rig.ctx.attach(id, to: ioas, pasid: p) }
        #expect(throws: Errno(Errno.EINVAL)) { try rig.ctx.attach(id, to: plain, pasid: p) }
        try rig.ctx.attach(id, to: pasidHWPT, pasid: p)
        #expect(throws: Errno(Errno.EINVAL)) { try rig.ctx.attach(id, to: plain) } // the RID needs PASID compat now
        try rig.ctx.attach(id, to: pasidHWPT)
        #expect(try rig.ctx.deviceObject(id).attachedHWPT(pasid: p)?.id == pasidHWPT)
        try rig.ctx.detach(id, pasid: p)
        try rig.ctx.replace(id, with: plain)
    }

    @Test func anAutomaticDomainGoesWithItsLastDevice() throws {
        let rig = try IOMMUFDRig()
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let id = try rig.ctx.bind(dev)
        let ioas = try rig.ioasAlloc()
        let domains = rig.core.liveDomains.count
        let hwpt = try rig.ctx.attach(id, to: ioas)
        #expect(rig.core.liveDomains.count == domains + 1)
        try rig.ctx.detach(id)
        #expect(rig.ctx.object(hwpt) == nil && rig.core.liveDomains.count == domains)
    }

    @Test func getHWInfoReportsTheUnitsCapAndEcapRegisters() throws {
        let rig = try IOMMUFDRig()
        let (dev, _) = try rig.addDevice("accel", dev: 3, pasids: 1 << 8)
        let id = try rig.ctx.bind(dev)
        let buf = try rig.guestRAM(4096)
        let (rc, out) = rig.run(.getHWInfo) { $0.set32(8, id); $0.set32(12, 64); $0.set64(16, buf) }
        #expect(rc == 0 && out.u32(12) == 24 && out.u32(24) == UAPI.hwInfoTypeIntelVTd && out.u8(28) == 8)
        let info = StructBytes(bytes: rig.read(va: buf, count: 64))
        let unit = rig.machine.units[0]
        #expect(info.u64(8) == unit.read64(VTdRegister.capability) && info.u64(16) == unit.read64(VTdRegister.extendedCapability))
        #expect(info.bytes[24...].allSatisfy { $0 == 0 }) // the rest of the user's buffer is zeroed
        #expect(rig.run(.getHWInfo) { $0.set32(4, UAPI.hwInfoFlagInputType); $0.set32(8, id); $0.set32(24, 2) }.rc == -Errno.EOPNOTSUPP)
    }

    @Test func vIOMMUAndItsObjectsGetTheKernelsErrnoOnVTdWhileNestedHWPTsAreServed() throws {
        let rig = try IOMMUFDRig()
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let id = try rig.ctx.bind(dev)
        let ioas = try rig.ioasAlloc()
        let parent = rig.hwptAlloc(dev: id, pt: ioas, flags: UAPI.hwptAllocNestParent)
        #expect(parent.rc == 0)
        let buf = try rig.guestRAM(4096)
        let nested = rig.run(.hwptAlloc) { s in s.set32(8, id); s.set32(12, parent.id); s.set32(24, UAPI.hwptDataVTdS1); s.set32(28, 24); s.set64(32, buf) }
        #expect(nested.rc == 0, "the VT-d driver makes nested domains over a nest parent")
        // The pinned release's VT-d driver has no vIOMMU type (and the core refuses DEFAULT).
        #expect(rig.run(.viommuAlloc) { $0.set32(8, 0); $0.set32(12, id); $0.set32(16, parent.id) }.rc == -Errno.EOPNOTSUPP)
        #expect(rig.run(.viommuAlloc) { $0.set32(8, 1); $0.set32(12, id); $0.set32(16, parent.id) }.rc == -Errno.EOPNOTSUPP)
        #expect(rig.run(.vdeviceAlloc) { $0.set32(4, parent.id); $0.set32(8, id) }.rc == -Errno.ENOENT)
        #expect(rig.run(.veventqAlloc) { $0.set32(12, 1); $0.set32(16, 0) }.rc == -Errno.EINVAL)
        #expect(rig.run(.hwptInvalidate) { $0.set32(4, parent.id) }.rc == -Errno.EINVAL) // a paging HWPT
        #expect(rig.run(.hwptGetDirtyBitmap) { $0.set32(4, parent.id); $0.set64(24, 4096); $0.set64(32, 4096) }.rc == -Errno.EOPNOTSUPP)
    }
}
