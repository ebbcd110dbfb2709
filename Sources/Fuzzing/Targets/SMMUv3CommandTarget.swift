import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD
import Simulation

/// SMMUv3 commands (IHI 0070 chapter 4):
/// (a) raw, through the driver's queue (`ArmSMMUv3Driver.submitRawCommands`, Linux
///     `arm_smmu_cmdq_issue_cmdlist`): mostly a valid opcode with garbage fields, sometimes raw
///     words; the unit executes each or raises CERROR_ILL (§7.1) and the driver skips it as
///     `arm_smmu_cmdq_skip_err` does. A CMD_SYNC's MSI write (§4.7.3) is kept inside a scratch
///     frame: a garbage MSI address writes anywhere, and that is the kernel's own doing.
/// (b) a guest's, through IOMMU_HWPT_INVALIDATE on an SMMUv3 vIOMMU (the real ioctl dispatch:
///     `iommufd_hwpt_invalidate` → `arm_vsmmu_cache_invalidate` → `arm_vsmmu_convert_user_cmd`):
///     only TLBI_NH_*, TLBI_NSNH_ALL, ATC_INV, CFGI_CD(_ALL) pass, with the VMID replaced and
///     the vSID turned into the vDEVICE's StreamID; anything else stops the batch.
/// Checks: no trap; afterwards the queue works (FuzzRig's flush issues syncs that must
/// complete); a host device's TLB entries (its own ASID) survive every guest command; the
/// bystander's DMA is correct; the oracle is quiet for it; frames go back to the baseline.
enum SMMUv3CommandTarget {
    static func run(_ input: inout FuzzInput, _ result: inout FuzzResult) {
        if input.u8() & 1 == 0 {
            RigPool.with(RawRig.self, &result) { r, _ in
                r.commands(&input)
            }
        } else {
            RigPool.with(GuestRig.self, &result) { r, _ in
                r.commands(&input)
            }
        }
    }

    /// Opcodes IHI 0070 §4.1 defines (Table 4.1), with whether a StreamID is in word 0 [63:32].
    static let opcodes: [(op: UInt8, sid: Bool)] = [
        (0x01, true), (0x02, true), (0x03, true), (0x04, true), (0x05, true), (0x06, true), (0x07, false),
        (0x10, false), (0x11, false), (0x12, false), (0x13, false), (0x18, false), (0x1A, false),
        (0x20, false), (0x21, false), (0x22, false), (0x23, false), (0x28, false), (0x2A, false),
        (0x30, false), (0x40, true), (0x41, true), (0x44, true), (0x45, true), (0x46, false),
    ]

    // MARK: (a) raw commands

    final class RawRig: HoldsFuzzRig {
        let rig: FuzzRig
        let scratch: UInt64
        init() throws {
            rig = try FuzzRig(.smmuv3)
            scratch = try rig.machine.allocateBuffer()
            // PRI_RESP / RESUME the input sends the victim are no protocol breach of its own;
            // the endpoint should not count them as the kernel's.
            rig.victimEndpoint.misbehaviour = .all
            rig.takeBaseline()
        }

        func commands(_ input: inout FuzzInput) {
            guard let driver = rig.machine.smmuDriver else { return }
            var ops = 0
            while !input.isEmpty && ops < 32 {
                ops += 1
                switch input.u8() % 6 {
                case 0, 1, 2:
                    let n = 1 + input.below(8)
                    var batch: [(UInt64, UInt64)] = []
                    for _ in 0..<n { batch.append(command(&input)) }
                    // A sync that does not complete (an ATC_INV the endpoint never answers in
                    // time) is an error for the caller; the queue must still work afterwards.
                    try? rig.machine.platform.withHardware { () throws(IOMMUError) in
                        try driver.submitRawCommands(batch, unit: 0)
                    }
                case 3, 4: rig.victimAccess(&input)
                default: rig.settle(UInt64(input.u16()) * 100)
                }
            }
        }

        /// One command: a valid opcode with garbage fields, its StreamID the victim's, the
        /// bystander's or any, or (1 in 8) any two words (an exhausted input reads zeros: a valid opcode).
        func command(_ input: inout FuzzInput) -> (UInt64, UInt64) {
            var w0: UInt64, w1 = input.word()
            let kind = input.u8()
            if kind & 7 == 7 {
                w0 = input.u64()
            } else {
                let (op, hasSID) = opcodes[input.below(opcodes.count)]
                w0 = UInt64(op) | (kind & 8 != 0 ? UInt64(input.u32()) & ~0xFF : 0)
                if hasSID {
                    let sid: UInt32
                    switch input.u8() & 3 {
                    case 0, 1: sid = UInt32(rig.victimEndpoint.requesterID.rawValue)
                    case 2: sid = UInt32(rig.bystanderEndpoint.requesterID.rawValue)
                    default: sid = input.u32()
                    }
                    w0 |= UInt64(sid) << 32
                } else {
                    w0 |= UInt64(input.u32()) << 32
                }
            }
            if UInt8(truncatingIfNeeded: w0) == SMMUCommandOpcode.sync.rawValue {
                // CMD_SYNC MSIAddress [51:2] of word 1: inside the scratch frame.
                w1 = scratch | (w1 & 0xFFC)
            }
            // PRI_RESP and RESUME for the bystander would answer what it never asked
            // (PCIe: an unexpected response); it is not the device under test.
            let op = UInt8(truncatingIfNeeded: w0)
            if (op == 0x41 || op == 0x44) && UInt32(truncatingIfNeeded: w0 >> 32) == UInt32(rig.bystanderEndpoint.requesterID.rawValue) {
                w0 ^= 1 << 44
            }
            return (w0, w1)
        }
    }

    // MARK: (b) a guest's commands through the vIOMMU

    /// A VMM (as Tests/IOMMUFDTests/SMMUv3NestedRig.swift): an SMMUv3 with S2FWB, a guest
    /// device bound to iommufd with a nest-parent HWPT over guest RAM, a vIOMMU, a vDEVICE
    /// (vSID 0x42) and a nested HWPT whose CD and stage 1 tables the guest built; and a host
    /// device (the bystander) on the DMA API.
    final class GuestRig: PooledRig {
        let machine: Machine
        let process: Process
        let ctx: IOMMUFDContext
        let guest: Device, guestEndpoint: PCIeEndpoint
        let bystander: Device, bystanderEndpoint: PCIeEndpoint
        private var bystanderMappings: [(iova: UInt64, physical: UInt64)] = []
        private(set) var devID: UInt32 = 0, ioas: UInt32 = 0, parent: UInt32 = 0, viommu: UInt32 = 0
        private(set) var vdevice: UInt32 = 0, nested: UInt32 = 0
        let tableVA: UInt64, dataVA: UInt64, scratch: UInt64
        private(set) var bystanderASID: UInt16 = 0
        private(set) var inputsRun = 0
        /// What broke while the input ran (reported by `finishInput`).
        private var failures: [String] = []
        private var baselineViolations = 0, baselineFrames = 0
        static let tableGPA: UInt64 = 0x4000_0000, dataGPA: UInt64 = 0x4010_0000, regionSize: UInt64 = 64 << 10
        static let gva: UInt64 = 0x1000_0000, vsid: UInt64 = 0x42
        private(set) var guestASID: UInt16 = 7
        /// The guest's DMA is its own business while it changes its PTEs without a TLBI (a
        /// stale translation is what the hardware gives it); the oracle checks it only after
        /// the input, through restored tables and flushed caches.
        private let filter: VictimFilter

        enum SetupError: Error { case ioctl(String, Int32) }

        init() throws {
            var f = SMMUv3Features()
            f.s2FWB = true
            machine = try Machine(seed: 1, memorySize: 32 << 20, unitConfigurations: [.smmuv3(SMMUv3Configuration(name: "smmu0", features: f))])
            let guestRID = RequesterID(bus: 0x10, device: 0, function: 0)
            filter = VictimFilter(oracle: machine.oracle, victim: guestRID)
            (bystander, bystanderEndpoint) = try machine.addDevices([DeviceDescription(
                name: "bystander", requesterID: RequesterID(bus: 0x20, device: 0, function: 0))])[0]
            for _ in 0..<4 {
                let pa = try machine.allocateBuffer()
                bystanderMappings.append((try machine.dma.mapPage(bystander, physical: pa, size: 4096, direction: .bidirectional), pa))
            }
            process = try machine.core.createProcess()
            ctx = IOMMUFDContext(core: machine.core, memory: process, ledger: PinLedger())
            (guest, guestEndpoint) = try machine.addDevices([DeviceDescription(
                name: "guest", requesterID: guestRID)])[0]
            let p = process
            func touched(_ length: UInt64) throws -> UInt64 {
                let va = try p.mmap(length: length, permissions: .readWrite)
                for a in stride(from: va, to: va + length, by: 4096) { _ = p.fault(at: a, access: [.read, .write]) }
                return va
            }
            tableVA = try touched(Self.regionSize)
            dataVA = try touched(Self.regionSize)
            scratch = try touched(8 * 4096)
            machine.scheduler.runUntilIdle()
            devID = try ctx.bind(guest)
            ioas = try expect("IOAS_ALLOC", run(.ioasAlloc), id: 8)
            parent = try expect("HWPT_ALLOC parent", run(.hwptAlloc) { [devID, ioas] s in
                s.set32(4, UAPI.hwptAllocNestParent); s.set32(8, devID); s.set32(12, ioas)
            }, id: 16)
            for (va, iova) in [(tableVA, Self.tableGPA), (dataVA, Self.dataGPA)] {
                _ = try expect("IOAS_MAP", run(.ioasMap) { [ioas] s in
                    s.set32(4, UAPI.mapReadable | UAPI.mapWriteable | UAPI.mapFixedIOVA); s.set32(8, ioas)
                    s.set64(16, va); s.set64(24, Self.regionSize); s.set64(32, iova)
                }, id: nil)
            }
            viommu = try expect("VIOMMU_ALLOC", run(.viommuAlloc) { [devID, parent] s in
                s.set32(8, ArmVSMMU.type); s.set32(12, devID); s.set32(16, parent)
            }, id: 20)
            vdevice = try expect("VDEVICE_ALLOC", run(.vdeviceAlloc) { [viommu, devID] s in
                s.set32(4, viommu); s.set32(8, devID); s.set64(16, Self.vsid)
            }, id: 12)
            // The bystander's ASID, from its CD 0 (IHI 0070 §5.4: ASID is CD word 0 [63:48]);
            // the guest's ASID must differ, or the count below would mix both.
            warmBystander()
            bystanderASID = Self.cdASID(machine, sid: UInt32(bystanderEndpoint.requesterID.rawValue)) ?? 0
            if guestASID == bystanderASID { guestASID += 1 }
            buildGuestTables()
            // A vSTE: S1 translate through the guest's linear CD table (Linux `arm_smmu_validate_vste`).
            let ste: [UInt64] = [1 | 0b101 << 1 | Self.tableGPA, 1 << 2 | 1 << 4 | 3 << 6]
            write(scratch, bytes(ste))
            nested = try expect("HWPT_ALLOC nested", run(.hwptAlloc) { [devID, viommu, scratch] s in
                s.set32(8, devID); s.set32(12, viommu); s.set32(24, ArmVSMMU.nestedDataType); s.set32(28, 16); s.set64(32, scratch)
            }, id: 16)
            do { _ = try ctx.attach(devID, to: nested) } catch { throw SetupError.ioctl("attach nested", error.code) }
            machine.scheduler.runUntilIdle()
            for u in machine.smmuUnits { u.attachChecker(filter, index: 0) }
            baselineViolations = machine.oracle.violations.count
            baselineFrames = machine.platform.frames.inUse
        }

        private func expect(_ what: String, _ r: (rc: Int32, out: StructBytes), id offset: Int?) throws -> UInt32 {
            guard r.rc == 0 else { throw SetupError.ioctl(what, ctx.lastError?.code ?? r.rc) }
            return offset.map { r.out.u32($0) } ?? 0
        }

        @discardableResult
        func run(_ c: IOMMUFDCommand, size: Int? = nil, _ fill: (inout StructBytes) -> Void = { _ in }) -> (rc: Int32, out: StructBytes) {
            var s = StructBytes(size: size ?? c.size)
            fill(&s)
            let rc = ctx.ioctl(c.number, &s.bytes)
            return (rc, s)
        }

        func write(_ address: UInt64, _ b: [UInt8]) { _ = b.withUnsafeBytes { process.copyOut(to: address, from: $0) } }
        func bytes(_ words: [UInt64]) -> [UInt8] { words.flatMap { w in (0..<8).map { UInt8(truncatingIfNeeded: w >> (8 * UInt64($0))) } } }

        static func cdASID(_ m: Machine, sid: UInt32) -> UInt16? {
            guard let u = m.smmuUnits.first else { return nil }
            let memory = m.platform.memory
            let st = StreamTableConfig(base: u.read64(SMMUv3Register.strtabBase), cfg: u.read32(SMMUv3Register.strtabBaseCfg))
            var ste: UInt64?
            switch st.lookup(sid: sid, sidBits: u.features.sidBits) {
            case .ste(let a): ste = a
            case .l1Descriptor(let a, let index): ste = (try? memory.load64(a)).flatMap { st.steAddress(l1: L1StreamTableDescriptor(raw: $0), index: index) }
            case .outOfRange: ste = nil
            }
            guard let s = ste, let w0 = try? memory.load64(s), (w0 >> 4) & 3 == 0,
                  let cd0 = try? memory.load64(w0 & 0x000F_FFFF_FFFF_FFC0) else { return nil }
            return UInt16(truncatingIfNeeded: cd0 >> 48)
        }

        /// The guest's CD 0 and a 4-level stage 1 table mapping 4 pages of GVA to the data
        /// region (pages 0–4 of the table region).
        func buildGuestTables() {
            let cd = ContextDescriptor.s1(asid: guestASID, ttb: Self.tableGPA + 4096)
            write(tableVA, bytes(cd.words))
            for level in 0..<3 {
                let index = (Self.gva >> UInt64(39 - 9 * level)) & 0x1FF
                write(tableVA + UInt64(1 + level) * 4096 + index * 8, bytes([ArmStage1Format.table(address: Self.tableGPA + UInt64(2 + level) * 4096)]))
            }
            for page in 0..<4 { setGuestPTE(page: page, present: true) }
        }

        func setGuestPTE(page: Int, present: Bool) {
            let index = ((Self.gva >> 12) & 0x1FF) + UInt64(page)
            let pte = present ? ArmStage1Format.leaf(address: Self.dataGPA + UInt64(page) * 4096, permissions: [.read, .write, .user], level: 1) : 0
            write(tableVA + 4 * 4096 + index * 8, bytes([pte]))
        }

        /// The bystander touches every buffer: its TLB entries are cached under its ASID.
        func warmBystander() {
            for m in bystanderMappings {
                var done = false
                bystanderEndpoint.submit(.read(m.iova, length: 8)) { _ in done = true }
                try? machine.scheduler.wait(until: { done }, timeoutNs: 10_000_000)
            }
        }

        /// Up to 24 operations: a batch of guest commands, a guest DMA, a guest PTE change.
        func commands(_ input: inout FuzzInput) {
            guard let unit = machine.smmuUnits.first else { return }
            var ops = 0
            while !input.isEmpty && ops < 24 {
                ops += 1
                switch input.u8() % 5 {
                case 0, 1, 2:
                    warmBystander()
                    let host = unit.cachedTLBEntries(asid: bystanderASID)
                    invalidate(&input)
                    let after = unit.cachedTLBEntries(asid: bystanderASID)
                    if after < host {
                        failures.append("a guest's commands dropped \(host - after) of the host bystander's TLB entries (ASID \(bystanderASID))")
                    }
                case 3:
                    var done = false
                    let a = Self.gva + UInt64(input.below(6)) * 4096 + UInt64(input.below(4096))
                    guestEndpoint.submit(.write(a, [UInt8](repeating: 0x5A, count: 1 + input.below(64)))) { _ in done = true }
                    try? machine.scheduler.wait(until: { done }, timeoutNs: 10_000_000)
                default: setGuestPTE(page: input.below(4), present: input.bool())
                }
            }
        }

        /// IOMMU_HWPT_INVALIDATE {size, hwpt_id @4, data_uptr @8, data_type @16, entry_len @20,
        /// entry_num @24} on the vIOMMU, with up to 80 entries (past a batch of 63).
        func invalidate(_ input: inout FuzzInput) {
            let n = input.u8() & 0x80 != 0 ? input.below(81) : 1 + input.below(6)
            var entryLength: UInt32 = 16, dataType = ArmVSMMU.invalidateDataType
            if input.u8() & 0xF == 0xF {
                entryLength = UInt32(input.below(33))
                dataType = UInt32(input.below(4))
            }
            var raw: [UInt8] = []
            for _ in 0..<n {
                var w0: UInt64, w1 = input.word()
                let kind = input.u8()
                if kind & 7 == 7 {
                    w0 = input.u64()
                } else {
                    let allowed: [UInt8] = [0x10, 0x11, 0x12, 0x13, 0x30, 0x40, 0x05, 0x06]
                    let op = kind & 0x40 != 0 ? opcodes[input.below(opcodes.count)].op : allowed[input.below(allowed.count)]
                    w0 = UInt64(op) | (kind & 8 != 0 ? UInt64(input.u32()) & ~0xFF : 0)
                    switch input.u8() & 3 {
                    case 0, 1: w0 |= Self.vsid << 32
                    case 2: w0 |= UInt64(guestASID) << 48 | UInt64(input.u16()) << 32
                    default: w0 |= UInt64(input.u32()) << 32
                    }
                    if kind & 0x20 != 0 { w1 = Self.gva + UInt64(input.below(4)) * 4096 | UInt64(input.u8() & 1) }
                }
                var e = bytes([w0, w1])
                e += [UInt8](repeating: kind & 0x10 != 0 ? input.u8() : 0, count: max(0, Int(entryLength) - 16))
                raw += e.prefix(Int(entryLength))
            }
            if !raw.isEmpty { write(scratch, raw) }
            let addr = input.u8() & 0x1F == 0x1F ? input.u64() : scratch
            run(.hwptInvalidate) { [viommu] s in
                s.set32(4, viommu); s.set64(8, addr); s.set32(16, dataType); s.set32(20, entryLength); s.set32(24, UInt32(n))
            }
        }

        /// The guest's tables and PTEs back, every cache flushed, the queue syncing, then the
        /// bystander's DMA, the oracle and the frames.
        func finishInput(_ result: inout FuzzResult) {
            inputsRun += 1
            for f in failures { result.fail(f) }
            failures = []
            machine.scheduler.run(until: machine.scheduler.now + 2_000_000)
            buildGuestTables()
            filter.victimQuiet = true
            defer { filter.victimQuiet = false }
            do { try machine.smmuDriver?.flushAllCaches() } catch { result.fail("the command queue does not sync after the input: \(error)") }
            let m = bystanderMappings[inputsRun % bystanderMappings.count]
            let value = UInt8(truncatingIfNeeded: 0x30 + inputsRun)
            var wrote: PCIeEndpoint.Completion?, read: PCIeEndpoint.Completion?
            bystanderEndpoint.submit(.write(m.iova + 64, [UInt8](repeating: value, count: 64))) { wrote = $0 }
            try? machine.scheduler.wait(until: { wrote != nil }, timeoutNs: 10_000_000)
            bystanderEndpoint.submit(.read(m.iova + 64, length: 64)) { read = $0 }
            try? machine.scheduler.wait(until: { read != nil }, timeoutNs: 10_000_000)
            if wrote?.fault != nil || read?.fault != nil || read?.data != [UInt8](repeating: value, count: 64)
                || (try? machine.platform.memory.load8(m.physical + 64)) != value {
                result.fail("bystander DMA at \(m.iova) failed or missed its buffer")
            }
            // The guest's DMA works again through its (restored) tables: the vIOMMU is intact.
            var done: PCIeEndpoint.Completion?
            guestEndpoint.submit(.write(Self.gva + 8, [UInt8](repeating: 0xA5, count: 8))) { done = $0 }
            try? machine.scheduler.wait(until: { done != nil }, timeoutNs: 10_000_000)
            if done?.fault != nil || done == nil { result.fail("the guest's DMA through its restored tables failed: \(String(describing: done?.fault))") }
            for v in machine.oracle.violations.dropFirst(baselineViolations) { result.fail("oracle: \(v)") }
            let frames = machine.platform.frames.inUse
            if frames != baselineFrames { result.fail("\(frames) frames allocated after the input, \(baselineFrames) before") }
        }

        func teardown(_ result: inout FuzzResult) {
            let core = machine.core
            do {
                try ctx.detach(devID)
                ctx.close()
                for m in bystanderMappings { try machine.dma.unmapPage(bystander, address: m.iova, size: 4096) }
                machine.scheduler.run(until: machine.scheduler.now + 20_000_000)
                try process.exit()
                try core.release(guest)
                try core.release(bystander)
            } catch { result.fail("teardown failed: \(error)") }
            machine.scheduler.run(until: machine.scheduler.now + 1_000_000)
            machine.shutdownDriver()
            core.releaseHeldFrames()
            machine.freeBuffers()
            if let arm = machine.smmuDriver { machine.oracle.checkTeardown(smmu: arm) }
            for v in machine.oracle.violations.dropFirst(baselineViolations) { result.fail("oracle at teardown: \(v)") }
            let left = machine.platform.frames.inUse
            if left != 0 { result.fail("\(left) frames still allocated after teardown") }
        }
    }
}
