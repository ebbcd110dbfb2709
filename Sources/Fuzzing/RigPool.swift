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

    /// Runs `body` on the rig of `key`'s kind (made by `make` when there is none), then ends
    /// the input with `finish` and, when the rig is done, `teardown`.
    static func with<Rig: AnyObject>(_ key: Rig.Type, _ result: inout FuzzResult, make: () throws -> Rig,
                                     inputs: (Rig) -> Int, finish: (Rig, inout FuzzResult) -> Void,
                                     teardown: (Rig, inout FuzzResult) -> Void, _ body: (Rig) -> Void) {
        with(key, &result, make: make, inputs: inputs, finish: finish, teardown: teardown) { rig, _ in body(rig) }
    }

    /// The same, for a body that records failures of its own.
    static func with<Rig: AnyObject>(_ key: Rig.Type, _ result: inout FuzzResult, make: () throws -> Rig,
                                     inputs: (Rig) -> Int, finish: (Rig, inout FuzzResult) -> Void,
                                     teardown: (Rig, inout FuzzResult) -> Void, _ body: (Rig, inout FuzzResult) -> Void) {
        let id = ObjectIdentifier(key)
        let rig: Rig
        if persistent, let r = rigs[id] as? Rig {
            rig = r
        } else {
            do { rig = try make() } catch {
                result.fail("the fuzz machine could not be built: \(error)")
                return
            }
        }
        body(rig, &result)
        finish(rig, &result)
        if persistent && result.failures.isEmpty && inputs(rig) < inputsPerRig {
            rigs[id] = rig
        } else {
            rigs[id] = nil
            teardown(rig, &result)
        }
    }
}
