import Testing
import Formats
@testable import Kernel

/// The SMMUv3 driver's live STE/CD update (Linux arm-smmu-v3.c `arm_smmu_write_entry`): every
/// state the hardware can read between single 64-bit stores means the old entry, the new one,
/// or (for a breaking update only) nothing.
@Suite("SMMUEntryWriter: live STE and CD updates are hitless where the used bits allow, and never a mix")
struct SMMUEntryWriterTests {
    static let s2 = StreamTableEntry.S2Translation.granule4K(levels: 4, outputBits: 48)

    /// What an entry means to the hardware: each word masked by the bits it reads.
    static func meaning(_ e: [UInt64], _ kind: SMMUEntryWriter.Kind) -> [UInt64] {
        let used = kind.used(e)
        return (0..<8).map { e[$0] & used[$0] }
    }

    /// Replays the plan store by store (the hardware may read between any two stores) and
    /// checks every state; returns the path and the number of syncs.
    static func check(_ from: [UInt64], _ to: [UInt64], _ kind: SMMUEntryWriter.Kind) -> (path: UpdatePath, syncs: Int, ok: Bool) {
        let old = meaning(from, kind), new = meaning(to, kind)
        var entry = from, ok = true, syncs = 0
        let path = try? SMMUEntryWriter.write(current: from, target: to, kind: kind, store: { i, v in
            entry[i] = v
            let m = meaning(entry, kind)
            let invalid = entry[0] & kind.validBit == 0
            if m != old && m != new && !invalid { ok = false }
        }, sync: { syncs += 1 })
        if entry != to { ok = false }
        return (path ?? .unchanged, syncs, ok)
    }

    static func ste(_ e: StreamTableEntry) -> [UInt64] { e.words }

    @Test func bypassToAbortAndBackAreHitless() {
        let bypass = Self.ste(.bypass(shcfgIncoming: true)), abort = Self.ste(.abort())
        let there = Self.check(bypass, abort, .ste), back = Self.check(abort, bypass, .ste)
        #expect(there.ok && there.path == .singleWord)
        #expect(back.ok && back.path == .singleWord)
    }

    @Test func changingOnlyS1DSSOfACDTableSTEIsHitlessInOneSync() {
        let a = Self.ste(.cdTable(contextPointer: 0x10_0000, format: .linear, s1CDMax: 8, s1DSS: .ssid0))
        let b = Self.ste(.cdTable(contextPointer: 0x10_0000, format: .linear, s1CDMax: 8, s1DSS: .bypass))
        let r = Self.check(a, b, .ste)
        #expect(r.ok && r.path == .singleWord && r.syncs == 1)
    }

    @Test func aCDTableSTEToAnS2STEChangesTwoUsedWordsAndGoesThroughVZero() {
        let a = Self.ste(.cdTable(contextPointer: 0x10_0000, format: .linear, s1CDMax: 8, s1DSS: .ssid0))
        let b = Self.ste(.s2Domain(vmid: 7, translation: Self.s2, ttb: 0x20_0000))
        let r = Self.check(a, b, .ste)
        #expect(r.ok && r.path == .teardownSetup && r.syncs == 3)
    }

    @Test func twoS2DomainsDifferingInVMIDAndTableBreak() {
        let a = Self.ste(.s2Domain(vmid: 7, translation: Self.s2, ttb: 0x20_0000))
        let b = Self.ste(.s2Domain(vmid: 8, translation: Self.s2, ttb: 0x30_0000))
        let r = Self.check(a, b, .ste)
        #expect(r.ok && r.path == .teardownSetup)
    }

    @Test func anS2DomainToBypassIsHitlessAndClearsTheUnusedWordsAfter() {
        let a = Self.ste(.s2Domain(vmid: 7, translation: Self.s2, ttb: 0x20_0000))
        let b = Self.ste(.bypass())
        let r = Self.check(a, b, .ste)
        #expect(r.ok && r.path == .singleWord && r.syncs == 2, "the switch, then the stale words cleared")
    }

    @Test func writingTheSameEntryChangesNothingAndSyncsNothing() {
        let a = Self.ste(.s2Domain(vmid: 7, translation: Self.s2, ttb: 0x20_0000))
        let r = Self.check(a, a, .ste)
        #expect(r.ok && r.path == .unchanged && r.syncs == 0)
    }

    @Test func fromAnInvalidEntryTheUpdateIsFreshAndToOneIsRemoved() {
        let invalid = [UInt64](repeating: 0, count: 8)
        let b = Self.ste(.s2Domain(vmid: 7, translation: Self.s2, ttb: 0x20_0000))
        #expect(Self.check(invalid, b, .ste).path == .fresh)
        #expect(Self.check(b, invalid, .ste).path == .removed)
    }

    @Test func aValidCDChangingASIDAndTableBreaksButAnEPD0CDIgnoresItsTableFields() {
        let a = ContextDescriptor.s1(asid: 1, ttb: 0x40_0000).words
        let b = ContextDescriptor.s1(asid: 2, ttb: 0x50_0000).words
        let r = Self.check(a, b, .cd)
        #expect(r.ok && r.path == .teardownSetup)
        // An SVA CD without a table (EPD0) reads no TTB0: filling one in is hitless.
        let quiet = ContextDescriptor.sva(asid: 3, ttb: nil).words
        let live = ContextDescriptor.sva(asid: 3, ttb: 0x60_0000).words
        let s = Self.check(quiet, live, .cd)
        #expect(s.ok && s.path == .singleWord)
    }

    @Test func randomEntryPairsNeverShowAMixedStateAndAlwaysEndAtTheTarget() {
        var rng = SplitMix64(seed: 0x5177)
        let pool: [[UInt64]] = [
            Self.ste(.abort()), Self.ste(.bypass()), Self.ste(.bypass(shcfgIncoming: true)),
            Self.ste(.cdTable(contextPointer: 0x10_0000, format: .linear, s1CDMax: 8, s1DSS: .ssid0)),
            Self.ste(.cdTable(contextPointer: 0x10_0000, format: .linear, s1CDMax: 8, s1DSS: .bypass, ats: true)),
            Self.ste(.cdTable(contextPointer: 0x11_0000, format: .twoLevel64K, s1CDMax: 20, s1DSS: .terminate)),
            Self.ste(.s2Domain(vmid: 7, translation: Self.s2, ttb: 0x20_0000)),
            Self.ste(.s2Domain(vmid: 7, translation: Self.s2, ttb: 0x20_0000, ats: true)),
            Self.ste(.s2Domain(vmid: 9, translation: Self.s2, ttb: 0x21_0000)),
            [UInt64](repeating: 0, count: 8),
        ]
        var failures = 0
        for _ in 0..<2000 {
            var a = pool[Int(rng.next() % UInt64(pool.count))], b = pool[Int(rng.next() % UInt64(pool.count))]
            // Some garbage in words the entries do not use, as a stale table would have.
            if rng.next() % 3 == 0 { a[Int(4 + rng.next() % 4)] = rng.next() }
            if rng.next() % 3 == 0 { b[Int(4 + rng.next() % 4)] = rng.next() }
            if !Self.check(a, b, .ste).ok { failures += 1 }
            let ca = ContextDescriptor.s1(asid: UInt16(rng.next() % 4), ttb: (rng.next() % 16) << 20).words
            let cb = rng.next() % 4 == 0 ? [UInt64](repeating: 0, count: 8) : ContextDescriptor.sva(asid: UInt16(rng.next() % 4), ttb: rng.next() % 2 == 0 ? nil : 0x70_0000).words
            if !Self.check(ca, cb, .cd).ok { failures += 1 }
        }
        #expect(failures == 0)
    }
}

/// A small deterministic generator for the tests.
struct SplitMix64 {
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
