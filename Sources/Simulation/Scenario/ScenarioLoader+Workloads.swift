import Yams
import Platform
import Formats
import Hardware
import Kernel

// `workloads:` entries.
extension ScenarioParser {
    mutating func declareWorkload(_ f: YAMLField) throws(ScenarioError) {
        let m = try f.mapping()
        let nameField = try m.required("name", "the workload's name")
        let name = try nameField.string()
        guard workloadIndex[name] == nil else { throw nameField.error("workload '\(name)' is declared twice") }
        workloadIndex[name] = workloadIndex.count
    }

    mutating func workload(_ f: YAMLField) throws(ScenarioError) {
        let m = try f.mapping()
        let name = try m.required("name", "the workload's name").string()
        let type = try m.required("type", "dma, churn, dma-ring, ats or fault-handler").oneOf(["dma", "churn", "dma-ring", "ats", "fault-handler"])
        let start = try m.optional("start")?.unsigned(in: 0...(1 << 50))
        let stop = try m.optional("stop")?.unsigned(in: 0...(1 << 50))
        let mayIdle = try m.optional("may-idle")?.bool() ?? false
        if let start, let stop, stop < start { throw f.error("stop (\(stop)) is before start (\(start))") }
        let kind: Scenario.Workload
        switch type {
        case "dma":
            let device = try deviceRef(try m.required("device", "the device doing DMA"))
            var buffers: [Int] = [], windowIOVA: UInt64 = 0, windowPages = 0
            if let w = m.optional("iova") {
                // A window of IOVA (guest RAM mapped through iommufd) instead of buffer sets.
                windowIOVA = try w.unsigned(in: 0...(1 << 56))
                guard windowIOVA & 0xFFF == 0 else { throw w.error("iova must be 4 KiB aligned") }
                windowPages = try m.required("pages", "the window's size in pages").int(in: 1...(1 << 20))
                if let b = m.optional("buffers") { throw b.error("a dma workload takes buffers or an iova window, not both") }
            } else {
                buffers = try m.required("buffers", "buffer sets it reads and writes (or iova + pages)").listOrOne().map { (b) throws(ScenarioError) in try bufferRef(b) }
            }
            let pasid = try m.optional("pasid").map { (p) throws(ScenarioError) in try pasidRef(p) }
            let interval = try m.optional("interval-ns")?.unsigned(in: 1...1_000_000_000) ?? 500
            let burst = try m.optional("burst")?.int(in: 1...1024) ?? 1
            let dir = try m.optional("direction").map(Self.direction) ?? .both
            var minB = 256, maxB = 4096
            if let v = m.optional("size") {
                let r = try v.list()
                guard r.count == 2 else { throw v.error("expected [min, max] in bytes") }
                minB = try r[0].int(in: 1...(1 << 20)); maxB = try r[1].int(in: minB...(1 << 20))
            }
            let sequential = try m.optional("pattern")?.oneOf(["random", "sequential"]) == "sequential"
            kind = .dma(.init(device: device, pasid: pasid, buffers: buffers, intervalNs: interval, burst: burst,
                              direction: dir, minBytes: minB, maxBytes: min(maxB, windowPages > 0 ? 4096 : maxB), sequential: sequential,
                              windowIOVA: windowIOVA, windowPages: windowPages))
        case "churn":
            let b = try bufferRef(try m.required("buffers", "the buffer set to churn"))
            let period = try m.optional("period-ns")?.unsigned(in: 1...(1 << 40)) ?? 20_000
            kind = .churn(.init(buffers: b, periodNs: period))
        case "ats":
            let device = try deviceRef(try m.required("device", "the ATS device"))
            // An access stream: through ATS (and PRI), or, on a device that can stall, as
            // untranslated requests whose faults the SMMUv3 holds until software resolves them.
            guard s.devices[device].description.ats || s.devices[device].description.canStall else {
                throw f.error("device '\(devName(device))' has no ATS (ats: true) and cannot stall (can-stall: true)")
            }
            var bind: String?, region: String?
            var iova: UInt64 = 0, window = 0
            if let b = m.optional("bind") {
                let name = try bindRef(b)
                guard bindNames[name] == device else { throw b.error("bind '\(name)' is not a bind of device '\(devName(device))'") }
                bind = name
                region = try nameRef(try m.required("region", "a region of the bound process (from mmap)"), in: regionNames,
                                     what: "region", from: "mmap")
                if let v = m.optional("iova") { throw v.error("an SVA stream addresses its region; iova is for streams without a bind") }
            } else {
                iova = try m.required("iova", "the IOVA window's start (or bind + region for SVA)").unsigned(in: 0...(1 << 56))
                guard iova & 0xFFF == 0 else { throw f.error("iova must be 4 KiB aligned") }
                window = try m.required("pages", "the IOVA window's size in pages").int(in: 1...(1 << 20))
                if let v = m.optional("region") { throw v.error("region needs bind") }
            }
            let per = try m.optional("pages-per-access")?.int(in: 1...4096) ?? 1
            let interval = try m.optional("interval-ns")?.unsigned(in: 1...1_000_000_000) ?? 1_000
            let outstanding = try m.optional("outstanding")?.int(in: 1...4096) ?? 4
            let dir = try m.optional("direction").map(Self.direction) ?? .both
            kind = .ats(.init(device: device, bind: bind, region: region, iova: iova, windowPages: window, pagesPerAccess: per,
                              intervalNs: interval, outstanding: outstanding, direction: dir))
        case "fault-handler":
            let iommufdFaults = Set(iommufdObjects.filter { $0.value == "fault" }.keys)
            let q = try nameRef(try m.required("queue", "the fault queue or iommufd fault object it serves"),
                                in: faultQueueNames.union(iommufdFaults), what: "fault queue", from: "alloc-fault-queue or fault-alloc")
            var ioas: String?, region: String?
            if iommufdFaults.contains(q) {
                ioas = try objectRef(try m.required("ioas", "the IOAS the VMM maps faulting guest pages into"), kinds: ["ioas"], what: "IOAS")
                region = try nameRef(try m.required("region", "the guest RAM region (from mmap) behind the window"), in: regionNames,
                                     what: "region", from: "mmap")
            } else if let v = m.optional("ioas") ?? m.optional("region") {
                throw v.error("ioas and region are for a handler of an iommufd fault object (from fault-alloc)")
            }
            let iova = try m.required("iova", "the IOVA window it maps on demand").unsigned(in: 0...(1 << 56))
            guard iova & 0xFFF == 0 else { throw f.error("iova must be 4 KiB aligned") }
            let window = try m.required("pages", "the window's size in pages").int(in: 1...(1 << 20))
            let latency = try m.optional("latency-ns")?.unsigned(in: 0...1_000_000_000) ?? 2_000
            let batch = try m.optional("batch")?.int(in: 1...4096) ?? 64
            kind = .faultHandler(.init(queue: q, ioas: ioas, region: region, iova: iova, windowPages: window, latencyNs: latency, batch: batch))
        default:
            let device = try deviceRef(try m.required("device", "the device owning the ring"))
            let count = try m.optional("count")?.int(in: 1...4096) ?? 8
            let pages = try m.optional("pages")?.int(in: 1...4096) ?? 1
            let contiguous = try m.optional("contiguous")?.bool() ?? false
            let shared = try m.optional("shared")?.bool() ?? false
            let sizeField = m.optional("size"), offsetField = m.optional("offset")
            if pages > 1, let v = sizeField ?? offsetField {
                throw v.error("a ring buffer of \(pages) pages is used whole: size and offset are for one-page buffers")
            }
            let size = try sizeField?.unsigned(in: 1...4096) ?? 2048
            let offset = try offsetField?.unsigned(in: 0...4095) ?? 0
            // Each ring buffer is one 4 KiB frame: a mapping past its end would hand the device
            // the frames next to it (page tables, other buffers).
            guard offset + size <= 4096 else {
                throw f.error("a ring buffer is one 4 KiB frame: offset (\(offset)) + size (\(size)) must not exceed 4096")
            }
            if contiguous && pages == 1 { throw f.error("contiguous is for buffers of more than one page") }
            var dir = DMADirection.fromDevice
            if let v = m.optional("direction") {
                switch try v.oneOf(["to-device", "from-device", "bidirectional"]) {
                case "to-device": dir = .toDevice
                case "bidirectional": dir = .bidirectional
                default: dir = .fromDevice
                }
            }
            let recycle = try m.optional("recycle-ns")?.unsigned(in: 1...(1 << 40)) ?? 20_000
            let interval = try m.optional("interval-ns")?.unsigned(in: 1...1_000_000_000) ?? 500
            kind = .dmaRing(.init(device: device, count: count, size: size, offset: offset, direction: dir,
                                  recycleNs: recycle, intervalNs: interval, pages: pages, contiguous: contiguous, shared: shared))
        }
        try m.finish()
        s.workloads.append(.init(name: name, kind: kind, start: start ?? 0, stop: stop, mayIdle: mayIdle, source: source(f)))
    }
}
