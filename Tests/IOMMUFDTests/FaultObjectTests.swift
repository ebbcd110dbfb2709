import Testing
import Formats
import Hardware
import Kernel
import IOMMUFD

/// The fault object (drivers/iommu/iommufd/eventq.c) fed by the real PRI path: the
/// endpoint's page request, the unit's queue, the VT-d driver's PRQ handling and the core's
/// IOPF pipeline.
@Suite struct FaultObjectTests {
    struct Setup {
        let rig: IOMMUFDRig
        let ep: PCIeEndpoint
        let devID: UInt32
        let ioas: UInt32
        let hwpt: UInt32
        let fault: FaultObject
    }

    static func setup() throws -> Setup {
        let rig = try IOMMUFDRig()
        let (dev, ep) = try rig.addDevice("vf", dev: 4, ats: true, pri: true)
        let devID = try rig.ctx.bind(dev)
        let ioas = try rig.ioasAlloc()
        let f = rig.run(.faultQueueAlloc)
        try #require(f.rc == 0 && f.out.u32(8) != 0)
        let fault = try rig.ctx.faultObject(f.out.u32(8))
        let hwpt = rig.hwptAlloc(dev: devID, pt: ioas, fault: fault.id)
        try #require(hwpt.rc == 0)
        try rig.ctx.attach(devID, to: hwpt.id)
        return Setup(rig: rig, ep: ep, devID: devID, ioas: ioas, hwpt: hwpt.id, fault: fault)
    }

    func access(_ s: Setup, _ address: UInt64, pages: Int = 1) -> () -> ATSAccessResult? {
        var result: ATSAccessResult?
        s.ep.atsAccess(pasid: nil, address: address, length: pages * 4096, write: true) { result = $0 }
        while s.fault.queue.undelivered == 0 && result == nil && s.rig.machine.scheduler.runNext() {}
        return { result }
    }

    @Test func recordsCarryTheContextsDeviceIDAndOnlyUAPIFlagsAndResponsesResumeTheDevice() throws {
        let s = try Self.setup()
        let result = access(s, 0x10_0000, pages: 2)
        #expect(throws: Errno(Errno.ESPIPE)) { _ = try s.fault.read(count: 50) }
        #expect(try s.fault.read(count: 40).isEmpty) // a group of two does not fit in one record
        let bytes = try s.fault.read(count: 400)
        #expect(bytes.count == 80)
        let records = [FaultObject.decode(bytes, at: 0), FaultObject.decode(bytes, at: 40)]
        #expect(records.allSatisfy { $0.devID == s.devID && $0.flags & ~3 == 0 })
        #expect(records[1].flags == 2 && records[0].cookie == records[1].cookie)
        let ram = try s.rig.guestRAM(2 * 4096)
        #expect(s.rig.map(s.ioas, va: ram, length: 2 * 4096, iova: 0x10_0000).rc == 0)
        var response = StructBytes(bytes: [UInt8](repeating: 0, count: 16))
        response.set32(0, records[0].cookie); response.set32(4, 0)
        response.set32(8, records[0].cookie); response.set32(12, 0) // the second answers nothing: partial write
        #expect(throws: Errno(Errno.ESPIPE)) { _ = try s.fault.write([1, 2, 3]) }
        #expect(try s.fault.write(response.bytes) == 8)
        while result() == nil && s.rig.machine.scheduler.runNext() {}
        #expect(result()?.outcome == .completed)
        #expect(s.rig.machine.oracle.violations.isEmpty)
    }

    @Test func detachAnswersPendingGroupsInvalidExactlyOnce() throws {
        let s = try Self.setup()
        let result = access(s, 0x20_0000)
        _ = try s.fault.read(count: 40) // read, never answered
        try s.rig.ctx.detach(s.devID)
        #expect(s.fault.queue.autoResponses == 1)
        while result() == nil && s.rig.machine.scheduler.runNext() {}
        #expect(result()?.outcome == .invalidResponse)
        #expect(s.rig.core.lateResponses == 0)
    }

    @Test func closingTheFileKeepsTheObjectQueueingAndOnlyItsDestructionAnswersInvalid() throws {
        let s = try Self.setup()
        #expect(s.rig.run(.destroy) { $0.set32(4, s.fault.id) }.rc == -Errno.EBUSY) // the file holds it
        try s.rig.ctx.closeFaultFile(s.fault.id)
        let result = access(s, 0x30_0000)
        #expect(s.fault.queue.undelivered == 1)                                   // queued, not refused
        #expect(s.rig.core.pageResponses[2] == 0)                                 // no Response Failure
        #expect(s.rig.run(.destroy) { $0.set32(4, s.fault.id) }.rc == -Errno.EBUSY) // the HWPT holds it
        try s.rig.ctx.detach(s.devID)
        while result() == nil && s.rig.machine.scheduler.runNext() {}
        #expect(result()?.outcome == .invalidResponse)
        #expect(s.rig.run(.destroy) { $0.set32(4, s.hwpt) }.rc == 0)
        #expect(s.rig.run(.destroy) { $0.set32(4, s.fault.id) }.rc == 0)
    }

    @Test func aPASIDFaultShowsPASIDValidAndLastPageOnly() throws {
        let rig = try IOMMUFDRig()
        let (dev, ep) = try rig.addDevice("accel", dev: 5, pasids: 1 << 8, ats: true, pri: true)
        let id = try rig.ctx.bind(dev)
        let ioas = try rig.ioasAlloc()
        let f = try rig.ctx.faultObject(rig.run(.faultQueueAlloc).out.u32(8))
        let h = rig.hwptAlloc(dev: id, pt: ioas, flags: UAPI.hwptAllocPASID, fault: f.id)
        try #require(h.rc == 0)
        let p = PASID(truncating: 7)
        try rig.ctx.attach(id, to: h.id, pasid: p)
        ep.atsAccess(pasid: p, address: 0x40_0000, length: 4096, write: false) { _ in }
        while f.queue.undelivered == 0 && rig.machine.scheduler.runNext() {}
        let r = FaultObject.decode(try f.read(count: 40))
        #expect(r.flags == 3 && r.pasid == 7 && r.devID == id)
    }
}
