/// Renders `TranslateBenchmark` results as text or JSON.
struct TranslateReport {
    let result: TranslateBenchmark.Result

    func render(json: Bool) -> String {
        let r = result
        let hitRatio = r.hitRatio
        let walkRatio = r.walkRatio
        func rate(_ f: TranslateBenchmark.Figures) -> Double { Double(f.hits) / Double(max(f.hits + f.misses, 1)) }
        if json {
            var fields: [(String, JSON)] = [
                ("benchmark", .string("translate")),
                ("arch", .string(r.arch)),
                ("operations", .int(Int64(r.operations))),
                ("rounds", .int(Int64(r.rounds))),
                ("iotlbHitNs", .double(r.swiftHit.p50)),
                ("iotlbHitMeanNs", .double(r.swiftHit.mean)),
                ("walkNs", .double(r.swiftWalk.p50)),
                ("walkMeanNs", .double(r.swiftWalk.mean)),
                ("cIotlbHitNs", .double(r.cHit.p50)),
                ("cIotlbHitMeanNs", .double(r.cHit.mean)),
                ("cWalkNs", .double(r.cWalk.p50)),
                ("cWalkMeanNs", .double(r.cWalk.mean)),
                ("hitSwiftToC", .double(hitRatio)),
                ("walkSwiftToC", .double(walkRatio)),
                ("hitRunIOTLBHitRate", .double(rate(r.swiftHit))),
                ("walkRunIOTLBHitRate", .double(rate(r.swiftWalk))),
            ]
            if r.hasNested {
                fields += [
                    ("nestedWalkNs", .double(r.swiftNested.p50)),
                    ("nestedWalkMeanNs", .double(r.swiftNested.mean)),
                    ("cNestedWalkNs", .double(r.cNested.p50)),
                    ("cNestedWalkMeanNs", .double(r.cNested.mean)),
                    ("nestedWalkSwiftToC", .double(r.nestedRatio)),
                ]
            }
            return JSON.object(fields).render()
        }
        func f(_ v: Double) -> String { String((v * 100).rounded() / 100) }
        let nested = r.hasNested ? "\n  miss + nested walk \(pad(f(r.swiftNested.p50)))\(pad(f(r.swiftNested.mean)))\(pad(f(r.cNested.p50)))\(pad(f(r.cNested.mean)))   \(f(r.nestedRatio))x" : ""
        let tlb = r.arch == "smmuv3" ? "TLB" : "IOTLB"
        return """
        translate, \(r.arch) (\(r.operations) ops per measurement, medians of \(r.rounds) interleaved rounds, ns/op)
                                 p50      mean     C p50    C mean   Swift/C (p50)
          \(tlb == "TLB" ? "TLB hit  " : "IOTLB hit")          \(pad(f(r.swiftHit.p50)))\(pad(f(r.swiftHit.mean)))\(pad(f(r.cHit.p50)))\(pad(f(r.cHit.mean)))   \(f(hitRatio))x
          miss + 4-level walk\(pad(f(r.swiftWalk.p50)))\(pad(f(r.swiftWalk.mean)))\(pad(f(r.cWalk.p50)))\(pad(f(r.cWalk.mean)))   \(f(walkRatio))x\(nested)
          \(tlb) hit rate: hit run \(f(rate(r.swiftHit) * 100))%, walk run \(f(rate(r.swiftWalk) * 100))%
        """
    }

    private func pad(_ s: String) -> String { String(repeating: " ", count: max(1, 10 - s.count)) + s }
}
