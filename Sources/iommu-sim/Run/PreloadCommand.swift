import ArgumentParser
import Foundation
import Simulation

/// `iommu-sim preload -- PROGRAM [ARGS]`: runs an unmodified program with the preload library
/// (libIOMMUPreload.so, built beside this executable by `swift build`), so its opens of
/// /dev/iommu reach the emulated machine. `--print` prints the environment line instead.
struct PreloadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "preload",
        abstract: "Run a program with /dev/iommu served by the emulated machine (LD_PRELOAD).",
        discussion: """
            The library is libIOMMUPreload.so in the build folder of this executable; `swift build` \
            (or `swift build --product IOMMUPreload`) makes it. Everything but /dev/iommu passes \
            through to the system.
            """
    )

    @Flag(help: "Print the environment line to use instead of running anything.")
    var print = false

    @Option(help: "The machine: a built-in scenario's name or a scenario file (its units and devices; /dev/vfio/devices/vfioN is its Nth device). Default: an accelerator with PASID, ATS and PRI, and a plain NIC.")
    var machine: String?

    @Argument(parsing: .captureForPassthrough, help: "The program and its arguments (after --).")
    var command: [String] = []

    /// The library beside this executable.
    static func library() throws -> String {
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var candidates = [exe.deletingLastPathComponent().appendingPathComponent("libIOMMUPreload.so").path]
        if let path = ProcessInfo.processInfo.environment["PATH"], !CommandLine.arguments[0].contains("/") {
            for dir in path.split(separator: ":") { candidates.append("\(dir)/libIOMMUPreload.so") }
        }
        guard let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            throw ValidationError("libIOMMUPreload.so is not beside \(exe.path): build it with `swift build --product IOMMUPreload` (same configuration)")
        }
        return found
    }

    func run() throws {
        let lib = try Self.library()
        var env = ProcessInfo.processInfo.environment
        let preload = [lib, env["LD_PRELOAD"]].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: ":")
        if let machine {
            // Checked here, so a bad name is an error now rather than ENODEV in the program.
            do { _ = try BuiltinScenarios.load(machine) } catch { throw ValidationError("--machine \(machine): \(error)") }
            env["SWIFTIOMMU_MACHINE"] = machine
        }
        if print {
            Swift.print("\(machine.map { "SWIFTIOMMU_MACHINE=\($0) " } ?? "")LD_PRELOAD=\(preload)")
            return
        }
        var args = command
        if args.first == "--" { args.removeFirst() }
        guard let program = args.first else { throw ValidationError("no program given: iommu-sim preload -- PROGRAM [ARGS]") }
        env["LD_PRELOAD"] = preload
        let p = Process()
        p.executableURL = URL(fileURLWithPath: program.contains("/") ? program : try Self.which(program, env["PATH"] ?? ""))
        p.arguments = Array(args.dropFirst())
        p.environment = env
        try p.run()
        p.waitUntilExit()
        if p.terminationReason == .uncaughtSignal { throw ExitCode(128 + p.terminationStatus) }
        throw ExitCode(p.terminationStatus)
    }

    static func which(_ name: String, _ path: String) throws -> String {
        for dir in path.split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        throw ValidationError("\(name) is not on PATH")
    }
}
