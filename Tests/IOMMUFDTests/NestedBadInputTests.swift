import Testing
import Platform
import Formats
import Hardware
@testable import Kernel
import IOMMUFD
@testable import Simulation

/// Random bytes where the guest or the VMM controls them: invalidation arrays, the
/// `iommu_hwpt_vtd_s1` of a nested allocation, and the guest's page tables under DMA.
/// Every answer is 0 or an errno, nothing traps, the oracle finds nothing, and closing the
/// context gives every frame, domain and DID back.
@Suite("random guest and VMM input on nested HWPTs")
struct NestedBadInputTests {
    struct Resources: Equatable {
        var frames: Int
        var domains: Int
        var dids: Int
        var pins: Int
    }

    static func resources(_ rig: IOMMUFDRig) -> Resources {
        Resources(frames: rig.machine.platform.frames.inUse - rig.process.residentPages.count, domains: rig.core.liveDomains.count,
                  dids: rig.machine.vtdDriver?.units.first?.domainIDs.allocated ?? 0, pins: rig.process.pinnedPages)
    }

    static func randomBytes(_ rng: inout SeededRNG, _ count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    }

    static func closeAndCheck(_ v: NestedVMM, _ before: Resources?) throws {
        let before = try #require(before)
        v.rig.ctx.close()
        v.rig.machine.scheduler.runUntilIdle()
        #expect(v.rig.ctx.objects.isEmpty)
        #expect(Self.resources(v.rig) == before)
    }

    @Test("random HWPT_INVALIDATE arrays get 0 or an errno, entry_num never above the request, and the guest's mapping keeps working")
    func randomInvalidationArrays() throws {
        var before: Resources?
        let v = try NestedVMM { before = Self.resources($0) }
        try v.guest.map(gva: 0x5000, gpa: NestedVMM.dataGPA, writable: true)
        let n = try v.attachedNested()
        var rng = SeededRNG(seed: 0x1_5EED)
        let allowed: Set<Int32> = [Errno.EINVAL, Errno.EOPNOTSUPP, Errno.E2BIG, Errno.EFAULT]
        var outcomes: [Int32: Int] = [:]
        for i in 0..<400 {
            let lengths: [UInt32] = [0, 8, 16, 23, 24, 24, 24, 25, 32, 32, 48, 64]
            let entryLength = rng.chance(0.1) ? UInt32(rng.next(below: 100)) : lengths[Int(rng.next(below: UInt64(lengths.count)))]
            let count = UInt32(rng.next(below: 6))
            var bytes = Self.randomBytes(&rng, 512)
            if rng.chance(0.6) {
                // Plausible entries: aligned addresses, few pages, LEAF or nothing, zero words.
                var s = StructBytes(bytes: bytes)
                for e in 0..<Int(count) where Int(entryLength) * e + 24 <= bytes.count && entryLength >= 24 {
                    let o = Int(entryLength) * e
                    s.set64(o, rng.next(below: 64) << 12)
                    s.set64(o + 8, rng.chance(0.1) ? .max : rng.next(below: 8))
                    s.set32(o + 16, UInt32(rng.next(below: 2)))
                    s.set32(o + 20, 0)
                    for k in (o + 24)..<min(bytes.count, o + Int(entryLength)) where rng.chance(0.9) { s.set8(k, 0) }
                }
                bytes = s.bytes
            }
            v.write(v.scratch, bytes)
            let uptr: UInt64
            switch rng.next(below: 10) {
            case 0: uptr = 0
            case 1: uptr = 0x7000_0000_0000 + rng.next(below: 1 << 20)
            case 2: uptr = v.scratch + 4 * 4096 - rng.next(below: 64)   // runs off the end of the buffer
            default: uptr = v.scratch
            }
            let type: UInt32 = rng.chance(0.85) ? 0 : UInt32(truncatingIfNeeded: rng.next())
            let (rc, out) = v.rig.run(.hwptInvalidate) { s in
                s.set32(4, rng.chance(0.95) ? n : UInt32(rng.next(below: 12))); s.set64(8, uptr); s.set32(16, type)
                s.set32(20, entryLength); s.set32(24, count); s.set32(28, rng.chance(0.03) ? 1 : 0)
            }
            outcomes[rc, default: 0] += 1
            #expect(rc == 0 || allowed.contains(-rc) || rc == -Errno.ENOENT, "iteration \(i): rc \(rc)")
            #expect(out.u32(24) <= count)
            if rc == 0 { #expect(out.u32(24) == count) }
            if i % 20 == 0 { #expect(v.rig.dma(v.ep, write: 0x5000)?.fault == nil, "iteration \(i)") }
        }
        #expect(outcomes[0, default: 0] > 20 && outcomes.count >= 4, "\(outcomes)")
        #expect(v.violations.isEmpty, "\(v.violations)")
        try Self.closeAndCheck(v, before)
    }

    @Test("random iommu_hwpt_vtd_s1 data: allocation and attach answer 0 or an errno, DMA through what attaches never traps")
    func randomStage1Data() throws {
        var before: Resources?
        let v = try NestedVMM { before = Self.resources($0) }
        try v.guest.map(gva: 0x5000, gpa: NestedVMM.dataGPA, writable: true)
        var rng = SeededRNG(seed: 0x51DA7A)
        var allocated = 0, attached = 0
        for i in 0..<200 {
            var data: [UInt8]
            if rng.chance(0.5) {
                let widths: [UInt32] = [48, 57, 39, 0, UInt32(truncatingIfNeeded: rng.next())]
                let table: UInt64 = rng.chance(0.6) ? v.guest.root
                    : rng.chance(0.5) ? NestedVMM.tableGPA + rng.next(below: 64) << 12 : rng.next()
                data = VTdStage1Configuration(flags: rng.chance(0.7) ? rng.next(below: 8) : rng.next(), tableAddress: table,
                                              addressWidth: widths[Int(rng.next(below: UInt64(widths.count)))]).bytes
                if rng.chance(0.2) { data[20] = UInt8(truncatingIfNeeded: rng.next()) }
            } else {
                data = Self.randomBytes(&rng, 24)
            }
            if rng.chance(0.15) { data += rng.chance(0.5) ? [UInt8](repeating: 0, count: Int(rng.next(below: 16))) : Self.randomBytes(&rng, 8) }
            if rng.chance(0.1) { data = Array(data.prefix(Int(rng.next(below: 24)))) }
            let flags: UInt32 = rng.chance(0.8) ? UAPI.hwptAllocPASID * UInt32(rng.next(below: 2)) : UInt32(rng.next(below: 32))
            let length: UInt32 = data.isEmpty ? 1 : UInt32(data.count)
            let r = v.allocNested(flags: flags, data: data.isEmpty ? [0] : data, dataLength: length)
            let allowed: Set<Int32> = [0, -Errno.EINVAL, -Errno.EOPNOTSUPP, -Errno.E2BIG, -Errno.ENOENT]
            #expect(allowed.contains(r.rc), "iteration \(i): rc \(r.rc)")
            guard r.rc == 0 else { continue }
            allocated += 1
            let e = errnoOf { _ = try v.rig.ctx.attach(v.devID, to: r.id) }
            #expect(e == nil || e == Errno.EINVAL, "iteration \(i): attach errno \(e ?? 0)")
            if e == nil {
                attached += 1
                for _ in 0..<4 {
                    let gva = rng.chance(0.5) ? 0x5000 : rng.next() & 0x0000_FFFF_FFFF_F000
                    #expect(v.rig.dma(v.ep, write: gva) != nil)
                    #expect(v.rig.dmaRead(v.ep, gva) != nil)
                }
                try v.rig.ctx.detach(v.devID)
            }
            try v.rig.ctx.destroy(r.id)
        }
        #expect(allocated > 20 && attached > 5, "allocated \(allocated), attached \(attached)")
        #expect(v.violations.isEmpty, "\(v.violations)")
        try Self.closeAndCheck(v, before)
    }

    /// Whether the guest's walk of `gva` (read from the VMM's memory) ends on one of the
    /// table pages it went through.
    static func writesOwnWalk(_ v: NestedVMM, _ gva: UInt64) -> Bool {
        func va(_ gpa: UInt64) -> UInt64? {
            for (base, va) in [(NestedVMM.tableGPA, v.tableVA), (NestedVMM.dataGPA, v.dataVA)]
            where gpa >= base && gpa < base + NestedVMM.regionSize { return va + (gpa - base) }
            return nil
        }
        var table = v.guest.root
        var walked: Set<UInt64> = []
        for level in stride(from: 4, through: 1, by: -1) {
            walked.insert(table >> 12)
            guard let slot = va(table + PageTableGeometry.index(gva, level: level) * 8) else { return false }
            let raw = StructBytes(bytes: v.rig.read(va: slot, count: 8)).u64(0)
            guard raw & 1 != 0 else { return false }
            let address = raw & 0x000F_FFFF_FFFF_F000
            if level == 1 || (level <= 3 && raw & 0x80 != 0) {
                let span = PageTableGeometry.span(level: level)
                return walked.contains(((address & ~(span - 1)) | (gva & (span - 1))) >> 12)
            }
            table = address
        }
        return false
    }

    @Test("random guest page tables under DMA: every access completes or faults, the oracle's composition agrees, nothing leaks")
    func randomGuestTables() throws {
        var before: Resources?
        let v = try NestedVMM { before = Self.resources($0) }
        let n = try v.attachedNested()
        var rng = SeededRNG(seed: 0x6E57)
        var faults = 0, completions = 0
        for round in 0..<4 {
            // Fill every table page: holes, plausible entries into guest RAM with random
            // attribute bits, and anything at all.
            var words: [UInt64] = []
            for _ in 0..<(NestedVMM.regionSize / 8) {
                switch rng.next(below: 10) {
                case 0..<2: words.append(0)
                case 2..<9:
                    let base = rng.chance(0.5) ? NestedVMM.tableGPA : NestedVMM.dataGPA
                    let target = base + rng.next(below: NestedVMM.regionSize >> 12) << 12
                    var w = target | (rng.next() & 0x8000_0000_0000_0FFF) | 1
                    if rng.chance(0.85) { w |= 0x6 }           // usually R/W and U/S
                    if rng.chance(0.7) { w &= ~0x80 }          // usually no PS
                    words.append(w)
                default: words.append(rng.next())
                }
            }
            var bytes = StructBytes(bytes: [UInt8](repeating: 0, count: Int(NestedVMM.regionSize)))
            for (i, w) in words.enumerated() { bytes.set64(i * 8, w) }
            v.write(v.tableVA, bytes.bytes)
            #expect(v.invalidate(n, entries: [NestedVMM.entry(addr: 0, pages: .max, flags: 0)]) == (0, 1))
            for _ in 0..<150 {
                // GVAs whose upper indices hit the first entries of each table, where the
                // structure is as dense as anywhere.
                let gva = (rng.next(below: 4) << 39 | rng.next(below: 4) << 30 | rng.next(below: 8) << 21 | rng.next(below: 16) << 12)
                let c: PCIeEndpoint.Completion?
                // A write that would land on a table page of its own walk changes the
                // translation it is checked against: such a page is only read.
                if rng.chance(0.5) || Self.writesOwnWalk(v, gva) {
                    c = v.rig.dmaRead(v.ep, gva)
                } else {
                    c = v.rig.dma(v.ep, write: gva, value: UInt8(truncatingIfNeeded: rng.next()))
                    // The write may have landed in a table page: the guest invalidates everything.
                    #expect(v.invalidate(n, entries: [NestedVMM.entry(addr: 0, pages: .max, flags: 0)]) == (0, 1))
                }
                let done = try #require(c, "round \(round): DMA at 0x\(String(gva, radix: 16)) never completed")
                if done.fault != nil { faults += 1 } else { completions += 1 }
            }
        }
        #expect(faults > 0 && completions > 0, "faults \(faults), completions \(completions)")
        #expect(v.violations.isEmpty, "\(v.violations.prefix(5))")
        try Self.closeAndCheck(v, before)
    }
}
