import Testing
import Platform
import Kernel
import IOMMUFD
@testable import Simulation

/// The mock vIOMMU (notes: mock-driver §3.9–3.11, device-hwpt-rules §6): its mmap window,
/// vDEVICEs, the vEVENTQ fed by TRIGGER_VEVENT, vIOMMU cache invalidation, tombstones and
/// hardware queues.
@Suite struct SelftestVIOMMUTests {
    static let start = SelftestRig.start
    static let T = MockVIOMMU.type
    static let D = SelftestRig.cacheDefault

    struct Setup {
        let t: SelftestRig
        let ioas: UInt32
        let m: SelftestRig.MockDevice
        let parent: UInt32
    }

    /// ioas 1, stdev 2, idev 3, auto HWPT 4, NEST_PARENT HWPT 5.
    static func setup() throws -> Setup {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        let m = try t.requireMock(ioas)
        let parent = try t.requireHWPT(dev: m.idev, pt: ioas, flags: UAPI.hwptAllocNestParent)
        return Setup(t: t, ioas: ioas, m: m, parent: parent)
    }

    /// VIOMMU_ALLOC {size, flags @4, type @8, dev_id @12, hwpt_id @16, out_viommu_id @20,
    /// data_len @24, __reserved @28, data_uptr @32}.
    func viommuAlloc(_ s: Setup, type: UInt32 = T, data: UInt64 = 0, length: UInt32 = 0) -> (rc: Int32, id: UInt32) {
        let (rc, out) = s.t.rig.run(.viommuAlloc) { a in
            a.set32(8, type); a.set32(12, s.m.idev); a.set32(16, s.parent); a.set32(24, length); a.set64(32, data)
        }
        return (rc, out.u32(20))
    }

    func requireVIOMMU(_ s: Setup) throws -> UInt32 {
        let v = viommuAlloc(s)
        try #require(v.rc == 0, "\(s.t.lastError)")
        return v.id
    }

    func vdeviceAlloc(_ s: Setup, _ viommu: UInt32, dev: UInt32, virt: UInt64) -> (rc: Int32, id: UInt32) {
        let (rc, out) = s.t.rig.run(.vdeviceAlloc) { a in a.set32(4, viommu); a.set32(8, dev); a.set64(16, virt) }
        return (rc, out.u32(12))
    }

    func veventqAlloc(_ s: Setup, _ viommu: UInt32, type: UInt32 = MockVIOMMU.eventType, depth: UInt32 = 2) -> (rc: Int32, id: UInt32, fd: Int32) {
        let (rc, out) = s.t.rig.run(.veventqAlloc) { a in a.set32(8, viommu); a.set32(12, type); a.set32(16, depth) }
        return (rc, out.u32(20), Int32(bitPattern: out.u32(24)))
    }

    func hwQueue(_ s: Setup, _ viommu: UInt32, index: UInt32, iova: UInt64, length: UInt64,
                 type: UInt32 = MockVIOMMU.hwQueueType) -> (rc: Int32, id: UInt32) {
        let (rc, out) = s.t.rig.run(.hwQueueAlloc) { a in
            a.set32(8, viommu); a.set32(12, type); a.set32(16, index); a.set64(24, iova); a.set64(32, length)
        }
        return (rc, out.u32(20))
    }

    func triggerVEvent(_ s: Setup) -> Int32 { s.t.opU32(.triggerVEvent, s.m.idev) }

    // MARK: VIOMMU_ALLOC and its window

    @Test func viommuAllocWithDataAnswersInDataOffset4096Length8192() throws {
        let s = try Self.setup()
        let frames = s.t.rig.machine.platform.frames
        let data = try s.t.user(SelftestRig.le(0xbeef, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff))
        let data2 = try s.t.user(SelftestRig.le(7, 0))
        let before = frames.inUse
        let v = viommuAlloc(s, data: data, length: 24)
        #expect(v.rc == 0 && v.id == 6)
        let out = StructBytes(bytes: s.t.rig.read(va: data, count: 24))
        #expect(out.u32(0) == 0xbeef)
        #expect(out.u32(4) == 0xbeef)
        #expect(out.u64(8) == 4096)
        #expect(out.u64(16) == 8192)
        #expect(frames.inUse == before + 2)
        // A second one's window is the next gap.
        #expect(viommuAlloc(s, data: data2, length: 24).rc == 0)
        #expect(StructBytes(bytes: s.t.rig.read(va: data2, count: 24)).u64(8) == 12288)
        // Data outside 8...24 bytes is EINVAL; without data there is no window.
        #expect(viommuAlloc(s, data: data, length: 4).rc == -Errno.EINVAL)
        #expect(viommuAlloc(s, data: data, length: 32).rc == -Errno.EINVAL)
        #expect(viommuAlloc(s, type: 0xdead).rc == -Errno.EOPNOTSUPP)
        #expect(frames.inUse == before + 4)
        let plain = viommuAlloc(s)
        #expect(plain.rc == 0 && frames.inUse == before + 4)
        #expect(throws: Errno(Errno.ENXIO)) { _ = try s.t.ctx.mapWindow(offset: 20480, length: 8192) }
        // Closing the context gives the windows' pages back.
        s.t.ctx.close()
        #expect(frames.inUse == before)
    }

    /// IOMMUFDContext documents that a context dropped without `close` is closed by its
    /// deinit; with a vIOMMU window alive that close reaches the closure the window's
    /// removal goes through while the context is being deinitialized (it once trapped).
    @Test
    func aContextDroppedWithAVIOMMUWindowAliveIsClosedWithoutTrapping() throws {
        let t = try SelftestRig()
        let frames = t.rig.machine.platform.frames
        let data = try t.user(SelftestRig.le(0xbeef, 0))
        let before = frames.inUse, domains = t.core.liveDomains.count
        var ctx: IOMMUFDContext? = IOMMUFDContext(core: t.core, memory: t.process)
        func run(_ number: UInt32, _ size: Int, _ fill: (inout StructBytes) -> Void) -> StructBytes {
            var b = StructBytes(size: size)
            fill(&b)
            #expect(ctx?.ioctl(number, &b.bytes) == 0, "\(String(describing: ctx?.lastError))")
            return b
        }
        let ioas = run(IOMMUFDCommand.ioasAlloc.number, 12) { _ in }.u32(8)
        let m = run(SelftestRig.testCmd, 72) { $0.set32(4, IOMMUTestOp.mockDomain.rawValue); $0.set32(8, ioas) }
        let idev = m.u32(24)
        let parent = run(IOMMUFDCommand.hwptAlloc.number, 48) { $0.set32(4, UAPI.hwptAllocNestParent); $0.set32(8, idev); $0.set32(12, ioas) }.u32(16)
        _ = run(IOMMUFDCommand.viommuAlloc.number, 40) { a in
            a.set32(8, MockVIOMMU.type); a.set32(12, idev); a.set32(16, parent); a.set32(24, 8); a.set64(32, data)
        }
        #expect(frames.inUse == before + 2)
        ctx = nil
        #expect(frames.inUse == before)
        #expect(t.core.devices.isEmpty)
        #expect(t.core.liveDomains.count == domains)
    }

    @Test func theWindowMapsTwoFramesStartingWithInDataAndOtherRangesAreENXIO() throws {
        let s = try Self.setup()
        let data = try s.t.user(SelftestRig.le(0xbeef, 0, 0, 0, 0, 0))
        let v = viommuAlloc(s, data: data, length: 24)
        try #require(v.rc == 0)
        let w = try s.t.ctx.mapWindow(offset: 4096, length: 8192)
        #expect(w.frames.count == 2)
        #expect(w.owner === s.t.ctx.object(v.id))
        let memory = s.t.rig.machine.platform.memory
        #expect(try memory.load32(w.frames[0]) == 0xbeef)
        #expect(try memory.load32(w.frames[0] + 4) == 0)
        #expect(try memory.load32(w.frames[1]) == 0)
        s.t.ctx.releaseMmap(w.owner)
        for (offset, length) in [(4096, 4096), (4096, 16384), (8192, 8192), (12288, 8192), (0, 8192)] as [(UInt64, UInt64)] {
            #expect(throws: Errno(Errno.ENXIO), "offset \(offset) length \(length)") {
                _ = try s.t.ctx.mapWindow(offset: offset, length: length)
            }
        }
        #expect(throws: Errno(Errno.EINVAL)) { _ = try s.t.ctx.mapWindow(offset: 4096, length: 100) }
        #expect(throws: Errno(Errno.EINVAL)) { _ = try s.t.ctx.mapWindow(offset: 4096, length: 8193) }
        #expect(s.t.destroy(v.id) == 0)
    }

    @Test func aHeldWindowMakesDestroyOfTheVIOMMUEBUSYUntilReleased() throws {
        let s = try Self.setup()
        let frames = s.t.rig.machine.platform.frames
        let data = try s.t.user(SelftestRig.le(0x5a5a, 0))
        let before = frames.inUse
        let v = viommuAlloc(s, data: data, length: 8)
        try #require(v.rc == 0)
        let w = try s.t.ctx.mapWindow(offset: 4096, length: 8192)
        let w2 = try s.t.ctx.mapWindow(offset: 4096, length: 8192)
        #expect(s.t.destroy(v.id) == -Errno.EBUSY)
        s.t.ctx.releaseMmap(w.owner)
        #expect(s.t.destroy(v.id) == -Errno.EBUSY)
        s.t.ctx.releaseMmap(w2.owner)
        #expect(s.t.destroy(v.id) == 0)
        #expect(frames.inUse == before)
        #expect(throws: Errno(Errno.ENXIO)) { _ = try s.t.ctx.mapWindow(offset: 4096, length: 8192) }
        #expect(s.t.destroy(s.parent) == 0)
    }

    // MARK: vDEVICE, vEVENTQ, TRIGGER_VEVENT

    @Test func threeTriggersOnADepth2QueueGiveTwoEventsAndALostEventsHeader() throws {
        let s = try Self.setup()
        let v = try requireVIOMMU(s)
        let nv = try s.t.nested(dev: s.m.idev, parent: v)
        try #require(nv.rc == 0, "\(s.t.lastError)")
        #expect(s.t.replace(s.m.stdev, nv.id).rc == -Errno.ENOENT)  // no vDEVICE yet
        #expect(triggerVEvent(s) == -Errno.ENOENT)
        let vd = vdeviceAlloc(s, v, dev: s.m.idev, virt: 0x99)
        #expect(vd.rc == 0 && vd.id == 8)
        #expect(vdeviceAlloc(s, v, dev: s.m.idev, virt: 0x98).rc == -Errno.EEXIST)
        #expect(vdeviceAlloc(s, 999, dev: s.m.idev, virt: 0x98).rc == -Errno.ENOENT)
        #expect(s.t.replace(s.m.stdev, nv.id).rc == 0)
        #expect(triggerVEvent(s) == -Errno.EOPNOTSUPP)                // no vEVENTQ
        #expect(veventqAlloc(s, v, depth: 0).rc == -Errno.EINVAL)
        let q = veventqAlloc(s, v)
        #expect(q.rc == 0 && q.id == 4 && q.fd == 1000, "\(q) \(s.t.lastError)") // 4: the auto HWPT the replace freed
        #expect(veventqAlloc(s, v).rc == -Errno.EEXIST)
        for _ in 0..<3 { #expect(triggerVEvent(s) == 0) }
        let queue = try #require(s.t.ctx.object(q.id) as? VEventQueueObject)
        var buffer = [UInt8](repeating: 0xff, count: 64)
        let n = buffer.withUnsafeMutableBytes { queue.read(into: $0) }
        #expect(n == 32)
        let b = StructBytes(bytes: buffer)
        let words = (0..<8).map { b.u32($0 * 4) }
        #expect(words == [0, 0, 0x99, 0, 1, 0x99, VEventQueueObject.flagLostEvents, 2])
        #expect(buffer.withUnsafeMutableBytes { queue.read(into: $0) } == 0)
        #expect(triggerVEvent(s) == 0)
        let m = buffer.withUnsafeMutableBytes { queue.read(into: $0) }
        let next = StructBytes(bytes: buffer)
        #expect(m == 12 && next.u32(0) == 0 && next.u32(4) == 3 && next.u32(8) == 0x99)
        #expect(s.t.destroy(v) == -Errno.EBUSY)
        #expect(s.t.destroy(q.id) == -Errno.EBUSY)                    // its file is open
        // Off the vIOMMU the device has no vDEVICE link: ENOENT again.
        #expect(s.t.replace(s.m.stdev, s.ioas).rc == 0)
        #expect(triggerVEvent(s) == -Errno.ENOENT)
    }

    @Test func viommuInvalidationClearsTheDevicesCacheSlots() throws {
        let s = try Self.setup()
        let v = try requireVIOMMU(s)
        #expect(vdeviceAlloc(s, v, dev: s.m.idev, virt: 0x99).rc == 0)
        let t = s.t
        #expect(t.slots(.checkDeviceCache, s.m.idev, are: [Self.D, Self.D, Self.D, Self.D]))
        #expect(t.checkSlot(.checkDeviceCache, s.m.stdev, slot: 0, Self.D) == -Errno.ENOENT) // the idev, not the stdev
        let type = MockVIOMMU.invalidateDataType
        let none = try t.invalidate(v, type: type, entries: [], entryLen: 12)
        #expect(none.rc == 0 && none.num == 0)
        let partial = try t.invalidate(v, type: type, entries: [[0, 0x99, 0], [0, 0x99, 4]], entryLen: 12)
        #expect(partial.rc == -Errno.EINVAL && partial.num == 1)
        #expect(t.slots(.checkDeviceCache, s.m.idev, are: [0, Self.D, Self.D, Self.D]))
        #expect(try t.invalidate(v, type: type, entries: [[0, 0x9, 1]], entryLen: 12).rc == -Errno.EINVAL)        // no such vDEVICE
        #expect(try t.invalidate(v, type: type, entries: [[0xffff_ffff, 0x99, 1]], entryLen: 12).rc == -Errno.EOPNOTSUPP)
        #expect(try t.invalidate(v, type: 0xdadbeef, entries: [[0, 0x99, 1]], entryLen: 12).rc == -Errno.EINVAL)
        #expect(t.slots(.checkDeviceCache, s.m.idev, are: [0, Self.D, Self.D, Self.D]))
        let one = try t.invalidate(v, type: type, entries: [[0, 0x99, 2]], entryLen: 12)
        #expect(one.rc == 0 && one.num == 1)
        #expect(t.slots(.checkDeviceCache, s.m.idev, are: [0, Self.D, 0, Self.D]))
        let all = try t.invalidate(v, type: type, entries: [[MockNestedDomain.invalidateFlagAll, 0x99, 0]], entryLen: 12)
        #expect(all.rc == 0 && all.num == 1)
        #expect(t.slots(.checkDeviceCache, s.m.idev, are: [0, 0, 0, 0]))
        #expect(t.checkSlot(.checkDeviceCache, s.m.idev, slot: 4, 0) == -Errno.EINVAL)
    }

    @Test func destroyOfTheStdevTombstonesALiveVDevice() throws {
        let s = try Self.setup()
        let v = try requireVIOMMU(s)
        let vd = vdeviceAlloc(s, v, dev: s.m.idev, virt: 0x77)
        try #require(vd.rc == 0)
        #expect(s.t.destroy(v) == -Errno.EBUSY)
        #expect(s.t.destroy(s.m.stdev) == 0)
        #expect(s.t.destroy(vd.id) == -Errno.ENOENT)
        #expect(s.t.destroy(s.m.idev) == -Errno.ENOENT)
        #expect(s.t.core.devices.isEmpty)
        #expect(s.t.destroy(v) == 0)                                   // the tombstone let go of it
        #expect(s.t.destroy(s.parent) == 0)
        #expect(s.t.destroy(s.ioas) == 0)
    }

    // MARK: HW queues

    @Test func hwQueuesFollowTheIndexRulesAndPinTheirRangeUntilDestroyed() throws {
        let s = try Self.setup()
        let t = s.t
        let v = try requireVIOMMU(s)
        #expect(hwQueue(s, v, index: 0, iova: Self.start, length: 4096).rc == -Errno.ENOENT) // not mapped
        let ram = try t.rig.touchedRAM(8192)
        #expect(t.rig.map(s.ioas, va: ram, length: 4096, iova: Self.start).rc == 0)
        #expect(t.rig.map(s.ioas, va: ram + 4096, length: 4096, iova: Self.start + 4096).rc == 0)
        let pinned = t.process.pinnedPages
        #expect(hwQueue(s, v, index: 1, iova: Self.start, length: 4096).rc == -Errno.EIO)
        #expect(hwQueue(s, v, index: 2, iova: Self.start, length: 4096).rc == -Errno.EINVAL)
        #expect(t.process.pinnedPages == pinned)
        let q0 = hwQueue(s, v, index: 0, iova: Self.start, length: 4096)
        #expect(q0.rc == 0 && q0.id == 7)
        #expect(t.destroy(q0.id + 1) == -Errno.EBUSY)                 // its internal access
        #expect(hwQueue(s, v, index: 0, iova: Self.start, length: 4096).rc == -Errno.EEXIST)
        #expect(t.rig.unmap(s.ioas, iova: Self.start, length: 4096).rc == -Errno.EBUSY)
        #expect(t.rig.unmap(s.ioas, iova: Self.start + 4096, length: 4096).rc == 0)
        let q1 = hwQueue(s, v, index: 1, iova: Self.start + 2048, length: 2048)
        #expect(q1.rc == 0)
        let mockV = try #require((t.ctx.object(v) as? VIOMMUObject)?.viommu as? MockVIOMMU)
        #expect(mockV.queues == [Self.start, Self.start + 2048])
        #expect(t.destroy(q0.id) == -Errno.EBUSY)                     // queue 1 holds it
        #expect(t.destroy(v) == -Errno.EBUSY)
        #expect(t.destroy(q1.id) == 0)
        #expect(t.destroy(q0.id) == 0)
        #expect(mockV.queues == [nil, nil])
        #expect(t.rig.unmap(s.ioas, iova: Self.start, length: 4096).rc == 0)
        #expect(t.destroy(v) == 0)
        #expect(t.process.pinnedPages == 0)
    }
}
