import Platform
import Formats
@testable import Hardware

/// A guest's first-stage tables built by hand in guest-physical space, over a second stage
/// that maps each guest page (table or data) to its own host frame.
final class NestedRig {
    let rig: Rig
    let s2: IOPageTable<SecondStageFormat>
    /// Second-stage rights given to guest table pages.
    let tablePermissions: PagePermissions
    private(set) var hpaOf: [UInt64: UInt64] = [:]
    private var nextGPA: UInt64 = 0x1000_0000
    private(set) var root: UInt64 = 0

    init(_ rig: Rig, tablePermissions: PagePermissions = .readWrite) throws {
        self.rig = rig
        self.tablePermissions = tablePermissions
        s2 = try rig.secondStage()
        root = try page(tablePermissions)
    }

    /// A new zeroed guest page, mapped by the second stage with `permissions`.
    func page(_ permissions: PagePermissions = .readWrite) throws -> UInt64 {
        let h = try rig.platform.frames.allocate(.pageTable)
        let gpa = nextGPA
        nextGPA += 0x1000
        try s2.map(iova: gpa, physical: h, size: 0x1000, permissions: permissions)
        hpaOf[gpa] = h
        return gpa
    }

    func hpa(_ gpa: UInt64) -> UInt64 { hpaOf[gpa & ~0xFFF]! | (gpa & 0xFFF) }

    /// Host-physical address of the first-stage entry at `level` for `va` (tables must exist
    /// down to `level`).
    func entryHPA(_ va: UInt64, level: Int) throws -> UInt64 {
        var table = root
        var l = 4
        while l > level {
            let raw = try rig.memory.load64(hpa(table) + PageTableGeometry.index(va, level: l) * 8)
            table = raw & 0x000F_FFFF_FFFF_F000
            l -= 1
        }
        return hpa(table) + PageTableGeometry.index(va, level: level) * 8
    }

    /// Maps the 4 KiB page `va` to guest page `gpa`, creating guest tables as needed.
    func map(_ va: UInt64, to gpa: UInt64, _ permissions: PagePermissions = [.read, .write, .user]) throws {
        var table = root
        for l in stride(from: 4, to: 1, by: -1) {
            let slot = hpa(table) + PageTableGeometry.index(va, level: l) * 8
            var raw = try rig.memory.load64(slot)
            if raw & 1 == 0 {
                raw = FirstStageFormat.table(address: try page(tablePermissions))
                try rig.memory.store64(slot, raw)
            }
            table = raw & 0x000F_FFFF_FFFF_F000
        }
        try rig.memory.store64(hpa(table) + PageTableGeometry.index(va, level: 1) * 8,
                               FirstStageFormat.leaf(address: gpa, permissions: permissions, level: 1))
    }

    /// Points PASID `pasid` of the rig's device at these tables, nested, tagged `did`.
    func attach(pasid: UInt32 = 9, did: UInt16 = 8, ssade: Bool = false, eafe: Bool = false) throws {
        try rig.bench.setContext(rig.rid)
        try rig.bench.setPASIDEntry(rig.rid, pasid: pasid, .make(pgtt: .nested, did: DomainID(did), secondStageTable: s2.root,
                                                                  firstStageTable: root, secondStageAD: ssade,
                                                                  extendedAccessedFlag: eafe))
    }
}
