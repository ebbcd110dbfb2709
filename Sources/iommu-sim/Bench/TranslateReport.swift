/// Renders `TranslateBenchmark` results as text or JSON.
struct TranslateReport {
    let result: TranslateBenchmark.Result

    func render(json: Bool) -> String {
        let r = result
        let hitRatio = r.hitRatio
        let walkRatio = r.walkRatio
        func rate(_ f: TranslateBenchmark.Figures) -> Double { Double(f.hits) / Double(max(f.hits + f.misses, 1)) }
        if json {
            return JSON.object([
                ("benchmark", .string("translate")),
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
                ("nestedWalkNs", .double(r.swiftNested.p50)),
                ("nestedWalkMeanNs", .double(r.swiftNested.mean)),
                ("cNestedWalkNs", .double(r.cNested.p50)),
                ("cNestedWalkMeanNs", .double(r.cNested.mean)),
                ("hitSwiftToC", .double(hitRatio)),
                ("walkSwiftToC", .double(walkRatio)),
                ("nestedWalkSwiftToC", .double(r.nestedRatio)),
                ("hitRunIOTLBHitRate", .double(rate(r.swiftHit))),
                ("walkRunIOTLBHitRate", .double(rate(r.swiftWalk))),
            ]).render()
        }
        func f(_ v: Double) -> String { String((v * 100).rounded() / 100) }
        return """
        translate (\(r.operations) ops per measurement, medians of \(r.rounds) interleaved rounds, ns/op)
                                 p50      mean     C p50    C mean   Swift/C (p50)
          IOTLB hit          \(pad(f(r.swiftHit.p50)))\(pad(f(r.swiftHit.mean)))\(pad(f(r.cHit.p50)))\(pad(f(r.cHit.mean)))   \(f(hitRatio))x
          miss + 4-level walk\(pad(f(r.swiftWalk.p50)))\(pad(f(r.swiftWalk.mean)))\(pad(f(r.cWalk.p50)))\(pad(f(r.cWalk.mean)))   \(f(walkRatio))x
          miss + nested walk \(pad(f(r.swiftNested.p50)))\(pad(f(r.swiftNested.mean)))\(pad(f(r.cNested.p50)))\(pad(f(r.cNested.mean)))   \(f(r.nestedRatio))x
          IOTLB hit rate: hit run \(f(rate(r.swiftHit) * 100))%, walk run \(f(rate(r.swiftWalk) * 100))%
        """
    }

    private func pad(_ s: String) -> String { String(repeating: " ", count: max(1, 10 - s.count)) + s }
}
