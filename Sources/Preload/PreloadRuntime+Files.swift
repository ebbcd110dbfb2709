#if canImport(Glibc)
import Glibc
#endif
import Platform
import IOMMUFD
import CPreload

/// How long the files of a context live (Linux: the VFS's file references). A context stays
/// open while anything holds its file: a /dev/iommu descriptor here or in a forked child, an
/// access, fault or vEVENTQ file (each holds the iommufd file), a window of it still mapped.
/// It closes with the last of them.
extension PreloadRuntime {
    /// close() of one of our descriptors: the file goes with its last descriptor (dup shares
    /// it, as the kernel's file is shared).
    func close(_ fd: Int32) {
        if injectionFiles.removeValue(forKey: fd) != nil || statusFiles.removeValue(forKey: fd) != nil { return }
        if let c = accessFiles.removeValue(forKey: fd) {
            c.closeTestAccess(fd)
            closeIfUnheld(c)
            return
        }
        if let (c, q) = eventQueueFiles.removeValue(forKey: fd) {
            if !eventQueueFiles.values.contains(where: { $0.queue === q }) { q.onReadinessChange = nil; q.closeFile() }
            closeIfUnheld(c)
            return
        }
        if let (c, f) = faultFiles.removeValue(forKey: fd) {
            if !faultFiles.values.contains(where: { $0.fault === f }) { f.queue.onReadable = nil; f.closeFile() }
            closeIfUnheld(c)
            return
        }
        if let d = deviceFiles.removeValue(forKey: fd) {
            if !deviceFiles.values.contains(where: { $0 === d }) { d.unbind() }
            return
        }
        guard let c = contexts.removeValue(forKey: fd) else { return }
        closeIfUnheld(c)
    }

    /// Whether anything of this process or its children still holds `c`'s file.
    func isHeld(_ c: IOMMUFDContext) -> Bool {
        contexts.values.contains { $0 === c } || accessFiles.values.contains { $0 === c } || faultFiles.values.contains { $0.context === c }
            || eventQueueFiles.values.contains { $0.context === c } || windows.contains { $0.context === c } || heldByChildren(c)
    }

    /// Closes `c` if nothing holds it any more, and whatever children that have gone held.
    func closeIfUnheld(_ c: IOMMUFDContext) {
        for x in reapDeadChildren() where x !== c && !x.isClosed && !isHeld(x) { finishClose(x) }
        if !c.isClosed && !isHeld(c) { finishClose(c) }
    }

    /// The context's last holder went: device files bound to it lose their binding.
    func finishClose(_ c: IOMMUFDContext) {
        for d in deviceFiles.values where d.bound?.context === c { d.bound = nil }
        c.close()
    }

    /// A descriptor a context made for a command whose response never reached the program:
    /// closed as if the program had never had it.
    func releaseFile(_ fd: Int32) {
        guard accessFiles.removeValue(forKey: fd) != nil || faultFiles.removeValue(forKey: fd) != nil
                || eventQueueFiles.removeValue(forKey: fd) != nil else { return }
        swiftiommu_shim_mark(fd, 0)
        Glibc.close(fd)
    }

    /// dup of one of our descriptors: `new` names the same file as `old`.
    func dup(_ old: Int32, _ new: Int32) -> Int32 {
        if let c = contexts[old] { contexts[new] = c; return 0 }
        if let d = deviceFiles[old] { deviceFiles[new] = d; return 0 }
        if let f = faultFiles[old] { faultFiles[new] = f; return 0 }
        if let i = injectionFiles[old] { injectionFiles[new] = (i.path, 0); return 0 }
        if let t = statusFiles[old] { statusFiles[new] = t; return 0 }
        if let a = accessFiles[old] { accessFiles[new] = a; a.duplicateTestAccess(old, as: new); return 0 }
        if let q = eventQueueFiles[old] { eventQueueFiles[new] = q; return 0 }
        return -EBADF
    }
}
