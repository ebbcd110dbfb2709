enum SMMUv3TablesTarget {
    static func run(_ input: inout FuzzInput, _ result: inout FuzzResult) {
        result.fail("not written yet")
    }
}
