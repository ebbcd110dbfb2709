import Platform
import Formats
import Kernel

/// A guest's own first-stage page table (x86-64 format, 4 or 5 levels), in its RAM: a region
/// of the VMM process that the VMM maps into an IOAS at `gpaBase`, so every table page has a
/// guest-physical address (what the entries hold, and what the nested HWPT's `pgtbl_addr`
/// names) and a VMM virtual address (where the guest, played by the scenario, writes it).
/// Table pages come from the first `tablePages` pages of the region; tables are kept once
/// made, as a guest driver's would be for a long-lived mapping.
final class GuestPageTable {
    let region: String
    let process: Process
    let va: UInt64
    let gpaBase: UInt64
    let levels: Int
    let root: UInt64
    private let tableLimit: UInt64
    /// The nested HWPTs built on this table (their invalidations follow the guest's unmaps).
    var hwpts: [String] = []
    /// What the guest wrote in the table pages it has used (from the root on), u64 by u64:
    /// the guest's own record, to tell when something else wrote them.
    private var written: [UInt64]
    /// The next table page to take: the one after those in use.
    private var nextTable: UInt64 { gpaBase + UInt64(written.count / 512) * 4096 }

    init(region: String, process: Process, va: UInt64, gpaBase: UInt64, tablePages: Int, levels: Int) throws(IOMMUError) {
        self.region = region; self.process = process; self.va = va; self.gpaBase = gpaBase; self.levels = levels
        root = gpaBase
        tableLimit = gpaBase + UInt64(tablePages) * 4096
        written = [UInt64](repeating: 0, count: 512)
        let zeros = [UInt8](repeating: 0, count: 4096)
        for i in 0..<UInt64(tablePages) {
            let ok = zeros.withUnsafeBytes { process.copyOut(to: va + i * 4096, from: $0) }
            guard ok else { throw .invalidArgument("guest RAM at 0x\(String(va + i * 4096, radix: 16)) is not writable") }
        }
    }

    func read(_ gpa: UInt64) -> UInt64? {
        var v: UInt64 = 0
        let ok = withUnsafeMutableBytes(of: &v) { process.copyIn(from: va &+ (gpa &- gpaBase), into: $0) }
        return ok ? v : nil
    }

    func write(_ gpa: UInt64, _ value: UInt64) throws(IOMMUError) {
        var v = value
        let ok = withUnsafeBytes(of: &v) { process.copyOut(to: va &+ (gpa &- gpaBase), from: $0) }
        guard ok else { throw .invalidArgument("guest page-table write at GPA 0x\(String(gpa, radix: 16)) failed") }
        let i = Int((gpa &- gpaBase) >> 3)
        if i < written.count { written[i] = value }
    }

    /// Whether the table pages in use hold what the guest wrote, apart from the Accessed and
    /// Dirty bits the unit sets as it walks (VT-d §3.6.2): false once a device given them
    /// (the guest's bug) changed anything else, or when they cannot be read.
    func isIntact() -> Bool {
        let unitBits = FirstStageFormat.accessedBit | FirstStageFormat.dirtyBit
        var page = [UInt64](repeating: 0, count: 512)
        for p in 0..<written.count / 512 {
            let ok = page.withUnsafeMutableBytes { process.copyIn(from: va + UInt64(p) * 4096, into: $0) }
            guard ok, page.elementsEqual(written[p * 512..<(p + 1) * 512], by: { ($0 ^ $1) & ~unitBits == 0 }) else { return false }
        }
        return true
    }

    /// Maps one 4 KiB page (present, user, writable when asked), making tables on the way.
    func map(gva: UInt64, gpa: UInt64, writable: Bool) throws(IOMMUError) {
        var table = root
        var level = levels
        while level > 1 {
            let slot = table + PageTableGeometry.index(gva, level: level) * 8
            guard let raw = read(slot) else { throw .invalidArgument("guest table at GPA 0x\(String(table, radix: 16)) is unreadable") }
            if raw & FirstStageFormat.p != 0 {
                guard raw & FirstStageFormat.ps == 0 else { throw .exists("GVA 0x\(String(gva, radix: 16)) is in a guest superpage") }
                table = raw & 0x000F_FFFF_FFFF_F000
            } else {
                guard nextTable < tableLimit else { throw .noMemory("the guest's page-table pages") }
                let next = nextTable
                written.append(contentsOf: repeatElement(0, count: 512))
                try write(slot, FirstStageFormat.table(address: next))
                table = next
            }
            level -= 1
        }
        let slot = table + PageTableGeometry.index(gva, level: 1) * 8
        try write(slot, FirstStageFormat.leaf(address: gpa, permissions: writable ? [.read, .write, .user, .execute] : [.read, .user, .execute], level: 1))
    }

    /// Maps `pages` pages from `gva` to `gpa`, or none: a page already mapped (a present
    /// leaf, or a guest superpage) is EEXIST before anything is written. The guest maps
    /// without invalidating, which holds only for entries that were not present; a guest
    /// changing a present leaf without an invalidation would leave the unit free to use
    /// either translation (Linux's page-table code refuses such a map the same way).
    /// A GPA range reaching the table's own pages is EINVAL: a guest never gives its device
    /// its IOMMU tables (its DMA API maps buffers, not the page-table pages its vIOMMU
    /// driver allocated); a device writing them would change translations behind the
    /// unit's caches, with no invalidation anyone could send.
    func map(gva: UInt64, gpa: UInt64, pages: Int, writable: Bool) throws(IOMMUError) {
        let (span, o1) = UInt64(max(pages, 0)).multipliedReportingOverflow(by: 4096)
        let (end, o2) = gpa.addingReportingOverflow(span)
        if gpa < tableLimit && (o1 || o2 || end > gpaBase) {
            throw .invalidArgument("GPA 0x\(String(gpa, radix: 16)) + \(pages) page(s) reaches the guest table's own pages (GPA 0x\(String(gpaBase, radix: 16))-0x\(String(tableLimit - 1, radix: 16)))")
        }
        for i in 0..<UInt64(pages) where isMapped(gva: gva + i * 4096) {
            throw .exists("GVA 0x\(String(gva + i * 4096, radix: 16)) is already mapped in the guest table")
        }
        for i in 0..<UInt64(pages) { try map(gva: gva + i * 4096, gpa: gpa + i * 4096, writable: writable) }
    }

    /// The GPA of `gva`'s level-1 entry, walking present tables; `.superpage` when a present
    /// large leaf covers it, nil when the walk ends in a hole.
    private enum Leaf { case slot(UInt64), superpage }
    private func leaf(gva: UInt64) -> Leaf? {
        var table = root
        var level = levels
        while level > 1 {
            guard let raw = read(table + PageTableGeometry.index(gva, level: level) * 8), raw & FirstStageFormat.p != 0 else { return nil }
            if raw & FirstStageFormat.ps != 0 { return .superpage }
            table = raw & 0x000F_FFFF_FFFF_F000
            level -= 1
        }
        return .slot(table + PageTableGeometry.index(gva, level: 1) * 8)
    }

    /// Whether `gva` has a present leaf (of any size) in the table.
    func isMapped(gva: UInt64) -> Bool {
        switch leaf(gva: gva) {
        case .superpage: return true
        case .slot(let slot): return (read(slot) ?? 0) & FirstStageFormat.p != 0
        case nil: return false
        }
    }

    /// Clears the leaf of one page; false when it was not mapped (or is in a superpage,
    /// which the guest role never makes).
    @discardableResult
    func unmap(gva: UInt64) throws(IOMMUError) -> Bool {
        guard case .slot(let slot)? = leaf(gva: gva), let raw = read(slot), raw & FirstStageFormat.p != 0 else { return false }
        try write(slot, 0)
        return true
    }
}
