import Testing
import Platform
import Formats
import Hardware
@testable import Kernel

/// Dirty tracking on the SMMUv3 driver as Linux 6.17: stage 1 with HTTU (CD HA|HD, DBM
/// leaves), `arm_smmu_set_dirty_tracking` a no-op, `arm_lpae_read_and_clear_dirty`.
@Suite("Arm SMMUv3 dirty tracking")
struct ArmSMMUv3DirtyTests {
    /// A dirty-tracking domain attached to a fresh device `a`, with tracking on and every
    /// leaf cleaned (what iommufd does when tracking starts: `iopt_clear_dirty_data`).
    static func tracked(_ rig: ArmSMMUv3Rig) throws -> (Device, IOMMUDomain) {
        let a = try rig.add("a", dev: 1)
        let g = try #require(a.group)
        try rig.core.claimDMAOwner(g)
        let d = try rig.core.allocDomain(for: a, flags: .dirtyTracking)
        try rig.core.attach(d, to: g)
        try rig.core.setDirtyTracking(d, true)
        return (a, d)
    }

    static func read(_ rig: ArmSMMUv3Rig, _ d: IOMMUDomain, clear: Bool = true) throws -> [UInt64] {
        var out: [UInt64] = []
        try rig.core.readAndClearDirty(d, iova: 0, size: 1 << 40, clear: clear) { start, length in out.append(start); out.append(length) }
        return out
    }

    @Test("DIRTY_TRACKING makes a stage 1 domain whose CD has HA and HD; a plain domain's CD has neither")
    func stageAndCD() throws {
        let rig = try ArmSMMUv3Rig(preferred: .s2)
        let (a, d) = try Self.tracked(rig)
        #expect(rig.driver.context(of: d)?.stage == .s1)
        let cd = ContextDescriptor(words: try ArmSMMUv3Rig.master(a).cd0)
        #expect(cd.ha && cd.hd && cd.valid)
        let b = try rig.add("b", dev: 2)
        let plain = try rig.ownedDomain(for: b)
        _ = plain
        #expect(rig.driver.context(of: plain)?.stage == .s2)
        let rig1 = try ArmSMMUv3Rig()
        let c = try rig1.add("c", dev: 3)
        _ = try rig1.ownedDomain(for: c)
        let cd1 = ContextDescriptor(words: try ArmSMMUv3Rig.master(c).cd0)
        #expect(!cd1.ha && !cd1.hd && cd1.valid)
    }

    @Test("NEST_PARENT | DIRTY_TRACKING is EOPNOTSUPP; so is DIRTY_TRACKING without HTTU dirty state or stage 1")
    func refused() throws {
        let rig = try ArmSMMUv3Rig()
        let a = try rig.add("a", dev: 1)
        #expect(throws: IOMMUError.self) { try rig.core.allocDomain(for: a, flags: [.nestParent, .dirtyTracking]) }
        do { _ = try rig.core.allocDomain(for: a, flags: [.nestParent, .dirtyTracking]) } catch { #expect(error.errno == 95) }
        var f = SMMUv3Features(); f.httu = .accessFlag
        let r2 = try ArmSMMUv3Rig(features: f)
        let b = try r2.add("b", dev: 1)
        do { _ = try r2.core.allocDomain(for: b, flags: .dirtyTracking); Issue.record("allocated") } catch { #expect(error.errno == 95) }
        var g = SMMUv3Features(); g.stage1 = false
        let r3 = try ArmSMMUv3Rig(features: g)
        let c = try r3.add("c", dev: 1)
        do { _ = try r3.core.allocDomain(for: c, flags: .dirtyTracking); Issue.record("allocated") } catch { #expect(error.errno == 95) }
        // A domain without dirty ops refuses both operations.
        let plain = try rig.ownedDomain(for: a)
        #expect(throws: IOMMUError.self) { try rig.core.setDirtyTracking(plain, true) }
        #expect(throws: IOMMUError.self) { _ = try Self.read(rig, plain) }
    }

    @Test("device writes mark 4 KiB pages and a 2 MiB block dirty; a clearing read reports exactly them once")
    func writesReported() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, d) = try Self.tracked(rig)
        try rig.core.map(d, iova: 0x10000, physical: try rig.buffer(), size: 4096, permissions: .readWrite)
        try rig.core.map(d, iova: 0x11000, physical: try rig.buffer(), size: 4096, permissions: .readWrite)
        try rig.core.map(d, iova: 0x12000, physical: try rig.buffer(), size: 4096, permissions: .read)
        let block = try rig.platform.frames.allocateContiguous(512, .dmaBuffer, alignment: 512)
        try rig.core.map(d, iova: 0x40_0000, physical: block, size: 2 << 20, permissions: .readWrite)
        // Fresh writable leaves are writable-dirty (Linux `arm_lpae_prot_to_pte` with the HD
        // quirk); iommufd clears them when tracking starts.
        #expect(try Self.read(rig, d) == [0x10000, 4096, 0x11000, 4096, 0x40_0000, 2 << 20])
        #expect(try Self.read(rig, d) == [])
        // Reads never dirty; writes through the unit do.
        #expect(rig.physical(a, 0x10000) != nil && rig.physical(a, 0x12000) != nil && rig.physical(a, 0x40_1000) != nil)
        #expect(try Self.read(rig, d) == [])
        #expect(rig.physical(a, 0x11000, .write) != nil)
        #expect(rig.physical(a, 0x41_2345, .write) == block + 0x1_2345)
        #expect(rig.fault(a, 0x12000, .write) == .fPermission)
        #expect(try Self.read(rig, d) == [0x11000, 4096, 0x40_0000, 2 << 20])
        #expect(try Self.read(rig, d) == [])
    }

    @Test("after a clearing read and its IOTLB sync, a write through a cached translation is reported again")
    func rewriteAfterClear() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, d) = try Self.tracked(rig)
        try rig.core.map(d, iova: 0x10000, physical: try rig.buffer(), size: 4096, permissions: .readWrite)
        _ = try Self.read(rig, d)
        #expect(rig.physical(a, 0x10000, .write) != nil)
        #expect(rig.physical(a, 0x10000, .write) != nil)  // TLB hit, now writable-dirty
        let tlbi = rig.commands(.tlbiNHVA)
        #expect(try Self.read(rig, d) == [0x10000, 4096])
        #expect(rig.commands(.tlbiNHVA) > tlbi)
        #expect(rig.physical(a, 0x10000, .write) != nil)
        #expect(try Self.read(rig, d) == [0x10000, 4096])
    }

    @Test("without the IOTLB sync (injected bug) the second write is missed")
    func missedWithoutFlush() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, d) = try Self.tracked(rig)
        try rig.core.map(d, iova: 0x10000, physical: try rig.buffer(), size: 4096, permissions: .readWrite)
        _ = try Self.read(rig, d)
        #expect(rig.physical(a, 0x10000, .write) != nil)
        rig.core.injectedBugs.insert(.dirtyClearWithoutFlush)
        #expect(try Self.read(rig, d) == [0x10000, 4096])
        #expect(rig.physical(a, 0x10000, .write) != nil)
        #expect(try Self.read(rig, d) == [])
    }

    @Test("NO_CLEAR reports and keeps the state; set_dirty_tracking is a no-op either way")
    func noClear() throws {
        let rig = try ArmSMMUv3Rig()
        let (a, d) = try Self.tracked(rig)
        try rig.core.map(d, iova: 0x10000, physical: try rig.buffer(), size: 4096, permissions: .readWrite)
        _ = try Self.read(rig, d)
        #expect(rig.physical(a, 0x10000, .write) != nil)
        let tlbi = rig.commands(.tlbiNHVA)
        #expect(try Self.read(rig, d, clear: false) == [0x10000, 4096])
        #expect(try Self.read(rig, d, clear: false) == [0x10000, 4096])
        #expect(rig.commands(.tlbiNHVA) == tlbi)
        // Hardware tracking stays on: turning it "off" changes nothing (Linux returns 0).
        try rig.core.setDirtyTracking(d, false)
        #expect(try Self.read(rig, d) == [0x10000, 4096])
        #expect(rig.physical(a, 0x10000, .write) != nil)
        #expect(try Self.read(rig, d) == [0x10000, 4096])
    }
}

extension ArmSMMUv3DirtyTests {
    /// The leaf at `iova` of a stage 1 domain, read from its table.
    static func leaf(_ d: IOMMUDomain, _ iova: UInt64) throws -> UInt64 {
        let s1 = try #require(d as? ArmSMMUS1Domain)
        var table = s1.pageTable.root
        for level in stride(from: 4, through: 1, by: -1) {
            let raw = try s1.pageTable.memory.load64(table + PageTableGeometry.index(iova, level: level) * 8)
            let e = ArmStage1Format.decode(raw, level: level, addressMask: s1.pageTable.addressMask)
            if e.leaf { return raw }
            table = e.address
        }
        return 0
    }

    @Test("DBM is set on writable leaves only with dirty tracking (IO_PGTABLE_QUIRK_ARM_HD); never on read-only ones")
    func dbmOnlyWithTheQuirk() throws {
        let rig = try ArmSMMUv3Rig()
        let (_, d) = try Self.tracked(rig)
        try rig.core.map(d, iova: 0x10000, physical: try rig.buffer(), size: 4096, permissions: .readWrite)
        try rig.core.map(d, iova: 0x11000, physical: try rig.buffer(), size: 4096, permissions: .read)
        let w = try Self.leaf(d, 0x10000), r = try Self.leaf(d, 0x11000)
        #expect(w & ArmStage1Format.dbm != 0 && w & ArmStage1Format.apReadOnly == 0)   // writable-dirty
        #expect(r & ArmStage1Format.dbm == 0 && r & ArmStage1Format.apReadOnly != 0)
        let b = try rig.add("b", dev: 2)
        let plain = try rig.ownedDomain(for: b)
        try rig.core.map(plain, iova: 0x10000, physical: try rig.buffer(), size: 4096, permissions: .readWrite)
        let p = try Self.leaf(plain, 0x10000)
        #expect(p & ArmStage1Format.dbm == 0 && p & ArmStage1Format.apReadOnly == 0)
        #expect(rig.physical(b, 0x10000, .write) != nil)
    }
}
