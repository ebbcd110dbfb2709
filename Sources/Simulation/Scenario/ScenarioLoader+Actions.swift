import Yams
import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD

// `actions:` entries: the names they declare (a first pass) and each action.
extension ScenarioParser {
    static let actionKinds = ["alloc-domain", "free-domain", "map", "unmap", "claim-owner", "release-owner", "attach", "replace",
                              "detach", "alloc-pasid", "free-pasid", "attach-pasid", "replace-pasid", "detach-pasid", "reset", "remove-device",
                              "dma", "dma-burst", "start", "stop", "retarget", "inject", "descriptor-fault",
                              "create-process", "mmap", "munmap", "exit", "sva-bind", "sva-unbind", "alloc-fault-queue",
                              "close-fault-queue"] + iommufdKinds

    /// First pass: the names alloc-domain, alloc-pasid, create-process, mmap, sva-bind and
    /// alloc-fault-queue declare.
    mutating func declare(_ list: [YAMLField]) throws(ScenarioError) {
        let declaring: Set<String> = ["alloc-domain", "alloc-pasid", "create-process", "mmap", "sva-bind", "alloc-fault-queue",
                                      "iommufd-open", "ioas-alloc", "hwpt-alloc", "fault-alloc", "guest-table"]
        for f in list {
            guard case .mapping(let m) = f.node else { continue }
            for (k, v) in m where k.string == "do" {
                let field = YAMLField(node: v, path: "\(f.path).do", file: file)
                guard let kind = field.scalarText, declaring.contains(kind) else { continue }
                guard let nameNode = m["name"] else { continue }
                let nf = YAMLField(node: nameNode, path: "\(f.path).name", file: file)
                let name = try nf.string()
                switch kind {
                case "alloc-domain":
                    guard deviceIndex[name] == nil else { throw nf.error("'\(name)' is a device name; a user domain needs its own name") }
                    guard userDomains.insert(name).inserted else { throw nf.error("domain '\(name)' is allocated twice") }
                    if let dn = m["device"]?.string, let d = deviceIndex[dn] { userDomainDevice[name] = d }
                case "alloc-pasid":
                    guard pasidNames.insert(name).inserted else { throw nf.error("PASID '\(name)' is allocated twice") }
                case "create-process":
                    guard processNames.insert(name).inserted else { throw nf.error("process '\(name)' is created twice") }
                case "mmap":
                    guard regionNames.insert(name).inserted else { throw nf.error("region '\(name)' is mapped twice") }
                case "iommufd-open", "ioas-alloc", "hwpt-alloc", "fault-alloc", "guest-table":
                    try declareIOMMUFD(kind, name, nf)
                case "sva-bind":
                    guard bindNames[name] == nil else { throw nf.error("SVA bind '\(name)' is made twice") }
                    guard let dn = m["device"]?.string, let d = deviceIndex[dn] else { bindNames[name] = -1; continue }
                    bindNames[name] = d
                default:
                    guard faultQueueNames.insert(name).inserted else { throw nf.error("fault queue '\(name)' is allocated twice") }
                }
            }
        }
    }

    mutating func action(_ f: YAMLField) throws(ScenarioError) {
        let m = try f.mapping()
        let at = try m.required("at", "virtual time in ns").unsigned(in: 0...(1 << 50))
        let kindField = try m.required("do", "what to do: \(Self.actionKinds.joined(separator: ", "))")
        let kind = try kindField.oneOf(Self.actionKinds)
        func dev() throws(ScenarioError) -> Int { try deviceRef(try m.required("device", "a device name")) }
        func name(_ what: String) throws(ScenarioError) -> String { try m.required("name", what).string() }
        func dom() throws(ScenarioError) -> String { try domainRef(try m.required("domain", "a user domain"), userOnly: true) }
        func pasid() throws(ScenarioError) -> String { try pasidRef(try m.required("pasid", "a PASID name")) }
        func process() throws(ScenarioError) -> String {
            try nameRef(try m.required("process", "a process (from create-process)"), in: processNames, what: "process", from: "create-process")
        }
        let action: Scenario.Action
        var label: String
        switch kind {
        case "alloc-domain":
            let n = try name("the new domain's name"), d = try dev()
            var flags: DomainFlags = []
            if let v = m.optional("pasid") { if try v.bool() { flags.insert(.pasid) } }
            let q = try m.optional("fault-queue").map { (v) throws(ScenarioError) in
                try nameRef(v, in: faultQueueNames, what: "fault queue", from: "alloc-fault-queue")
            }
            action = .allocDomain(name: n, device: d, flags: flags, faultQueue: q)
            label = "alloc domain \(n)\(q.map { " with fault queue \($0)" } ?? "")"
        case "free-domain":
            let n = try dom(); action = .freeDomain(n); label = "free domain \(n)"
        case "map", "unmap":
            let b = try bufferRef(try m.required("buffers", "a buffer set"))
            action = kind == "map" ? .map(buffers: b) : .unmap(buffers: b)
            label = "\(kind) \(s.buffers[b].name)"
        case "claim-owner": let d = try dev(); action = .claimOwner(device: d); label = "claim DMA owner of \(devName(d))'s group"
        case "release-owner": let d = try dev(); action = .releaseOwner(device: d); label = "release DMA owner of \(devName(d))'s group"
        case "attach", "replace", "detach":
            let d = try dev(), n = try dom()
            action = kind == "attach" ? .attach(domain: n, device: d) : kind == "replace" ? .replace(domain: n, device: d) : .detach(domain: n, device: d)
            label = "\(kind) \(n) \(kind == "detach" ? "from" : "to") \(devName(d))'s group"
        case "alloc-pasid":
            let n = try name("the PASID's name"), d = try dev()
            action = .allocPASID(name: n, device: d); label = "alloc PASID \(n)"
        case "free-pasid": let p = try pasid(); action = .freePASID(p); label = "free PASID \(p)"
        case "attach-pasid", "replace-pasid", "detach-pasid":
            let p = try pasid(), d = try dev(), n = try dom()
            switch kind {
            case "attach-pasid": action = .attachPASID(pasid: p, device: d, domain: n)
            case "replace-pasid": action = .replacePASID(pasid: p, device: d, domain: n)
            default: action = .detachPASID(pasid: p, device: d, domain: n)
            }
            label = "\(kind) \(p) of \(devName(d)) \(kind == "detach-pasid" ? "from" : "to") \(n)"
        case "reset":
            let d = try dev()
            let ns = try m.optional("duration-ns")?.unsigned(in: 0...(1 << 40)) ?? 1_000
            action = .reset(device: d, ns: ns); label = "reset \(devName(d))"
        case "remove-device":
            let d = try dev()
            // A device whose process binds or iommufd bindings outlive it would leave them
            // dangling for the teardown: the scenario removes those first (not modelled).
            if bindNames.values.contains(d) { throw m.field.error("remove-device: '\(devName(d))' has SVA binds; only a device without them can be removed") }
            if s.devices[d].description.groupKey != nil { throw m.field.error("remove-device: '\(devName(d))' shares a group; only a device alone in its group can be removed") }
            action = .removeDevice(d); label = "remove \(devName(d))"
        case "dma":
            let d = try dev()
            let address = try m.required("address", "the DMA address").unsigned()
            let length = try m.optional("length")?.int(in: 1...65536) ?? 64
            let count = try m.optional("count")?.int(in: 1...1024) ?? 1
            let stride = try m.optional("stride")?.unsigned(in: 0...(1 << 40)) ?? 0x1000
            let write = try m.optional("write")?.bool() ?? true
            let p = try m.optional("pasid").map { (x) throws(ScenarioError) in try pasidRef(x) }
            action = .dma(device: d, address: address, length: length, count: count, stride: stride, write: write, pasid: p)
            label = "\(devName(d)) \(write ? "writes" : "reads") 0x\(String(address, radix: 16))\(count > 1 ? " (\(count) times)" : "")"
        case "dma-burst":
            let d = try dev()
            let pairs = try m.optional("pairs")?.int(in: 1...1_000_000) ?? 1
            let cpu = try m.optional("cpu")?.int(in: 0...(s.machine.cpus - 1)) ?? 0
            action = .dmaBurst(device: d, pairs: pairs, cpu: cpu); label = "\(devName(d)) burst of \(pairs) dma map/unmap pairs on CPU \(cpu)"
        case "start", "stop":
            let w = try workloadRef(try m.required("workload", "a workload name"))
            action = kind == "start" ? .start(workload: w) : .stop(workload: w); label = "\(kind) \(workloadName(w))"
        case "retarget":
            let w = try workloadRef(try m.required("workload", "a dma workload"))
            let b = try m.required("buffers", "buffer sets").listOrOne().map { (x) throws(ScenarioError) in try bufferRef(x) }
            action = .retarget(workload: w, buffers: b); label = "retarget \(workloadName(w))"
        case "inject":
            let point = try m.optional("point").map { (p) throws(ScenarioError) in try Self.faultPoint(p) }
            let nth = m.optional("nth"), probability = m.optional("probability"), off = m.optional("off")
            let given = [nth, probability, off].compactMap { $0 }
            guard given.count == 1, let how = given.first else {
                throw (given.dropFirst().first ?? f).error("inject takes one of 'nth' (fail the Nth hit after this action), 'probability' or 'off: true'")
            }
            if let nth {
                action = .inject(.failNth(try nth.int(in: 1...Int(Int32.max)), only: point))
            } else if let probability {
                action = .inject(.probability(try probability.double(in: 0...1), only: point.map { [$0] }))
            } else {
                guard try how.bool() else { throw how.error("expected 'off: true' (switch the injector off)") }
                action = .inject(.off)
            }
            label = "inject \(point?.name ?? "any point")"
        case "descriptor-fault":
            let uf = try m.required("unit", "the unit")
            guard let u = unitIndex[try uf.string()] else { throw uf.error("no unit named '\(try uf.string())'") }
            guard case .vtd = s.units[u].configuration else {
                throw uf.error("descriptor-fault acts on a VT-d unit's invalidation queue; '\(s.units[u].name)' is an SMMUv3")
            }
            let types: [String: UInt8] = ["context-cache": InvalidationDescriptor.contextCacheType, "iotlb": InvalidationDescriptor.iotlbType,
                                          "device-tlb": InvalidationDescriptor.deviceTLBType, "pasid-iotlb": InvalidationDescriptor.pasidIOTLBType,
                                          "pasid-cache": InvalidationDescriptor.pasidCacheType, "wait": InvalidationDescriptor.waitType]
            let tf = try m.required("type", "the descriptor type")
            let t = types[try tf.oneOf(types.keys.sorted())] ?? InvalidationDescriptor.iotlbType
            var fault: DescriptorFault?
            if let d = m.optional("delay-ns") { fault = .delay(try d.unsigned(in: 0...(1 << 40))) }
            if try m.optional("drop")?.bool() ?? false { fault = .drop }
            action = .descriptorFault(unit: u, type: t, fault: fault)
            label = "\(s.units[u].name): \(fault.map { "\($0)" } ?? "normal") \(try tf.string()) descriptors"
        case "create-process":
            let n = try name("the process's name"); action = .createProcess(n); label = "create process \(n)"
        case "mmap":
            let n = try name("the region's name")
            let p = try process()
            let pages = try m.required("pages", "the region's size in pages").int(in: 1...(1 << 20))
            let perms = try m.optional("access").map(Self.access) ?? .readWrite
            action = .mmap(process: p, region: n, pages: pages, permissions: perms)
            label = "\(p) mmaps \(n) (\(pages) pages)"
        case "munmap":
            let r = try nameRef(try m.required("region", "a region (from mmap)"), in: regionNames, what: "region", from: "mmap")
            action = .munmap(region: r); label = "munmap \(r)"
        case "exit":
            let p = try process(); action = .exitProcess(p); label = "\(p) exits"
        case "sva-bind":
            let n = try name("the bind's name"), d = try dev(), p = try process()
            action = .svaBind(name: n, device: d, process: p); label = "SVA bind \(devName(d)) to \(p)"
        case "sva-unbind":
            let b = try bindRef(try m.required("bind", "an SVA bind"))
            let marker = try m.optional("stop-marker")?.bool() ?? true
            action = .svaUnbind(bind: b, stopMarker: marker)
            label = "stop the PASID of \(b) (\(marker ? "stop marker" : "wait for its page requests")) and unbind"
        case "alloc-fault-queue":
            let n = try name("the fault queue's name"); action = .allocFaultQueue(n); label = "alloc fault queue \(n)"
        case _ where Self.iommufdKinds.contains(kind):
            (action, label) = try iommufdAction(kind, m)
        default: // close-fault-queue
            let q = try nameRef(try m.required("queue", "a fault queue"), in: faultQueueNames, what: "fault queue", from: "alloc-fault-queue")
            action = .closeFaultQueue(q); label = "close fault queue \(q)"
        }
        let (errors, paths) = try stepExpectations(m, kind: kind, action: action)
        try m.finish()
        s.actions.append(.init(at: at, action: action, source: source(f), label: label, expectedErrors: errors, expectedPaths: paths))
    }

    /// Actions whose kernel steps can fail, so that `expect-error` can hold (`start` of a
    /// DMA ring maps its buffers); the others run no step.
    static let failingKinds: Set<String> = Set<String>([
        "alloc-domain", "free-domain", "map", "unmap", "claim-owner", "release-owner", "attach", "replace", "detach",
        "alloc-pasid", "free-pasid", "attach-pasid", "replace-pasid", "detach-pasid", "reset", "remove-device", "dma-burst",
        "create-process", "mmap", "munmap", "exit", "sva-bind", "sva-unbind",
    ]).union(iommufdKinds.filter { $0 != "iommufd-close" })
    /// Actions that change a translation entry and report the update path they took.
    static let pathKinds: Set<String> = ["attach", "replace", "detach", "attach-pasid", "replace-pasid"]

    /// `expect-error: ENOSPC` (or a list of errno names) and `expect-path: teardownSetup` (or a
    /// list of `UpdatePath` raw values) of one action.
    func stepExpectations(_ m: YAMLMapping, kind: String, action: Scenario.Action) throws(ScenarioError) -> ([String], [UpdatePath]) {
        var errors: [String] = [], paths: [UpdatePath] = []
        if let v = m.optional("expect-error") {
            var canFail = Self.failingKinds.contains(kind)
            if case .start(let w) = action, case .dmaRing = s.workloads[w].kind { canFail = true }
            guard canFail else {
                throw v.error("\(kind) runs no kernel step that could fail; expect-error applies to \(Self.failingKinds.sorted().joined(separator: ", ")) and the start of a dma-ring")
            }
            errors = try v.listOrOne().map { (e) throws(ScenarioError) in try e.oneOf(IOMMUError.errnoNames) }
            guard !errors.isEmpty else { throw v.error("expected an errno name or a list of them: \(IOMMUError.errnoNames.joined(separator: ", "))") }
        }
        if let v = m.optional("expect-path") {
            guard Self.pathKinds.contains(kind) else {
                throw v.error("\(kind) changes no translation entry; expect-path applies to \(Self.pathKinds.sorted().joined(separator: ", "))")
            }
            guard errors.isEmpty else { throw v.error("expect-path checks an action that succeeds; this one is expected to fail (expect-error)") }
            let names = UpdatePath.allCases.map(\.rawValue)
            paths = try v.listOrOne().map { (p) throws(ScenarioError) in UpdatePath(rawValue: try p.oneOf(names)) ?? .fresh }
            guard !paths.isEmpty else { throw v.error("expected an update path or a list of them: \(names.joined(separator: ", "))") }
        }
        return (errors, paths)
    }
}
