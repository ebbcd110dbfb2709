import Platform
import Formats
import Kernel

/// What a failed operation must leave as it found it (fault-injection sweeps): each group's
/// domain, ownership and PASID attachments, the live domains, allocated PASIDs and the DIDs
/// in use per unit (DIDs retired after a failed invalidation excluded: retiring is the
/// designed outcome of a time-out).
struct StateSnapshot: Equatable {
    struct GroupState: Equatable {
        var id: Int
        var domain: String
        var owned: Bool
        var pasids: [String]
    }

    var groups: [GroupState]
    var liveDomains: [Int]
    var pasids: Int
    var dids: [Int]

    init(_ m: Machine) {
        func name(_ d: IOMMUDomain?) -> String {
            guard let d else { return "none" }
            return d.type.isPaging ? "domain \(d.id)" : "\(d.type)"
        }
        groups = m.core.groups.map { g in
            GroupState(id: g.id, domain: name(g.domain), owned: g.dmaOwned,
                       pasids: g.pasidDomains.sorted { $0.key < $1.key }.map { "\($0.key)→\(name($0.value))" })
        }
        liveDomains = m.core.liveDomains.keys.sorted()
        pasids = m.core.pasids.allocated
        dids = (m.vtdDriver?.units ?? []).map { $0.domainIDs.allocated - $0.domainIDs.quarantined.count }
    }

    /// What differs from `before`, in words.
    func differences(from before: StateSnapshot) -> [String] {
        var out: [String] = []
        for g in groups {
            guard let b = before.groups.first(where: { $0.id == g.id }) else { continue }
            if b.domain != g.domain { out.append("group \(g.id) moved from \(b.domain) to \(g.domain)") }
            if b.owned != g.owned { out.append("group \(g.id) DMA ownership changed") }
            if b.pasids != g.pasids { out.append("group \(g.id) PASIDs changed from [\(b.pasids.joined(separator: ", "))] to [\(g.pasids.joined(separator: ", "))]") }
        }
        if liveDomains != before.liveDomains { out.append("live domains changed from \(before.liveDomains) to \(liveDomains)") }
        if pasids != before.pasids { out.append("allocated PASIDs changed from \(before.pasids) to \(pasids)") }
        if dids != before.dids { out.append("DIDs in use changed from \(before.dids) to \(dids)") }
        return out
    }
}
