import Formats

extension VTdUnit {
    /// The paging-structure-cache side of an IOTLB invalidation (type 2, VT-d §6.5.2.3):
    /// - global: every entry;
    /// - domain-selective: second-stage and nested entries of the DID;
    /// - page-selective: with IH = 0 the second-stage entries of the DID whose span overlaps
    ///   the range; with IH = 1 (software changed only leaves) those stay. Nested entries of
    ///   the DID go in either case: they hold host-physical table addresses produced by
    ///   second-stage leaves, which a type-2 invalidation says may have changed
    ///   (over-invalidation is always allowed).
    /// First-stage (PGTT=001) entries are untouched but by the global form.
    func invalidatePagingStructures(_ g: IOTLBGranularity) {
        guard psc.enabled, psc.count > 0 else { return }
        let secondStage = PSCKind.secondStage.rawValue, nested = PSCKind.nested.rawValue
        let n: Int
        switch g {
        case .global:
            n = psc.removeAll { _ in true }
        case .domain(let did):
            n = psc.removeAll { k1 in
                let kind = PagingStructureCache.kind(k1)
                return (kind == secondStage || kind == nested) && PagingStructureCache.did(k1) == did.rawValue
            }
        case .page(let did, let address, let am, let ih):
            let nestedOfDID: ((UInt64) -> Bool)? = psc.nestedEntries == 0 ? nil : { k1 in
                PagingStructureCache.kind(k1) == nested && PagingStructureCache.did(k1) == did.rawValue
            }
            if ih {
                n = nestedOfDID.map { psc.removeAll(where: $0) } ?? 0
            } else {
                let (lo, hi) = Self.range(address, am)
                n = psc.removeOverlapping(lo: lo, hi: hi, key1: PagingStructureCache.key1(.secondStage, did: did.rawValue, pasid: 0),
                                          alsoMatch: nestedOfDID)
            }
        }
        countersStorage.pointee.pagingStructureEntriesInvalidated &+= UInt64(n)
    }

    /// The paging-structure-cache side of a PASID-based IOTLB invalidation (type 6, VT-d
    /// §6.5.2.4): PASID-selective drops the first-stage and nested entries of (DID, PASID);
    /// page-selective with IH = 0 those whose span overlaps the range, with IH = 1 none.
    /// Second-stage entries are never touched.
    func invalidatePagingStructures(did: DomainID, pasid: PASID, _ g: PASIDIOTLBGranularity) {
        guard psc.enabled, psc.count > 0 else { return }
        let fs = PagingStructureCache.key1(.firstStage, did: did.rawValue, pasid: pasid.rawValue)
        let nested = PagingStructureCache.key1(.nested, did: did.rawValue, pasid: pasid.rawValue)
        var n = 0
        switch g {
        case .pasid:
            n = psc.removeAll { k1 in k1 == fs || k1 == nested }
        case .page(let address, let am, let ih):
            guard !ih else { return }
            let (lo, hi) = Self.range(address, am)
            n = psc.removeOverlapping(lo: lo, hi: hi, key1: fs)
            if psc.nestedEntries != 0 { n += psc.removeOverlapping(lo: lo, hi: hi, key1: nested) }
        }
        countersStorage.pointee.pagingStructureEntriesInvalidated &+= UInt64(n)
    }
}
