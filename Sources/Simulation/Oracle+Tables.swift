import Platform
import Formats
import Kernel

/// Page-table pages: every frame of a domain's tables is known from its allocation, so a page
/// freed while a walk may still reach it is caught however it was freed — through an unmap's
/// gather before the flush completed (`table-freed-before-flush`), or outside any gather
/// (`table-freed-while-reachable`); and a walk that reads a freed table page is caught
/// when it happens (`walk-through-freed-table`).
extension Oracle {
    public func tablesDetached(_ domain: IOMMUDomain, _ tables: [UInt64]) {
        for t in tables { pendingTables[t] = domain.id; liveTables[t] = nil }
        strictTables[domain.id, default: []] += tables
    }

    func releaseStrictTables(_ id: Int) {
        guard let tables = strictTables.removeValue(forKey: id) else { return }
        for t in tables { pendingTables[t] = nil }
    }

    /// Every frame the software frees passes here before it can be reused.
    /// `owner` is the allocator's owner tag the frame was allocated with (0: untagged).
    public func frameFreed(_ address: UInt64, owner: UInt32) {
        checks &+= 1
        if owner != 0 { freedTables.insert(address) }
        if let id = pendingTables.removeValue(forKey: address) {
            violate("table-freed-before-flush", "table page \(Self.hex(address)) of domain \(id) was freed before the invalidation of the unmap that unlinked it completed")
            return
        }
        guard owner != 0, liveTables.removeValue(forKey: address) != nil else { return }
        let domain = tableOwners[owner].map { "domain \($0)" } ?? "a live domain"
        violate("table-freed-while-reachable", "table page \(Self.hex(address)) of \(domain) was freed while still reachable from its tables as of the last completed invalidation (no unmap handed it over)")
    }

    /// A frame allocated as part of a structure with an owner tag: a page-table page is
    /// reachable from the moment it exists until an unmap hands it over or its domain goes.
    public func ownedFrameAllocated(_ address: UInt64, purpose: FrameAllocator.Purpose, owner: UInt32) {
        if purpose == .pageTable {
            liveTables[address] = owner
            freedTables.remove(address)
        }
    }

    /// A domain the driver failed to finish frees its tables: the core never saw it, so
    /// nothing attached it and no walk could reach them. Its tag must be unknown (no map).
    public func unfinishedDomainTablesFreed(ownerTag: UInt32) {
        checks &+= 1
        if let id = tableOwners[ownerTag] {
            violate("table-freed-while-reachable", "the tables of domain \(id), which mapped, were freed as those of an unfinished domain")
            return
        }
        liveTables = liveTables.filter { $0.value != ownerTag }
    }

    /// The unit read a table page during a walk: it must not be one software freed (a
    /// paging-structure cache entry kept past the free, or an entry never unlinked, leads
    /// there). `walk-through-freed-table`.
    public func tableRead(_ address: UInt64, unit: Int) {
        guard !freedTables.isEmpty, freedTables.contains(address) else { return }
        violate("walk-through-freed-table", "unit \(unit) walked through table page \(Self.hex(address)), which software freed (a paging-structure cache entry or a table entry still pointed at it)")
    }
}
