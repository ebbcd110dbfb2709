import Platform
import Formats

/// A region of a process's address space with its rights (Linux `struct vm_area_struct`).
public struct VMA: Equatable, Sendable {
    public var start: UInt64
    /// Exclusive.
    public var end: UInt64
    /// `.read`, `.write`, `.execute` as the mapping allows.
    public var permissions: PagePermissions
    /// For memory populated up front with physically contiguous frames (hugetlb-like): the
    /// physical address of `start`; nil for ordinary memory, allocated on first touch.
    public var physicalBase: UInt64? = nil
}

/// A simulated process (Linux `struct mm_struct`): x86-64 4-level page tables in physical
/// memory (the first-stage format the VT-d unit walks for SVA), and, once bound to an SMMUv3
/// device, the same mappings in VMSAv8-64 stage 1 tables; VMAs, pages allocated on first
/// touch. Unmapping invalidates every device's view of the range before the frames are
/// reused (the mmu-notifier path, Linux `arch_invalidate_secondary_tlbs`).
public final class Process: @unchecked Sendable, CustomStringConvertible {
    public let pid: Int
    unowned(unsafe) let core: IOMMUCore
    let pageTable: IOPageTable<FirstStageFormat>
    /// The same address space in the Arm VMSAv8-64 stage 1 format (see `Process+ArmTable`),
    /// made on the first SMMUv3 SVA bind and kept in step with `pageTable` from then on.
    var armPageTable: IOPageTable<ArmStage1Format>?
    public internal(set) var vmas: [VMA] = []
    /// Resident pages: virtual page → frame.
    public internal(set) var residentPages: [UInt64: UInt64] = [:]
    /// Long-term pins (Linux `pin_user_pages` with FOLL_LONGTERM) per frame of ordinary
    /// memory, and per contiguous block (keyed by its first frame); a pinned frame outlives
    /// its unmapping until the last unpin.
    var pinCounts = FramePinCounts()
    var blockPins: [UInt64: Int] = [:]
    /// Frames and blocks unmapped while pinned: freed at their last unpin.
    var orphanedFrames: Set<UInt64> = []
    var orphanedBlocks: [UInt64: UInt64] = [:]
    /// The process's PASID (Linux `mm->iommu_mm->pasid`), from its first SVA bind to exit.
    public internal(set) var pasid: PASID?
    /// SVA domains sharing this address space, one per driver (Linux `iommu_mm->sva_domains`).
    public internal(set) var svaDomains: [IOMMUDomain] = []
    public private(set) var isExited = false
    private var nextAddress: UInt64 = 0x4000_0000
    /// Top of the user half of a 4-level address space.
    static let userLimit: UInt64 = 1 << 47
    public private(set) var pagesFaultedIn = 0

    init(pid: Int, core: IOMMUCore) throws(IOMMUError) {
        self.pid = pid
        self.core = core
        do {
            pageTable = try IOPageTable(memory: core.platform.memory, frames: core.platform.frames, levels: 4, maxLeafLevel: 1)
        } catch { throw .noMemory("page tables of process \(pid)") }
    }

    public var description: String { "process \(pid)" }

    /// Physical address of the top-level table (CR3).
    public var pageTableRoot: UInt64 { pageTable.root }

    /// Reserves `length` bytes (rounded up to pages) of address space with `permissions`;
    /// nothing is resident until touched (Linux `mmap` of anonymous memory).
    public func mmap(length: UInt64, permissions: PagePermissions) throws(IOMMUError) -> UInt64 {
        guard !isExited else { throw .noDevice("\(self) has exited") }
        guard length > 0, length <= 1 << 40 else { throw .invalidArgument("mapping length \(length)") }
        guard !permissions.isDisjoint(with: [.read, .write]) else { throw .invalidArgument("a mapping must be readable or writable") }
        let size = (length + 0xFFF) & ~0xFFF
        guard nextAddress + size <= Self.userLimit else { throw .noMemory("address space of \(self)") }
        let start = nextAddress
        nextAddress += size + 0x10_0000 // a guard gap
        vmas.append(VMA(start: start, end: start + size, permissions: permissions.intersection([.read, .write, .execute])))
        return start
    }

    /// The VMA holding `address`.
    public func vma(containing address: UInt64) -> VMA? { vmas.first { $0.start <= address && address < $0.end } }

    /// Resolves a fault at `address` for `access` (Linux `handle_mm_fault`): allowed only
    /// inside a VMA that grants the access; a page not yet resident is allocated and mapped.
    /// Returns false when the access is not allowed or memory ran out.
    @discardableResult
    public func fault(at address: UInt64, access: FaultPermissions) -> Bool {
        guard !isExited, let vma = vma(containing: address) else { return false }
        if access.contains(.read) && !vma.permissions.contains(.read) { return false }
        if access.contains(.write) && !vma.permissions.contains(.write) { return false }
        if access.contains(.exec) && !vma.permissions.contains(.execute) { return false }
        // SVA binds user address spaces: supervisor requests are refused.
        if access.contains(.priv) { return false }
        let page = address & ~0xFFF
        if residentPages[page] != nil { return true }
        let frame: UInt64
        if let base = vma.physicalBase {
            frame = base + (page - vma.start)
        } else {
            do { frame = try core.platform.frames.allocate(.dmaBuffer) } catch { return false }
        }
        let perms = vma.permissions.union(.user)
        for d in svaDomains { core.observer?.mapBegan(d, iova: page, physical: frame, size: 0x1000, permissions: perms) }
        do {
            try pageTable.map(iova: page, physical: frame, size: 0x1000, permissions: perms)
            if let arm = armPageTable {
                do { try arm.map(iova: page, physical: frame, size: 0x1000, permissions: perms) } catch {
                    var g = UnmapGather()
                    _ = try? pageTable.unmap(iova: page, size: 0x1000, gather: &g)
                    for t in g.freedTables { try? core.platform.frames.free(t) }
                    throw error
                }
            }
        } catch {
            for d in svaDomains { core.observer?.mapEnded(d, iova: page, size: 0x1000, mapped: false) }
            if vma.physicalBase == nil { try? core.platform.frames.free(frame) }
            return false
        }
        residentPages[page] = frame
        pagesFaultedIn += 1
        for d in svaDomains { core.observer?.mapEnded(d, iova: page, size: 0x1000, mapped: true) }
        return true
    }

    /// Removes [address, address+length) from the address space (Linux `munmap`): PTEs are
    /// cleared, every SVA domain invalidates the range in the IOTLBs and device TLBs, and
    /// only then are the frames freed.
    public func munmap(address: UInt64, length: UInt64) throws(IOMMUError) {
        guard address & 0xFFF == 0, length > 0 else { throw .invalidArgument("munmap needs a page-aligned range") }
        guard address < Self.userLimit, length <= Self.userLimit - address else {
            throw .outOfRange("munmap beyond the user address space")
        }
        let end = address + ((length + 0xFFF) & ~0xFFF)
        // Contiguous memory goes as a whole (as a huge page cannot be split here).
        let blocks = vmas.filter { $0.physicalBase != nil && $0.start < end && address < $0.end }
        for b in blocks where b.start < address || b.end > end {
            throw .invalidArgument("munmap would split contiguous memory at 0x\(String(b.start, radix: 16))")
        }
        let pages = residentPages.keys.filter { $0 >= address && $0 < end }.sorted()
        var frames: [UInt64] = []
        var gather = UnmapGather()
        for d in svaDomains { core.observer?.unmapBegan(d, iova: address, size: end - address) }
        for p in pages {
            _ = try? pageTable.unmap(iova: p, size: 0x1000, gather: &gather)
            _ = try? armPageTable?.unmap(iova: p, size: 0x1000, gather: &gather)
            if let f = residentPages.removeValue(forKey: p), !blocks.contains(where: { $0.start <= p && p < $0.end }) { frames.append(f) }
        }
        // Pinned frames stay allocated until their last unpin (the pin holds the page).
        frames.removeAll { f in
            guard pinCounts[f] > 0 else { return false }
            orphanedFrames.insert(f)
            return true
        }
        for b in blocks {
            let base = b.physicalBase!, count = (b.end - b.start) >> 12
            if blockPins[base >> 12] != nil { orphanedBlocks[base >> 12] = count; continue }
            for i in 0..<count { frames.append(base + (i << 12)) }
        }
        var failed = false
        for d in svaDomains where !pages.isEmpty {
            do { try d.invalidateRange(start: address, end: end - 1) } catch { failed = true }
        }
        for d in svaDomains {
            if failed {
                core.observer?.unmapFailed(d, iova: address, requested: end - address, unmapped: end - address)
            } else {
                core.observer?.unmapEnded(d, iova: address, requested: end - address, unmapped: end - address)
            }
        }
        // A device may still hold a translation when the invalidation failed: keep the frames.
        if !failed {
            for f in frames { try? core.platform.frames.free(f) }
            for t in gather.freedTables { try? core.platform.frames.free(t) }
        } else {
            leakedAfterFailedInvalidation += frames.count + gather.freedTables.count
            core.holdUntilTranslationOff(frames + gather.freedTables)
        }
        var kept: [VMA] = []
        for v in vmas {
            if v.end <= address || v.start >= end { kept.append(v); continue }
            if v.start < address { kept.append(VMA(start: v.start, end: address, permissions: v.permissions)) }
            if v.end > end { kept.append(VMA(start: end, end: v.end, permissions: v.permissions)) }
        }
        vmas = kept
    }

    /// Frames kept because their invalidation failed (the core holds them until translation
    /// is off: `IOMMUCore.releaseHeldFrames`).
    public private(set) var leakedAfterFailedInvalidation = 0

    /// Ends the process: every mapping goes, the page tables are freed and the PASID goes back
    /// to the global space (Linux `mm_pasid_drop`). Devices must have been unbound.
    public func exit() throws(IOMMUError) {
        guard !isExited else { return }
        guard svaDomains.isEmpty else { throw .busy("\(self) is still bound to a device") }
        for v in vmas { try munmap(address: v.start, length: v.end - v.start) }
        var gather = UnmapGather()
        pageTable.destroy(into: &gather)
        armPageTable?.destroy(into: &gather)
        armPageTable = nil
        for t in gather.freedTables { try? core.platform.frames.free(t) }
        if let p = pasid { try? core.freeGlobalPASID(p) }
        pasid = nil
        isExited = true
        core.processes.removeAll { $0 === self }
    }
}

/// Long-term pin counts of ordinary frames, indexed by frame number (no hashing on the pin
/// path); grows to the highest frame pinned.
struct FramePinCounts {
    private var counts: [UInt32] = []
    private(set) var total = 0

    subscript(_ frame: UInt64) -> UInt32 {
        let i = Int(frame >> 12)
        return i < counts.count ? counts[i] : 0
    }

    mutating func increment(_ frame: UInt64) {
        let i = Int(frame >> 12)
        if i >= counts.count { counts.append(contentsOf: repeatElement(0, count: max(i + 1 - counts.count, counts.count))) }
        counts[i] += 1
        total += 1
    }

    /// Drops one pin; returns the pins left.
    mutating func decrement(_ frame: UInt64) -> UInt32 {
        let i = Int(frame >> 12)
        guard i < counts.count, counts[i] > 0 else { return 0 }
        counts[i] -= 1
        total -= 1
        return counts[i]
    }
}
