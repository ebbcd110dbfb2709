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

    /// The victim PASID domain's page request handler (nil: the domain takes no faults).
    private(set) var faultHandler: AnsweringIOPFHandler?
    /// Words of the victim's live entries (SMMUv3: its STE, the CDs of SSID 0 and of its
    /// PASID, the L1 CD descriptors on the way), for garbage that hits fields in use.
    private(set) var liveWords: [UInt64] = []

    init(_ arch: Arch, seed: UInt64 = 1, victimPASIDs: UInt32 = 64, ats: Bool = true, pri: Bool = true,
         canStall: Bool = false, pasidFaultHandler: Bool = false) throws {
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
            ats: ats, pri: pri, canStall: canStall)])[0]
        for _ in 0..<4 {
            let pa = try machine.allocateBuffer()
            victimIOVAs.append(try machine.dma.mapPage(victim, physical: pa, size: 4096, direction: .bidirectional))
        }
        if victimPASIDs > 0 {
            let d = try machine.core.allocDomain(for: victim, flags: .pasid)
            let p = try machine.core.allocGlobalPASID(for: victim)
            if pasidFaultHandler {
                let h = AnsweringIOPFHandler(core: machine.core)
                try machine.core.setFaultHandler(h, for: d)
                faultHandler = h
            }
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
        if arch == .smmuv3 {
            liveWords = Self.smmuLiveWords(machine, sid: UInt32(victimEndpoint.requesterID.rawValue),
                                           ssids: [0] + (victimPASID.map { [$0.rawValue] } ?? []))
        }
        filter = VictimFilter(oracle: machine.oracle, victim: victimEndpoint.requesterID)
        for u in machine.units { u.attachChecker(filter, index: 0) }
        for u in machine.smmuUnits { u.attachChecker(filter, index: 0) }
        protected = protected.map { ($0.address, copyFrame($0.address)) }
        victimCopy = victimFrames.map { ($0, copyFrame($0)) }
        victimCopy += victimWords.map { ($0, copyWord($0)) }
        settle()
        takeBaseline()
    }

    /// What the oracle and the frame allocator hold now is the state every input must leave
    /// (a target that adds to the rig, a scratch frame, calls it again).
    func takeBaseline() {
        baselineViolations = machine.oracle.violations.count
        baselineFrames = machine.platform.frames.inUse
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
            // The register values the driver wrote (ArmSMMUDevice.install: Linux
            // `arm_smmu_write_strtab`), looked up as the unit does (IHI 0070 §5.1, §6.3.24).
            let st = StreamTableConfig(base: u.read64(SMMUv3Register.strtabBase), cfg: u.read32(SMMUv3Register.strtabBaseCfg))
            switch st.lookup(sid: UInt32(rid.rawValue), sidBits: u.features.sidBits) {
            case .l1Descriptor(let address, _): return [address]
            // A linear table was allocated before the bystander: the victim's STE is shared memory.
            case .ste(let address): return (0..<8).map { address + UInt64($0) * 8 }
            case .outOfRange: return []
            }
        }
    }

    /// The words of `sid`'s STE and of the CDs of `ssids` (with the L1 CD descriptors
    /// leading to them), found by walking the tables as the unit does: STE.S1ContextPtr and
    /// S1Fmt (IHI 0070 §5.2), linear CD tables or 2-level ones with 64 KiB leaves (§5.4.1,
    /// Linux `arm_smmu_get_cd_ptr`).
    private static func smmuLiveWords(_ m: Machine, sid: UInt32, ssids: [UInt32]) -> [UInt64] {
        guard let u = m.smmuUnits.first else { return [] }
        let memory = m.platform.memory
        let st = StreamTableConfig(base: u.read64(SMMUv3Register.strtabBase), cfg: u.read32(SMMUv3Register.strtabBaseCfg))
        let ste: UInt64
        switch st.lookup(sid: sid, sidBits: u.features.sidBits) {
        case .ste(let a): ste = a
        case .l1Descriptor(let a, let index):
            guard let raw = try? memory.load64(a), let s = st.steAddress(l1: L1StreamTableDescriptor(raw: raw), index: index) else { return [] }
            ste = s
        case .outOfRange: return []
        }
        var words = (0..<8).map { ste + UInt64($0) * 8 }
        guard let w0 = try? memory.load64(ste), (w0 >> 1) & 7 == 0b101 || (w0 >> 1) & 7 == 0b111 else { return words }
        let cdTable = w0 & 0x000F_FFFF_FFFF_FFC0
        let s1fmt = (w0 >> 4) & 3
        for ssid in ssids {
            var cd = cdTable + UInt64(ssid) * 64
            if s1fmt != 0 {
                // 2-level: SSID[19:10] (64 KiB leaves) or SSID[19:6] (4 KiB leaves) picks the L1CD.
                let leafBits: UInt64 = s1fmt == 2 ? 10 : 6
                let l1 = cdTable + (UInt64(ssid) >> leafBits) * 8
                words.append(l1)
                guard let d = try? memory.load64(l1), d & 1 != 0 else { continue }
                cd = (d & 0x000F_FFFF_FFFF_F000) + (UInt64(ssid) & ((1 << leafBits) - 1)) * 64
            }
            words += (0..<8).map { cd + UInt64($0) * 8 }
        }
        return words
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

    /// Garbage in one word of the victim's live entries (its STE, CDs, L1 descriptors).
    func corruptLive(_ input: inout FuzzInput) {
        guard !liveWords.isEmpty else { return corrupt(&input) }
        let address = liveWords[input.below(liveWords.count)]
        guard let old = try? memory.load64(address) else { return }
        let new: UInt64
        switch input.u8() & 3 {
        case 0: new = old ^ input.word()
        case 1: new = input.word()
        case 2: new = old ^ (1 << UInt64(input.u8() & 63))
        default: new = old ^ UInt64(input.u16()) << UInt64(input.u8() & 63)
        }
        try? memory.store64(address, new)
    }

    /// The victim's PASID goes through a stop and a detach (the driver drains its page
    /// requests: Linux `iommu_detach_device_pasid` → `iopf_queue_remove_device`-style
    /// flush, ArmSMMUDevice.drainPageRequests) and is attached again; the oracle checks that
    /// no partial request of the old use ends up in a later group.
    func cyclePASID(_ result: inout FuzzResult) {
        guard let d = pasidDomain, let p = victimPASID else { return }
        var stopped = false
        victimEndpoint.stopPASID(p, stopMarker: true) { stopped = true }
        for _ in 0..<40 where !stopped { settle(500_000) }
        do {
            try machine.core.detachPASID(d, from: victim, pasid: p)
            victimEndpoint.startPASID(p)
            _ = try machine.core.attachPASID(d, to: victim, pasid: p)
        } catch { result.fail("detaching and attaching the victim's PASID again failed: \(error)") }
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
    /// Taken at the end of `init` (taken at the first `finishInput`, they would absorb what
    /// the first input broke or leaked).
    private var baselineViolations = 0
    private var baselineFrames = 0

    /// Ends one input: puts memory back, invalidates every cache, and checks the bystander's
    /// DMA, the oracle and the frame count. The machine then takes the next input.
    func finishInput(_ result: inout FuzzResult) {
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

/// Answers every page request group at once, Success or Invalid Request by turns (an SVA
/// handler after `handle_mm_fault`, Linux `iommu_sva_handle_iopf`).
final class AnsweringIOPFHandler: IOPFHandler {
    unowned let core: IOMMUCore
    private(set) var groups = 0
    init(core: IOMMUCore) { self.core = core }
    func handle(_ group: IOPFGroup) throws(IOMMUError) {
        groups += 1
        core.respond(group, groups % 3 == 0 ? .invalidRequest : .success)
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
