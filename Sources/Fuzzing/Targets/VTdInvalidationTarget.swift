enum VTdInvalidationTarget {
    static func run(_ input: inout FuzzInput, _ result: inout FuzzResult) {
        result.fail("not written yet")
    }
}
