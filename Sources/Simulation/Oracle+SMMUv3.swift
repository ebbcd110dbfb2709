import Platform
import Formats
import Hardware
import Kernel

/// SMMUv3 TLB tags: an ASID (one space for every unit) or a VMID (per unit) is never handed
/// out twice, never handed out or given back while a unit's TLB still holds entries tagged
/// with it (Linux frees an ASID only after its TLBI; reuse before that lets the new domain
/// hit the old one's translations), and none is left after teardown.
extension Oracle {
    private func cached(_ unit: Int?, _ tag: TLBTag) -> Int {
        let units = unit.map { $0 < smmuUnits.count ? [smmuUnits[$0]] : [] } ?? smmuUnits
        return units.reduce(0) { n, u in
            switch tag {
            case .asid(let a): return n + u.cachedTLBEntries(asid: a)
            case .vmid(let v): return n + u.cachedTLBEntries(vmid: v)
            }
        }
    }

    private func place(_ unit: Int?) -> String { unit.map { "unit \($0)" } ?? "the ASID space" }

    public func tlbTagAllocated(driver: any IOMMUDriver, unit: Int?, tag: TLBTag) {
        guard tracks(driver) else { return }
        checks &+= 1
        if !liveTLBTags.insert(TLBTagKey(unit: unit, tag: tag)).inserted {
            violate("tlb-tag-double-allocation", "\(place(unit)) handed out \(tag) twice")
        }
        let n = cached(unit, tag)
        if n > 0 { violate("tlb-tag-reuse-while-cached", "\(place(unit)) reused \(tag) while \(n) TLB entries tagged with it remain") }
    }

    public func tlbTagReleased(driver: any IOMMUDriver, unit: Int?, tag: TLBTag) {
        guard tracks(driver) else { return }
        checks &+= 1
        liveTLBTags.remove(TLBTagKey(unit: unit, tag: tag))
        let n = cached(unit, tag)
        if n > 0 { violate("tlb-tag-released-while-cached", "\(place(unit)) released \(tag) while \(n) TLB entries tagged with it remain") }
    }

    /// After teardown: every ASID and VMID given back (quarantined ones are reported apart).
    public func checkTeardown(smmu driver: ArmSMMUv3Driver) {
        checks &+= 1
        let asids = driver.asids.allocated - driver.asids.quarantined.count
        if asids > 0 { violate("tlb-tag-leak", "\(asids) ASID(s) still allocated after teardown") }
        if !driver.asids.quarantined.isEmpty {
            violate("tlb-tag-quarantined", "\(driver.asids.quarantined.count) ASID(s) quarantined after failed invalidations")
        }
        for u in driver.units {
            let vmids = u.vmids.allocated - u.vmids.quarantined.count
            if vmids > 0 { violate("tlb-tag-leak", "unit \(u.index) still has \(vmids) VMID(s) allocated") }
            if !u.vmids.quarantined.isEmpty {
                violate("tlb-tag-quarantined", "unit \(u.index) quarantined \(u.vmids.quarantined.count) VMID(s) after failed invalidations")
            }
        }
    }
}

/// A live ASID or VMID as the oracle keys it.
struct TLBTagKey: Hashable {
    var unit: Int?
    var tag: TLBTag
}
