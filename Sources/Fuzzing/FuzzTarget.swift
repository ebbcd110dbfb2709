/// The fuzz targets: each drives one kind of untrusted input (what a guest, a device or a
/// user controls) through the real code path of a machine, a unit or the driver, and checks
/// what must survive garbage: no trap, nothing leaked, and the oracle quiet for every device
/// the input does not control. `fuzz/run.sh TARGET SECONDS` runs one under libFuzzer; the
/// tests replay each target's seed corpus and regression inputs (docs/architecture.md, "Fuzzing").
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// VT-d root, context and PASID entries and page tables, garbage written under a live device.
    case vtdTables = "vtd-tables"
    /// VT-d invalidation descriptors: raw in the unit's queue, and a guest's stage 1
    /// invalidations through IOMMU_HWPT_INVALIDATE.
    case vtdInvalidation = "vtd-invalidation"
    /// Page requests (and stop markers) from a misbehaving device, and page responses for them.
    case vtdPageRequests = "vtd-page-requests"
    /// Scenario YAML, loaded and run.
    case scenarioYAML = "scenario-yaml"
    /// iommufd ioctl numbers and argument bytes, with pointers into a user address space.
    case iommufdIoctl = "iommufd-ioctl"
    /// SMMUv3 stream table entries, L1 descriptors, context descriptors and page tables.
    case smmuv3Tables = "smmuv3-tables"
    /// SMMUv3 commands: raw in the command queue, and a guest's through the vIOMMU.
    case smmuv3Commands = "smmuv3-commands"
    /// PRI page requests from a misbehaving device into an SMMUv3's PRI queue.
    case smmuv3PRIQ = "smmuv3-priq"

    /// Runs one input; the result lists every invariant it broke (empty: all held).
    public func run(_ bytes: UnsafeRawBufferPointer) -> FuzzResult {
        var input = FuzzInput(bytes)
        var result = FuzzResult()
        switch self {
        case .vtdTables: VTdTablesTarget.run(&input, &result)
        case .vtdInvalidation: VTdInvalidationTarget.run(&input, &result)
        case .vtdPageRequests: VTdPageRequestTarget.run(&input, &result)
        case .scenarioYAML: ScenarioYAMLTarget.run(&input, &result)
        case .iommufdIoctl: IOMMUFDIoctlTarget.run(&input, &result)
        case .smmuv3Tables: SMMUv3TablesTarget.run(&input, &result)
        case .smmuv3Commands: SMMUv3CommandTarget.run(&input, &result)
        case .smmuv3PRIQ: SMMUv3PRIQTarget.run(&input, &result)
        }
        return result
    }

    public func run(_ bytes: [UInt8]) -> FuzzResult { bytes.withUnsafeBytes { run($0) } }
}

/// What one input broke, and what it reached (for the campaign's tallies).
public struct FuzzResult: Sendable {
    /// Broken invariants, each one line. A fuzzer aborts on the first input with any.
    public var failures: [String] = []
    /// The input's garbage let the device it controls write outside its own structures (a
    /// guest that owns root tables can do that on real hardware too); the harness put the
    /// memory back before checking the others.
    public var escaped = false
    /// The setup the input asked for was refused (an errno, a loader error): nothing ran.
    public var rejected = false

    public init() {}

    mutating func fail(_ message: @autoclosure () -> String) { failures.append(message()) }
}
