import Yams
import Platform
import Formats
import Hardware
import Kernel

extension ScenarioParser {
    // MARK: Expectations

    mutating func expectations(_ f: YAMLField) throws(ScenarioError) {
        let m = try f.mapping()
        if let v = m.optional("violations") { s.expect.violations = v.scalarText == "any" ? nil : try v.int(in: 0...Int(Int32.max)) }
        if let v = m.optional("frames-left") { s.expect.framesLeft = try v.int(in: 0...Int(Int32.max)) }
        if let v = m.optional("min-translations") { s.expect.minTranslations = try v.unsigned() }
        if let v = m.optional("faults") {
            for e in try v.list() {
                let em = try e.mapping()
                let d = try deviceRef(try em.required("device", "the device"))
                let lo = try em.optional("at-least")?.int(in: 0...Int(Int32.max)) ?? 0
                let hi = try em.optional("at-most")?.int(in: lo...Int(Int32.max))
                try em.finish()
                s.expect.faults.append(.init(device: d, atLeast: lo, atMost: hi))
            }
        }
        if let v = m.optional("counters") {
            let c = try v.mapping()
            for key in c.keys {
                guard let f = c.optional(key) else { continue }
                guard RunResult.pageFaultCounterNames.contains(key) else {
                    throw f.error("no counter named '\(key)'; counters: \(RunResult.pageFaultCounterNames.joined(separator: ", "))")
                }
                let (lo, hi) = try Self.bound(f)
                s.expect.counters.append(.init(name: key, atLeast: lo, atMost: hi))
            }
            try c.finish()
        }
        let scopes: [(String, Scenario.ScopedCounterExpectation.Scope, [String], [String])] = [
            ("device-counters", .device, s.devices.map(\.description.name), RunResult.deviceCounterNames),
            ("unit-counters", .unit, s.units.map(\.name), s.isArm ? RunResult.smmuUnitCounterNames : RunResult.unitCounterNames),
            ("queue-counters", .queue, faultQueueNames.sorted(), RunResult.queueCounterNames),
        ]
        for (key, scope, owners, names) in scopes {
            if let v = m.optional(key) { try scopedCounters(v, scope: scope, owners: owners, names: names) }
        }
        if let v = m.optional("domains") { try domainIDs(v) }
        if let v = m.optional("pasids") { try pasidValues(v) }
        try m.finish()
    }

    /// `{at-least: a, at-most: b}` (either may be left out), or a number: exactly that.
    static func bound(_ f: YAMLField) throws(ScenarioError) -> (atLeast: UInt64, atMost: UInt64?) {
        if f.scalarText != nil {
            let v = try f.unsigned()
            return (v, v)
        }
        let b = try f.mapping()
        let lo = try b.optional("at-least")?.unsigned() ?? 0
        let hi = try b.optional("at-most")?.unsigned(in: lo...UInt64.max)
        try b.finish()
        return (lo, hi)
    }

    /// `device-counters: {nic0: {requests: {at-least: 1}}}` and the unit and queue forms.
    mutating func scopedCounters(_ f: YAMLField, scope: Scenario.ScopedCounterExpectation.Scope, owners: [String],
                                 names: [String]) throws(ScenarioError) {
        let byOwner = try f.mapping()
        for owner in byOwner.keys {
            guard let of = byOwner.optional(owner) else { continue }
            guard owners.contains(owner) else {
                throw of.error("no \(scope.rawValue) named '\(owner)'\(owners.isEmpty ? "" : "; \(scope.rawValue)s: \(owners.joined(separator: ", "))")")
            }
            let counters = try of.mapping()
            for name in counters.keys {
                guard let cf = counters.optional(name) else { continue }
                guard names.contains(name) else {
                    throw cf.error("no \(scope.rawValue) counter named '\(name)'; counters: \(names.joined(separator: ", "))")
                }
                let (lo, hi) = try Self.bound(cf)
                s.expect.scopedCounters.append(.init(scope: scope, owner: owner, name: name, atLeast: lo, atMost: hi))
            }
            try counters.finish()
        }
        try byOwner.finish()
    }

    /// `domains: {A: {did: 2}}`: the DID a domain got first, on the unit of the device it is
    /// allocated for (a user domain) or is the default domain of (a device name), or `unit`.
    mutating func domainIDs(_ f: YAMLField) throws(ScenarioError) {
        let byDomain = try f.mapping()
        for name in byDomain.keys {
            guard let df = byDomain.optional(name) else { continue }
            let domain = try domainRef(byDomain.keyField(name) ?? df)
            let d = try df.mapping()
            let did = try d.required("did", "the DID the domain gets (2...65535; 0 and 1 are reserved)").unsigned(in: 2...65535)
            var unit = deviceIndex[domain].map { s.devices[$0].description.unit } ?? userDomainDevice[domain].map { s.devices[$0].description.unit } ?? 0
            if let uf = d.optional("unit") {
                let n = try uf.string()
                guard let u = unitIndex[n] else { throw uf.error("no unit named '\(n)'; units: \(s.units.map(\.name).joined(separator: ", "))") }
                unit = u
            }
            try d.finish()
            s.expect.domainIDs.append(.init(domain: domain, unit: unit, did: UInt16(did)))
        }
        try byDomain.finish()
    }

    /// `pasids: {p1: 1}`: the value an alloc-pasid (or sva-bind) name got.
    mutating func pasidValues(_ f: YAMLField) throws(ScenarioError) {
        let byName = try f.mapping()
        for name in byName.keys {
            guard let pf = byName.optional(name) else { continue }
            guard pasidNames.contains(name) || bindNames[name] != nil else {
                let known = (pasidNames.sorted() + bindNames.keys.sorted()).joined(separator: ", ")
                throw pf.error("no PASID or SVA bind named '\(name)' (they come from alloc-pasid and sva-bind actions)\(known.isEmpty ? "" : "; known: \(known)")")
            }
            let value = try pf.unsigned(in: 1...((1 << 20) - 1))
            s.expect.pasids.append(.init(name: name, value: UInt32(value)))
        }
        try byName.finish()
    }
}
