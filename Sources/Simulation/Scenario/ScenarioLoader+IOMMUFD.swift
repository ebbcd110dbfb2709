import Yams
import Platform
import Formats
import Kernel

// The VMM role's actions (Scenario+IOMMUFD.swift): names they declare and each action.
extension ScenarioParser {
    static let iommufdKinds = ["iommufd-open", "iommufd-bind", "iommufd-unbind", "ioas-alloc", "ioas-map", "ioas-unmap", "hwpt-alloc",
                               "iommufd-attach", "iommufd-replace", "iommufd-detach", "fault-alloc", "fault-close",
                               "iommufd-destroy", "iommufd-close", "dirty-tracking", "dirty-read",
                               "guest-table", "guest-map", "guest-unmap"]

    mutating func declareIOMMUFD(_ kind: String, _ name: String, _ nf: YAMLField) throws(ScenarioError) {
        if kind == "iommufd-open" {
            guard iommufdContexts.insert(name).inserted else { throw nf.error("iommufd context '\(name)' is opened twice") }
            return
        }
        guard iommufdObjects[name] == nil, deviceIndex[name] == nil else { throw nf.error("'\(name)' names another object or a device") }
        iommufdObjects[name] = kind == "ioas-alloc" ? "ioas" : kind == "hwpt-alloc" ? "hwpt" : kind == "guest-table" ? "guest-table" : "fault"
    }

    func objectRef(_ f: YAMLField, kinds: Set<String>, what: String) throws(ScenarioError) -> String {
        let n = try f.string()
        guard let k = iommufdObjects[n], kinds.contains(k) else {
            let known = iommufdObjects.filter { kinds.contains($0.value) }.keys.sorted()
            throw f.error("no \(what) named '\(n)'\(known.isEmpty ? "" : "; known: \(known.joined(separator: ", "))")")
        }
        return n
    }

    func iommufdAction(_ kind: String, _ m: YAMLMapping) throws(ScenarioError) -> (Scenario.Action, String) {
        func dev() throws(ScenarioError) -> Int { try deviceRef(try m.required("device", "a device name")) }
        func ctx() throws(ScenarioError) -> String {
            try nameRef(try m.required("iommufd", "an iommufd context (from iommufd-open)"), in: iommufdContexts, what: "iommufd context", from: "iommufd-open")
        }
        func name(_ what: String) throws(ScenarioError) -> String { try m.required("name", what).string() }
        func pasid() throws(ScenarioError) -> UInt32? { try m.optional("pasid").map { (v) throws(ScenarioError) in UInt32(try v.unsigned(in: 1...0xFFFFF)) } }
        func pages(_ key: String) throws(ScenarioError) -> Int? { try m.optional(key).map { (v) throws(ScenarioError) in try v.int(in: 1...(1 << 20)) } }
        let a: Scenario.IOMMUFDAction
        var label: String
        switch kind {
        case "iommufd-open":
            let n = try name("the context's name")
            let p = try nameRef(try m.required("process", "the VMM process (from create-process)"), in: processNames, what: "process", from: "create-process")
            a = .open(name: n, process: p); label = "\(p) opens /dev/iommu as \(n)"
        case "iommufd-bind":
            let c = try ctx(), d = try dev()
            a = .bind(context: c, device: d); label = "bind \(devName(d)) to \(c)"
        case "iommufd-unbind":
            let d = try dev(); a = .unbind(device: d); label = "unbind \(devName(d))"
        case "ioas-alloc":
            let n = try name("the IOAS's name"), c = try ctx()
            a = .ioasAlloc(name: n, context: c); label = "IOAS_ALLOC \(n)"
        case "ioas-map":
            let i = try objectRef(try m.required("ioas", "an IOAS"), kinds: ["ioas"], what: "IOAS")
            let r = try nameRef(try m.required("region", "guest RAM: a region of the VMM process (from mmap)"), in: regionNames, what: "region", from: "mmap")
            let offset = try m.optional("offset-pages")?.int(in: 0...(1 << 20)) ?? 0
            let iova = try m.optional("iova")?.unsigned(in: 0...(1 << 56))
            if let iova, iova & 0xFFF != 0 { throw m.field.error("iova must be 4 KiB aligned") }
            let w = try m.optional("writeable")?.bool() ?? true
            a = .ioasMap(ioas: i, region: r, offsetPages: offset, pages: try pages("pages"), iova: iova, writeable: w)
            label = "IOAS_MAP \(r) into \(i)\(iova.map { " at 0x\(String($0, radix: 16))" } ?? "")"
        case "ioas-unmap":
            let i = try objectRef(try m.required("ioas", "an IOAS"), kinds: ["ioas"], what: "IOAS")
            if try m.optional("all")?.bool() ?? false {
                a = .ioasUnmap(ioas: i, iova: 0, pages: nil); label = "IOAS_UNMAP all of \(i)"
            } else {
                let iova = try m.required("iova", "the IOVA (or all: true)").unsigned(in: 0...(1 << 56))
                let n = try m.required("pages", "the pages to unmap").int(in: 1...(1 << 20))
                a = .ioasUnmap(ioas: i, iova: iova, pages: n); label = "IOAS_UNMAP \(n) page(s) at 0x\(String(iova, radix: 16)) of \(i)"
            }
        case "hwpt-alloc":
            let n = try name("the HWPT's name")
            let d = try dev()
            let fault = try m.optional("fault").map { (v) throws(ScenarioError) in try objectRef(v, kinds: ["fault"], what: "fault object") }
            let p = try m.optional("pasid")?.bool() ?? false
            if let pf = m.optional("parent") {
                let parent = try objectRef(pf, kinds: ["hwpt"], what: "nest parent HWPT")
                let g = try objectRef(try m.required("guest-table", "the guest table (from guest-table) of a nested HWPT"), kinds: ["guest-table"], what: "guest table")
                a = .hwptAlloc(name: n, on: parent, device: d, fault: fault, pasid: p, dirtyTracking: false, nestParent: false, guestTable: g)
                label = "HWPT_ALLOC \(n) nested on \(parent) over \(g)"
            } else {
                let i = try objectRef(try m.required("ioas", "an IOAS (or parent: a nest parent HWPT)"), kinds: ["ioas"], what: "IOAS")
                let dirty = try m.optional("dirty-tracking")?.bool() ?? false
                let np = try m.optional("nest-parent")?.bool() ?? false
                a = .hwptAlloc(name: n, on: i, device: d, fault: fault, pasid: p, dirtyTracking: dirty, nestParent: np, guestTable: nil)
                label = "HWPT_ALLOC \(n) on \(i)\(np ? " (nest parent)" : "")\(fault.map { " with fault \($0)" } ?? "")"
            }
        case "guest-table":
            let n = try name("the guest table's name")
            let r = try nameRef(try m.required("region", "guest RAM holding the table (from mmap)"), in: regionNames, what: "region", from: "mmap")
            let gpa = try m.required("gpa", "where the VMM maps the region in guest-physical space").unsigned(in: 0...(1 << 52))
            if gpa & 0xFFF != 0 { throw m.field.error("gpa must be 4 KiB aligned") }
            let tp = try m.optional("table-pages")?.int(in: 1...4096) ?? 16
            let levels = try m.optional("levels")?.int(in: 4...5) ?? 4
            a = .guestTable(name: n, region: r, gpa: gpa, tablePages: tp, levels: levels)
            label = "the guest builds page table \(n) in \(r)"
        case "guest-map", "guest-unmap":
            let t = try objectRef(try m.required("table", "a guest table"), kinds: ["guest-table"], what: "guest table")
            let gva = try m.required("gva", "the guest virtual (IO) address").unsigned(in: 0...((1 << 56) - 1))
            if gva & 0xFFF != 0 { throw m.field.error("gva must be 4 KiB aligned") }
            let n = try m.optional("pages")?.int(in: 1...(1 << 16)) ?? 1
            if kind == "guest-map" {
                let gpa = try m.required("gpa", "the guest-physical address").unsigned(in: 0...(1 << 52))
                if gpa & 0xFFF != 0 { throw m.field.error("gpa must be 4 KiB aligned") }
                let w = try m.optional("writable")?.bool() ?? true
                a = .guestMap(table: t, gva: gva, gpa: gpa, pages: n, writable: w)
                label = "the guest maps \(n) page(s) at GVA 0x\(String(gva, radix: 16)) to GPA 0x\(String(gpa, radix: 16)) in \(t)"
            } else {
                let inv = try m.optional("invalidate")?.bool() ?? true
                a = .guestUnmap(table: t, gva: gva, pages: n, invalidate: inv)
                label = "the guest unmaps \(n) page(s) at GVA 0x\(String(gva, radix: 16)) in \(t)\(inv ? "" : " without invalidating")"
            }
        case "iommufd-attach", "iommufd-replace":
            let d = try dev()
            let t = try objectRef(try m.required("to", "a HWPT or an IOAS"), kinds: ["ioas", "hwpt"], what: "HWPT or IOAS")
            let p = try pasid()
            a = kind == "iommufd-attach" ? .attach(device: d, target: t, pasid: p) : .replace(device: d, target: t, pasid: p)
            label = "\(kind == "iommufd-attach" ? "attach" : "replace") \(devName(d))\(p.map { " PASID \($0)" } ?? "") to \(t)"
        case "iommufd-detach":
            let d = try dev(), p = try pasid()
            a = .detach(device: d, pasid: p); label = "detach \(devName(d))\(p.map { " PASID \($0)" } ?? "")"
        case "fault-alloc":
            let n = try name("the fault object's name"), c = try ctx()
            a = .faultAlloc(name: n, context: c); label = "FAULT_QUEUE_ALLOC \(n)"
        case "fault-close":
            let n = try objectRef(try m.required("fault", "a fault object"), kinds: ["fault"], what: "fault object")
            a = .closeFault(n); label = "close the file of \(n)"
        case "dirty-tracking":
            let h = try objectRef(try m.required("hwpt", "a HWPT (allocated with dirty-tracking: true)"), kinds: ["hwpt"], what: "HWPT")
            let on = try m.optional("enable")?.bool() ?? true
            a = .dirtyTracking(hwpt: h, enable: on); label = "\(on ? "start" : "stop") dirty tracking of \(h)"
        case "dirty-read":
            let h = try objectRef(try m.required("hwpt", "a HWPT with dirty tracking"), kinds: ["hwpt"], what: "HWPT")
            let iova = try m.required("iova", "the first IOVA to read").unsigned(in: 0...(1 << 56))
            if iova & 0xFFF != 0 { throw m.field.error("iova must be 4 KiB aligned") }
            let n = try m.required("pages", "the 4 KiB pages to read").int(in: 1...(1 << 20))
            let keep = try m.optional("no-clear")?.bool() ?? false
            a = .dirtyRead(hwpt: h, iova: iova, pages: n, noClear: keep)
            label = "read\(keep ? "" : " and clear") the dirty bits of \(n) page(s) of \(h)"
        case "iommufd-destroy":
            let n = try objectRef(try m.required("object", "an IOAS, HWPT or fault object"), kinds: ["ioas", "hwpt", "fault"], what: "object")
            a = .destroy(n); label = "IOMMU_DESTROY \(n)"
        default: // iommufd-close
            let c = try ctx(); a = .close(c); label = "close \(c)"
        }
        return (.iommufd(a), label)
    }
}
