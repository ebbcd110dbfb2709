import Testing
import Platform
import Kernel
import IOMMUFD
@testable import Simulation

/// IOMMU_TEST_CMD fed random ops and fields: nothing traps, and closing the context gives
/// back every domain, frame, pin and device the calls made.
@Suite struct SelftestRobustnessTests {
    @Test func twentyThousandRandomTestCommandsNeverTrapAndCloseLeavesNothingBehind() throws {
        let t = try SelftestRig(memory: 128 << 20)
        let start = SelftestRig.start
        let ioas = try t.ioas(), ioas2 = try t.ioas()
        let ram = try t.rig.touchedRAM(64 << 10)
        let scratch = try t.rig.touchedRAM(64 << 10)
        _ = [UInt8](repeating: 0xA5, count: 64 << 10).withUnsafeBytes { t.process.copyOut(to: scratch, from: $0) }
        #expect(t.rig.map(ioas, va: ram, length: 64 << 10, iova: start).rc == 0)
        #expect(t.rig.map(ioas2, va: ram, length: 32 << 10, iova: start + (1 << 20)).rc == 0)
        let hole = ram + (64 << 10) // the guard gap after `ram`
        try #require(t.process.vma(containing: hole) == nil && t.process.vma(containing: 0xdead_0000_0000) == nil)

        let frames = t.rig.machine.platform.frames
        let domainsBefore = t.core.liveDomains.count
        let framesBefore = frames.inUse
        let devicesBefore = t.core.devices.count
        let pinnedBefore = t.process.pinnedPages

        let pointers: [UInt64] = [0, ram, ram + 2048, ram + 4096, ram + (60 << 10), scratch, scratch + 1, scratch + (32 << 10),
                                  hole, hole + 4096, UInt64.max & ~0xFFF, 0xdead_0000_0000]
        let lengths: [UInt64] = [0, 1, 12, 2048, 4096, 8192, 64 << 10, 1 << 20, (16 << 20) + 4096, 1 << 33,
                                 UInt64.max & ~0x7FF, UInt64.max]
        let iovas: [UInt64] = [0, 1, start, start + 2048, start + 4096, start + (60 << 10), start + (1 << 20),
                               start + (64 << 10), UInt64.max & ~0xFFF]
        let smalls: [UInt32] = [0, 1, 2, 3, 4, 5, 7, 8, 12, 100, 1023, 1024, 1 << 16, 0xffff_ffff]
        var rng = SeededRNG(seed: 0x5e1f_7e57)
        func pick<T>(_ a: [T]) -> T { a[Int(rng.next(below: UInt64(a.count)))] }
        func randomID() -> UInt32 {
            switch rng.next(below: 8) {
            case 0..<4: return UInt32(rng.next(below: 16))
            case 4, 5: return UInt32(rng.next(below: 400))
            case 6: return 1000 + UInt32(rng.next(below: 12))
            default: return pick([999, 0xffff_ffff])
            }
        }

        var outcomes: [Int32: Int] = [:]
        var successes = Set<UInt32>()
        for _ in 0..<20_000 {
            var s = StructBytes(size: 72)
            let op = UInt32(rng.next(below: 26))
            s.set32(4, op)
            s.set32(8, randomID())
            s.set32(12, UInt32(rng.next(below: 2)))
            for o in stride(from: 16, to: 64, by: 8) {
                switch rng.next(below: 5) {
                case 0: s.set64(o, pick(pointers))
                case 1: s.set64(o, pick(lengths))
                case 2: s.set64(o, pick(iovas))
                case 3: s.set32(o, randomID()); s.set32(o + 4, pick(smalls))
                default: s.set32(o, pick(smalls)); s.set32(o + 4, randomID())
                }
            }
            let rc = t.ctx.ioctl(SelftestRig.testCmd, &s.bytes)
            #expect(rc <= 0)
            outcomes[rc, default: 0] += 1
            if rc == 0 { successes.insert(op) }
        }
        IOMMUFDContext.temporaryMemoryLimit = 65536
        // The run reached deep paths, not only the framing.
        #expect(outcomes[-Errno.EOPNOTSUPP, default: 0] > 0)
        #expect(successes.isSuperset(of: [IOMMUTestOp.mockDomain.rawValue, IOMMUTestOp.checkRefs.rawValue,
                                          IOMMUTestOp.createAccess.rawValue, IOMMUTestOp.pasidDetach.rawValue]),
                "ops that succeeded: \(successes.sorted())")

        t.ctx.close()
        #expect(t.core.liveDomains.count == domainsBefore)
        #expect(frames.inUse == framesBefore)
        #expect(t.core.devices.count == devicesBefore)
        #expect(t.process.pinnedPages == 0 && pinnedBefore == 0)
        #expect(t.mock.warnings.isEmpty, "\(t.mock.warnings.prefix(5))")
    }
}
