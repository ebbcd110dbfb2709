import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD
import Simulation

/// `iommu-sim bench iommufd`: the user API's hot paths through the ioctl entry, on a
/// simulated machine (one VT-d unit, a VMM process, one context):
/// - `mapUnmapPairNs`: IOAS_MAP + IOAS_UNMAP of 4 KiB at a fixed IOVA, one paging domain
///   attached (pin, VT-d PTE write, strict unmap with its IOTLB invalidation, unpin);
/// - `map1GiBMs`: IOAS_MAP of 1 GiB of 2 MiB-contiguous memory, one domain attached;
/// - `faultRoundTripNs`: an ATS access to an unmapped page raises a page request through
///   the unit's page request queue, the VT-d driver's PRQ handling and the core's IOPF
///   pipeline into the fault object; the group is read and answered through the
///   ioctl-level read/write, and the response reaches the device.
struct IOMMUFDBenchmark {
    struct Failure: Error, CustomStringConvertible { var description: String }

    struct Round {
        var mapUnmapPairNs = 0.0
        var map1GiBMs = 0.0
        var faultRoundTripNs = 0.0
        /// The same 4 KiB map + unmap straight through the core on the same domain: what the
        /// VT-d model costs without iommufd above it (a reference, not a target).
        var coreMapUnmapPairNs = 0.0
        /// GET_DIRTY_BITMAP of 1 GiB mapped with 4 KiB pages, 10% of them written (T17).
        var dirtyBitmap1GiBMs = 0.0
        /// IOMMU_OPTION (get RLIMIT_MODE) through the Swift ioctl entry: what the C ABI's
        /// shim cost is measured above.
        var optionIoctlNs = 0.0
    }

    let pairs: Int
    let faults: Int

    let machine: Machine
    let process: Process
    let ctx: IOMMUFDContext
    let ioas: UInt32
    let endpoint: PCIeEndpoint
    let fault: FaultObject
    let faultIOAS: UInt32
    let ram: UInt64
    let huge: UInt64
    /// T17: a NIC on a DIRTY_TRACKING HWPT of its own IOAS (huge pages off) mapping `huge`.
    let nicEndpoint: PCIeEndpoint
    let dirtyHWPT: UInt32
    let dirtyBitmapBuffer: UInt64

    init(pairs: Int, faults: Int) throws {
        self.pairs = pairs; self.faults = faults
        do {
            machine = try Machine(seed: 1, memorySize: (1 << 30) + (256 << 20), units: [VTdConfiguration(name: "dmar0")], policy: .strict)
            // The system alone, as Linux runs it: no oracle watching every map and DMA.
            machine.detachOracle()
            process = try machine.core.createProcess()
            ctx = IOMMUFDContext(core: machine.core, memory: process)
            let nic = try machine.addDevices([DeviceDescription(name: "nic", requesterID: RequesterID(bus: 0, device: 1, function: 0))])[0].0
            let vf = try machine.addDevices([DeviceDescription(name: "vf", requesterID: RequesterID(bus: 0, device: 2, function: 0), ats: true, pri: true)])[0]
            endpoint = vf.1
            let nicID = try ctx.bind(nic), vfID = try ctx.bind(vf.0)
            ioas = try Self.alloc(ctx)
            try ctx.attach(nicID, to: ioas)
            ram = try process.mmap(length: 1 << 20, permissions: .readWrite)
            huge = try process.mmapContiguous(length: 1 << 30, permissions: .readWrite)
            var f = StructBytes(size: IOMMUFDCommand.faultQueueAlloc.size)
            try ctx.call(.faultQueueAlloc, &f)
            fault = try ctx.faultObject(f.u32(8))
            faultIOAS = try Self.alloc(ctx)
            var h = StructBytes(size: IOMMUFDCommand.hwptAlloc.size)
            h.set32(4, UAPI.hwptFaultIDValid); h.set32(8, vfID); h.set32(12, faultIOAS); h.set32(40, fault.id)
            try ctx.call(.hwptAlloc, &h)
            try ctx.attach(vfID, to: h.u32(16))
            let nic2 = try machine.addDevices([DeviceDescription(name: "nic2", requesterID: RequesterID(bus: 0, device: 3, function: 0))])[0]
            nicEndpoint = nic2.1
            let nic2ID = try ctx.bind(nic2.0)
            let dirtyIOAS = try Self.alloc(ctx)
            var option = StructBytes(size: IOMMUFDCommand.option.size)
            option.set32(4, UAPI.optionHugePages); option.set32(12, dirtyIOAS); option.set64(16, 0)
            try ctx.call(.option, &option)
            var d = StructBytes(size: IOMMUFDCommand.hwptAlloc.size)
            d.set32(4, UAPI.hwptAllocDirtyTracking); d.set32(8, nic2ID); d.set32(12, dirtyIOAS)
            try ctx.call(.hwptAlloc, &d)
            dirtyHWPT = d.u32(16)
            try ctx.attach(nic2ID, to: dirtyHWPT)
            var m = StructBytes(size: IOMMUFDCommand.ioasMap.size)
            m.set32(4, UAPI.mapFixedIOVA | UAPI.mapReadable | UAPI.mapWriteable); m.set32(8, dirtyIOAS)
            m.set64(16, huge); m.set64(24, 1 << 30); m.set64(32, 0x80_0000_0000)
            try ctx.call(.ioasMap, &m)
            var t = StructBytes(size: IOMMUFDCommand.hwptSetDirtyTracking.size)
            t.set32(4, UAPI.dirtyTrackingEnable); t.set32(8, dirtyHWPT)
            try ctx.call(.hwptSetDirtyTracking, &t)
            dirtyBitmapBuffer = try process.mmap(length: 32 << 10, permissions: .readWrite)
        } catch { throw Failure(description: "setup: \(error)") }
    }

    static func alloc(_ ctx: IOMMUFDContext) throws(Errno) -> UInt32 {
        var s = StructBytes(size: IOMMUFDCommand.ioasAlloc.size)
        try ctx.call(.ioasAlloc, &s)
        return s.u32(8)
    }

    /// One round of each measurement.
    func round() throws -> Round {
        var r = Round()
        r.mapUnmapPairNs = try mapUnmap()
        r.coreMapUnmapPairNs = try coreMapUnmap()
        r.map1GiBMs = try map1GiB()
        r.faultRoundTripNs = try faultRoundTrip()
        r.dirtyBitmap1GiBMs = try dirtyBitmap1GiB()
        r.optionIoctlNs = try optionIoctl()
        return r
    }

    /// IOMMU_OPTION get RLIMIT_MODE, the cheapest real command, through the byte entry.
    func optionIoctl() throws -> Double {
        var o = StructBytes(size: IOMMUFDCommand.option.size)
        o.set32(4, 0); o.set16(8, 1)
        let number = IOMMUFDCommand.option.number, ctx = self.ctx, n = 200_000
        var failures = 0
        let elapsed: UInt64 = o.bytes.withUnsafeMutableBytes { b in
            let start = HostClock.now()
            for _ in 0..<n where ctx.ioctl(number, b) != 0 { failures += 1 }
            return HostClock.elapsed(start, HostClock.now())
        }
        guard failures == 0 else { throw Failure(description: "IOMMU_OPTION failed \(failures) times") }
        return Double(elapsed) / Double(n)
    }

    /// Argument buffers made once, so the loop allocates nothing.
    func mapUnmap() throws -> Double {
        var map = StructBytes(size: IOMMUFDCommand.ioasMap.size)
        map.set32(4, UAPI.mapFixedIOVA | UAPI.mapReadable | UAPI.mapWriteable); map.set32(8, ioas)
        map.set64(16, ram); map.set64(24, 4096); map.set64(32, 0x1000_0000)
        var unmap = StructBytes(size: IOMMUFDCommand.ioasUnmap.size)
        unmap.set32(4, ioas); unmap.set64(8, 0x1000_0000); unmap.set64(16, 4096)
        let mapNumber = IOMMUFDCommand.ioasMap.number, unmapNumber = IOMMUFDCommand.ioasUnmap.number
        let ctx = self.ctx, n = pairs
        var failures = 0
        let elapsed: UInt64 = map.bytes.withUnsafeMutableBytes { m in
            unmap.bytes.withUnsafeMutableBytes { u in
                let unmapLength = u.baseAddress! + 16
                let start = HostClock.now()
                for _ in 0..<n {
                    if ctx.ioctl(mapNumber, m) != 0 { failures += 1 }
                    unmapLength.storeBytes(of: UInt64(4096).littleEndian, as: UInt64.self)
                    if ctx.ioctl(unmapNumber, u) != 0 { failures += 1 }
                }
                return HostClock.elapsed(start, HostClock.now())
            }
        }
        guard failures == 0 else { throw Failure(description: "map/unmap failed \(failures) times: \(ctx.lastError.map { "\($0)" } ?? "")") }
        return Double(elapsed) / Double(n)
    }

    func coreMapUnmap() throws -> Double {
        guard let ioasObject = ctx.object(ioas) as? IOAS, let domain = ioasObject.attachedDomains.first else {
            throw Failure(description: "no domain")
        }
        let core = machine.core, n = pairs
        let frame = try machine.allocateBuffer()
        let start = HostClock.now()
        for _ in 0..<n {
            try core.map(domain, iova: 0x2000_0000, physical: frame, size: 4096, permissions: .readWrite)
            try core.unmap(domain, iova: 0x2000_0000, size: 4096)
        }
        return Double(HostClock.elapsed(start, HostClock.now())) / Double(n)
    }

    func map1GiB() throws -> Double {
        var map = StructBytes(size: IOMMUFDCommand.ioasMap.size)
        map.set32(4, UAPI.mapFixedIOVA | UAPI.mapReadable | UAPI.mapWriteable); map.set32(8, ioas)
        map.set64(16, huge); map.set64(24, 1 << 30); map.set64(32, 0x40_0000_0000)
        let start = HostClock.now()
        try ctx.call(.ioasMap, &map)
        let elapsed = HostClock.elapsed(start, HostClock.now())
        var unmap = StructBytes(size: IOMMUFDCommand.ioasUnmap.size)
        unmap.set32(4, ioas); unmap.set64(8, 0x40_0000_0000); unmap.set64(16, 1 << 30)
        try ctx.call(.ioasUnmap, &unmap)
        return Double(elapsed) / 1e6
    }

    /// 1 GiB of 4 KiB pages (huge pages off) in a DIRTY_TRACKING HWPT, every tenth page
    /// written by the device, then one GET_DIRTY_BITMAP (read and clear) of all of it.
    func dirtyBitmap1GiB() throws -> Double {
        let hwpt = dirtyHWPT
        let base: UInt64 = 0x80_0000_0000, pages = 1 << 18
        for i in stride(from: 0, to: pages, by: 10) {
            var done = false
            nicEndpoint.submit(.write(base + UInt64(i) << 12, [1], pasid: nil)) { _ in done = true }
            while !done && machine.scheduler.runNext() {}
        }
        var bitmap = StructBytes(size: IOMMUFDCommand.hwptGetDirtyBitmap.size)
        bitmap.set32(4, hwpt); bitmap.set64(16, base); bitmap.set64(24, UInt64(pages) << 12); bitmap.set64(32, 4096)
        bitmap.set64(40, dirtyBitmapBuffer)
        let start = HostClock.now()
        try ctx.call(.hwptGetDirtyBitmap, &bitmap)
        let elapsed = HostClock.elapsed(start, HostClock.now())
        // The bitmap must say exactly what was written; then zero it for the next round.
        var words = [UInt8](repeating: 0, count: pages / 8)
        _ = words.withUnsafeMutableBytes { process.copyIn(from: dirtyBitmapBuffer, into: $0) }
        let set = words.reduce(0) { $0 + $1.nonzeroBitCount }
        guard set == (pages + 9) / 10 else { throw Failure(description: "dirty bitmap has \(set) bits, \((pages + 9) / 10) pages were written") }
        for i in words.indices { words[i] = 0 }
        _ = words.withUnsafeBytes { process.copyOut(to: dirtyBitmapBuffer, from: $0) }
        return Double(elapsed) / 1e6
    }

    /// Each round trip: a fresh page request, read as 40 bytes and answered INVALID
    /// through the fault file; ends when the device has its response.
    func faultRoundTrip() throws -> Double {
        let scheduler = machine.scheduler
        // The VMM's buffers, made once: a record, a response (IOMMUFD_PAGE_RESP_INVALID: the
        // device gives the access up).
        let record = UnsafeMutableRawBufferPointer.allocate(byteCount: 40, alignment: 8)
        let response = UnsafeMutableRawBufferPointer.allocate(byteCount: 8, alignment: 8)
        defer { record.deallocate(); response.deallocate() }
        response.storeBytes(of: UInt32(1).littleEndian, toByteOffset: 4, as: UInt32.self)
        var total: UInt64 = 0
        for i in 0..<faults {
            var done = false
            let start = HostClock.now()
            endpoint.atsAccess(pasid: nil, address: 0x100_0000 + UInt64(i % 4096) << 12, length: 4096, write: true) { _ in done = true }
            while fault.queue.undelivered == 0 && scheduler.runNext() {}
            guard try fault.read(into: record) == 40 else { throw Failure(description: "no fault record") }
            response.copyMemory(from: UnsafeRawBufferPointer(rebasing: record[36..<40]))
            guard try fault.write(from: UnsafeRawBufferPointer(response)) == 8 else { throw Failure(description: "response refused") }
            while !done && scheduler.runNext() {}
            total += HostClock.elapsed(start, HostClock.now())
        }
        return Double(total) / Double(faults)
    }
}
