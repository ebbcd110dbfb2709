#if canImport(Glibc)
import Glibc
#endif
import Platform
import IOMMUFD

/// Huge pages where the host has none reserved (vm.nr_hugepages 0, the usual case): the
/// shim makes a MAP_HUGETLB mapping ordinary memory aligned to the huge page size, and, once
/// the machine exists, this backs it with physically contiguous, 2 MiB-aligned frames of the
/// emulated memory mapped shared at the program's addresses. So a pin finds the frame there
/// without moving anything, a domain maps it with the largest pages it has (the selftest's
/// 1 MiB mock IOPTEs, a VT-d 2 MiB leaf), and the page counts as part of a huge (compound)
/// page, as MD_CHECK_REFS expects.
extension HostMemory {
    /// Backs [start, start + length) (huge page aligned) with contiguous frames; false (the
    /// ordinary memory stays) when the emulated memory has no such run free.
    func mapHuge(at start: UInt64, length: UInt64, writable: Bool) -> Bool {
        let count = Int(length >> 12)
        guard physical.sharedFile >= 0, count > 0, start & 0x1F_FFFF == 0,
              let base = try? frames.allocateContiguous(count, .dmaBuffer, alignment: 512) else { return false }
        guard let p = UnsafeMutableRawPointer(bitPattern: UInt(start)),
              physical.mapFrames(base, count: count, at: p, writable: writable) else {
            for i in 0..<count { try? frames.free(base + UInt64(i) << 12) }
            return false
        }
        for i in 0..<count { hugePages[start + UInt64(i) << 12] = base + UInt64(i) << 12 }
        return true
    }

    func pinHuge(_ va: UInt64, _ f: UInt64, write: Bool) -> UInt64? {
        if write { guard let m = mapping(containing: va), m.writable else { return nil } }
        hugePins[f, default: 0] += 1
        return f
    }

    /// Drops a pin of a huge page's frame; false when `f` is not one.
    func unpinHuge(_ f: UInt64) -> Bool {
        guard let n = hugePins[f] else { return false }
        if n > 1 { hugePins[f] = n - 1; return true }
        hugePins[f] = nil
        if hugeOrphans.remove(f) != nil { try? frames.free(f) }
        return true
    }

    /// The program unmaps (or moves) huge pages: unpinned frames go at once, pinned ones at
    /// their last unpin. A moved page's frame is mapped elsewhere now: it is never freed.
    func hugeRangeChanging(_ address: UInt64, _ length: UInt64, moved: Bool) {
        let lo = address & ~0xFFF, hi = address &+ length < address ? UInt64.max : address &+ length
        for (va, f) in hugePages where va >= lo && va < hi {
            hugePages[va] = nil
            if moved { continue }
            if hugePins[f] != nil { hugeOrphans.insert(f) } else { try? frames.free(f) }
        }
    }
}
