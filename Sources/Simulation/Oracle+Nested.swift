import Platform
import Formats
import Hardware
import Kernel

/// Nested translations: what a device reaches through a nested domain must be the guest's
/// first stage, read from the guest's tables in memory (every table address translated by
/// the parent), composed with the parent's second stage as the oracle knows it (so a
/// parent mapping being unmapped, deferred or abandoned still counts, as for any domain).
/// A guest unmap allows the old translation only while it runs (its table write, then its
/// invalidation through HWPT_INVALIDATE); a device reaching it after that is a
/// `stale-translation`, and anything else the composition does not give is
/// `nested-composition`.
extension Oracle {
    struct NestedState {
        struct Stage1 { var parent: Int; var root: UInt64; var levels: Int; var format: NestedStage1.Format = .x86FirstStage }
        /// Nested domain → its first stage.
        var stage1: [Int: Stage1] = [:]
        /// Per nested domain, GVA page → the translation a running guest unmap removes.
        var unmapping: [Int: [UInt64: (gpa: UInt64, writable: Bool)]] = [:]
        /// Per nested domain, GVA pages a running guest map is filling (faults expected).
        var mapping: [Int: Set<UInt64>] = [:]
        /// Per nested domain, translations guest unmaps removed (for reports), GVA page → GPA.
        var removed: [Int: [UInt64: UInt64]] = [:]
        /// Per nested domain, translations whose guest unmap could not invalidate (the
        /// forwarded HWPT_INVALIDATE failed): the unit may use them until a later
        /// invalidation of the page succeeds.
        var abandoned: [Int: [UInt64: (gpa: UInt64, writable: Bool)]] = [:]
        /// Per nested domain, whether its guest table still holds exactly what the guest
        /// wrote (the scenario's guest role keeps its own record).
        var tableIntact: [Int: () -> Bool] = [:]
        /// Nested domains whose guest table something other than the guest wrote.
        var overwritten: Set<Int> = []

        mutating func forget(_ id: Int) {
            stage1[id] = nil; unmapping[id] = nil; mapping[id] = nil; removed[id] = nil; abandoned[id] = nil
            tableIntact[id] = nil; overwritten.remove(id)
        }
    }

    func noteNested(_ d: IOMMUDomain) {
        guard nested.stage1[d.id] == nil, let s = d.nestedStage1 else { return }
        nested.stage1[d.id] = NestedState.Stage1(parent: s.parent.id, root: s.tableAddress, levels: s.levels, format: s.format)
    }

    /// The guest's translation of `gva`, walking its tables as they are in memory now: the
    /// GPA, whether every level allows writes, and whether every level allows user (not
    /// privileged) requests (U/S); nil where the walk ends in a hole, reserved bits, or a
    /// table page the parent does not map.
    func guestTranslation(_ s: NestedState.Stage1, _ gva: UInt64) -> (gpa: UInt64, writable: Bool, user: Bool)? {
        switch s.format {
        case .x86FirstStage: break
        case .armCDTable(let twoLevel): return armGuestTranslation(s, gva, twoLevel: twoLevel)
        case .bypass: return (gva, true, true)
        case .abort: return nil
        }
        var table = s.root
        var level = s.levels
        var writable = true, user = true
        let mask = PageTableGeometry.addressMask(width: 52)
        while level >= 1 {
            let entry = table &+ PageTableGeometry.index(gva, level: level) * 8
            guard let r = shadows[s.parent]?.lookup(entry), r.permissions.contains(.read),
                  let raw = try? platform.memory.load64(r.physical &+ (entry &- r.start)) else { return nil }
            let e = FirstStageFormat.decode(raw, level: level, addressMask: mask)
            guard e.present, !e.reserved else { return nil }
            if !e.permissions.contains(.write) { writable = false }
            if !e.permissions.contains(.user) { user = false }
            if e.leaf {
                let span = PageTableGeometry.span(level: level)
                return ((e.address & ~(span - 1)) | (gva & (span - 1)), writable, user)
            }
            table = e.address
            level -= 1
        }
        return nil
    }

    /// The guest-physical address through which a nested access of `iova` can reach
    /// `physical`: the guest's translation now, or one a guest unmap is removing or could
    /// not invalidate, composed with what the parent permits.
    func nestedPath(_ id: Int, iova: UInt64, physical: UInt64, access: DMAAccess) -> UInt64? {
        guard let s = nested.stage1[id] else { return nil }
        let write = access.contains(.write)
        var candidates: [(gpa: UInt64, writable: Bool)] = []
        if let t = guestTranslation(s, iova) { candidates.append((t.gpa, t.writable)) }
        if let old = nested.unmapping[id]?[iova >> 12] { candidates.append((old.gpa | (iova & 0xFFF), old.writable)) }
        if let old = nested.abandoned[id]?[iova >> 12] { candidates.append((old.gpa | (iova & 0xFFF), old.writable)) }
        for c in candidates where c.writable || !write {
            if permits(.paging(s.parent), iova: c.gpa, physical: physical, access: access) { return c.gpa }
        }
        return nil
    }

    func permitsNested(_ id: Int, iova: UInt64, physical: UInt64, access: DMAAccess) -> Bool {
        nestedPath(id, iova: iova, physical: physical, access: access) != nil
    }

    /// Where the nested domain settles `iova` for `access`: the guest's translation (not
    /// being changed) composed with the parent's settled mapping; nil when either refuses.
    func nestedSettledTarget(_ id: Int, iova: UInt64, access: DMAAccess) -> UInt64? {
        guard let s = nested.stage1[id] else { return nil }
        let page = iova >> 12
        if nested.unmapping[id]?[page] != nil || nested.mapping[id]?.contains(page) == true { return nil }
        // A user request (every request without PASID, or without PMR) needs U/S at every level.
        guard let t = guestTranslation(s, iova), t.writable || !access.contains(.write),
              t.user || access.contains(.privileged) else { return nil }
        return settledTarget(.paging(s.parent), iova: t.gpa, access: access)
    }

    /// Whether `physical` is what `iova` gave before a guest unmap, or what the guest's GPA
    /// gave before the parent unmapped it: a stale translation rather than a wrong one.
    func nestedStale(_ id: Int, iova: UInt64, physical: UInt64) -> Bool {
        guard let s = nested.stage1[id] else { return false }
        var gpas: [UInt64] = []
        if let g = nested.removed[id]?[iova >> 12] { gpas.append(g | (iova & 0xFFF)) }
        if let t = guestTranslation(s, iova) { gpas.append(t.gpa) }
        for g in gpas {
            if let r = shadows[s.parent]?.lookup(g), r.physical &+ (g - r.start) == physical { return true }
            if let r = graveyards[s.parent]?.lookup(g), r.physical &+ (g - r.start) == physical { return true }
        }
        return false
    }

    /// A write through a nested domain dirties the parent's guest-physical page it went through.
    func noteNestedDirtyWrite(_ id: Int, address: UInt64, physical: UInt64, length: UInt64) {
        guard let s = nested.stage1[id], let gpa = nestedPath(id, iova: address, physical: physical, access: .write) else { return }
        noteDirtyWrite(domain: s.parent, address: gpa, length: length)
    }

    // MARK: The guest's side (the scenario's guest role tells what it is about to change)

    /// The guest that owns `domain`'s first-stage table can tell whether the table still
    /// holds what it wrote.
    public func guestTableBuilt(_ domain: IOMMUDomain, intact: @escaping () -> Bool) {
        noteNested(domain)
        nested.tableIntact[domain.id] = intact
    }

    /// Whether nested domain `id`'s guest table was written by someone other than its guest
    /// (a device given the guest's own table pages, e.g. through the nest parent at IOVA =
    /// GPA): the guest's bug, reported once as `guest-table-overwritten`. The unit may then
    /// use cached translations the tables no longer give, or walk garbage, and either is
    /// right (VT-d §6.5: software must invalidate after changing a present entry), so the
    /// domain's translations are not judged from then on. Asked only where a nested access
    /// would otherwise be a violation.
    func guestTableOverwritten(_ id: Int, by who: String) -> Bool {
        if nested.overwritten.contains(id) { return true }
        guard let intact = nested.tableIntact[id], !intact() else { return false }
        nested.overwritten.insert(id)
        violate("guest-table-overwritten", "the guest table of nested domain \(id) no longer holds what its guest wrote (seen when \(who) used it): a device wrote the guest's own page-table pages, the guest's bug; the domain's translations are not judged from here on")
        return true
    }

    /// A guest unmap of `pages` pages from `gva` begins: until it ends, the translations the
    /// guest tables give now stay permitted.
    public func guestUnmapBegan(_ domain: IOMMUDomain, gva: UInt64, pages: Int) {
        noteNested(domain)
        guard let s = nested.stage1[domain.id] else { return }
        generation &+= 1
        var u = nested.unmapping[domain.id] ?? [:]
        for i in 0..<UInt64(pages) {
            let page = (gva >> 12) &+ i
            if let t = guestTranslation(s, page << 12) { u[page] = (t.gpa & ~0xFFF, t.writable) }
        }
        nested.unmapping[domain.id] = u
    }

    /// The guest unmap ended. `invalidated`: its invalidation returned success, or the guest
    /// skipped it (claiming it done): the old translations are no longer permitted. A
    /// failed invalidation leaves them permitted until a later one of the page succeeds.
    public func guestUnmapEnded(_ domain: IOMMUDomain, gva: UInt64, pages: Int, invalidated: Bool) {
        generation &+= 1
        for i in 0..<UInt64(pages) {
            let page = (gva >> 12) &+ i
            guard let old = nested.unmapping[domain.id]?.removeValue(forKey: page) else {
                if invalidated { nested.abandoned[domain.id]?[page] = nil }
                continue
            }
            if invalidated {
                nested.removed[domain.id, default: [:]][page] = old.gpa
                nested.abandoned[domain.id]?[page] = nil
            } else {
                nested.abandoned[domain.id, default: [:]][page] = old
            }
        }
    }

    /// A guest map of `pages` pages from `gva` begins or ends: faults there are expected
    /// while it runs.
    public func guestMapBegan(_ domain: IOMMUDomain, gva: UInt64, pages: Int) {
        noteNested(domain)
        generation &+= 1
        for i in 0..<UInt64(pages) { nested.mapping[domain.id, default: []].insert((gva >> 12) &+ i) }
    }

    public func guestMapEnded(_ domain: IOMMUDomain, gva: UInt64, pages: Int) {
        generation &+= 1
        for i in 0..<UInt64(pages) {
            let page = (gva >> 12) &+ i
            nested.mapping[domain.id]?.remove(page)
            nested.removed[domain.id]?[page] = nil
        }
    }
}

extension Oracle {
    /// A guest-physical u64 as the parent maps it now (nil where it does not, readably).
    func guestLoad64(_ s: NestedState.Stage1, _ gpa: UInt64) -> UInt64? {
        guard let r = shadows[s.parent]?.lookup(gpa), r.permissions.contains(.read) else { return nil }
        return try? platform.memory.load64(r.physical &+ (gpa &- r.start))
    }

    /// An SMMUv3 guest's stage 1 for the RID (SubstreamID 0): CD 0 of its CD table (through
    /// the L1CD when 2-level), then its VMSAv8-64 tables from TTB0 (T0SZ gives the levels),
    /// every address read through the parent (IHI 0070 §3.3.2, §5.4).
    func armGuestTranslation(_ s: NestedState.Stage1, _ gva: UInt64, twoLevel: Bool) -> (gpa: UInt64, writable: Bool, user: Bool)? {
        var cdAddress = s.root
        if twoLevel {
            guard let l1 = guestLoad64(s, s.root), l1 & 1 != 0 else { return nil }
            cdAddress = l1 & PageTableGeometry.addressMask(width: 52) & ~0xFFF
        }
        var cd = ContextDescriptor()
        for i in 0..<4 {
            guard let w = guestLoad64(s, cdAddress &+ UInt64(i) * 8) else { return nil }
            cd.data[i] = w
        }
        guard cd.valid, !cd.epd0, cd.t0sz >= 16, cd.t0sz <= 39 else { return nil }
        let ia = 64 - Int(cd.t0sz)
        guard gva >> UInt64(ia) == 0 else { return nil }
        var level = (ia - 12 + 8) / 9
        var table = cd.ttb0 & PageTableGeometry.addressMask(width: 52) & ~0xFFF
        var writable = true, user = true
        let mask = PageTableGeometry.addressMask(width: 52)
        while level >= 1 {
            guard let raw = guestLoad64(s, table &+ PageTableGeometry.index(gva, level: level) * 8) else { return nil }
            let e = ArmStage1Format.decode(raw, level: level, addressMask: mask)
            guard e.present, !e.reserved else { return nil }
            if !e.permissions.contains(.write) { writable = false }
            if e.leaf {
                if !e.permissions.contains(.user) { user = false }
                let span = PageTableGeometry.span(level: level)
                return ((e.address & ~(span - 1)) | (gva & (span - 1)), writable, user)
            }
            table = e.address
            level -= 1
        }
        return nil
    }
}
