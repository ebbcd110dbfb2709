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
                let b = try f.mapping()
                let lo = try b.optional("at-least")?.unsigned() ?? 0
                let hi = try b.optional("at-most")?.unsigned(in: lo...UInt64.max)
                try b.finish()
                s.expect.counters.append(.init(name: key, atLeast: lo, atMost: hi))
            }
            try c.finish()
        }
        try m.finish()
    }
}
