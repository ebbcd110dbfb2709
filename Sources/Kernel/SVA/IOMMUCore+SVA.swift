import Platform
import Formats

/// A device bound to a process (Linux `struct iommu_sva`): the device issues the process's
/// PASID and its accesses translate through the process's page tables.
public final class SVAHandle: @unchecked Sendable, CustomStringConvertible {
    public let device: Device
    public let process: Process
    public let domain: IOMMUDomain
    public let pasid: PASID
    public internal(set) var users = 1
    init(device: Device, process: Process, domain: IOMMUDomain, pasid: PASID) {
        self.device = device; self.process = process; self.domain = domain; self.pasid = pasid
    }
    public var description: String { "SVA bind of \(device) to \(process) (\(pasid))" }
}

/// The SVA fault handler (Linux `iommu_sva_iopf_handler`): the group goes to the device's
/// fault work queue; the worker resolves each request in the process's page tables in
/// order, stopping at the first that fails, and answers the group.
final class SVAFaultHandler: IOPFHandler {
    unowned(unsafe) let core: IOMMUCore
    unowned(unsafe) let process: Process
    init(core: IOMMUCore, process: Process) { self.core = core; self.process = process }

    func handle(_ group: IOPFGroup) throws(IOMMUError) {
        guard let queue = group.device.faultParam?.queue else { throw .noDevice("\(group.device) has no fault queue") }
        queue.queueWork { [core, process] in
            var code = PageResponseCode.success
            for f in group.faults {
                guard f.flags.contains(.pasidValid), process.pasid == f.pasid,
                      process.fault(at: f.address, access: f.permissions) else {
                    code = .invalidRequest
                    break
                }
            }
            core.respond(group, code)
        }
    }
}

extension IOMMUCore {
    /// A new simulated process.
    public func createProcess() throws(IOMMUError) -> Process {
        nextProcessID += 1
        let p = try Process(pid: nextProcessID, core: self)
        processes.append(p)
        return p
    }

    /// Binds `device` to `process` (Linux `iommu_sva_bind_device`): the process's PASID
    /// (allocated on its first bind), its SVA domain for this driver (made on first use and
    /// shared by every device of the driver), attached to that PASID of the device's group.
    /// A second bind of the same pair takes a reference.
    public func svaBind(_ device: Device, to process: Process) throws(IOMMUError) -> SVAHandle {
        try checkProbed(device)
        guard let g = device.group else { throw .noDevice("\(device) is not probed") }
        guard !process.isExited else { throw .noDevice("\(process) has exited") }
        guard device.maxPASIDs > 1 else { throw .notSupported("\(device) has no PASID capability") }
        var newPASID = false
        let pasid: PASID
        if let p = process.pasid {
            guard p.rawValue < device.maxPASIDs else { throw .overflow("\(p) of \(process) is beyond the limit of \(device)") }
            pasid = p
        } else {
            pasid = try allocGlobalPASID(for: device)
            process.pasid = pasid
            newPASID = true
        }
        if let h = svaHandles.first(where: { $0.device.group === g && $0.pasid == pasid }) {
            guard h.process === process else { throw .busy("\(pasid) of \(g) is bound to \(h.process)") }
            h.users += 1
            return h
        }
        let ownerID = ObjectIdentifier(device.driver)
        var domain = process.svaDomains.first { $0.owner == ownerID }
        var newDomain = false
        if domain == nil {
            do {
                let d = try device.driver.allocSVADomain(for: device, process: process)
                d.iopfHandler = SVAFaultHandler(core: self, process: process)
                adopt(d)
                process.svaDomains.append(d)
                // The oracle learns what the shared address space maps already.
                for (va, pa) in process.residentPages.sorted(by: { $0.key < $1.key }) {
                    let perms = (process.vma(containing: va)?.permissions ?? .read).union(.user)
                    observer?.mapBegan(d, iova: va, physical: pa, size: 0x1000, permissions: perms)
                    observer?.mapEnded(d, iova: va, size: 0x1000, mapped: true)
                }
                domain = d
                newDomain = true
            } catch {
                if newPASID { try? freeGlobalPASID(pasid); process.pasid = nil }
                throw error
            }
        }
        guard let domain else { throw .noMemory("SVA domain") }
        do {
            try attachPASID(domain, to: device, pasid: pasid)
        } catch {
            if newDomain {
                process.svaDomains.removeAll { $0 === domain }
                release(domain)
            }
            if newPASID { try? freeGlobalPASID(pasid); process.pasid = nil }
            throw error
        }
        let h = SVAHandle(device: device, process: process, domain: domain, pasid: pasid)
        svaHandles.append(h)
        return h
    }

    /// Drops a bind (Linux `iommu_sva_unbind_device`); the last one detaches the PASID and,
    /// if no device uses it any more, frees the SVA domain. The PASID stays the process's
    /// until it exits. The device must have stopped using the PASID.
    public func svaUnbind(_ handle: SVAHandle) throws(IOMMUError) {
        guard svaHandles.contains(where: { $0 === handle }) else { throw .notFound("\(handle) is not bound") }
        handle.users -= 1
        guard handle.users == 0 else { return }
        svaHandles.removeAll { $0 === handle }
        if let g = handle.device.group, g.pasidDomains[handle.pasid.rawValue] === handle.domain {
            detachPASIDInternal(from: g, pasid: handle.pasid)
        }
        if handle.domain.attachments == 0 && !handle.domain.isDestroyed {
            handle.process.svaDomains.removeAll { $0 === handle.domain }
            release(handle.domain)
        }
    }
}
