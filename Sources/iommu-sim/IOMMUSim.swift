import ArgumentParser

@main
struct IOMMUSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "iommu-sim",
        abstract: "The Linux IOMMU subsystem over emulated VT-d hardware: simulate, check, measure.",
        subcommands: [RunCommand.self, CompareCommand.self, ScenariosCommand.self, ExploreCommand.self, MergeCommand.self, FaultsCommand.self, Bench.self, PreloadCommand.self],
        defaultSubcommand: nil
    )
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure the emulation's hot paths in release builds.",
        subcommands: [TranslateCommand.self, DMAMapCommand.self, IOVACommand.self, IOPFCommand.self, IOMMUFDBenchCommand.self]
    )
}

/// The IOMMU a benchmark runs on.
enum BenchArch: String, CaseIterable, ExpressibleByArgument {
    case vtd, smmuv3
}

struct TranslateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "translate",
        abstract: "IOTLB-hit and miss+4-level-walk translate cost (ns/op) on VT-d or SMMUv3, beside a C reference."
    )

    @Flag(help: "Print JSON (keys iotlbHitNs, walkNs, cIotlbHitNs, cWalkNs, ...).")
    var json = false

    @Option(help: "Translations per measurement (at least 1000000 recommended).")
    var operations: Int = 1_000_000

    @Option(help: "Interleaved Swift/C rounds; the report gives medians over them.")
    var rounds: Int = 5

    @Option(help: "The unit: vtd (VT-d, second stage and nested) or smmuv3 (SMMUv3, stage 1).")
    var arch: BenchArch = .vtd

    func validate() throws {
        guard operations >= 1000 else { throw ValidationError("--operations must be at least 1000") }
        guard (1...1000).contains(rounds) else { throw ValidationError("--rounds must be between 1 and 1000") }
    }

    func run() throws {
        let bench = TranslateBenchmark(operations: operations, rounds: rounds)
        let r = try arch == .smmuv3 ? bench.runSMMUv3() : bench.run()
        print(TranslateReport(result: r).render(json: json))
    }
}
