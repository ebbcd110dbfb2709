/// How the fuzz targets get their machines. Building one costs far more than an input, so
/// under libFuzzer (`persistent`) a target keeps its rig for `inputsPerRig` inputs, puts it
/// back after each, and tears it down (checking for leaks) before building the next; the
/// tests and the regression replays build a fresh rig per input, so every input stands alone.
public enum RigPool {
    /// Whether rigs outlive an input (set by the libFuzzer driver).
    nonisolated(unsafe) public static var persistent = false
    /// Inputs a rig takes before its teardown is checked and a new one built.
    nonisolated(unsafe) public static var inputsPerRig = 500

    nonisolated(unsafe) private static var rigs: [ObjectIdentifier: AnyObject] = [:]

    /// Runs `body` on the rig of type `Rig` (built when there is none), then ends the input
    /// with the rig's checks and, when the rig is done, its teardown.
    static func with<Rig: PooledRig>(_ key: Rig.Type, _ result: inout FuzzResult, _ body: (Rig, inout FuzzResult) -> Void) {
        let id = ObjectIdentifier(key)
        let rig: Rig
        if persistent, let r = rigs[id] as? Rig {
            rig = r
        } else {
            do { rig = try Rig() } catch {
                result.fail("the fuzz machine could not be built: \(error)")
                return
            }
        }
        body(rig, &result)
        rig.finishInput(&result)
        if persistent && result.failures.isEmpty && rig.inputsRun < inputsPerRig {
            rigs[id] = rig
        } else {
            rigs[id] = nil
            rig.teardown(&result)
        }
    }
}

/// A rig the pool keeps: built from nothing, counting its inputs, checked after each input
/// and when it is retired.
protocol PooledRig: AnyObject {
    init() throws
    var inputsRun: Int { get }
    func finishInput(_ result: inout FuzzResult)
    func teardown(_ result: inout FuzzResult)
}

/// A pooled rig made of a `FuzzRig` (victim and bystander) and what a target adds to it.
protocol HoldsFuzzRig: PooledRig {
    var rig: FuzzRig { get }
}

extension HoldsFuzzRig {
    var inputsRun: Int { rig.inputsRun }
    func finishInput(_ result: inout FuzzResult) { rig.finishInput(&result) }
    func teardown(_ result: inout FuzzResult) { rig.teardown(&result) }
}
