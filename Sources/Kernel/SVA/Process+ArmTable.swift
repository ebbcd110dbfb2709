import Platform
import Formats

/// The process's address space as an Arm CPU would hold it (VMSAv8-64 stage 1, 4 KiB
/// granule, 48-bit VA, TTBR0): what an SMMUv3 SVA context descriptor points at.
///
/// The simulated process is x86-64 (`pageTable` is in the VT-d first-stage format), but an
/// SMMUv3 walks only VMSAv8-64 tables, as Linux's `arm_smmu_make_sva_cd` shares the mm's pgd
/// of an arm64 CPU. So on the first SMMUv3 bind the process gets a second table in that
/// format, filled with every resident page, and from then on every fault maps into both and
/// every munmap clears both before the one invalidation of the range (the mmu notifier) —
/// one address space, two encodings. It goes at exit with the other.
extension Process {
    /// The root of the Arm-format table (TTB0), made and filled on first use.
    public func armPageTableRoot() throws(IOMMUError) -> UInt64 {
        if let t = armPageTable { return t.root }
        guard !isExited else { throw .noDevice("\(self) has exited") }
        let t: IOPageTable<ArmStage1Format>
        do { t = try IOPageTable(memory: core.platform.memory, frames: core.platform.frames, levels: 4, maxLeafLevel: 1, addressWidth: 48) } catch {
            throw .noMemory("Arm page tables of \(self)")
        }
        for (va, pa) in residentPages.sorted(by: { $0.key < $1.key }) {
            let perms = (vma(containing: va)?.permissions ?? .read).union(.user)
            do { try t.map(iova: va, physical: pa, size: 0x1000, permissions: perms) } catch {
                var g = UnmapGather()
                t.destroy(into: &g)
                for f in g.freedTables { try? core.platform.frames.free(f) }
                throw .noMemory("Arm page tables of \(self)")
            }
        }
        armPageTable = t
        return t.root
    }

    /// Linux `exit_mmap` → `mmu_notifier_release` while devices are still bound: every SVA
    /// domain makes its devices fault quietly (the binds stay until the drivers unbind).
    public func releaseAddressSpace() {
        for d in svaDomains { d.addressSpaceReleased() }
    }
}
