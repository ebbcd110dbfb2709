#if canImport(Glibc)
import Glibc
#endif
import Platform
import Formats
import Hardware
import Kernel
import Simulation

/// A machine for the table fuzzers: a victim device whose structures the input corrupts and a
/// bystander, on its own bus (VT-d root entry) or stream-table span (SMMUv3 L1 descriptor),
/// that must not notice. The bystander's memory and every structure frame the victim does not
/// own are copied before the garbage goes in; after it, the harness puts the victim's words
/// back, compares and restores the rest (`escaped` when they changed: garbage tables reach
/// anywhere, on hardware too), invalidates every cache, and then checks the bystander's DMA
/// through the oracle and a full teardown for leaks.
final class FuzzRig {
    enum Arch { case vtd, smmuv3 }

    let machine: Machine
    let victim: Device, victimEndpoint: PCIeEndpoint
    let bystander: Device, bystanderEndpoint: PCIeEndpoint
    /// DMA addresses the victim and the bystander have mapped (with the buffers behind them).
    private(set) var victimIOVAs: [UInt64] = []
    private(set) var bystanderMappings: [(iova: UInt64, physical: UInt64)] = []
    /// A PASID of the victim with a paging domain of its own (nil on devices without PASIDs).
    private(set) var victimPASID: PASID?
    private var pasidDomain: IOMMUDomain?
    /// Frames the victim's structures are made of (the input corrupts their words), and
    /// single words of shared frames that belong to it (its root entry, its L1 descriptor).
    private(set) var victimFrames: [UInt64] = []
    private(set) var victimWords: [UInt64] = []
    private var protected: [(address: UInt64, copy: [UInt8])] = []
    private var victimCopy: [(address: UInt64, copy: [UInt8])] = []
    private let filter: VictimFilter

    var memory: PhysicalMemory { machine.platform.memory }
    var scheduler: Scheduler { machine.scheduler }

    init(_ arch: Arch, seed: UInt64 = 1, victimPASIDs: UInt32 = 64, ats: Bool = true, pri: Bool = true) throws {
        switch arch {
        case .vtd:
            machine = try Machine(seed: seed, memorySize: 16 << 20, units: [VTdConfiguration(name: "dmar0")])
        case .smmuv3:
            machine = try Machine(seed: seed, memorySize: 16 << 20, unitConfigurations: [.smmuv3(SMMUv3Configuration(name: "smmu0"))])
        }
        // The bystander first: everything allocated up to here is not the victim's.
        (bystander, bystanderEndpoint) = try machine.addDevices([DeviceDescription(
            name: "bystander", requesterID: RequesterID(bus: 0x20, device: 0, function: 0))])[0]
        for _ in 0..<4 {
            let pa = try machine.allocateBuffer()
            bystanderMappings.append((try machine.dma.mapPage(bystander, physical: pa, size: 4096, direction: .bidirectional), pa))
        }
        let before = Set(machine.platform.frames.allocatedFrames().map(\.address))
        (victim, victimEndpoint) = try machine.addDevices([DeviceDescription(
            name: "victim", requesterID: RequesterID(bus: 0x10, device: 0, function: 0), maxPASIDs: victimPASIDs,
            ats: ats, pri: pri)])[0]
        for _ in 0..<4 {
            let pa = try machine.allocateBuffer()
            victimIOVAs.append(try machine.dma.mapPage(victim, physical: pa, size: 4096, direction: .bidirectional))
        }
        if victimPASIDs > 0 {
            let d = try machine.core.allocDomain(for: victim, flags: .pasid)
            let p = try machine.core.allocGlobalPASID(for: victim)
            for i in 0..<4 {
                try machine.core.map(d, iova: 0x10_0000 + UInt64(i) * 4096, physical: try machine.allocateBuffer(), size: 4096,
                                     permissions: .readWrite)
            }
            _ = try machine.core.attachPASID(d, to: victim, pasid: p)
            victimPASID = p; pasidDomain = d
        }
        for f in machine.platform.frames.allocatedFrames() where f.purpose != .queue {
            if before.contains(f.address) {
                protected.append((f.address, []))
            } else if f.purpose != .dmaBuffer {
                victimFrames.append(f.address)
            }
        }
        victimWords = Self.sharedWords(machine, arch: arch, rid: victimEndpoint.requesterID)
        filter = VictimFilter(oracle: machine.oracle, victim: victimEndpoint.requesterID)
        for u in machine.units { u.attachChecker(filter, index: 0) }
        for u in machine.smmuUnits { u.attachChecker(filter, index: 0) }
        protected = protected.map { ($0.address, copyFrame($0.address)) }
        victimCopy = victimFrames.map { ($0, copyFrame($0)) }
        victimCopy += victimWords.map { ($0, copyWord($0)) }
    }

    /// Words outside the victim's own frames that only the victim uses: its VT-d root entry
    /// (both halves) or the SMMUv3 L1 stream-table descriptor of its span.
    private static func sharedWords(_ m: Machine, arch: Arch, rid: RequesterID) -> [UInt64] {
        switch arch {
        case .vtd:
            guard let u = m.units.first else { return [] }
            let root = u.read64(VTdRegister.rootTableAddress) & ~0xFFF
            return [root + UInt64(rid.bus) * 16, root + UInt64(rid.bus) * 16 + 8]
        case .smmuv3:
            guard let u = m.smmuUnits.first else { return [] }
            let cfg = u.read32(SMMUv3Register.strtabBaseCfg)
            guard (cfg >> 16) & 3 == 1 else { return [] }        // linear: the STE is in the victim's frames
            let split = UInt64((cfg >> 6) & 0x1F)
            let base = u.read64(SMMUv3Register.strtabBase) & 0x000F_FFFF_FFFF_FFC0
            return [base + (UInt64(rid.rawValue) >> split) * 8]
        }
    }

    private func copyFrame(_ address: UInt64) -> [UInt8] { copy(address, 4096) }

    /// Whether the frame at `address` still holds `copy` (memcmp: a byte loop would be traced
    /// compare by compare by the fuzzer's instrumentation, most of an input's time).
    private var scratch = [UInt8](repeating: 0, count: 4096)
    private func unchanged(_ address: UInt64, _ copy: [UInt8]) -> Bool {
        scratch.withUnsafeMutableBytes { buffer in
            guard (try? memory.read(address, into: buffer)) != nil else { return false }
            return copy.withUnsafeBytes { c in
                guard let a = buffer.baseAddress, let b = c.baseAddress, c.count == buffer.count else { return false }
                return memcmp(a, b, buffer.count) == 0
            }
        }
    }
    private func copyWord(_ address: UInt64) -> [UInt8] { copy(address, 8) }
    private func copy(_ address: UInt64, _ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        _ = out.withUnsafeMutableBytes { try? memory.read(address, into: $0) }
        return out
    }

    // MARK: Garbage

    /// Every word the input may corrupt: one of the victim's frames or shared words.
    func corrupt(_ input: inout FuzzInput) {
        let slots = victimFrames.count + victimWords.count
        guard slots > 0 else { return }
        let i = input.below(slots)
        let address = i < victimFrames.count ? victimFrames[i] + UInt64(input.below(512)) * 8 : victimWords[i - victimFrames.count]
        guard let old = try? memory.load64(address) else { return }
        let new: UInt64
        switch input.u8() & 3 {
        case 0: new = old ^ input.word()
        case 1: new = input.word()
        case 2: new = old ^ (1 << UInt64(input.u8() & 63))
        default:
            // A pointer to another of the victim's frames, with the low bits kept: walks go deeper.
            let f = victimFrames.isEmpty ? 0 : victimFrames[input.below(victimFrames.count)]
            new = (old & 0xFFF) | f | (old & 0xFFF0_0000_0000_0000)
        }
        try? memory.store64(address, new)
    }

    /// A DMA address the victim might use: one it mapped, its PASID domain's, or any.
    func victimAddress(_ input: inout FuzzInput) -> UInt64 {
        switch input.u8() & 3 {
        case 0, 1: return (victimIOVAs.isEmpty ? 0 : victimIOVAs[input.below(victimIOVAs.count)]) + UInt64(input.below(4096))
        case 2: return 0x10_0000 + UInt64(input.u16())
        default: return input.u64()
        }
    }

    func victimPASID(_ input: inout FuzzInput) -> PASID? {
        switch input.u8() & 3 {
        case 0, 1: return nil
        case 2: return victimPASID
        default: return PASID(truncating: input.u32())
        }
    }

    /// One access of the victim: a DMA read or write, or an ATS access (translation request,
    /// translated requests, page requests on a fault), run until it ends.
    func victimAccess(_ input: inout FuzzInput) {
        let op = input.u8() % 3
        let address = victimAddress(&input), pasid = victimPASID(&input)
        let length = input.below(9000)
        switch op {
        case 0: victimEndpoint.submit(.read(address, length: length, pasid: pasid))
        case 1: victimEndpoint.submit(.write(address, [UInt8](repeating: 0x5A, count: min(length, 256)), pasid: pasid))
        default: victimEndpoint.atsAccess(pasid: pasid, address: address, length: length, write: input.bool()) { _ in }
        }
        settle()
    }

    /// Runs hardware and software events for a bounded virtual time.
    func settle(_ ns: UInt64 = 200_000) {
        scheduler.run(until: scheduler.now + ns)
    }

    // MARK: Checks

    /// Inputs this rig has run, and what the oracle and the frame allocator held after setup.
    private(set) var inputsRun = 0
    private lazy var baselineViolations = machine.oracle.violations.count
    private lazy var baselineFrames = machine.platform.frames.inUse

    /// Ends one input: puts memory back, invalidates every cache, and checks the bystander's
    /// DMA, the oracle and the frame count. The machine then takes the next input.
    func finishInput(_ result: inout FuzzResult) {
        _ = (baselineViolations, baselineFrames)
        inputsRun += 1
        settle(2_000_000)
        for (a, c) in victimCopy { c.withUnsafeBytes { try? memory.write(a, from: $0) } }
        for (a, c) in protected where !unchanged(a, c) {
            result.escaped = true
            c.withUnsafeBytes { try? memory.write(a, from: $0) }
        }
        filter.victimQuiet = true
        defer { filter.victimQuiet = false }
        do {
            try machine.vtdDriver?.flushAllCaches()
            try machine.smmuDriver?.flushAllCaches()
        } catch { result.fail("flushing every cache after the garbage failed: \(error)") }
        victimEndpoint.resetATS()
        settle()
        checkBystander(&result, buffer: inputsRun % bystanderMappings.count)
        for v in machine.oracle.violations.dropFirst(baselineViolations) { result.fail("oracle: \(v)") }
        let frames = machine.platform.frames.inUse
        if frames != baselineFrames { result.fail("\(frames) frames allocated after the input, \(baselineFrames) before") }
    }

    /// The bystander writes and reads back one of its buffers: the data lands where its
    /// domain maps it, and the oracle sees both accesses.
    private func checkBystander(_ result: inout FuzzResult, buffer i: Int) {
        let m = bystanderMappings[i]
        let value = UInt8(truncatingIfNeeded: 0x30 + inputsRun)
        var wrote: PCIeEndpoint.Completion?, read: PCIeEndpoint.Completion?
        bystanderEndpoint.submit(.write(m.iova + 64, [UInt8](repeating: value, count: 64))) { wrote = $0 }
        try? scheduler.wait(until: { wrote != nil }, timeoutNs: 10_000_000)
        bystanderEndpoint.submit(.read(m.iova + 64, length: 64)) { read = $0 }
        try? scheduler.wait(until: { read != nil }, timeoutNs: 10_000_000)
        guard let w = wrote, let r = read, w.fault == nil, r.fault == nil, w.transferred == 64 else {
            result.fail("bystander DMA at \(m.iova) failed: \(String(describing: wrote?.fault)) \(String(describing: read?.fault))")
            return
        }
        if r.data != [UInt8](repeating: value, count: 64) || (try? memory.load8(m.physical + 64)) != value {
            result.fail("bystander DMA at \(m.iova) did not reach its buffer")
        }
    }

    /// Unmaps, detaches and releases everything, shuts the driver down, and checks that the
    /// oracle found no leak and that no frame is left allocated.
    func teardown(_ result: inout FuzzResult) {
        let core = machine.core
        filter.victimQuiet = true
        do {
            for m in bystanderMappings { try machine.dma.unmapPage(bystander, address: m.iova, size: 4096) }
            for a in victimIOVAs { try machine.dma.unmapPage(victim, address: a, size: 4096) }
            if let d = pasidDomain, let p = victimPASID {
                try core.detachPASID(d, from: victim, pasid: p)
                try core.freeGlobalPASID(p)
                try core.freeDomain(d)
            }
            settle(20_000_000)
            try core.release(victim)
            try core.release(bystander)
        } catch { result.fail("teardown after the garbage failed: \(error)") }
        settle(1_000_000)
        machine.shutdownDriver()
        core.releaseHeldFrames()
        machine.freeBuffers()
        machine.oracle.checkTeardown(core: core, driver: machine.vtdDriver)
        if let arm = machine.smmuDriver { machine.oracle.checkTeardown(smmu: arm) }
        for v in machine.oracle.violations.dropFirst(baselineViolations) { result.fail("oracle at teardown: \(v)") }
        let left = machine.platform.frames.inUse
        if left != 0 { result.fail("\(left) frames still allocated after teardown") }
    }
}

/// Passes every access to the oracle but the victim's while its structures hold garbage
/// (they reach what the garbage says; that is not the kernel's doing).
final class VictimFilter: DMAAccessChecker {
    let oracle: Oracle
    let victim: RequesterID
    var victimQuiet = false
    private(set) var victimAccesses = 0

    init(oracle: Oracle, victim: RequesterID) {
        self.oracle = oracle
        self.victim = victim
    }

    override func check(unit: Int, _ record: DMAAccessRecord) {
        if record.source == victim && !victimQuiet {
            victimAccesses += 1
            return
        }
        oracle.check(unit: unit, record)
    }
}
