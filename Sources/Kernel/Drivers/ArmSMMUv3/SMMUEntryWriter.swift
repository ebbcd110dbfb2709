import Formats

/// How the Arm SMMUv3 driver changes a live STE or CD (Linux arm-smmu-v3.c
/// `arm_smmu_write_entry`): the hardware reads an entry with 64-bit single-copy atomicity
/// only, so an entry of eight words is changed in steps, each a set of word stores followed by
/// a sync (CFGI_STE or CFGI_CD, then CMD_SYNC), such that every state the hardware can see
/// translates as the old entry or as the new one, never a mix:
///
/// - The bits each word's hardware reads depend on the entry itself (`used`): the bits the
///   current entry ignores can take their new values first, in place.
/// - If then only one word's used bits still differ, that word is the "critical" one: one
///   64-bit store of it switches the entry (hitless), and a last step clears what the new entry
///   no longer uses.
/// - If two or more words' used bits differ, the update breaks: V is cleared (the entry
///   translates nothing: aborts for an STE, C_BAD_CD for a CD), the other words are written,
///   then word 0 with V set.
/// - If no used bit differs, the unused bits are written (they change nothing).
public enum SMMUEntryWriter {
    public static let words = 8

    /// Which entry: the rules of what the hardware reads differ.
    public enum Kind: Sendable {
        case ste, cd
        /// The V bit of word 0.
        public var validBit: UInt64 { self == .ste ? 1 : 1 << 31 }
        public func used(_ e: [UInt64]) -> [UInt64] { self == .ste ? SMMUEntryWriter.steUsed(e) : SMMUEntryWriter.cdUsed(e) }
    }

    // MARK: Used bits (Linux `arm_smmu_get_ste_used`, `arm_smmu_get_cd_used`)

    /// The bits of each word of an STE the hardware reads given `e`: V alone for an invalid
    /// entry; CONFIG, and the fields of each stage that translates.
    public static func steUsed(_ e: [UInt64]) -> [UInt64] {
        var used = [UInt64](repeating: 0, count: words)
        used[0] = 1
        guard e[0] & 1 != 0 else { return used }
        used[0] |= mask(3, 1)
        let config = (e[0] >> 1) & 7
        if config & 1 != 0 {
            // Stage 1 translates: the CD table, its stream attributes, and (EL1) the VMID 0 tag.
            used[0] |= mask(5, 4) | mask(51, 6) | mask(63, 59)
            used[1] |= mask(1, 0) | mask(3, 2) | mask(5, 4) | mask(7, 6) | (1 << 27) | mask(31, 30) | mask(29, 28) | (1 << 19)
            used[2] |= mask(15, 0)
            // §13.5: with S1DSS bypass the shareability override applies.
            if e[1] & 3 == 1 { used[1] |= mask(45, 44) }
        }
        if config & 2 != 0 {
            // Stage 2 translates: FWB, EATS, SHCFG, MEV; VMID and VTCR; the table.
            used[1] |= (1 << 25) | mask(29, 28) | mask(45, 44) | (1 << 19)
            used[2] |= mask(15, 0) | mask(50, 32) | (1 << 51) | (1 << 52) | (1 << 54) | (1 << 57) | (1 << 58)
            used[3] |= mask(51, 4)
        }
        if config == 4 { used[1] |= mask(45, 44) }
        return used
    }

    /// The bits of each word of a CD the hardware reads given `e`: V alone for an invalid
    /// CD, every bit of a valid one except the TTB0 walk fields when EPD0 disables them.
    public static func cdUsed(_ e: [UInt64]) -> [UInt64] {
        var used = [UInt64](repeating: 0, count: words)
        used[0] = 1 << 31
        guard e[0] & (1 << 31) != 0 else { return used }
        for i in 0..<words { used[i] = .max }
        if e[0] & (1 << 14) != 0 {
            used[0] &= ~(mask(5, 0) | mask(7, 6) | mask(9, 8) | mask(11, 10) | mask(13, 12))
            used[1] &= ~mask(51, 4)
        }
        return used
    }

    @inline(__always) static func mask(_ hi: UInt64, _ lo: UInt64) -> UInt64 {
        (hi - lo == 63 ? UInt64.max : (UInt64(1) << (hi - lo + 1)) - 1) << lo
    }

    // MARK: The update

    /// The words the entry holds after each step, in order (each step is followed by a sync),
    /// and how the update went (fresh: nothing translated before; removed: nothing after;
    /// singleWord: hitless; teardownSetup: through V = 0). Entries are eight words.
    public static func plan(current given: [UInt64], target wanted: [UInt64], kind: Kind) -> (steps: [[UInt64]], path: UpdatePath) {
        // An entry is eight words: missing ones read as zero, extra ones are not the entry's.
        let current = eightWords(given), target = eightWords(wanted)
        let curUsed = kind.used(current), targetUsed = kind.used(target)
        var unusedUpdate = [UInt64](repeating: 0, count: words)
        var differing: [Int] = []
        for i in 0..<words {
            // Bits the current entry ignores can take their new values now.
            unusedUpdate[i] = (current[i] & curUsed[i]) | (target[i] & ~curUsed[i])
            if unusedUpdate[i] & targetUsed[i] != target[i] { differing.append(i) }
        }
        var steps: [[UInt64]] = []
        var entry = current
        func set(_ values: [UInt64], _ range: Range<Int>) {
            var changed = false
            for i in range where entry[i] != values[i] {
                entry[i] = values[i]
                changed = true
            }
            if changed { steps.append(entry) }
        }
        let wasValid = current[0] & kind.validBit != 0, willBeValid = target[0] & kind.validBit != 0
        let path: UpdatePath
        switch differing.count {
        case 0:
            set(target, 0..<words)
            return (steps, .unchanged)
        case 1:
            let critical = differing[0]
            unusedUpdate[critical] = current[critical]
            set(unusedUpdate, 0..<words)
            set(target, critical..<critical + 1)
            set(target, 0..<words)
            path = .singleWord
        default:
            unusedUpdate[0] = 0
            set(unusedUpdate, 0..<1)
            set(target, 1..<words)
            set(target, 0..<1)
            path = .teardownSetup
        }
        return (steps, !wasValid ? .fresh : !willBeValid ? .removed : path)
    }

    static func eightWords(_ e: [UInt64]) -> [UInt64] {
        e.count == words ? e : Array(e.prefix(words)) + [UInt64](repeating: 0, count: max(0, words - e.count))
    }

    /// Carries the update out: for each step, `store(word, value)` for every word that changes,
    /// then `sync()` (the driver's CFGI + CMD_SYNC). Returns how it went.
    @discardableResult
    public static func write(current: [UInt64], target: [UInt64], kind: Kind,
                             store: (Int, UInt64) throws(IOMMUError) -> Void, sync: () throws(IOMMUError) -> Void) throws(IOMMUError) -> UpdatePath {
        let (steps, path) = plan(current: current, target: target, kind: kind)
        var entry = eightWords(current)
        for s in steps {
            for i in 0..<words where entry[i] != s[i] {
                try store(i, s[i])
                entry[i] = s[i]
            }
            try sync()
        }
        return path
    }
}
