/// Garbage in the VT-d root entry, scalable-mode context entry, PASID directory and table,
/// and page tables of a live device (what a guest owning them could write, VT-d §9), with the
/// device's DMA, ATS translation requests and page requests going through them. The unit
/// must refuse or translate, never trap; the driver handles every fault record; the other
/// device on the unit stays isolated, and nothing leaks.
enum VTdTablesTarget {
    final class Rig: HoldsFuzzRig { let rig: FuzzRig; init() throws { rig = try FuzzRig(.vtd) } }

    static func run(_ input: inout FuzzInput, _ result: inout FuzzResult) {
        RigPool.with(Rig.self, &result) { r, _ in
            tableGarbage(r.rig, &input)
        }
    }

    /// Up to 64 operations: corrupt a word, let the victim access memory, or let time pass.
    static func tableGarbage(_ rig: FuzzRig, _ input: inout FuzzInput) {
        var ops = 0
        while !input.isEmpty && ops < 64 {
            ops += 1
            switch input.u8() % 4 {
            case 0, 1: rig.corrupt(&input)
            case 2: rig.victimAccess(&input)
            default: rig.settle(UInt64(input.u16()) * 100)
            }
        }
    }
}
