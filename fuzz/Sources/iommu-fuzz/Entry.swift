// libFuzzer's entry points. The target comes from IOMMU_FUZZ_TARGET (fuzz/run.sh sets it);
// an input that breaks an invariant prints what broke and aborts, so libFuzzer keeps it.
#if canImport(Glibc)
import Glibc
#endif
import Fuzzing

nonisolated(unsafe) private var target: FuzzTarget = .vtdTables

private func say(_ text: String) {
    var t = text
    t.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    let name = getenv("IOMMU_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    guard let t = FuzzTarget(rawValue: name) else {
        say("IOMMU_FUZZ_TARGET must name a target: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))\n")
        exit(2)
    }
    target = t
    RigPool.persistent = true
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let result = target.run(UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size))
    if !result.failures.isEmpty {
        for f in result.failures { say("invariant broken: \(f)\n") }
        // Rigs live across inputs: say whether the input breaks an invariant on its own.
        RigPool.persistent = false
        let alone = target.run(UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size))
        say(alone.failures.isEmpty ? "on a fresh machine the input passes: an earlier input's state is involved\n"
                                   : "on a fresh machine too: \(alone.failures.joined(separator: "; "))\n")
        abort()
    }
    return 0
}
