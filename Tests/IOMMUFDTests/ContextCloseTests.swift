import Testing
import Formats
import Hardware
import Kernel
import IOMMUFD

/// Closing a context releases everything, whatever state it is in, and random ioctl bytes
/// never trap or leak (the user controls every field).
@Suite struct ContextCloseTests {
    /// What must be back to its starting value after close.
    struct Resources: Equatable {
        var frames: Int
        var domains: Int
        var pasids: Int
        var pins: Int
        var charged: UInt64
        var owned: Int
    }

    static func resources(_ rig: IOMMUFDRig) -> Resources {
        Resources(frames: rig.machine.platform.frames.inUse - rig.process.residentPages.count, domains: rig.core.liveDomains.count,
                  pasids: rig.core.pasids.allocated, pins: rig.process.pinnedPages, charged: rig.ctx.ledger.chargedPages,
                  owned: rig.core.groups.filter(\.dmaOwned).count)
    }

    @Test func closingAContextWithEverythingAliveReleasesEveryFrameDomainPinAndOwnership() throws {
        let rig = try IOMMUFDRig()
        let (a, _) = try rig.addDevice("fn0", dev: 1, group: "g")
        let (b, _) = try rig.addDevice("fn1", dev: 2, group: "g")
        let (c, _) = try rig.addDevice("vf", dev: 3, pasids: 1 << 8, ats: true, pri: true)
        let ram = try rig.touchedRAM(1 << 20)
        rig.machine.scheduler.runUntilIdle()
        let before = Self.resources(rig)
        let ia = try rig.ctx.bind(a), ib = try rig.ctx.bind(b), ic = try rig.ctx.bind(c)
        let x = try rig.ioasAlloc(), y = try rig.ioasAlloc()
        _ = rig.map(x, va: ram, length: 1 << 20)
        _ = rig.map(y, va: ram, length: 256 << 10)
        let fault = rig.run(.faultQueueAlloc).out.u32(8)
        try rig.ctx.attach(ia, to: x)
        try rig.ctx.attach(ib, to: x)
        let h = rig.hwptAlloc(dev: ic, pt: y, flags: UAPI.hwptAllocPASID, fault: fault).id
        try rig.ctx.attach(ic, to: h)
        try rig.ctx.attach(ic, to: h, pasid: PASID(truncating: 9))
        _ = rig.run(.ioasCopy) { s in s.set32(4, UAPI.mapReadable); s.set32(8, y); s.set32(12, x); s.set64(16, 64 << 10); s.set64(32, 0x1000) }
        let access = try rig.ctx.createAccess(ioasID: y, needsPinPages: true, onUnmap: nil)
        let firstIOVA = try #require((rig.ctx.object(y) as? IOAS)?.mappings.first?.iova)
        _ = try access.pinPages(iova: firstIOVA, length: 8192, write: false)
        #expect(Self.resources(rig) != before)
        rig.ctx.close()
        rig.machine.scheduler.runUntilIdle()
        #expect(rig.ctx.objects.isEmpty)
        #expect(Self.resources(rig) == before)
        #expect(rig.machine.oracle.violations.isEmpty)
    }

    @Test func randomIoctlsNeverTrapAndClosingAfterwardsLeavesNothing() throws {
        let rig = try IOMMUFDRig()
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let (pasidDev, _) = try rig.addDevice("accel", dev: 2, pasids: 1 << 8, ats: true, pri: true)
        let ram = try rig.touchedRAM(4 << 20)
        rig.machine.scheduler.runUntilIdle()
        let before = Self.resources(rig)
        let ids = [try rig.ctx.bind(dev), try rig.ctx.bind(pasidDev)]
        var rng = SplitMix(seed: 0x10f)
        let commands = IOMMUFDCommand.allCases
        var outcomes: [Int32: Int] = [:]
        for i in 0..<100_000 {
            var number: UInt32
            switch rng.next() % 16 {
            case 0: number = UInt32(truncatingIfNeeded: rng.next())
            case 1: number = 0x3b00 | UInt32(rng.next() % 256)
            default: number = commands[Int(rng.next() % UInt64(commands.count))].number
            }
            let command = IOMMUFDCommand(rawValue: UInt8(truncatingIfNeeded: number))
            let size = rng.next() % 8 == 0 ? Int(rng.next() % 80) : (command?.size ?? 16)
            var bytes = [UInt8](repeating: 0, count: max(size, 0))
            if size >= 4 { for k in 0..<4 { bytes[k] = UInt8(truncatingIfNeeded: size >> (8 * k)) } }
            // Fields: mostly small IDs and plausible values, sometimes anything.
            var o = 4
            while o + 4 <= bytes.count {
                let v: UInt64
                switch rng.next() % 8 {
                case 0: v = rng.next()
                case 1, 2: v = UInt64(ids[Int(rng.next() % 2)])
                case 3: v = rng.next() % 12
                case 4: v = ram + (rng.next() % 1024) * 4096
                case 5: v = (rng.next() % 64) << 12
                default: v = 0
                }
                for k in 0..<4 { bytes[o + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
                o += 4
            }
            // A quarter of the calls are plausible: the right command and size, fields from
            // live values, so that real work (maps that meet domains, copies, unmaps) happens.
            if rng.next() % 4 == 0 {
                let id = { UInt32(1 + rng.next() % 12) }
                var t: StructBytes
                switch rng.next() % 6 {
                case 0:
                    t = StructBytes(size: 40); number = IOMMUFDCommand.ioasMap.number
                    t.set32(4, UInt32(2 + rng.next() % 6)); t.set32(8, id()); t.set64(16, ram + (rng.next() % 512) << 12)
                    t.set64(24, (1 + rng.next() % 64) << 12); t.set64(32, (rng.next() % 1024) << 12)
                case 1:
                    t = StructBytes(size: 24); number = IOMMUFDCommand.ioasUnmap.number
                    t.set32(4, id()); t.set64(8, rng.next() % 2 == 0 ? 0 : (rng.next() % 1024) << 12)
                    t.set64(16, rng.next() % 2 == 0 ? .max : (1 + rng.next() % 64) << 12)
                case 2:
                    t = StructBytes(size: 40); number = IOMMUFDCommand.ioasCopy.number
                    t.set32(4, UInt32(2 + rng.next() % 6)); t.set32(8, id()); t.set32(12, id())
                    t.set64(16, (1 + rng.next() % 16) << 12); t.set64(24, (rng.next() % 1024) << 12); t.set64(32, (rng.next() % 1024) << 12)
                case 3:
                    t = StructBytes(size: 48); number = IOMMUFDCommand.hwptAlloc.number
                    t.set32(4, UInt32(rng.next() % 16)); t.set32(8, ids[Int(rng.next() % 2)]); t.set32(12, id()); t.set32(40, id())
                case 4:
                    t = StructBytes(size: 12); number = IOMMUFDCommand.ioasAlloc.number
                default:
                    t = StructBytes(size: 8); number = IOMMUFDCommand.destroy.number
                    t.set32(4, id())
                }
                bytes = t.bytes
            }
            // What VFIO does between ioctls: attach, replace and detach the devices to random
            // IDs (IOASes, HWPTs, anything), so maps meet domains and pins happen.
            switch rng.next() % 400 {
            case 0: _ = try? rig.ctx.attach(ids[Int(rng.next() % 2)], to: UInt32(rng.next() % 16))
            case 1: _ = try? rig.ctx.replace(ids[Int(rng.next() % 2)], with: UInt32(rng.next() % 16))
            case 2: try? rig.ctx.detach(ids[Int(rng.next() % 2)])
            case 3: _ = try? rig.ctx.attach(ids[1], to: UInt32(rng.next() % 16), pasid: PASID(truncating: UInt32(rng.next() % 8)))
            case 4: _ = rig.ctx.ioctl(UInt32(0x3b64 + rng.next() % 16), value: rng.next() % 12)
            default: break
            }
            let rc = rig.ctx.ioctl(number, &bytes)
            outcomes[rc, default: 0] += 1
        }
        #expect(outcomes[0, default: 0] > 100) // some calls did something
        #expect(rig.ctx.ledger.peakPages > 0, "some mappings met a domain and were pinned")
        #expect(outcomes.keys.count > 5)
        rig.ctx.close()
        rig.machine.scheduler.runUntilIdle()
        #expect(rig.ctx.objects.isEmpty)
        #expect(Self.resources(rig) == before)
        #expect(rig.machine.oracle.violations.isEmpty)
    }
}

/// A small seeded generator for the random-ioctl test.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
