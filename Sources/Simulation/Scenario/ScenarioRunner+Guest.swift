import Platform
import Formats
import Kernel
import IOMMUFD

// The guest role: a guest whose vIOMMU the VMM emulates with nested HWPTs. The guest owns
// its first-stage table in its RAM; it maps without invalidating (entries were not
// present) and unmaps with an invalidation the VMM forwards through HWPT_INVALIDATE, as a
// VMM does with the guest's invalidation queue. The oracle is told what the guest is about
// to change, never what the hardware should do: it reads the tables itself.
extension ScenarioRunner {
    /// The nested domains built on a guest table (each nested HWPT's domain).
    func nestedDomains(_ g: GuestPageTable) -> [(name: String, context: IOMMUFDContext, id: UInt32, domain: IOMMUDomain)] {
        g.hwpts.compactMap { n in
            guard let (c, id) = try? object(n), let h = c.object(id) as? HWPTNested else { return nil }
            return (n, c, id, h.domain)
        }
    }

    func performGuest(_ a: Scenario.IOMMUFDAction, label: String, line: Int) {
        switch a {
        case .guestTable(let name, let rname, let gpa, let tablePages, let levels):
            step(label, line: line) { () throws(IOMMUError) in
                guard let r = regions[rname], let p = processes[r.process] else { throw .notFound("region \(rname) is not mapped") }
                guard tablePages <= r.pages else { throw .invalidArgument("\(tablePages) table pages do not fit region \(rname)") }
                // Tables come from the region's first pages: a second table there would zero
                // and take the first one's pages under its live translations.
                if let (other, _) = guestTables.first(where: { $0.value.region == rname }) {
                    throw .busy("region \(rname) already holds guest table \(other)")
                }
                guestTables[name] = try GuestPageTable(region: rname, process: p, va: r.address, gpaBase: gpa,
                                                       tablePages: tablePages, levels: levels)
            }
        case .guestMap(let tname, let gva, let gpa, let pages, let writable):
            step(label, line: line) { () throws(IOMMUError) in
                guard let g = guestTables[tname] else { throw .notFound("guest table \(tname) was not built") }
                let nested = nestedDomains(g)
                for n in nested { m.oracle.guestMapBegan(n.domain, gva: gva, pages: pages) }
                defer { for n in nested { m.oracle.guestMapEnded(n.domain, gva: gva, pages: pages) } }
                try g.map(gva: gva, gpa: gpa, pages: pages, writable: writable)
            }
        case .guestUnmap(let tname, let gva, let pages, let invalidate):
            step(label, line: line) { () throws(IOMMUError) in
                guard let g = guestTables[tname] else { throw .notFound("guest table \(tname) was not built") }
                let nested = nestedDomains(g)
                // What each nested HWPT's invalidation came to: a failed one (EFAULT, a
                // time-out) leaves the old translations for ever as far as anyone knows; a
                // skipped one is the guest claiming it done (its bug).
                var invalidated = [Bool](repeating: true, count: nested.count)
                for n in nested { m.oracle.guestUnmapBegan(n.domain, gva: gva, pages: pages) }
                defer {
                    for (i, n) in nested.enumerated() { m.oracle.guestUnmapEnded(n.domain, gva: gva, pages: pages, invalidated: invalidated[i]) }
                }
                for i in 0..<UInt64(pages) { try g.unmap(gva: gva + i * 4096) }
                // DMA may run between the table write and the invalidation.
                m.scheduler.yieldPoint(KernelYield.afterPTEClear)
                guard invalidate else { return }
                var firstError: IOMMUError?
                for (i, n) in nested.enumerated() {
                    do throws(IOMMUError) { try forwardInvalidation(n.context, hwpt: n.id, gva: gva, pages: pages, process: g.process) } catch {
                        invalidated[i] = false
                        if firstError == nil { firstError = error }
                    }
                }
                if let firstError { throw firstError }
            }
        default:
            break
        }
    }

    /// HWPT_INVALIDATE with one `iommu_hwpt_vtd_s1_invalidate` entry (addr, npages, LEAF:
    /// the guest freed no table page), from the VMM's memory.
    func forwardInvalidation(_ c: IOMMUFDContext, hwpt: UInt32, gva: UInt64, pages: Int, process: Process) throws(IOMMUError) {
        var entry = StructBytes(size: 24)
        entry.set64(0, gva); entry.set64(8, UInt64(pages)); entry.set32(16, 1)
        let address = try process.mmap(length: 4096, permissions: .readWrite)
        defer { try? process.munmap(address: address, length: 4096) }
        _ = entry.bytes.withUnsafeBytes { process.copyOut(to: address, from: $0) }
        let out = try ioctl(c, .hwptInvalidate) { s in
            s.set32(4, hwpt); s.set64(8, address); s.set32(16, 0); s.set32(20, 24); s.set32(24, 1)
        }
        guard out.u32(24) == 1 else { throw .ioError("HWPT_INVALIDATE handled \(out.u32(24)) of 1 entries") }
    }
}
