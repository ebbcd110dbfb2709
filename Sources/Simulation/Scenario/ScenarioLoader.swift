import Yams
import Platform
import Formats
import Hardware
import Kernel

/// Reads a scenario file (YAML) into a checked `Scenario`. Every key is known, every value
/// in range and every reference names something the file declares; otherwise a
/// `ScenarioError` says where and what was expected, and nothing runs.
public enum ScenarioLoader {
    public static func load(yaml text: String, file: String) throws(ScenarioError) -> Scenario {
        // A byte-order mark (some editors write one) is not part of the YAML; editors do not
        // show it, so columns count from after it.
        let text = text.hasPrefix("\u{FEFF}") ? String(text.dropFirst()) : text
        let root: Node
        do {
            // The loader reads every scalar as text (YAMLField), never Yams's implicit tags:
            // the basic resolver skips the tag regexes that hashing keys for the duplicate
            // check runs, and an explicit encoding skips an environment lookup per load.
            guard let node = try Yams.compose(yaml: text, .basic, .default, .utf8) else {
                throw ScenarioError(file: file, line: 1, column: 1, field: "", message: "the file is empty; expected a scenario mapping")
            }
            root = node
        } catch let e as ScenarioError {
            throw e
        } catch let e as YamlError {
            throw syntaxError(e, file: file)
        } catch {
            throw ScenarioError(file: file, line: 1, column: 1, field: "", message: "not YAML: \(error)")
        }
        var p = ScenarioParser(file: file)
        return try p.scenario(YAMLField(node: root, path: "", file: file))
    }

    static func syntaxError(_ e: YamlError, file: String) -> ScenarioError {
        switch e {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            return ScenarioError(file: file, line: mark.line, column: mark.column, field: "", message: "YAML syntax: \(problem)")
        case .reader(let problem, let offset, _, let yaml):
            // The reader refuses characters YAML does not allow (NUL, other control characters).
            let (line, column) = offset.map { place(ofCharacter: $0, in: yaml) } ?? (1, 1)
            return ScenarioError(file: file, line: line, column: column, field: "", message: "YAML: \(problem)")
        case .duplicatedKeysInMapping(let keys, let context):
            // Yams refuses the mapping while composing; it marks the key's first occurrence.
            return ScenarioError(file: file, line: max(1, context.mark.line), column: max(1, context.mark.column), field: "",
                                 message: "key \(keys.map { "'\($0)'" }.joined(separator: ", ")) appears more than once in this mapping (here and again later); keys must be unique")
        default:
            return ScenarioError(file: file, line: 1, column: 1, field: "", message: "YAML: \(e)")
        }
    }

    /// Line and column (Unicode scalars, from 1) of the character at `offset` of `text`.
    static func place(ofCharacter offset: Int, in text: String) -> (line: Int, column: Int) {
        let end = text.index(text.startIndex, offsetBy: offset, limitedBy: text.endIndex) ?? text.endIndex
        var line = 1, column = 1
        for scalar in text[..<end].unicodeScalars {
            if scalar == "\n" { line += 1; column = 1 } else { column += 1 }
        }
        return (line, column)
    }
}

/// The loader's parser: one pass over the document, names resolved in a first pass.
struct ScenarioParser {
    let file: String
    var s: Scenario

    init(file: String) {
        self.file = file
        s = Scenario(name: "", description: "", file: file)
    }

    // Names declared by the file, resolved in a first pass so references may point forward.
    var unitIndex: [String: Int] = [:]
    var deviceIndex: [String: Int] = [:]
    var bufferIndex: [String: Int] = [:]
    var workloadIndex: [String: Int] = [:]
    var userDomains: Set<String> = []
    /// The device each user domain is allocated for (its unit is the one its DID is on).
    var userDomainDevice: [String: Int] = [:]
    var pasidNames: Set<String> = []
    var processNames: Set<String> = []
    var regionNames: Set<String> = []
    var bindNames: [String: Int] = [:]
    var faultQueueNames: Set<String> = []
    /// iommufd contexts, and their objects by name with their kind ("ioas", "hwpt", "fault").
    var iommufdContexts: Set<String> = []
    var iommufdObjects: [String: String] = [:]

    mutating func scenario(_ root: YAMLField) throws(ScenarioError) -> Scenario {
        let m = try root.mapping()
        s.name = try m.required("name", "the scenario's name").string()
        s.description = try m.optional("description")?.string() ?? ""
        if let f = m.optional("machine") { try machine(f) }
        let unitList = try m.required("units", "the IOMMU units").list()
        guard !unitList.isEmpty else { throw m.field.error("'units' is empty; expected at least one IOMMU unit") }
        for u in unitList { try unit(u) }
        for d in try m.required("devices", "the PCIe devices").list() { try device(d) }
        // Declarations referenced by buffers and workloads come from the actions list.
        let actionList = try m.optional("actions")?.list() ?? []
        try declare(actionList)
        let bufferList = try m.optional("buffers")?.list() ?? []
        for b in bufferList { try buffer(b) }
        let workloadList = try m.optional("workloads")?.list() ?? []
        for w in workloadList { try declareWorkload(w) }
        for w in workloadList { try workload(w) }
        try checkMemory(buffers: bufferList, workloads: workloadList)
        for a in actionList { try action(a) }
        s.actions = s.actions.enumerated().sorted { ($0.element.at, $0.offset) < ($1.element.at, $1.offset) }.map(\.element)
        if let f = m.optional("expect") { try expectations(f) }
        let lastAction = s.actions.last?.at ?? 0
        let lastStop = s.workloads.compactMap(\.stop).max() ?? 0
        if let f = m.optional("end-ns") {
            s.endNs = try f.unsigned(in: 0...(1 << 50))
            guard s.endNs >= max(lastAction, lastStop) else {
                throw f.error("expected a time no earlier than the last action or workload stop (\(max(lastAction, lastStop)) ns)")
            }
        } else {
            s.endNs = max(lastAction, lastStop)
        }
        try m.finish()
        return s
    }

    // MARK: Machine and topology

    mutating func machine(_ f: YAMLField) throws(ScenarioError) {
        let m = try f.mapping()
        if let v = m.optional("memory-mib") { s.machine.memoryMiB = try v.unsigned(in: 4...4096) }
        if let v = m.optional("cpus") { s.machine.cpus = try v.int(in: 1...256) }
        if let v = m.optional("policy") {
            s.machine.policy = DMAPolicy(rawValue: try v.oneOf(DMAPolicy.allCases.map(\.rawValue))) ?? .strict
        }
        if let v = m.optional("flush-queue") { s.machine.singleFlushQueue = try v.oneOf(["per-cpu", "single"]) == "single" }
        if let v = m.optional("paging-stage") {
            let name = try v.oneOf(["linux"] + VTdPagingStage.allCases.map(\.rawValue))
            s.machine.pagingStage = VTdPagingStage(rawValue: name)
        }
        if let v = m.optional("paging-levels") { s.machine.pagingLevels = try v.int(in: 4...5) }
        if let v = m.optional("settle-ns") { s.machine.settleNs = try v.unsigned(in: 0...(1 << 40)) }
        if let v = m.optional("max-events") {
            s.machine.maxEvents = try v.unsigned(in: 1...(1 << 50))
            s.machine.maxEventsLine = v.line
        }
        if let v = m.optional("max-wall-s") {
            s.machine.maxWallSeconds = try v.double(in: 0.001...86_400)
            s.machine.maxWallLine = v.line
        }
        if let v = m.optional("yield") {
            let y = try v.mapping()
            let p = try y.required("probability", "chance a yield point lets hardware run first").double(in: 0...1)
            let adv = try y.optional("max-advance-ns")?.unsigned(in: 0...1_000_000_000) ?? 0
            s.machine.yield = YieldPolicy(probability: p, maxAdvanceNs: adv)
            try y.finish()
        }
        try m.finish()
    }

    mutating func unit(_ f: YAMLField) throws(ScenarioError) {
        let m = try f.mapping()
        let nameField = try m.required("name", "the unit's name, e.g. dmar0")
        let name = try nameField.string()
        guard unitIndex[name] == nil else { throw nameField.error("unit '\(name)' is declared twice") }
        let typeField = m.optional("type")
        let type = try typeField?.oneOf(["vtd", "smmuv3"]) ?? "vtd"
        if let first = s.units.first, let typeField {
            let firstIsArm: Bool
            if case .smmuv3 = first.configuration { firstIsArm = true } else { firstIsArm = false }
            if firstIsArm != (type == "smmuv3") {
                throw typeField.error("unit '\(name)' is \(type) but '\(first.name)' is not: a machine's units are all VT-d or all SMMUv3")
            }
        } else if let first = s.units.first, case .smmuv3 = first.configuration {
            throw nameField.error("unit '\(name)' is VT-d but '\(first.name)' is smmuv3: a machine's units are all VT-d or all SMMUv3")
        }
        if type == "smmuv3" {
            try smmuUnit(m, name: name)
            return
        }
        var domainIDBits = 16, pasidBits = 20, faultRecords = 8
        var cachingMode = false, levels = [4, 5]
        if let v = m.optional("domain-id-bits") { domainIDBits = Int(try v.oneOf(["4", "6", "8", "10", "12", "14", "16"])) ?? 16 }
        if let v = m.optional("pasid-bits") { pasidBits = try v.int(in: 1...20) }
        if let v = m.optional("fault-records") { faultRecords = try v.int(in: 1...256) }
        if let v = m.optional("caching-mode") { cachingMode = try v.bool() }
        if let v = m.optional("levels") { levels = [try v.int(in: 4...5)] }
        var config = VTdConfiguration(name: name,
                                      capability: .make(domainIDBits: domainIDBits, sagawLevels: levels, faultRecords: faultRecords,
                                                        cachingMode: cachingMode),
                                      extendedCapability: .make(pasidBits: pasidBits))
        if let v = m.optional("iotlb-entries") { config.iotlbEntries = try v.int(in: 4...65536) }
        if let v = m.optional("iotlb-ways") { config.iotlbWays = try v.int(in: 1...64) }
        if let v = m.optional("context-cache-entries") { config.contextCacheEntries = try v.int(in: 1...65536) }
        if let v = m.optional("pasid-cache-entries") { config.pasidCacheEntries = try v.int(in: 1...65536) }
        guard config.iotlbEntries % config.iotlbWays == 0 else {
            throw f.error("iotlb-entries (\(config.iotlbEntries)) must be a multiple of iotlb-ways (\(config.iotlbWays))")
        }
        var walkAccessNs: UInt64 = 0
        if let v = m.optional("latency") {
            let l = try v.mapping()
            var lat = config.latency
            if let x = l.optional("invalidation-ns") {
                let ns = try x.unsigned(in: 0...1_000_000_000)
                for t in [InvalidationDescriptor.iotlbType, InvalidationDescriptor.pasidIOTLBType,
                          InvalidationDescriptor.deviceTLBType, InvalidationDescriptor.pasidDeviceTLBType] {
                    lat.descriptorNs[Int(t)] = ns
                }
            }
            if let x = l.optional("cache-invalidation-ns") {
                let ns = try x.unsigned(in: 0...1_000_000_000)
                lat.descriptorNs[Int(InvalidationDescriptor.contextCacheType)] = ns
                lat.descriptorNs[Int(InvalidationDescriptor.pasidCacheType)] = ns
            }
            if let x = l.optional("wait-ns") { lat.descriptorNs[Int(InvalidationDescriptor.waitType)] = try x.unsigned(in: 0...1_000_000_000) }
            if let x = l.optional("interrupt-ns") { lat.interruptNs = try x.unsigned(in: 0...1_000_000_000) }
            if let x = l.optional("walk-access-ns") { walkAccessNs = try x.unsigned(in: 0...1_000_000) }
            if let ns = try Self.linkNs(l) { lat.linkNs = ns }
            if let x = l.optional("device-tlb-invalidation-ns") { lat.deviceTLBInvalidationNs = try x.unsigned(in: 0...1_000_000_000) }
            if let x = l.optional("page-request-internal-ns") { lat.pageRequestInternalNs = try x.unsigned(in: 0...1_000_000) }
            try l.finish()
            config.latency = lat
        }
        try m.finish()
        unitIndex[name] = s.units.count
        s.units.append(.init(name: name, configuration: .vtd(config), walkAccessNs: walkAccessNs))
    }

    /// The PCIe link between unit and devices, one way (`link-ns`, or `pri-round-trip-ns`,
    /// which crosses it twice), when the latency mapping gives it.
    static func linkNs(_ l: YAMLMapping) throws(ScenarioError) -> UInt64? {
        if let x = l.optional("pri-round-trip-ns") {
            guard l.optional("link-ns") == nil else { throw x.error("give link-ns or pri-round-trip-ns, not both") }
            return try x.unsigned(in: 0...2_000_000_000) / 2
        }
        return try l.optional("link-ns")?.unsigned(in: 0...1_000_000_000)
    }

    static func parseRID(_ text: String) -> RequesterID? {
        // bb:dd.f
        let parts = text.split(separator: ":")
        guard parts.count == 2, let bus = UInt8(parts[0], radix: 16) else { return nil }
        let df = parts[1].split(separator: ".")
        guard df.count == 2, let dev = UInt8(df[0], radix: 16), dev < 32, let fn = UInt8(df[1], radix: 16), fn < 8 else { return nil }
        return RequesterID(bus: bus, device: dev, function: fn)
    }

    mutating func device(_ f: YAMLField) throws(ScenarioError) {
        let m = try f.mapping()
        let nameField = try m.required("name", "the device's name")
        let name = try nameField.string()
        guard deviceIndex[name] == nil else { throw nameField.error("device '\(name)' is declared twice") }
        let ridField = try m.required("rid", "the requester ID as bus:device.function, e.g. 00:02.0")
        guard let rid = Self.parseRID(try ridField.string()) else {
            throw ridField.error("expected a requester ID as bus:device.function in hex (e.g. 00:02.0), got '\(try ridField.string())'")
        }
        if let other = s.devices.first(where: { $0.description.requesterID == rid }) {
            throw ridField.error("requester ID \(rid) is already \(other.description.name)'s")
        }
        let unitField = try m.required("unit", "the IOMMU unit it sits behind")
        let unitName = try unitField.string()
        guard let unit = unitIndex[unitName] else { throw unitField.error("no unit named '\(unitName)'; units: \(s.units.map(\.name).joined(separator: ", "))") }
        let group = try m.optional("group")?.string()
        let pasids = try m.optional("pasids")?.unsigned(in: 0...(1 << 20)) ?? 0
        let ats = try m.optional("ats")?.bool() ?? false
        let pri = try m.optional("pri")?.bool() ?? false
        if pri && !ats { throw f.error("pri needs ats (a page request is answered by a retried ATS translation)") }
        let untrusted = try m.optional("untrusted")?.bool() ?? false
        // Linux `dma-can-stall`: an SMMUv3 may hold the device's faulting transactions (stall
        // model) until software resumes them. PCIe devices cannot (a completion timeout).
        var canStall = false
        if let v = m.optional("can-stall") {
            canStall = try v.bool()
            if canStall && !s.isArm { throw v.error("can-stall needs an SMMUv3 unit (type: smmuv3): VT-d has no stall model") }
            if canStall && (ats || pri) { throw v.error("a device that can stall is a platform device: no ats or pri (Linux disables stalls for PCI masters)") }
        }
        let maskBits = try m.optional("dma-mask-bits")?.int(in: 12...64) ?? 64
        var preferred: DomainType?
        if let v = m.optional("default-domain") {
            switch try v.oneOf(["auto", "identity", "dma"]) {
            case "identity": preferred = .identity
            case "dma": preferred = .dma
            default: preferred = nil
            }
        }
        let mps = try m.optional("max-payload")?.oneOf(["128", "256", "512", "1024", "2048", "4096"]) ?? "256"
        let mrrs = try m.optional("max-read-request")?.oneOf(["128", "256", "512", "1024", "2048", "4096"]) ?? "512"
        var atsConfig = ATSConfiguration(enabled: ats)
        var priConfig = PRIConfiguration(enabled: pri)
        if let v = m.optional("device-tlb-entries") {
            guard ats else { throw v.error("device-tlb-entries needs ats: true") }
            atsConfig.deviceTLBEntries = try v.int(in: 4...65536)
            guard atsConfig.deviceTLBEntries % atsConfig.deviceTLBWays == 0 else { throw v.error("expected a multiple of \(atsConfig.deviceTLBWays)") }
        }
        for key in ["credits", "pages-per-group", "retry-limit", "request-spacing-ns", "prg-index", "misbehaviour"] where !pri {
            if let v = m.optional(key) { throw v.error("\(key) needs pri: true") }
        }
        // PCIe PRI capability: the Outstanding Page Request Allocation (a 32-bit register;
        // capped here at what a run can hold).
        if let v = m.optional("credits") { priConfig.credits = try v.int(in: 1...65536) }
        if let v = m.optional("pages-per-group") { priConfig.maxPagesPerGroup = try v.int(in: 1...512) }
        if let v = m.optional("retry-limit") { priConfig.retryLimit = try v.int(in: 1...1024) }
        if let v = m.optional("request-spacing-ns") { priConfig.requestSpacingNs = try v.unsigned(in: 0...1_000_000) }
        if let v = m.optional("prg-index") { priConfig.lowestFreeGroupIndex = try v.oneOf(["round-robin", "lowest-free"]) == "lowest-free" }
        var misbehaviour: Misbehaviour = []
        if let v = m.optional("misbehaviour") {
            let kinds: [String: Misbehaviour] = ["exceed-credits": .exceedCredits, "reuse-group-indices": .reuseGroupIndices,
                                                 "unsolicited-completions": .unsolicitedCompletions,
                                                 "requests-after-stop": .requestsAfterStop, "all": .all]
            for k in try v.listOrOne() { misbehaviour.formUnion(kinds[try k.oneOf(kinds.keys.sorted())] ?? []) }
        }
        try m.finish()
        deviceIndex[name] = s.devices.count
        s.devices.append(.init(description: DeviceDescription(name: name, requesterID: rid, unit: unit, groupKey: group, maxPASIDs: UInt32(pasids),
                                                              ats: ats, pri: pri, untrusted: untrusted, preferredDomain: preferred,
                                                              canStall: canStall),
                               unitName: unitName, maxPayload: Int(mps) ?? 256, maxReadRequest: Int(mrrs) ?? 512,
                               ats: atsConfig, pri: priConfig, misbehaviour: misbehaviour, dmaMaskBits: maskBits))
    }

    // MARK: References

    func deviceRef(_ f: YAMLField) throws(ScenarioError) -> Int {
        let n = try f.string()
        guard let i = deviceIndex[n] else { throw f.error("no device named '\(n)'; devices: \(s.devices.map(\.description.name).joined(separator: ", "))") }
        return i
    }

    /// A domain reference: a device name (its default domain) or a user domain.
    func domainRef(_ f: YAMLField, userOnly: Bool = false) throws(ScenarioError) -> String {
        let n = try f.string()
        if userDomains.contains(n) { return n }
        if !userOnly, deviceIndex[n] != nil { return n }
        let choices = userOnly ? userDomains.sorted() : userDomains.sorted() + s.devices.map(\.description.name)
        throw f.error("no \(userOnly ? "user " : "")domain named '\(n)' (user domains come from alloc-domain actions\(userOnly ? "" : "; a device name means its default domain")); known: \(choices.joined(separator: ", "))")
    }

    /// A PASID from alloc-pasid by name, or a PASID value (a VMM's guest picks its own, and
    /// attaches it through iommufd): `#N`.
    func pasidRef(_ f: YAMLField) throws(ScenarioError) -> String {
        let n = try f.string()
        if let v = UInt32(n), (1...0xFFFFF).contains(v) { return "#\(v)" }
        guard pasidNames.contains(n) else { throw f.error("no PASID named '\(n)' (PASIDs come from alloc-pasid actions)") }
        return n
    }

    /// A fault-injection point by name: one the code consults (`FaultPoint.all`).
    static func faultPoint(_ f: YAMLField) throws(ScenarioError) -> FaultPoint {
        let n = try f.string()
        guard let p = FaultPoint.named(n) else {
            throw f.error("no fault point named '\(n)'; points: \(FaultPoint.all.map(\.name).joined(separator: ", "))")
        }
        return p
    }

    /// `access: rw | read | write`.
    static func access(_ f: YAMLField) throws(ScenarioError) -> PagePermissions {
        switch try f.oneOf(["rw", "read", "write"]) {
        case "read": .read
        case "write": .write
        default: .readWrite
        }
    }

    /// `direction: read | write | both` of a device stream.
    static func direction(_ f: YAMLField) throws(ScenarioError) -> Scenario.Direction {
        Scenario.Direction(rawValue: try f.oneOf(["read", "write", "both"])) ?? .both
    }

    func nameRef(_ f: YAMLField, in names: Set<String>, what: String, from: String) throws(ScenarioError) -> String {
        let n = try f.string()
        guard names.contains(n) else {
            throw f.error("no \(what) named '\(n)' (\(what)s come from \(from) actions)\(names.isEmpty ? "" : "; known: \(names.sorted().joined(separator: ", "))")")
        }
        return n
    }

    func bindRef(_ f: YAMLField) throws(ScenarioError) -> String {
        try nameRef(f, in: Set(bindNames.keys), what: "SVA bind", from: "sva-bind")
    }

    func bufferRef(_ f: YAMLField) throws(ScenarioError) -> Int {
        let n = try f.string()
        guard let i = bufferIndex[n] else { throw f.error("no buffer set named '\(n)'; buffers: \(s.buffers.map(\.name).joined(separator: ", "))") }
        return i
    }

    func workloadRef(_ f: YAMLField) throws(ScenarioError) -> Int {
        let n = try f.string()
        guard let i = workloadIndex[n] else { throw f.error("no workload named '\(n)'") }
        return i
    }

    func source(_ f: YAMLField) -> Scenario.Source { .init(file: file, line: f.line) }

    // MARK: Buffers and workloads

    mutating func buffer(_ f: YAMLField) throws(ScenarioError) {
        let m = try f.mapping()
        let nameField = try m.required("name", "the buffer set's name")
        let name = try nameField.string()
        guard bufferIndex[name] == nil else { throw nameField.error("buffer set '\(name)' is declared twice") }
        let domain = try domainRef(try m.required("domain", "a device (its default domain) or a user domain"))
        var like: Int?
        if let v = m.optional("like") { like = try bufferRef(v) }
        let base = like.map { s.buffers[$0] }
        let iova = try m.optional("iova")?.unsigned(in: 0...(1 << 56)) ?? base?.iova ?? 0
        guard iova & 0xFFF == 0 else { throw f.error("iova must be 4 KiB aligned") }
        let count = try m.optional("count")?.int(in: 1...4096) ?? base?.count ?? 1
        let pages = try m.optional("pages")?.int(in: 1...4096) ?? base?.pages ?? 1
        let stride = try m.optional("stride")?.unsigned(in: 0x1000...(1 << 40)) ?? base?.stride ?? UInt64(pages) * 4096
        guard stride & 0xFFF == 0, stride >= UInt64(pages) * 4096 else {
            throw f.error("stride must be 4 KiB aligned and at least pages × 4096 (\(pages * 4096))")
        }
        guard iova + stride * UInt64(count) <= 1 << 57 else { throw f.error("the set reaches beyond a 57-bit address space") }
        let perms = try m.optional("access").map(Self.access) ?? base?.permissions ?? .readWrite
        if let like, base.map({ $0.count != count || $0.pages != pages }) ?? false {
            throw f.error("a set 'like' \(s.buffers[like].name) shares its frames: count and pages must match")
        }
        try m.finish()
        bufferIndex[name] = s.buffers.count
        s.buffers.append(.init(name: name, domain: domain, iova: iova, count: count, pages: pages, stride: stride,
                               permissions: perms, like: like, source: source(f)))
    }

    func devName(_ i: Int) -> String { s.devices[i].description.name }
    func workloadName(_ i: Int) -> String { workloadIndex.first { $0.value == i }?.key ?? "workload \(i)" }
}
