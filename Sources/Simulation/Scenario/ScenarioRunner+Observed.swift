import Platform
import Formats
import Kernel

// What the run saw of named objects, for the report and `expect.domains` / `pasids` /
// `queue-counters`: the DIDs each named domain got, the PASID values names got, and each
// fault queue's figures.
extension ScenarioRunner {
    /// Notes the DIDs named domains hold now (after probe and after each action): user
    /// domains by name, default domains by their devices' names. A DID is noted once per
    /// domain and unit, in the order first seen.
    func observeDomainIDs() {
        var named: [(String, IOMMUDomain)] = userDomains.map { ($0.key, $0.value) }
        for (i, dev) in devices.enumerated() {
            if let d = dev.group?.defaultDomain { named.append((scenario.devices[i].description.name, d)) }
        }
        for (name, d) in named {
            for u in 0..<m.units.count {
                guard let did = m.vtdDriver?.domainID(of: d, onUnit: u)?.rawValue else { continue }
                if !(observedDIDs[name]?[u]?.contains(did) ?? false) { observedDIDs[name, default: [:]][u, default: []].append(did) }
            }
        }
    }

    /// Notes the PASID value `name` (an alloc-pasid or sva-bind name) got first.
    func observePASID(_ name: String, _ pasid: PASID) {
        if observedPASIDs[name] == nil { observedPASIDs[name] = pasid.rawValue }
    }

    var domainIDRecords: [RunResult.DomainIDs] {
        observedDIDs.keys.sorted().flatMap { name in
            (observedDIDs[name] ?? [:]).keys.sorted().map { u in
                RunResult.DomainIDs(domain: name, unit: scenario.units[u].name, dids: observedDIDs[name]?[u] ?? [])
            }
        }
    }

    var pasidRecords: [(name: String, value: UInt32)] { observedPASIDs.sorted { $0.key < $1.key }.map { ($0.key, $0.value) } }

    /// Each allocated fault queue's figures (`RunResult.queueCounterNames`).
    var queueCounters: [CounterGroup] {
        faultQueues.keys.sorted().compactMap { name in
            guard let q = faultQueues[name] else { return nil }
            let handlers = faultHandlers.compactMap { $0 }.filter { $0.spec.queue == name }
            let values = [UInt64(q.groupsDelivered), UInt64(q.autoResponses),
                          UInt64(handlers.reduce(0) { $0 + $1.groupsServed }), UInt64(handlers.reduce(0) { $0 + $1.groupsRefused })]
            return CounterGroup(owner: name, counters: zip(RunResult.queueCounterNames, values).map { ($0, $1) })
        }
    }
}
