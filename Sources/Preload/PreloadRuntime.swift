#if canImport(Glibc)
import Glibc
#endif
import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD
import Simulation
import CPreload

/// The preload library's state in a process (`LD_PRELOAD=libIOMMUPreload.so`): one emulated
/// machine, made on the first open of /dev/iommu (no threads before it), and an iommufd
/// context per open file, keyed by the descriptor the shim reserved for it. Every entry takes
/// one process-wide lock: the kernel serializes much finer, but the emulated machine is not
/// made for concurrent callers.
final class PreloadRuntime: @unchecked Sendable {
    let machine: Machine
    let memory: HostMemory
    var contexts: [Int32: IOMMUFDContext] = [:]
    var deviceFiles: [Int32: VFIODeviceFile] = [:]
    /// Fault-injection files (the task's fail-nth, debugfs knobs): what they hold, and how
    /// much of it a reader has read.
    var injectionFiles: [Int32: (path: String, offset: Int)] = [:]
    /// The values written to debugfs fault-injection knobs (read back as written).
    private var knobs: [String: String] = [:]
    /// The fail-nth count in force (0: none), counted over the software injection points.
    private var failNth = 0
    /// Fault queue files (eventfds the shim made): their context and object.
    var faultFiles: [Int32: (context: IOMMUFDContext, fault: FaultObject)] = [:]
    /// The machine's devices in probe order: /dev/vfio/devices/vfioN is the Nth.
    private(set) var devices: [(Device, PCIeEndpoint)] = []
    /// The selftest's access files and vEVENTQ files (PreloadRuntime+Selftest.swift).
    var accessFiles: [Int32: IOMMUFDContext] = [:]
    var eventQueueFiles: [Int32: (context: IOMMUFDContext, queue: VEventQueueObject)] = [:]
    /// Servers of forked children sharing this process's iommufd files (ForkSharing.swift).
    var servers: [ForkServer] = []
    /// The process's pin accounting, shared by its contexts (Linux: its mm and user).
    let ledger = PinLedger()
    /// /proc/PID/status files opened, with the emulated accounting in them (StatusFiles.swift).
    var statusFiles: [Int32: (text: [UInt8], offset: Int)] = [:]
    /// Windows of iommufd files mapped into the program (PreloadRuntime+Selftest.swift).
    var windows: [MappedWindow] = []
    /// Set while a forked child's call runs (ForkSharing.swift): files cannot be made for it.
    var servingChild = false

    func context(_ fd: Int32) -> IOMMUFDContext? { contexts[fd] }

    /// The machine of `SWIFTIOMMU_MACHINE` (a built-in scenario's name or a scenario file:
    /// its units and devices, in its order; `iommu-sim preload --machine` sets it), or the
    /// default one: a PASID/ATS/PRI-capable accelerator and a plain NIC behind one unit.
    init() throws {
        if let spec = getenv("SWIFTIOMMU_MACHINE").map({ String(cString: $0) }), !spec.isEmpty {
            let scenario = try BuiltinScenarios.load(spec)
            machine = try Machine(seed: 1, memorySize: scenario.machine.memoryMiB << 20, unitConfigurations: scenario.units.map(\.configuration),
                                  policy: scenario.machine.policy, cpus: scenario.machine.cpus,
                                  pagingStage: scenario.machine.pagingStage, pagingLevels: scenario.machine.pagingLevels,
                                  sharedMemory: true, smmuStage: scenario.machine.pagingStage.map { $0 == .first ? .s1 : .s2 })
            memory = HostMemory(physical: machine.platform.memory, frames: machine.platform.frames)
            devices = try machine.addDevices(scenario.devices.map(\.description), ats: scenario.devices.map(\.ats),
                                             pri: scenario.devices.map(\.pri))
            Self.applyOracleSetting(machine)
            Self.registerSelftest(machine)
            return
        }
        // 512 MiB of emulated memory (a sparse file: only what is used is backed), room for
        // the kernel selftests' 128 MiB of huge pages.
        machine = try Machine(seed: 1, memorySize: 512 << 20, units: [VTdConfiguration(name: "dmar0")], policy: .strict,
                              sharedMemory: true)
        memory = HostMemory(physical: machine.platform.memory, frames: machine.platform.frames)
        devices = try machine.addDevices([
            DeviceDescription(name: "accel0", requesterID: RequesterID(bus: 0, device: 2, function: 0), unit: 0,
                              maxPASIDs: 1 << 8, ats: true, pri: true),
            DeviceDescription(name: "nic0", requesterID: RequesterID(bus: 0, device: 3, function: 0), unit: 0),
        ])
        Self.applyOracleSetting(machine)
        Self.registerSelftest(machine)
    }

    /// SWIFTIOMMU_ORACLE=0: the system alone, as Linux runs it (benchmarks); by default the
    /// oracle checks every map and DMA of the program's machine.
    static func applyOracleSetting(_ machine: Machine) {
        if let o = getenv("SWIFTIOMMU_ORACLE"), String(cString: o) == "0" { machine.detachOracle() }
        // Fault-safe copies without system calls, and no SIGBUS from the RAM window.
        let m = machine.platform.memory
        swiftiommu_shim_install_guard(m.hostAddress, m.hostAddress &+ m.size)
    }

    /// Opens `path` as file `fd`: /dev/iommu, or /dev/vfio/devices/vfioN (ENOENT beyond
    /// the machine's devices; EBUSY while that device file is open).
    func open(_ fd: Int32, path: String) -> Int32 {
        // A descriptor number the shim thought ours but the program closed behind its back.
        if contexts[fd] != nil || deviceFiles[fd] != nil || faultFiles[fd] != nil || injectionFiles[fd] != nil || accessFiles[fd] != nil
            || eventQueueFiles[fd] != nil || statusFiles[fd] != nil { close(fd) }
        if path == "/dev/iommu" {
            let c = IOMMUFDContext(core: machine.core, memory: memory, ledger: ledger)
            // IOMMU_FAULT_QUEUE_ALLOC's file: an eventfd readable while records wait.
            c.openFile = { [unowned self, unowned c] object in
                // A descriptor made here would be this process's, not the calling child's.
                guard !servingChild else { return -1 }
                guard let f = object as? FaultObject else { return openObjectFile(c, object) }
                let efd = swiftiommu_shim_eventfd(1)
                guard efd >= 0 else { return -1 }
                faultFiles[efd] = (c, f)
                f.queue.onReadable = { swiftiommu_shim_signal(efd, 1) }
                _ = c
                return efd
            }
            c.releaseFile = { [unowned self] fd in releaseFile(fd) }
            contexts[fd] = c
            return 0
        }
        if let pid = Self.statusPID(path) {
            guard let text = Self.statusText(pid: pid, pinnedKiB(pid: pid)) else { return -ENOENT }
            statusFiles[fd] = (Array(text.utf8), 0)
            return 0
        }
        if path.hasPrefix("/sys/kernel/debug/fail") || (path.hasPrefix("/proc/") && path.hasSuffix("/fail-nth")) {
            injectionFiles[fd] = (path, 0)
            return 0
        }
        let prefix = "/dev/vfio/devices/vfio"
        guard path.hasPrefix(prefix), let n = Int(path.dropFirst(prefix.count)), n >= 0, n < devices.count else { return -ENOENT }
        guard !deviceFiles.values.contains(where: { $0.index == n }) else { return -EBUSY }
        deviceFiles[fd] = VFIODeviceFile(index: n, device: devices[n].0, endpoint: devices[n].1)
        return 0
    }

    /// The emulator's own query on /dev/iommu, `_IO('S', 0x10)`: `struct swiftiommu_stats`
    /// {argsz u32, pad u32, frames_in_use u64, pinned_pages u64, live_domains u64,
    /// dids_in_use u64} = 40 bytes: what a leak check after a failed call compares.
    static let stats: UInt32 = 0x5310

    private func statsIoctl(_ arg: UInt64) -> Int {
        var s = StructBytes(size: 40)
        guard s.bytes.withUnsafeMutableBytes({ memory.copyIn(from: arg, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<4])) }) else {
            return -Int(EFAULT)
        }
        guard s.u32(0) >= 40 else { return -Int(EINVAL) }
        // Frames the system holds for itself: those standing in for the program's own pages
        // (pinned or parked) are the program's memory, not the system's.
        s.set64(8, UInt64(machine.platform.frames.inUse - memory.framesStandingIn))
        s.set64(16, UInt64(memory.pinnedPages))
        s.set64(24, UInt64(machine.core.liveDomains.count))
        s.set64(32, UInt64((machine.vtdDriver?.units ?? []).reduce(0) { $0 + $1.domainIDs.allocated }))
        return s.bytes.withUnsafeBytes({ memory.copyOut(to: arg, from: $0) }) ? 0 : -Int(EFAULT)
    }

    func ioctl(_ fd: Int32, _ request: UInt, _ arg: UInt) -> Int {
        // Only the low 32 bits are the ioctl number (the kernel's `unsigned int cmd`).
        let cmd = UInt32(truncatingIfNeeded: request)
        if cmd == Self.stats, contexts[fd] != nil { return statsIoctl(UInt64(arg)) }
        if let c = contexts[fd] {
            if cmd == IOMMUFDCommand.ioasMapFile.number { offerFile(c, UInt64(arg)) }
            return Int(c.ioctl(cmd, userArgument: UInt64(arg)))
        }
        if let d = deviceFiles[fd] { return d.ioctl(cmd, UInt64(arg), runtime: self) }
        // Fault queue, fault-injection, status, access and event queue files take no ioctl.
        return faultFiles[fd] != nil || injectionFiles[fd] != nil || accessFiles[fd] != nil || eventQueueFiles[fd] != nil
            || statusFiles[fd] != nil
            ? -Int(ENOTTY) : -Int(EBADF)
    }

    /// IOMMU_IOAS_MAP_FILE names a descriptor of the program's: the context gets the file
    /// behind it (if it is open) under that number, so the command finds it (EBADF otherwise).
    private func offerFile(_ c: IOMMUFDContext, _ arg: UInt64) {
        var head = (UInt64(0), UInt64(0))
        guard withUnsafeMutableBytes(of: &head, { memory.copyIn(from: arg, into: $0) }) else { return }
        let userFD = Int32(bitPattern: UInt32(truncatingIfNeeded: head.1 >> 32))
        guard swiftiommu_shim_is_ours(userFD) == 0, let file = HostFile(fd: userFD, memory: memory), !file.isEmulatedRAM else {
            c.files[userFD] = nil
            return
        }
        c.files[userFD] = file
    }

    /// read() of one of our files: fault records from a fault file (whole groups; the
    /// eventfd's readiness follows what is left); /dev/iommu and device files have no read.
    func read(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int {
        if let file = injectionFiles[fd] { return readInjection(fd, file, buffer, count) }
        if statusFiles[fd] != nil { return Self.readSnapshot(&statusFiles, fd, buffer, count, at: nil, memory) }
        if let (_, q) = eventQueueFiles[fd] { return readEvents(q, buffer, count) }
        guard let (_, f) = faultFiles[fd] else { return -Int(EINVAL) }
        guard count >= 0, count % 40 == 0 else { return -Int(ESPIPE) }
        // The records go through a buffer of ours (no larger than what waits), then to the
        // caller's; the caller's buffer is checked first, so a bad one takes no record away.
        let wanted = min(count, max(f.queue.undelivered, 0) * 40 * 64, 1 << 20) / 40 * 40
        guard wanted > 0 else { return 0 }
        let local = UnsafeMutableRawBufferPointer.allocate(byteCount: wanted, alignment: 8)
        defer { local.deallocate() }
        local.initializeMemory(as: UInt8.self, repeating: 0)
        guard memory.copyIn(from: UInt64(UInt(bitPattern: buffer)), into: local),
              memory.copyOut(to: UInt64(UInt(bitPattern: buffer)), from: UnsafeRawBufferPointer(local)) else { return -Int(EFAULT) }
        let n: Int
        do { n = try f.read(into: local) } catch { return -Int(error.code) }
        swiftiommu_shim_signal(fd, f.queue.undelivered > 0 ? 1 : 0)
        guard n == 0 || memory.copyOut(to: UInt64(UInt(bitPattern: buffer)), from: UnsafeRawBufferPointer(rebasing: local[0..<n])) else {
            return -Int(EFAULT)
        }
        return n
    }

    /// write() of one of our files: page responses to a fault file; the machine then runs
    /// until idle (the response reaches the device, which retries).
    func write(_ fd: Int32, _ buffer: UnsafeRawPointer?, _ count: Int) -> Int {
        if let file = injectionFiles[fd] { return writeInjection(file.path, buffer, count) }
        guard let (_, f) = faultFiles[fd] else { return -Int(EINVAL) }
        guard count >= 0, count % 8 == 0 else { return -Int(ESPIPE) }
        // One response at a time, as iommufd_fault_fops_write: each copied, then taken; the
        // first that cannot be read or is refused ends the write, which returns the bytes
        // taken before it, or the error when it was the first. (An unreadable first response
        // gives the kernel's copy_from_user remainder, 8, not EFAULT: v6.17 returns `rc`
        // as it is there; matched here.)
        var done = 0
        var response = (UInt64(0))
        var failure = 0
        while done < count {
            let readable = withUnsafeMutableBytes(of: &response) { memory.copyIn(from: UInt64(UInt(bitPattern: buffer)) &+ UInt64(done), into: $0) }
            guard readable else { failure = 8; break }
            do { _ = try withUnsafeBytes(of: &response) { (b) throws(Errno) in try f.write(from: b) } } catch {
                failure = -Int(error.code)
                break
            }
            done += 8
        }
        if done > 0 { settle() }
        return done > 0 ? done : failure
    }

    /// pread of one of our files: a fault-injection file reads from `offset`; a fault file
    /// does not seek (ESPIPE); the others have no read (EINVAL).
    func pread(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int, _ offset: Int) -> Int {
        if statusFiles[fd] != nil { return Self.readSnapshot(&statusFiles, fd, buffer, count, at: offset, memory) }
        if let file = injectionFiles[fd] {
            guard offset >= 0 else { return -Int(EINVAL) }
            let n = readInjection(fd, (file.path, offset), buffer, count)
            injectionFiles[fd] = file
            return n
        }
        return faultFiles[fd] != nil || eventQueueFiles[fd] != nil ? -Int(ESPIPE) : -Int(EINVAL)
    }

    /// pwrite of one of our files: a fault-injection file takes it as a write.
    func pwrite(_ fd: Int32, _ buffer: UnsafeRawPointer?, _ count: Int, _ offset: Int) -> Int {
        if let file = injectionFiles[fd] { return offset < 0 ? -Int(EINVAL) : writeInjection(file.path, buffer, count) }
        return faultFiles[fd] != nil || eventQueueFiles[fd] != nil ? -Int(ESPIPE) : -Int(EINVAL)
    }

    // MARK: Fault injection from the program (fail_nth)

    /// The software injection points a task's fail-nth covers: allocations and user copies
    /// of the kernel and iommufd (not the hardware's own failure modes).
    static let softwarePoints: Set<FaultPoint> = Set(FaultPoint.all.filter { !$0.name.hasPrefix("hw.") })

    /// What the file reads: fail-nth the count still to go and a newline (0 once the failure
    /// fired or when none is set, as Linux `proc_fail_nth_read`), a knob what was written to it.
    private func injectionText(_ path: String) -> String {
        if path.hasSuffix("/fail-nth") {
            let f = machine.platform.faults
            // Linux proc_fail_nth_read prints the count and a newline.
            guard failNth > 0, case .failNthAmong = f.mode, f.fired.isEmpty else { return "0\n" }
            return "\(max(0, failNth - f.countedAmong))\n"
        }
        return knobs[path] ?? "0"
    }

    private func readInjection(_ fd: Int32, _ file: (path: String, offset: Int), _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int {
        let text = Array(injectionText(file.path).utf8)
        let n = max(0, min(count, text.count - file.offset))
        guard n > 0 else { return 0 }
        guard text[file.offset..<file.offset + n].withUnsafeBytes({ memory.copyOut(to: UInt64(UInt(bitPattern: buffer)), from: $0) }) else {
            return -Int(EFAULT)
        }
        injectionFiles[fd] = (file.path, file.offset + n)
        return n
    }

    /// Writing N to fail-nth makes the Nth software injection point hit from now fail (0
    /// turns it off; not a number: EINVAL); a knob keeps what was written.
    private func writeInjection(_ path: String, _ buffer: UnsafeRawPointer?, _ count: Int) -> Int {
        let local = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, min(count, 64)), alignment: 1)
        defer { local.deallocate() }
        let n = min(count, 64)
        guard n == 0 || memory.copyIn(from: UInt64(UInt(bitPattern: buffer)), into: UnsafeMutableRawBufferPointer(rebasing: local[0..<n])) else {
            return -Int(EFAULT)
        }
        let text = String(decoding: local[0..<n], as: UTF8.self).filter { !" \n\t".contains($0) }
        if path.hasSuffix("/fail-nth") {
            guard let v = Int(text), v >= 0, v <= Int(Int32.max) else { return -Int(EINVAL) }
            let f = machine.platform.faults
            failNth = v
            f.mode = v == 0 ? .off : .failNthAmong(v, among: Self.softwarePoints)
            f.reset()
            return count
        }
        knobs[path] = text
        return count
    }

    /// Runs the machine until nothing is pending (its software and hardware work in virtual
    /// time): what a real system would have done by the time the program looks again.
    func settle() { _ = machine.scheduler.runUntilIdle() }

    // MARK: Process-wide

    nonisolated(unsafe) static var shared: PreloadRuntime?
    nonisolated(unsafe) static var lockStorage = pthread_mutex_t()

    static func withLock<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(&lockStorage)
        defer { pthread_mutex_unlock(&lockStorage) }
        return body()
    }
}
