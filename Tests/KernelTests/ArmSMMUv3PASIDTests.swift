import Testing
import Platform
import Formats
import Hardware
@testable import Kernel

/// SMMUv3 SubstreamIDs through the core: CDs per SSID in linear and 2-level CD tables, the
/// STE's S1DSS per RID domain, replace and detach of one PASID, allocation failures.
@Suite("SMMUv3 driver: PASIDs (SubstreamIDs)")
struct ArmSMMUv3PASIDTests {
    static func add(_ rig: ArmSMMUv3Rig, _ name: String, dev: UInt8, pasids: UInt32) throws -> Device {
        try rig.core.probe([DeviceDescription(name: name, requesterID: ArmSMMUv3Rig.rid(0, dev), maxPASIDs: pasids)],
                           driver: rig.driver)[0]
    }

    static func owned(_ rig: ArmSMMUv3Rig, _ device: Device) throws -> Group {
        let g = try #require(device.group)
        if !g.dmaOwned { try rig.core.claimDMAOwner(g) }
        return g
    }

    static func physical(_ rig: ArmSMMUv3Rig, _ device: Device, ssid: UInt32?, _ address: UInt64) -> UInt64? {
        if case .translated(let pa, _, _) = rig.unit.translate(streamID: rig.sid(device), substreamID: ssid, address: address, access: .read) {
            return pa
        }
        return nil
    }

    static func fault(_ rig: ArmSMMUv3Rig, _ device: Device, ssid: UInt32?, _ address: UInt64) -> SMMUEventID? {
        if case .terminated(let e) = rig.unit.translate(streamID: rig.sid(device), substreamID: ssid, address: address, access: .read) {
            return e
        }
        return nil
    }

    static func master(_ device: Device) throws -> ArmSMMUMaster { try #require(device.driverData as? ArmSMMUMaster) }

    static func ste(_ device: Device) throws -> StreamTableEntry { StreamTableEntry(words: try master(device).ste) }

    @Test("the PASID limit is min(SSIDSIZE, the device's own bits); none without a capability or SSIDs")
    func probeLimit() throws {
        var f = SMMUv3Features()
        f.ssidBits = 12
        let rig = try ArmSMMUv3Rig(features: f)
        #expect(try Self.add(rig, "a", dev: 1, pasids: 1 << 20).maxPASIDs == 1 << 12)
        #expect(try Self.add(rig, "b", dev: 2, pasids: 256).maxPASIDs == 256)
        #expect(try Self.add(rig, "c", dev: 3, pasids: 0).maxPASIDs == 0)
        f.ssidBits = 0
        let rig0 = try ArmSMMUv3Rig(features: f)
        #expect(try Self.add(rig0, "a", dev: 1, pasids: 1 << 20).maxPASIDs == 0)
    }

    @Test("two S1 domains on two PASIDs translate (StreamID, SSID) to each domain's PA; replace one, the other is untouched; detach gives C_BAD_CD while the RID works",
          arguments: [UInt32(256), 1 << 20])
    func twoPASIDs(pasids: UInt32) throws {
        let rig = try ArmSMMUv3Rig()
        let a = try Self.add(rig, "a", dev: 1, pasids: pasids)
        let g = try Self.owned(rig, a)
        let rid = try rig.core.allocDomain(for: a)
        try rig.core.attach(rid, to: g)
        let d1 = try rig.core.allocDomain(for: a, flags: .pasid), d2 = try rig.core.allocDomain(for: a, flags: .pasid)
        let d3 = try rig.core.allocDomain(for: a, flags: .pasid)
        let p0 = try rig.buffer(), p1 = try rig.buffer(), p2 = try rig.buffer(), p3 = try rig.buffer()
        try rig.core.map(rid, iova: 0x1000, physical: p0, size: 4096, permissions: .readWrite)
        try rig.core.map(d1, iova: 0x1000, physical: p1, size: 4096, permissions: .readWrite)
        try rig.core.map(d2, iova: 0x1000, physical: p2, size: 4096, permissions: .readWrite)
        try rig.core.map(d3, iova: 0x1000, physical: p3, size: 4096, permissions: .readWrite)
        try rig.core.attachPASID(d1, to: a, pasid: PASID(truncating: 1))
        try rig.core.attachPASID(d2, to: a, pasid: PASID(truncating: 7))
        #expect(Self.physical(rig, a, ssid: 1, 0x1010) == p1 + 0x10)
        #expect(Self.physical(rig, a, ssid: 7, 0x1010) == p2 + 0x10)
        #expect(Self.physical(rig, a, ssid: nil, 0x1010) == p0 + 0x10)
        #expect(Self.fault(rig, a, ssid: 0, 0x1000) == .cBadSubstreamID, "S1DSS = SSID0 terminates SSID 0")
        #expect(Self.fault(rig, a, ssid: 3, 0x1000) == .cBadCD)
        let ste = try Self.ste(a)
        #expect(ste.s1DSS == .ssid0 && Int(ste.s1CDMax) == 32 - pasids.leadingZeroBitCount - 1)
        #expect(ste.s1Fmt == (pasids > 1024 ? .twoLevel64K : .linear))
        // Replace PASID 1's domain: a CD rewrite; PASID 7 and the RID keep theirs.
        let ste0 = try Self.master(a).ste, cd7 = try Self.master(a).cd(7)
        try rig.core.replacePASID(d3, on: a, pasid: PASID(truncating: 1))
        #expect(Self.physical(rig, a, ssid: 1, 0x1000) == p3)
        #expect(Self.physical(rig, a, ssid: 7, 0x1000) == p2)
        #expect(Self.physical(rig, a, ssid: nil, 0x1000) == p0)
        #expect(try Self.master(a).ste == ste0 && Self.master(a).cd(7) == cd7)
        // Detach PASID 7: C_BAD_CD for SSID 7; PASID 1 and the RID still translate.
        try rig.core.detachPASID(d2, from: a, pasid: PASID(truncating: 7))
        #expect(Self.fault(rig, a, ssid: 7, 0x1000) == .cBadCD)
        #expect(Self.physical(rig, a, ssid: 1, 0x1000) == p3)
        #expect(Self.physical(rig, a, ssid: nil, 0x1000) == p0)
        #expect(try Self.master(a).pasidsInUse == 1)
    }

    @Test("a domain's ASID tags every CD using it: one unmap's TLBI reaches the RID and a PASID")
    func sharedASID() throws {
        let rig = try ArmSMMUv3Rig()
        let a = try Self.add(rig, "a", dev: 1, pasids: 256)
        let g = try Self.owned(rig, a)
        let d = try rig.core.allocDomain(for: a, flags: .pasid)
        try rig.core.attach(d, to: g)
        try rig.core.attachPASID(d, to: a, pasid: PASID(truncating: 5))
        let pa = try rig.buffer()
        try rig.core.map(d, iova: 0x4000, physical: pa, size: 4096, permissions: .readWrite)
        #expect(Self.physical(rig, a, ssid: nil, 0x4000) == pa && Self.physical(rig, a, ssid: 5, 0x4000) == pa)
        let m = try Self.master(a)
        #expect(ContextDescriptor(words: m.cd(0)).asid == ContextDescriptor(words: m.cd(5)).asid)
        #expect(try rig.core.unmap(d, iova: 0x4000, size: 4096) == 4096)
        #expect(Self.fault(rig, a, ssid: nil, 0x4000) == .fTranslation)
        #expect(Self.fault(rig, a, ssid: 5, 0x4000) == .fTranslation)
    }

    @Test("a 2-level CD table: the leaf of an SSID beyond the first 1024 CDs is made on demand with its L1CD synced")
    func twoLevel() throws {
        let rig = try ArmSMMUv3Rig()
        let a = try Self.add(rig, "a", dev: 1, pasids: 1 << 20)
        _ = try Self.owned(rig, a)
        let d = try rig.core.allocDomain(for: a, flags: .pasid)
        let pa = try rig.buffer()
        try rig.core.map(d, iova: 0x2000, physical: pa, size: 4096, permissions: .readWrite)
        let cfgi = rig.commands(.cfgiCD)
        try rig.core.attachPASID(d, to: a, pasid: PASID(truncating: 5000))
        let m = try Self.master(a)
        #expect(m.cdFormat == .twoLevel64K && m.s1CDMax == 20)
        #expect(m.cdLeaves.keys.sorted() == [UInt32(0), 4], "leaf 0 holds the default domain's CD 0")
        #expect(rig.commands(.cfgiCD) > cfgi + 1, "the L1CD sync (leaf = false) and the CD's")
        let l1 = try rig.platform.memory.load64(m.cdTable + UInt64(5000 / 1024) * 8)
        #expect(L1ContextDescriptor(raw: l1).valid && L1ContextDescriptor(raw: l1).l2Pointer == m.cdLeaves[5000 / 1024])
        #expect(Self.physical(rig, a, ssid: 5000, 0x2000) == pa)
        #expect(Self.fault(rig, a, ssid: 2100, 0x2000) == .cBadSubstreamID, "no leaf for SSIDs 2048-3071: L1CD invalid")
        #expect(Self.fault(rig, a, ssid: 5, 0x2000) == .cBadCD)
        try rig.core.attachPASID(d, to: a, pasid: PASID(truncating: 5001))
        #expect(m.cdLeaves.count == 2)
        #expect(Self.physical(rig, a, ssid: 5001, 0x2000) == pa)
    }

    @Test("S1DSS: bypass for an identity RID, terminate for a blocked one, SSID0 for S1; the last PASID's removal restores the plain STE")
    func s1dss() throws {
        let rig = try ArmSMMUv3Rig()
        let a = try Self.add(rig, "a", dev: 1, pasids: 256)
        let g = try Self.owned(rig, a)
        let d = try rig.core.allocDomain(for: a, flags: .pasid)
        let pa = try rig.buffer()
        try rig.core.map(d, iova: 0x3000, physical: pa, size: 4096, permissions: .readWrite)
        let identity = try #require(rig.driver.identityDomain)
        try rig.core.replace(g, with: identity)
        try rig.core.attachPASID(d, to: a, pasid: PASID(truncating: 2))
        #expect(try Self.ste(a).s1DSS == .bypass && Self.ste(a).config == .s1Trans)
        #expect(Self.physical(rig, a, ssid: nil, 0x7000) == 0x7000)
        #expect(Self.physical(rig, a, ssid: 2, 0x3000) == pa)
        try rig.core.replace(g, with: rig.driver.blockedDomain)
        #expect(try Self.ste(a).s1DSS == .terminate)
        #expect(Self.fault(rig, a, ssid: nil, 0x3000) == .fStreamDisabled)
        #expect(Self.physical(rig, a, ssid: 2, 0x3000) == pa)
        let s1 = try rig.core.allocDomain(for: a)
        try rig.core.replace(g, with: s1)
        #expect(try Self.ste(a).s1DSS == .ssid0)
        #expect(Self.physical(rig, a, ssid: 2, 0x3000) == pa)
        // Back to identity, then the last PASID goes: a plain bypass STE.
        try rig.core.replace(g, with: identity)
        try rig.core.detachPASID(d, from: a, pasid: PASID(truncating: 2))
        #expect(try Self.ste(a).config == .bypass)
        #expect(Self.fault(rig, a, ssid: 2, 0x3000) == .cBadSubstreamID)
        #expect(Self.physical(rig, a, ssid: nil, 0x7000) == 0x7000)
        // Blocked RID, one PASID, removed: a plain abort STE.
        try rig.core.replace(g, with: rig.driver.blockedDomain)
        try rig.core.attachPASID(d, to: a, pasid: PASID(truncating: 2))
        try rig.core.detachPASID(d, from: a, pasid: PASID(truncating: 2))
        #expect(try Self.ste(a).config == .abort)
    }

    @Test("stage 2: a PASID on an S2 domain or with an S2 RID is EINVAL")
    func stage2Refuses() throws {
        let rig = try ArmSMMUv3Rig(preferred: .s2)
        let a = try Self.add(rig, "a", dev: 1, pasids: 256)
        let g = try Self.owned(rig, a)
        let s2 = try rig.core.allocDomain(for: a, flags: .pasid)
        #expect(throws: IOMMUError.self) { try rig.core.attachPASID(s2, to: a, pasid: PASID(truncating: 1)) }
        try rig.core.attach(s2, to: g)
        rig.driver.preferredStage = nil
        let s1 = try rig.core.allocDomain(for: a, flags: .pasid)
        #expect(throws: IOMMUError.self) { try rig.core.attachPASID(s1, to: a, pasid: PASID(truncating: 1)) }
        #expect(try Self.ste(a).config == .s2Trans)
    }

    @Test("fail_nth over a PASID attach (CD table, leaf): each failure leaves the STE and the frames as they were", arguments: [UInt32(256), 1 << 20])
    func allocationFailures(pasids: UInt32) throws {
        // A stage 2 default domain, then identity: the CD table is made by the PASID attach.
        let rig = try ArmSMMUv3Rig(preferred: .s2)
        let a = try Self.add(rig, "a", dev: 1, pasids: pasids)
        let g = try Self.owned(rig, a)
        try rig.core.replace(g, with: try #require(rig.driver.identityDomain))
        rig.driver.preferredStage = nil
        #expect(try Self.master(a).cdTable == 0)
        let d = try rig.core.allocDomain(for: a, flags: .pasid)
        var n = 1, failures = 0
        while n < 50 {
            let frames = rig.platform.frames.inUse
            let ste = try Self.master(a).ste
            rig.platform.faults.reset()
            rig.platform.faults.mode = .failNth(n)
            let ok = (try? rig.core.attachPASID(d, to: a, pasid: PASID(truncating: 3000 % pasids))) != nil
            rig.platform.faults.mode = .off
            if ok { break }
            failures += 1
            #expect(rig.platform.frames.inUse == frames, "fail_nth \(n)")
            #expect(try Self.master(a).ste == ste && Self.master(a).cdTable == 0, "fail_nth \(n)")
            n += 1
        }
        #expect(failures == (pasids > 1024 ? 2 : 1), "the CD table, and the leaf for a 2-level one")
        #expect(Self.physical(rig, a, ssid: nil, 0x5000) == 0x5000)
        try rig.core.detachPASID(d, from: a, pasid: PASID(truncating: 3000 % pasids))
        #expect(try Self.ste(a).config == .bypass)
    }
}
