import Testing
import Platform
import Formats
import Hardware
@testable import Kernel
@testable import Simulation

/// A nest parent over "guest RAM" (buffers the parent maps at guest-physical addresses) and
/// a guest first-stage table written into it, as a guest kernel would.
final class NestedSetup {
    let rig: KernelRig
    let dev: Device
    let ep: PCIeEndpoint
    let parent: IOMMUDomain
    private(set) var hpaOf: [UInt64: UInt64] = [:]
    private var nextGPA: UInt64 = 0x1000_0000
    private(set) var root: UInt64 = 0

    init(units: [VTdConfiguration]? = nil, ats: Bool = false, parentFlags: DomainFlags = .nestParent) throws {
        rig = try KernelRig(units: units ?? [VTdConfiguration(name: "dmar0")])
        (dev, ep) = try rig.add("vf", dev: 1, pasids: 64, prefer: .identity, ats: ats)
        parent = try rig.core.allocDomain(for: dev, flags: parentFlags)
        root = try guestPage()
    }

    /// A zeroed guest page the parent maps read-write at a new GPA.
    func guestPage() throws -> UInt64 {
        let hpa = try rig.machine.allocateBuffer()
        let gpa = nextGPA
        nextGPA += 0x1000
        try rig.core.map(parent, iova: gpa, physical: hpa, size: 4096, permissions: .readWrite)
        hpaOf[gpa] = hpa
        return gpa
    }

    func hpa(_ gpa: UInt64) -> UInt64 { hpaOf[gpa & ~0xFFF]! | (gpa & 0xFFF) }

    /// Host-physical address of the guest's leaf slot for `gva` (tables made on the way).
    func leafSlot(_ gva: UInt64) throws -> UInt64 {
        var table = root
        for level in stride(from: 4, to: 1, by: -1) {
            let slot = hpa(table) + PageTableGeometry.index(gva, level: level) * 8
            var raw = try rig.platform.memory.load64(slot)
            if raw & 1 == 0 {
                raw = FirstStageFormat.table(address: try guestPage())
                try rig.platform.memory.store64(slot, raw)
            }
            table = raw & 0x000F_FFFF_FFFF_F000
        }
        return hpa(table) + PageTableGeometry.index(gva, level: 1) * 8
    }

    func guestMap(_ gva: UInt64, to gpa: UInt64) throws {
        try rig.platform.memory.store64(try leafSlot(gva), FirstStageFormat.leaf(address: gpa, permissions: [.read, .write, .user], level: 1))
    }

    func nested(flags: DomainFlags = [], s1Flags: UInt64 = 0, width: UInt32 = 48) throws -> IOMMUDomain {
        try rig.core.allocNestedDomain(for: dev, parent: parent, flags: flags, dataType: 1,
                                       data: VTdStage1Configuration(flags: s1Flags, tableAddress: root, addressWidth: width).bytes)
    }
}

@Suite("nested domains (IOMMU_HWPT_DATA_VTD_S1) in the VT-d driver")
struct NestedDomainTests {
    @Test("a nested domain's entry is PGTT=011 with the parent's second stage, the guest table's GPA and its own DID; the parent gets nesting tags")
    func nestedEntryAndTags() throws {
        let s = try NestedSetup()
        let n = try s.nested(flags: .pasid)
        let data = try s.guestPage()
        try s.guestMap(0x7654_3000, to: data)
        try s.rig.core.attach(n, to: s.dev)
        let p = try s.rig.core.allocGlobalPASID(for: s.dev)
        #expect(try s.rig.core.attachPASID(n, to: s.dev, pasid: p) == .fresh)
        let nd = try #require(n as? VTdNestedDomain)
        let did = try #require(nd.did(on: 0))
        let pd = try #require(s.parent as? VTdSecondStageDomain)
        #expect(pd.did(on: 0) == nil, "the parent itself is attached nowhere")
        for pasid in [0, p.rawValue] {
            let e = try pasidEntry(s.rig, s.dev, pasid: pasid)
            #expect(e.pgtt == .nested)
            #expect(e.secondStageTable == pd.pageTable.root)
            #expect(e.secondStageLevels == pd.levels)
            #expect(e.firstStageTable == s.root)
            #expect(e.fspm == 0)
            #expect(e.did == did)
            #expect(!e.supervisorRequests && !e.writeProtect && !e.extendedAccessedFlag && !e.secondStageAD)
        }
        let nesting = pd.tags.filter { $0.kind == .nestingIOTLB }
        #expect(nesting.count == 2 && nesting.allSatisfy { $0.did == did })
        #expect(Set(nesting.map(\.pasid)) == [0, p.rawValue])
        // DMA at the GVA lands on the host page the parent maps for the guest's GPA.
        #expect(s.rig.dmaWrite(s.ep, 0x7654_3000 + 0x10, value: 0x3C)?.fault == nil)
        #expect(try s.rig.platform.memory.load8(s.hpa(data) + 0x10) == 0x3C)
        #expect(s.rig.dmaWrite(s.ep, 0x7654_3000 + 0x80, value: 0x3D, pasid: p)?.fault == nil)
        #expect(try s.rig.platform.memory.load8(s.hpa(data) + 0x80) == 0x3D)
        #expect(s.rig.dmaWrite(s.ep, 0x7655_3000)?.fault != nil, "an address the guest does not map faults")
        // Detaching removes the nesting tags again.
        try s.rig.core.detachPASID(n, from: s.dev, pasid: p)
        try s.rig.core.detach(n, from: try #require(s.dev.group))
        #expect(pd.tags.isEmpty)
        #expect(s.rig.violations.isEmpty, "\(s.rig.violations)")
    }

    @Test("stage-1 flags and widths are checked at attach: unknown flags, EAFE without ECAP.EAFS and widths other than 48/57 are EINVAL")
    func attachChecksStage1Configuration() throws {
        let s = try NestedSetup()
        let u = s.rig.driver.units[0]
        let didsBefore = u.domainIDs.allocated
        for (flags, width) in [(UInt64(8), UInt32(48)), (2, 48), (1 << 40, 48), (0, 39), (0, 0), (0, 64), (1, 56)] {
            let n = try s.nested(s1Flags: flags, width: width)
            #expect(kernelErrno { try s.rig.core.attach(n, to: s.dev) } == 22, "flags \(flags) width \(width)")
            #expect(s.dev.attachedDomain?.type == .identity)
            #expect(u.domainIDs.allocated == didsBefore, "a refused attach takes no DID")
            try s.rig.core.freeDomain(n)
        }
        // SRE (the unit has SRS) is taken; WPE only counts with SRE; 57 bits use 5 levels.
        for (flags, width, sre, wpe, fspm) in [(UInt64(1), UInt32(48), true, false, UInt8(0)), (4, 48, false, false, 0),
                                              (5, 48, true, true, 0), (0, 57, false, false, 1)] {
            let n = try s.nested(s1Flags: flags, width: width)
            try s.rig.core.attach(n, to: s.dev)
            let e = try pasidEntry(s.rig, s.dev)
            #expect(e.pgtt == .nested && e.supervisorRequests == sre && e.writeProtect == wpe && e.fspm == fspm, "flags \(flags)")
            try s.rig.core.detach(n, from: try #require(s.dev.group))
            try s.rig.core.freeDomain(n)
        }
        #expect(s.rig.violations.isEmpty, "\(s.rig.violations)")
    }

    @Test("a 57-bit stage 1 on a unit without FS5LP is EINVAL at attach")
    func fiftySevenBitsNeedFS5LP() throws {
        let noFS5 = VTdCapability(raw: VTdCapability.make().raw & ~(UInt64(1) << 60))
        let s = try NestedSetup(units: [VTdConfiguration(name: "dmar0", capability: noFS5)])
        let n = try s.nested(width: 57)
        #expect(kernelErrno { try s.rig.core.attach(n, to: s.dev) } == 22)
        let ok = try s.nested(width: 48)
        try s.rig.core.attach(ok, to: s.dev)
        #expect(try pasidEntry(s.rig, s.dev).pgtt == .nested)
    }

    @Test("nested allocation: flags beyond PASID and data types other than VTD_S1 are EOPNOTSUPP; a parent that is no second-stage nest parent, or data under 24 bytes, EINVAL")
    func allocationErrors() throws {
        let s = try NestedSetup()
        let data = VTdStage1Configuration(tableAddress: s.root).bytes
        func alloc(_ parent: IOMMUDomain, flags: DomainFlags = [], type: UInt32 = 1, _ bytes: [UInt8]) -> Int32? {
            kernelErrno { _ = try s.rig.core.allocNestedDomain(for: s.dev, parent: parent, flags: flags, dataType: type, data: bytes) }
        }
        let domains = s.rig.core.liveDomains.count
        #expect(alloc(s.parent, flags: .nestParent, data) == 95)
        #expect(alloc(s.parent, flags: .dirtyTracking, data) == 95)
        #expect(alloc(s.parent, type: 2, data) == 95)
        #expect(alloc(s.parent, type: 0, data) == 95)
        let firstStage = try s.rig.core.allocDomain(for: s.dev)
        #expect(firstStage is VTdFirstStageDomain)
        #expect(alloc(firstStage, data) == 22)
        let plainSecond = try s.rig.core.allocDomain(for: s.dev, flags: .dirtyTracking)
        #expect(plainSecond is VTdSecondStageDomain)
        #expect(alloc(plainSecond, data) == 22)
        #expect(alloc(s.parent, Array(data.prefix(16))) == 22)
        #expect(alloc(s.parent, []) == 22)
        #expect(s.rig.core.liveDomains.count == domains + 2, "only the two paging domains were made")
        #expect(alloc(s.parent, flags: .pasid, data) == nil)
    }

    @Test("a parent unmap invalidates the nested translation with a type-2 descriptor under the nested DID; with parentFlushSkipsNested it stays cached")
    func parentUnmapReachesNestedDID() throws {
        for bug in [false, true] {
            let s = try NestedSetup()
            if bug { s.rig.core.injectedBugs = .parentFlushSkipsNested }
            let n = try s.nested()
            let data = try s.guestPage()
            try s.guestMap(0x4000, to: data)
            try s.rig.core.attach(n, to: s.dev)
            let did = try #require((n as? VTdDMARDomain)?.did(on: 0))
            #expect(s.rig.dmaWrite(s.ep, 0x4000)?.fault == nil)
            #expect(s.rig.machine.units[0].cachedEntries(taggedWith: did).iotlb >= 1)
            let log = QueueLog(s.rig)
            try s.rig.core.unmap(s.parent, iova: data, size: 4096)
            let write = s.rig.dmaWrite(s.ep, 0x4000)
            if bug {
                #expect(!log.iotlbDIDs.contains(did.rawValue), "\(log.descriptors)")
                #expect(write?.fault == nil, "the stale nested translation is still used")
                #expect(s.rig.violations.contains { $0.invariant == "stale-translation" }, "\(s.rig.violations)")
            } else {
                #expect(log.iotlbDIDs == [did.rawValue], "\(log.descriptors)")
                #expect(write?.fault != nil)
                #expect(s.rig.violations.isEmpty, "\(s.rig.violations)")
            }
        }
    }

    @Test("a parent unmap sends a device-TLB invalidation to an ATS device attached nested")
    func parentUnmapFlushesDeviceTLBOfNestedATSDevice() throws {
        let s = try NestedSetup(ats: true)
        let n = try s.nested()
        let data = try s.guestPage()
        try s.guestMap(0x4000, to: data)
        try s.rig.core.attach(n, to: s.dev)
        let pd = try #require(s.parent as? VTdSecondStageDomain)
        #expect(pd.tags.contains { $0.kind == .nestingDeviceTLB })
        #expect(s.rig.dmaWrite(s.ep, 0x4000)?.fault == nil)
        let log = QueueLog(s.rig)
        try s.rig.core.unmap(s.parent, iova: data, size: 4096)
        let devTLB = log.descriptors.filter {
            if case let .deviceTLB(source, _, _, _, _) = $0 { return source == s.dev.requesterID } else { return false }
        }
        #expect(devTLB.count == 1, "\(log.descriptors)")
        #expect(s.rig.violations.isEmpty, "\(s.rig.violations)")
    }

    @Test("dirty tracking on a nest parent sets and clears SSADE in its nested children's PASID entries")
    func dirtyTrackingReachesNestedEntries() throws {
        let s = try NestedSetup(parentFlags: [.nestParent, .dirtyTracking])
        let n = try s.nested()
        try s.rig.core.attach(n, to: s.dev)
        #expect(try !pasidEntry(s.rig, s.dev).secondStageAD)
        try s.rig.core.setDirtyTracking(s.parent, true)
        var e = try pasidEntry(s.rig, s.dev)
        #expect(e.pgtt == .nested && e.secondStageAD)
        try s.rig.core.setDirtyTracking(s.parent, false)
        e = try pasidEntry(s.rig, s.dev)
        #expect(e.pgtt == .nested && !e.secondStageAD)
        // A child attached while tracking is on starts with SSADE.
        try s.rig.core.setDirtyTracking(s.parent, true)
        try s.rig.core.detach(n, from: try #require(s.dev.group))
        try s.rig.core.attach(n, to: s.dev)
        #expect(try pasidEntry(s.rig, s.dev).secondStageAD)
        #expect(s.rig.violations.isEmpty, "\(s.rig.violations)")
    }
}
