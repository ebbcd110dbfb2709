import ArgumentParser

struct IOVACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "iova",
        abstract: "IOVA allocator: magazine fast path (alloc+free ns/pair) and tree slow path p99 with 10^4 live ranges, beside a C reference."
    )

    @Option(help: "Operations per measurement.")
    var operations: Int = 200_000
    @Option(help: "Rounds; the report gives medians over them.")
    var rounds: Int = 5
    @Flag(help: "Print JSON (keys fastPairNs, slowP99Ns, cFastPairNs, cSlowP99Ns, ...).")
    var json = false

    func validate() throws {
        guard (1000...100_000_000).contains(operations) else { throw ValidationError("--operations must be between 1000 and 10^8") }
        guard (1...100).contains(rounds) else { throw ValidationError("--rounds must be between 1 and 100") }
    }

    func run() throws {
        let r: IOVABenchmark.Result
        do { r = try IOVABenchmark(operations: operations, rounds: rounds).run() } catch { throw RunFailure(message: "\(error)") }
        if json {
            print(JSON.object([
                ("benchmark", .string("iova")),
                ("operations", .int(Int64(r.operations))),
                ("rounds", .int(Int64(r.rounds))),
                ("liveRanges", .int(Int64(r.liveRanges))),
                ("fastPairNs", .double(r.fastSwift)),
                ("cFastPairNs", .double(r.fastC)),
                ("fastSwiftToC", .double(r.fastRatio)),
                ("slowP50Ns", .double(r.slowSwiftP50)),
                ("slowP99Ns", .double(r.slowSwiftP99)),
                ("cSlowP50Ns", .double(r.slowCP50)),
                ("cSlowP99Ns", .double(r.slowCP99)),
                ("slowP99SwiftToC", .double(r.slowRatio)),
                ("slowP99FirstTenthNs", .double(r.swiftFirstP99)),
                ("slowP99LastTenthNs", .double(r.swiftLastP99)),
            ]).render())
            return
        }
        func f(_ v: Double) -> String { String((v * 10).rounded() / 10) }
        print("""
        iova (\(r.operations) ops per measurement, medians of \(r.rounds) rounds, ns)
                                          Swift        C   Swift/C
          fast path alloc+free (pair)  \(pad(f(r.fastSwift)))\(pad(f(r.fastC)))\(pad(f(r.fastRatio)))x
          slow path alloc p50          \(pad(f(r.slowSwiftP50)))\(pad(f(r.slowCP50)))
          slow path alloc p99          \(pad(f(r.slowSwiftP99)))\(pad(f(r.slowCP99)))\(pad(f(r.slowRatio)))x
          slow p99 first / last tenth  \(pad(f(r.swiftFirstP99)))\(pad(f(r.swiftLastP99)))   (\(r.liveRanges) live ranges)
        """)
    }

    private func pad(_ s: String) -> String { String(repeating: " ", count: max(1, 9 - s.count)) + s }
}
