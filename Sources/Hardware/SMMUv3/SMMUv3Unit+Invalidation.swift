// SMMUv3 configuration cache and TLB invalidation (IHI 0070 §4.3 CMD_CFGI_*, §4.4 CMD_TLBI_*,
// §16.2 caching). CFGI_STE drops the STE and every CD cached through it; CFGI_CD one CD;
// CFGI_CD_ALL the CDs of a StreamID; CFGI_ALL everything. TLB invalidations match entries by
// their architected tags: translation regime (NS-EL1 stage 1, EL2, stage 2, nested), VMID,
// ASID and input address (one address, or a range of (NUM+1) × 2^SCALE granules). Leaf and
// TTL are hints: only leaf entries are cached, so they change nothing here.
import Platform
import Formats

extension SMMUv3Unit {
    func invalidateConfiguration(sids: ClosedRange<UInt32>) {
        var n = steCache.removeAll { key0, _, _ in sids.contains(UInt32(truncatingIfNeeded: key0)) }
        n += cdCache.removeAll { key0, _, _ in sids.contains(UInt32(truncatingIfNeeded: key0)) }
        countersStorage.pointee.configEntriesInvalidated &+= UInt64(n)
    }

    func invalidateAllConfiguration() {
        var n = steCache.removeAll { _, _, _ in true }
        n += cdCache.removeAll { _, _, _ in true }
        countersStorage.pointee.configEntriesInvalidated &+= UInt64(n)
    }

    func invalidateCD(sid: UInt32, ssid: UInt32) {
        if cdCache.remove(UInt64(sid), UInt64(ssid)) { countersStorage.pointee.configEntriesInvalidated &+= 1 }
    }

    func invalidateCDs(sid: UInt32) {
        let n = cdCache.removeAll { key0, _, _ in key0 == UInt64(sid) }
        countersStorage.pointee.configEntriesInvalidated &+= UInt64(n)
    }

    /// Drops the TLB entries whose (world, VMID, ASID) tag matches.
    func invalidateTLB(_ match: (UInt64, UInt16, UInt16) -> Bool) {
        let n = tlb.removeAll { _, key1, _ in
            match((key1 >> 48) & 0xFF, UInt16(truncatingIfNeeded: key1 >> 16), UInt16(truncatingIfNeeded: key1))
        }
        noteTLBInvalidated(n)
    }

    /// Drops the matching TLB entries that overlap the address or range `r` names.
    func invalidateTLB(range r: TLBIAddress, _ match: (UInt64, UInt16, UInt16) -> Bool) {
        let lo = r.address
        let bytes = r.rangeBytes ?? 4096
        let (end, o) = lo.addingReportingOverflow(bytes)
        let hi = o ? UInt64.max : end - 1
        let n = tlb.removeAll { key0, key1, payload in
            guard match((key1 >> 48) & 0xFF, UInt16(truncatingIfNeeded: key1 >> 16), UInt16(truncatingIfNeeded: key1)) else {
                return false
            }
            let shift = UInt64(payload.pageShift)
            let start = key0 << shift
            let last = start | ((1 << shift) - 1)
            return start <= hi && last >= lo
        }
        noteTLBInvalidated(n)
    }

    /// CMD_TLBI_NH_VA (IHI 0070 §4.4.2): the NS-EL1 and nested entries of (`vmid`, `asid`)
    /// that overlap `r`. A range of at most `probeLimitPages` pages is removed by probing the
    /// tags such entries carry (each 4 KiB page, and each 2 MiB and 1 GiB block when any are
    /// cached): the entries the full scan would match, without visiting every slot.
    func invalidateTLBByVA(vmid: UInt16, asid: UInt16, range r: TLBIAddress) {
        let lo = r.address
        let (end, o) = lo.addingReportingOverflow(r.rangeBytes ?? 4096)
        guard !o, ((end - 1) >> 12) - (lo >> 12) < Self.probeLimitPages else {
            invalidateTLB(range: r) { w, v, a in (w == TLBWorld.nsEL1 || w == TLBWorld.nested) && v == vmid && a == asid }
            return
        }
        let hi = end - 1
        var n = 0
        for i in 0..<2 {
            let k1 = Self.tlbKey1(world: i == 0 ? TLBWorld.nsEL1 : TLBWorld.nested, vmid: vmid, asid: asid, sizeClass: 0)
            for page in (lo >> 12)...(hi >> 12) { if tlb.remove(page, k1) { n += 1 } }
            guard superpageEntries != 0 else { continue }
            for block in (lo >> 21)...(hi >> 21) { if tlb.remove(block, k1 | 1 << 56) { n += 1 } }
            for block in (lo >> 30)...(hi >> 30) { if tlb.remove(block, k1 | 2 << 56) { n += 1 } }
        }
        noteTLBInvalidated(n)
    }

    /// Ranges up to this many pages are invalidated by probing rather than by a full scan.
    static var probeLimitPages: UInt64 { 64 }

    func noteTLBInvalidated(_ n: Int) {
        countersStorage.pointee.tlbEntriesInvalidated &+= UInt64(n)
        if tlb.count == 0 { superpageEntries = 0 }
    }
}

extension SMMUv3Unit {
    /// How many TLB entries are tagged with `asid` (stage 1 and nested entries) or `vmid`
    /// (stage 2, nested and stage 1 entries of that VMID) right now. An inspection hook for
    /// the simulator's oracle (a tag must not be reused while entries tagged with it are
    /// cached); software never calls it.
    public func cachedTLBEntries(asid: UInt16? = nil, vmid: UInt16? = nil) -> Int {
        var n = 0
        tlb.forEach { _, key1, _ in
            let world = (key1 >> 48) & 0xFF, v = UInt16(truncatingIfNeeded: key1 >> 16), a = UInt16(truncatingIfNeeded: key1)
            if let asid, world != TLBWorld.s2, a == asid { n += 1 }
            if let vmid, world != TLBWorld.el2, v == vmid { n += 1 }
        }
        return n
    }
}
