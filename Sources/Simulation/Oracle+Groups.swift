import Platform
import Formats
import Kernel

/// Group consistency (Linux `__iommu_group_set_domain_internal`): a group has one domain, and
/// after every change of it, successful or rolled back, every device of the group translates
/// through that domain. A device the core had to block (its rollback failed too) reaches
/// nothing, which is safe and allowed; a device left on any other domain is not.
extension Oracle {
    public func groupDomainChangeEnded(_ group: Group) {
        checks &+= 1
        let expected = ref(group.domain)
        for d in group.devices where tracks(d.driver) {
            let key = Self.key(unit: d.unit, rid: d.requesterID, pasid: 0)
            guard let current = windows[key]?.current else { continue } // blocked: reaches nothing
            if current != expected {
                violate("group-inconsistent", "\(d.name) of \(group) translates through \(describe(current)) after a change of the group's domain, which is \(group.domain.map { "\($0)" } ?? "none")")
            }
        }
    }

    private func describe(_ r: Ref) -> String {
        switch r {
        case .identity: return "the identity domain"
        case .paging(let id): return "domain \(id)"
        case .nested(let id): return "nested domain \(id)"
        }
    }
}
