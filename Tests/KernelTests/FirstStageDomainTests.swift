import Testing
import Platform
import Formats
import Hardware
@testable import Kernel
@testable import Simulation

/// The invalidation descriptors the driver writes to one unit's queue from now on, read
/// back from the queue memory (wait descriptors left out).
struct QueueLog {
    let unit: IntelIOMMU
    let memory: PhysicalMemory
    let start: UInt64

    init(_ rig: KernelRig, unit index: Int = 0) {
        unit = rig.driver.units[index]
        memory = rig.platform.memory
        start = unit.queue.tail
    }

    var descriptors: [InvalidationDescriptor] {
        var out: [InvalidationDescriptor] = []
        var t = start
        while t != unit.queue.tail {
            let a = unit.queueFrame + t
            let raw = RawDescriptor((try? memory.load64(a)) ?? 0, (try? memory.load64(a + 8)) ?? 0,
                                    (try? memory.load64(a + 16)) ?? 0, (try? memory.load64(a + 24)) ?? 0)
            if case .success(let d) = InvalidationDescriptor.decode(raw, wide: true), d.type != InvalidationDescriptor.waitType {
                out.append(d)
            }
            t = (t + 32) & (VTdInvalidationQueue.bytes - 1)
        }
        return out
    }

    /// (DID, PASID) of every PASID-based IOTLB descriptor.
    var pasidIOTLBTags: [(UInt16, UInt32)] {
        descriptors.compactMap { if case let .pasidIOTLB(did, pasid, _) = $0 { return (did.rawValue, pasid.rawValue) } else { return nil } }
    }

    /// DIDs of every type-2 IOTLB descriptor.
    var iotlbDIDs: [UInt16] {
        descriptors.compactMap { d -> UInt16? in
            guard case let .iotlb(g, _, _) = d else { return nil }
            switch g {
            case .global: return 0
            case .domain(let did): return did.rawValue
            case .page(let did, _, _, _): return did.rawValue
            }
        }
    }
}

/// Reads PASID-table entries the way the hardware finds them.
func pasidEntry(_ rig: KernelRig, _ device: Device, pasid: UInt32 = 0) throws -> PASIDEntry {
    let u = rig.driver.units[device.unit]
    let info = try #require(u.devices[device.requesterID.rawValue])
    let address = try #require(try u.pasidEntryAddress(info, pasid, create: false))
    return try u.readEntry(address)
}

/// The errno an `IOMMUError` thrown by `body` carries; nil when nothing is thrown.
func kernelErrno(_ body: () throws -> Void) -> Int32? {
    do { try body() } catch let e as IOMMUError { return e.errno } catch { return -1 }
    return nil
}

@Suite("first-stage DMA paging domains (PGTT=001, x86-64 tables) as Linux chooses them")
struct FirstStageDomainTests {
    @Test("a DMA default domain on the default unit is first stage: RID_PASID entry PGTT=001, FSPTPTR = table root, FSPM 4-level")
    func defaultDomainIsFirstStage() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic", dev: 1)
        let d = try #require(dev.attachedDomain as? VTdFirstStageDomain)
        #expect(d.type == .dma)
        #expect(d.levels == 4)
        let e = try pasidEntry(rig, dev)
        #expect(e.present)
        #expect(e.pgtt == .firstStage)
        #expect(e.firstStageTable == d.pageTable.root)
        #expect(e.fspm == 0)
        #expect(e.did == d.did(on: 0))
        #expect(e.secondStageTable == 0)
        // Canonical lower half of a 48-bit input.
        #expect(d.apertureEnd == (UInt64(1) << 47) - 1)
    }

    @Test("a first-stage unmap is flushed with a PASID-based IOTLB descriptor for (DID, PASID 0), never a type-2 one")
    func unmapFlushesWithPASIDBasedDescriptors() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("nic", dev: 1, prefer: .identity)
        let d = try rig.core.allocDomain(for: dev)
        try rig.mapBuffers(d, iova: 0x10_0000)
        try rig.core.attach(d, to: dev)
        let did = try #require((d as? VTdDMARDomain)?.did(on: 0))
        #expect(rig.dmaWrite(ep, 0x10_0000)?.fault == nil)
        let type2Before = rig.machine.units[0].counters.descriptorsByType[Int(InvalidationDescriptor.iotlbType)]
        let log = QueueLog(rig)
        try rig.core.unmap(d, iova: 0x10_0000, size: 4096)
        let tags = log.pasidIOTLBTags
        #expect(tags.count == 1)
        #expect(tags.first.map { $0.0 == did.rawValue && $0.1 == 0 } == true, "\(log.descriptors)")
        #expect(log.iotlbDIDs.isEmpty)
        #expect(rig.machine.units[0].counters.descriptorsByType[Int(InvalidationDescriptor.iotlbType)] == type2Before)
        #expect(rig.dmaWrite(ep, 0x10_0000)?.fault != nil, "the flush dropped the cached translation")
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("with the domain also on a PASID, an unmap flushes (DID, 0) and (DID, pasid), each with a PASID-based descriptor")
    func pasidAttachAddsPASIDTaggedFlush() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("accel", dev: 1, pasids: 64, prefer: .identity)
        let d = try rig.core.allocDomain(for: dev, flags: .pasid)
        #expect(d is VTdFirstStageDomain)
        try rig.mapBuffers(d, iova: 0x20_0000)
        try rig.core.attach(d, to: dev)
        let p = try rig.core.allocGlobalPASID(for: dev)
        #expect(try rig.core.attachPASID(d, to: dev, pasid: p) == .fresh)
        let did = try #require((d as? VTdDMARDomain)?.did(on: 0))
        #expect(try pasidEntry(rig, dev, pasid: p.rawValue).pgtt == .firstStage)
        #expect(rig.dmaWrite(ep, 0x20_0000)?.fault == nil)
        #expect(rig.dmaWrite(ep, 0x20_0000, pasid: p)?.fault == nil)
        let log = QueueLog(rig)
        try rig.core.unmap(d, iova: 0x20_0000, size: 4096)
        let tags = log.pasidIOTLBTags.map { "\($0.0)/\($0.1)" }.sorted()
        #expect(tags == ["\(did.rawValue)/0", "\(did.rawValue)/\(p.rawValue)"].sorted())
        #expect(log.iotlbDIDs.isEmpty)
        #expect(rig.dmaWrite(ep, 0x20_0000, pasid: p)?.fault != nil)
        #expect(rig.dmaWrite(ep, 0x20_0000)?.fault != nil)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }

    @Test("a 1 GiB mapping uses a 1 GiB first-stage leaf where CAP.FS1GP is set, 2 MiB leaves where it is not")
    func oneGiBLeavesFollowFS1GP() throws {
        for fs1gp in [true, false] {
            let rig = try KernelRig(units: [VTdConfiguration(name: "dmar0", capability: .make(largePages1G: fs1gp))])
            let (dev, _) = try rig.add("nic", dev: 1, prefer: .identity)
            let d = try rig.core.allocDomain(for: dev)
            let fs = try #require(d as? VTdFirstStageDomain)
            #expect((d.pageSizes & (1 << 30) != 0) == fs1gp)
            try rig.core.attach(d, to: dev)
            try rig.core.map(d, iova: 1 << 30, physical: 1 << 30, size: 1 << 30, permissions: .readWrite)
            #expect(fs.mappedPageSize((1 << 30) + 0x1234_5000) == (fs1gp ? 1 << 30 : 1 << 21), "FS1GP \(fs1gp)")
            #expect(rig.core.iovaToPhys(d, (1 << 30) + 0x1234_5000) == (1 << 30) + 0x1234_5000)
            #expect(try rig.core.unmap(d, iova: 1 << 30, size: 1 << 30) == 1 << 30)
            #expect(rig.violations.isEmpty, "\(rig.violations)")
        }
    }

    @Test("levels 5 gives FSPM=1 and takes an IOVA above 2^47; 4 levels refuse it (aperture) and take the top of the lower half")
    func fiveLevelsWidenTheAperture() throws {
        let high: UInt64 = (1 << 47) + 0x10_0000
        let rig5 = try KernelRig(levels: 5)
        let (dev5, ep5) = try rig5.add("nic", dev: 1, prefer: .identity)
        let d5 = try rig5.core.allocDomain(for: dev5)
        #expect((d5 as? VTdFirstStageDomain)?.levels == 5)
        #expect(d5.apertureEnd == (UInt64(1) << 56) - 1)
        let pa = try rig5.mapBuffers(d5, iova: high)[0]
        try rig5.core.attach(d5, to: dev5)
        let e = try pasidEntry(rig5, dev5)
        #expect(e.pgtt == .firstStage && e.fspm == 1 && e.firstStageLevels == 5)
        #expect(rig5.dmaWrite(ep5, high + 0x40, value: 0x77)?.fault == nil)
        #expect(try rig5.platform.memory.load8(pa + 0x40) == 0x77)
        #expect(rig5.violations.isEmpty, "\(rig5.violations)")

        let rig4 = try KernelRig(levels: 4)
        let (dev4, ep4) = try rig4.add("nic", dev: 1, prefer: .identity)
        let d4 = try rig4.core.allocDomain(for: dev4)
        try rig4.core.attach(d4, to: dev4)
        #expect(try pasidEntry(rig4, dev4).fspm == 0)
        let buf = try rig4.machine.allocateBuffer()
        #expect(kernelErrno { try rig4.core.map(d4, iova: high, physical: buf, size: 4096, permissions: .readWrite) } == 34)
        #expect(kernelErrno { try rig4.core.map(d4, iova: 1 << 47, physical: buf, size: 4096, permissions: .readWrite) } == 34)
        #expect(rig4.core.iovaToPhys(d4, high) == nil)
        #expect(rig4.dmaWrite(ep4, high)?.fault != nil)
        let below: UInt64 = (1 << 47) - 4096
        try rig4.core.map(d4, iova: below, physical: buf, size: 4096, permissions: .readWrite)
        #expect(rig4.dmaWrite(ep4, below, value: 0x66)?.fault == nil)
        #expect(try rig4.platform.memory.load8(buf) == 0x66)
        #expect(rig4.violations.isEmpty, "\(rig4.violations)")
    }

    @Test("nest-parent and dirty-tracking allocations, stage .second, and a unit without first stage all give second-stage domains")
    func secondStageWhereFirstCannotServe() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic", dev: 1, prefer: .identity)
        #expect(try rig.core.allocDomain(for: dev) is VTdFirstStageDomain)
        #expect(try rig.core.allocDomain(for: dev, flags: .pasid) is VTdFirstStageDomain)
        #expect(try rig.core.allocDomain(for: dev, flags: .nestParent) is VTdSecondStageDomain)
        #expect(try rig.core.allocDomain(for: dev, flags: .dirtyTracking) is VTdSecondStageDomain)
        #expect(try rig.core.allocDomain(for: dev, flags: [.pasid, .dirtyTracking]) is VTdSecondStageDomain)

        let forced = try KernelRig(stage: .second)
        let (fdev, _) = try forced.add("nic", dev: 1)
        #expect(fdev.attachedDomain is VTdSecondStageDomain)
        #expect(try pasidEntry(forced, fdev).pgtt == .secondStage)
        #expect(try forced.core.allocDomain(for: fdev) is VTdSecondStageDomain)

        let noFS = try KernelRig(units: [VTdConfiguration(name: "dmar0", extendedCapability: .make(firstStage: false))])
        let (ndev, _) = try noFS.add("nic", dev: 1)
        let nd = try #require(ndev.attachedDomain as? VTdSecondStageDomain)
        let e = try pasidEntry(noFS, ndev)
        #expect(e.pgtt == .secondStage && e.secondStageTable == nd.pageTable.root)
        #expect(try noFS.core.allocDomain(for: ndev, flags: .pasid) is VTdSecondStageDomain)
    }

    @Test("a write-only mapping is readable on first stage (no read-disable bit) without a violation, but not on second stage")
    func writeOnlyMappingReadableOnFirstStage() throws {
        for stage in VTdPagingStage.allCases {
            let rig = try KernelRig(stage: stage)
            let (dev, ep) = try rig.add("nic", dev: 1, prefer: .identity)
            let d = try rig.core.allocDomain(for: dev)
            let pa = try rig.mapBuffers(d, iova: 0x30_0000, permissions: .write)[0]
            try rig.core.attach(d, to: dev)
            try rig.platform.memory.store8(pa, 0x42)
            let read = try #require(rig.dmaRead(ep, 0x30_0000))
            if stage == .first {
                #expect(read.fault == nil)
                #expect(read.data.first == 0x42)
            } else {
                #expect(read.fault != nil, "second stage has a read permission bit")
            }
            #expect(rig.dmaWrite(ep, 0x30_0000, value: 0x43)?.fault == nil)
            #expect(try rig.platform.memory.load8(pa) == 0x43)
            #expect(rig.violations.isEmpty, "\(stage): \(rig.violations)")
        }
    }

    @Test("on a caching-mode unit a first-stage map issues no IOTLB flush, a second-stage map does")
    func cachingModeFlushesOnlySecondStageMaps() throws {
        for stage in VTdPagingStage.allCases {
            let rig = try KernelRig(units: [VTdConfiguration(name: "dmar0", capability: .make(cachingMode: true))], stage: stage)
            let (dev, ep) = try rig.add("nic", dev: 1, prefer: .identity)
            let d = try rig.core.allocDomain(for: dev)
            try rig.core.attach(d, to: dev)
            let did = try #require((d as? VTdDMARDomain)?.did(on: 0))
            let log = QueueLog(rig)
            let pa = try rig.mapBuffers(d, iova: 0x40_0000)[0]
            if stage == .first {
                #expect(log.descriptors.isEmpty, "\(log.descriptors)")
            } else {
                #expect(log.iotlbDIDs == [did.rawValue], "\(log.descriptors)")
            }
            #expect(rig.dmaWrite(ep, 0x40_0000, value: 0x11)?.fault == nil)
            #expect(try rig.platform.memory.load8(pa) == 0x11)
            #expect(rig.violations.isEmpty, "\(stage): \(rig.violations)")
        }
    }

    @Test("replacing a first-stage domain with a second-stage one and back is staged (hitless) and DMA mapped alike keeps working")
    func replaceAcrossStagesIsStaged() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("nic", dev: 1, prefer: .identity)
        let first = try rig.core.allocDomain(for: dev)
        rig.driver.preferredStage = .second
        let second = try rig.core.allocDomain(for: dev)
        rig.driver.preferredStage = nil
        #expect(first is VTdFirstStageDomain && second is VTdSecondStageDomain)
        let shared = try rig.machine.allocateBuffer()
        for d in [first, second] { try rig.core.map(d, iova: 0x7000, physical: shared, size: 4096, permissions: .readWrite) }
        let g = try #require(dev.group)
        try rig.core.attach(first, to: dev)
        #expect(rig.dmaWrite(ep, 0x7000, value: 1)?.fault == nil)
        try rig.core.replace(g, with: second)
        #expect(rig.core.lastUpdatePath == .staged)
        var e = try pasidEntry(rig, dev)
        #expect(e.pgtt == .secondStage && e.did == (second as? VTdDMARDomain)?.did(on: 0))
        #expect(rig.dmaWrite(ep, 0x7000, value: 2)?.fault == nil)
        #expect(try rig.platform.memory.load8(shared) == 2)
        try rig.core.replace(g, with: first)
        #expect(rig.core.lastUpdatePath == .staged)
        e = try pasidEntry(rig, dev)
        #expect(e.pgtt == .firstStage && e.firstStageTable == (first as? VTdFirstStageDomain)?.pageTable.root)
        #expect(rig.dmaWrite(ep, 0x7000, value: 3)?.fault == nil)
        #expect(try rig.platform.memory.load8(shared) == 3)
        #expect(rig.violations.isEmpty, "\(rig.violations)")
    }
}
