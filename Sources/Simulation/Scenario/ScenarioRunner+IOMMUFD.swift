import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD

// The VMM role: iommufd contexts, IOASes over the VMM's memory, HWPTs, devices bound and
// attached, fault objects served through their file. Each step goes through the ioctl
// entry where the uAPI has an ioctl (VFIO's bind/attach call the context's methods).
extension ScenarioRunner {
    /// Runs a user API call as a step body: its errno becomes the step's error.
    func user<T>(_ body: () throws(Errno) -> T) throws(IOMMUError) -> T {
        do { return try body() } catch { throw error.iommuError }
    }

    func context(_ name: String) throws(IOMMUError) -> IOMMUFDContext {
        guard let c = contexts[name], !c.isClosed else { throw .notFound("iommufd context \(name) is not open") }
        return c
    }

    /// The context and ID of a named object.
    func object(_ name: String) throws(IOMMUError) -> (IOMMUFDContext, UInt32) {
        guard let (c, id) = iommufdNames[name] else { throw .notFound("\(name) was not allocated") }
        return (try context(c), id)
    }

    func boundID(_ device: Int) throws(IOMMUError) -> (IOMMUFDContext, UInt32) {
        guard let (c, id) = boundDevices[device] else { throw .notFound("\(devices[device].name) is not bound") }
        return (try context(c), id)
    }

    func ioctl(_ c: IOMMUFDContext, _ command: IOMMUFDCommand, _ fill: (inout StructBytes) -> Void) throws(IOMMUError) -> StructBytes {
        var s = StructBytes(size: command.size)
        fill(&s)
        try user { () throws(Errno) in try c.call(command, &s) }
        return s
    }

    func performIOMMUFD(_ a: Scenario.IOMMUFDAction, label: String, line: Int) {
        switch a {
        case .open(let name, let pname):
            step(label, line: line) { () throws(IOMMUError) in
                guard let p = processes[pname] else { throw .notFound("process \(pname) does not exist") }
                contexts[name] = IOMMUFDContext(core: m.core, memory: p)
                contextProcesses[name] = p
            }
        case .bind(let cname, let d):
            step(label, line: line) { () throws(IOMMUError) in
                let c = try context(cname)
                let id = try user { () throws(Errno) in try c.bind(devices[d]) }
                boundDevices[d] = (cname, id)
                note("\(label): dev_id \(id)")
            }
        case .unbind(let d):
            step(label, line: line) { () throws(IOMMUError) in
                let (c, id) = try boundID(d)
                try user { () throws(Errno) in try c.unbind(id) }
                boundDevices[d] = nil
            }
        case .ioasAlloc(let name, let cname):
            step(label, line: line) { () throws(IOMMUError) in
                let c = try context(cname)
                let out = try ioctl(c, .ioasAlloc) { _ in }
                iommufdNames[name] = (cname, out.u32(8))
            }
        case .ioasMap(let ioas, let rname, let offset, let pages, let iova, let writeable):
            step(label, line: line) { () throws(IOMMUError) in
                let (c, id) = try object(ioas)
                guard let r = regions[rname] else { throw .notFound("region \(rname) is not mapped") }
                guard offset < r.pages else { throw .invalidArgument("offset-pages \(offset) is beyond region \(rname)") }
                let n = pages ?? (r.pages - offset)
                guard n > 0, offset + n <= r.pages else { throw .invalidArgument("pages beyond region \(rname)") }
                let out = try ioctl(c, .ioasMap) { s in
                    s.set32(4, UAPI.mapReadable | (writeable ? UAPI.mapWriteable : 0) | (iova != nil ? UAPI.mapFixedIOVA : 0))
                    s.set32(8, id); s.set64(16, r.address + UInt64(offset) << 12); s.set64(24, UInt64(n) << 12); s.set64(32, iova ?? 0)
                }
                note("\(label): iova 0x\(String(out.u64(32), radix: 16))")
            }
        case .ioasUnmap(let ioas, let iova, let pages):
            step(label, line: line) { () throws(IOMMUError) in
                let (c, id) = try object(ioas)
                let out = try ioctl(c, .ioasUnmap) { s in
                    s.set32(4, id); s.set64(8, pages == nil ? 0 : iova); s.set64(16, pages.map { UInt64($0) << 12 } ?? .max)
                }
                note("\(label): 0x\(String(out.u64(16), radix: 16)) bytes")
            }
        case .hwptAlloc(let name, let on, let d, let fault, let pasid, let dirty, let nestParent, let guestTable):
            step(label, line: line) { () throws(IOMMUError) in
                let (c, ptID) = try object(on)
                let (_, devID) = try boundID(d)
                let faultID = try fault.map { (f) throws(IOMMUError) in try object(f).1 }
                // A nested HWPT's iommu_hwpt_vtd_s1, in the VMM's memory for the call.
                var data: (address: UInt64, process: Process)?
                if let guestTable {
                    guard let g = guestTables[guestTable] else { throw .notFound("guest table \(guestTable) was not built") }
                    let s1 = VTdStage1Configuration(tableAddress: g.root, addressWidth: g.levels == 5 ? 57 : 48).bytes
                    let address = try g.process.mmap(length: 4096, permissions: .readWrite)
                    _ = s1.withUnsafeBytes { g.process.copyOut(to: address, from: $0) }
                    data = (address, g.process)
                }
                defer { if let data { try? data.process.munmap(address: data.address, length: 4096) } }
                let out = try ioctl(c, .hwptAlloc) { s in
                    s.set32(4, (pasid ? UAPI.hwptAllocPASID : 0) | (faultID != nil ? UAPI.hwptFaultIDValid : 0) |
                               (dirty ? UAPI.hwptAllocDirtyTracking : 0) | (nestParent ? UAPI.hwptAllocNestParent : 0))
                    s.set32(8, devID); s.set32(12, ptID); s.set32(40, faultID ?? 0)
                    if let data { s.set32(24, UAPI.hwptDataVTdS1); s.set32(28, UInt32(VTdStage1Configuration.size)); s.set64(32, data.address) }
                }
                iommufdNames[name] = (iommufdNames[on]?.context ?? "", out.u32(16))
                if let guestTable, let g = guestTables[guestTable] {
                    g.hwpts.append(name)
                    if let h = c.object(out.u32(16)) as? HWPTNested { m.oracle.guestTableBuilt(h.domain) { g.isIntact() } }
                }
            }
        case .attach(let d, let target, let pasid), .replace(let d, let target, let pasid):
            var replace = false
            if case .replace = a { replace = true }
            if step(label, line: line, { () throws(IOMMUError) in
                let (c, devID) = try boundID(d)
                let (_, pt) = try object(target)
                let p = pasid.map { PASID(truncating: $0) }
                let h = try user { () throws(Errno) in replace ? try c.replace(devID, with: pt, pasid: p) : try c.attach(devID, to: pt, pasid: p) }
                note("\(label): HWPT \(h)")
            }), replace { note("\(label): \(m.core.lastUpdatePath.rawValue) path") }
        case .detach(let d, let pasid):
            step(label, line: line) { () throws(IOMMUError) in
                let (c, devID) = try boundID(d)
                try user { () throws(Errno) in try c.detach(devID, pasid: pasid.map { PASID(truncating: $0) }) }
            }
        case .dirtyTracking(let hwpt, let enable):
            step(label, line: line) { () throws(IOMMUError) in
                let (c, id) = try object(hwpt)
                _ = try ioctl(c, .hwptSetDirtyTracking) { $0.set32(4, enable ? UAPI.dirtyTrackingEnable : 0); $0.set32(8, id) }
            }
        case .dirtyRead(let hwpt, let iova, let pages, let noClear):
            step(label, line: line) { () throws(IOMMUError) in
                let (c, id) = try object(hwpt)
                guard let cname = iommufdNames[hwpt]?.context, let p = contextProcesses[cname] else { throw .notFound("no process for \(hwpt)") }
                // The VMM's bitmap: a buffer of its own, for this pass.
                let bytes = UInt64((pages + 63) / 64 * 8)
                let buffer = try p.mmap(length: bytes, permissions: .readWrite)
                defer { try? p.munmap(address: buffer, length: bytes) }
                _ = try ioctl(c, .hwptGetDirtyBitmap) { s in
                    s.set32(4, id); s.set32(8, noClear ? UAPI.getDirtyBitmapNoClear : 0)
                    s.set64(16, iova); s.set64(24, UInt64(pages) << 12); s.set64(32, 4096); s.set64(40, buffer)
                }
                var words = [UInt8](repeating: 0, count: Int(bytes))
                _ = words.withUnsafeMutableBytes { p.copyIn(from: buffer, into: $0) }
                let n = words.reduce(0) { $0 + $1.nonzeroBitCount }
                dirtyPagesReported += n
                note("\(label): \(n) dirty")
            }
        case .faultAlloc(let name, let cname):
            step(label, line: line) { () throws(IOMMUError) in
                let c = try context(cname)
                let out = try ioctl(c, .faultQueueAlloc) { _ in }
                let f = try user { () throws(Errno) in try c.faultObject(out.u32(8)) }
                iommufdNames[name] = (cname, f.id)
                iommufdFaults[name] = f
                f.queue.onReadable = { [weak self] in self?.faultQueueReadable(name) }
            }
        case .closeFault(let name):
            step(label, line: line) { () throws(IOMMUError) in
                let (c, id) = try object(name)
                try user { () throws(Errno) in try c.closeFaultFile(id) }
            }
        case .destroy(let name):
            step(label, line: line) { () throws(IOMMUError) in
                let (c, id) = try object(name)
                _ = try ioctl(c, .destroy) { $0.set32(4, id) }
                iommufdNames[name] = nil
                if let f = iommufdFaults.removeValue(forKey: name) { userAutoResponses += f.queue.autoResponses }
            }
        case .close(let cname):
            if let c = contexts[cname], !c.isClosed { closeContext(cname, c) }
            note(label)
        case .guestTable, .guestMap, .guestUnmap:
            performGuest(a, label: label, line: line)
        }
        checkIOASes()
    }

    /// Closes a context and checks that its pins are all released.
    func closeContext(_ name: String, _ c: IOMMUFDContext) {
        c.close()
        for (d, b) in boundDevices where b.context == name { boundDevices[d] = nil }
        for (n, o) in iommufdNames where o.context == name {
            iommufdNames[n] = nil
            if let f = iommufdFaults.removeValue(forKey: n) { userAutoResponses += f.queue.autoResponses }
        }
        m.oracle.checkPinsReleased(c, context: name)
    }

    /// The oracle's IOAS check over every open context.
    func checkIOASes() {
        for (name, c) in contexts.sorted(by: { $0.key < $1.key }) where !c.isClosed {
            for case let ioas as IOAS in c.objects { m.oracle.checkIOAS(ioas, context: name) }
        }
    }

    /// Contexts still open are closed (the VMM exits), before its process goes.
    func tearDownIOMMUFD() {
        for (name, c) in contexts.sorted(by: { $0.key < $1.key }) where !c.isClosed {
            closeContext(name, c)
            note("teardown: close \(name)")
        }
    }

    // MARK: The VMM's fault handler (a fault-handler workload on an iommufd fault object)

    /// Reads whole groups through the fault file, maps the faulting guest pages with
    /// IOAS_MAP (guest RAM behind the window) and answers each group through the file:
    /// SUCCESS when its pages are mapped, INVALID when one lies outside the window.
    func serveIOMMUFD(_ h: FaultHandlerState, _ f: FaultObject) {
        guard !f.isDestroyed, f.isFileOpen, let ioasName = h.spec.ioas, let rname = h.spec.region else { return }
        let bytes = (try? f.read(count: h.spec.batch * 40)) ?? []
        var records: [FaultQueue.Record] = []
        for o in stride(from: 0, to: bytes.count, by: 40) { records.append(FaultObject.decode(bytes, at: o)) }
        Self.forEachGroup(records) { answerIOMMUFD($0, f, h, ioas: ioasName, region: rname) }
        // More to read and progress made (a group larger than the batch never fits: no spin).
        if f.queue.undelivered > 0 && !records.isEmpty { wakeHandler(h) }
    }

    private func answerIOMMUFD(_ group: [FaultQueue.Record], _ f: FaultObject, _ h: FaultHandlerState, ioas: String, region: String) {
        guard let first = group.first else { return }
        let lo = h.spec.iova, hi = h.spec.iova &+ UInt64(h.spec.windowPages) << 12
        var code = FaultQueue.responseSuccess
        if group.contains(where: { $0.address < lo || $0.address >= hi }) {
            code = FaultQueue.responseInvalid
        } else {
            for r in group {
                let page = r.address & ~0xFFF
                let ok = step("VMM fault handler: IOAS_MAP guest page 0x\(String(page, radix: 16))", line: 0) { () throws(IOMMUError) in
                    let (c, id) = try object(ioas)
                    guard let reg = regions[region] else { throw .notFound("region \(region) is gone") }
                    let va = reg.address + (page - lo)
                    var s = StructBytes(size: IOMMUFDCommand.ioasMap.size)
                    s.set32(4, UAPI.mapFixedIOVA | UAPI.mapReadable | UAPI.mapWriteable); s.set32(8, id)
                    s.set64(16, va); s.set64(24, 4096); s.set64(32, page)
                    let rc = c.ioctl(IOMMUFDCommand.ioasMap.number, &s.bytes)
                    // Mapped already (an earlier group of the same page): fine.
                    if rc != 0 && rc != -Errno.EEXIST { throw (c.lastError ?? Errno(-rc)).iommuError }
                }
                if !ok { code = FaultQueue.responseInvalid; break }
            }
        }
        if code == FaultQueue.responseSuccess { h.groupsServed += 1 } else { h.groupsRefused += 1 }
        var response = StructBytes(bytes: [UInt8](repeating: 0, count: 8))
        response.set32(0, first.cookie); response.set32(4, code)
        // The kernel may have answered the group meanwhile (detach, replace): EINVAL then.
        do { _ = try f.write(response.bytes) } catch { note("VMM fault handler: cookie \(first.cookie): \(error)") }
    }
}
