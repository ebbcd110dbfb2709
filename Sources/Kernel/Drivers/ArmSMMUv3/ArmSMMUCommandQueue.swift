import Platform
import Formats
import Hardware

/// The driver's producer side of an SMMUv3 command queue (Linux arm-smmu-v3.c
/// `arm_smmu_cmdq_issue_cmdlist`, `arm_smmu_cmdq_build_sync_cmd`,
/// `__arm_smmu_cmdq_poll_until_msi`, `arm_smmu_cmdq_skip_err`).
///
/// Commands are written at the software PROD into queue memory; PROD is published to
/// SMMU_CMDQ_PROD when a batch ends (at `sync`) or when the queue is full and the unit must
/// make room. A sync appends a CMD_SYNC with CS = SIG_IRQ whose MSI address is the CMD_SYNC's
/// own slot and whose MSIData is 0 (Linux's MSI polling: the unit overwrites the first 32 bits
/// of the command with 0 when everything before it took effect), and runs the hardware in
/// virtual time until that word reads 0 (or CONS passed the slot), as `VTdInvalidationQueue`
/// waits for its status write. A wait that does not end within `timeoutNs` is ETIMEDOUT.
///
/// A command the unit refuses stops the queue with CONS on it and GERROR.CMDQ_ERR active.
/// As Linux's global-error handler does (`arm_smmu_cmdq_skip_err`), the waiter rewrites an
/// illegal command (CERROR_ILL) in place as a CMD_SYNC without MSI and acknowledges GERRORN, so
/// the queue resumes; CERROR_ABT (the fetch is retried) and CERROR_ATC_INV_SYNC (the CMD_SYNC
/// is retried) are acknowledged without a rewrite. A skipped command is lost, as in Linux (the
/// CMD_SYNC after it still completes); `errorsSkipped` counts them.
final class ArmSMMUCommandQueue {
    let unit: SMMUv3Unit
    let platform: PlatformContext
    let memory: PhysicalMemory
    let scheduler: Scheduler
    /// Queue memory: 2^log2 entries of 16 bytes.
    let base: UInt64
    let log2: UInt32
    /// Software PROD (index and wrap bit).
    @exclusivity(unchecked) private(set) var prod: UInt32 = 0
    /// The last CONS read from the unit.
    @exclusivity(unchecked) private var cons: UInt32 = 0
    /// Virtual time a wait may take before it is a time-out.
    var timeoutNs: UInt64 = 1_000_000
    @exclusivity(unchecked) private(set) var commandsIssued: UInt64 = 0
    @exclusivity(unchecked) private(set) var syncs: UInt64 = 0
    @exclusivity(unchecked) private(set) var timeouts: UInt64 = 0
    @exclusivity(unchecked) private(set) var errorsSkipped: UInt64 = 0
    /// Times a writer found the queue full and waited for the unit.
    @exclusivity(unchecked) private(set) var fullWaits: UInt64 = 0

    init(unit: SMMUv3Unit, platform: PlatformContext, base: UInt64, log2: UInt32) {
        self.unit = unit; self.platform = platform; self.base = base; self.log2 = log2
        memory = platform.memory
        scheduler = platform.scheduler
    }

    /// The SMMU_CMDQ_BASE value: RA, address, LOG2SIZE (Linux `Q_BASE_RWA | addr | log2`).
    var baseRegister: UInt64 { 1 << 62 | base | UInt64(log2) }

    @inline(__always) private var pointerMask: UInt32 { (1 << (log2 + 1)) - 1 }
    @inline(__always) private var indexMask: UInt32 { (1 << log2) - 1 }
    @inline(__always) private func slot(_ p: UInt32) -> UInt64 { base + UInt64(p & indexMask) * RawCommand.size }
    @inline(__always) private func isFull(_ p: UInt32, _ c: UInt32) -> Bool { (p ^ c) & pointerMask == 1 << log2 }

    /// CONS as the unit reports it (ERR bits dropped).
    @inline(__always) private func readCons() -> UInt32 {
        unit.read32(SMMUv3Register.cmdqCons) & pointerMask
    }

    @inline(__always) private func errorActive() -> Bool {
        (unit.read32(SMMUv3Register.gerror) ^ unit.read32(SMMUv3Register.gerrorn)) & SMMUv3Bits.gerrorCMDQ != 0
    }

    /// Whether CONS has moved past pointer `p` (the command at `p` was consumed).
    @inline(__always) private func consumed(_ p: UInt32) -> Bool {
        let c = readCons()
        // Entries in flight: from c up to prod; p is done when it is not among them.
        let inFlight = (prod &- c) & pointerMask
        let ahead = (p &- c) & pointerMask
        return ahead >= inFlight
    }

    // MARK: Producing

    /// Writes one command at PROD (waiting for room if the queue is full). It reaches the
    /// unit with the next `sync` (or earlier, if the queue fills).
    /// - Complexity: O(1) and allocation-free unless the queue is full.
    func issue(_ command: SMMUCommand) throws(IOMMUError) {
        let raw = command.encode()
        try issueRaw(raw.w0, raw.w1)
    }

    /// Writes one command as raw words (Linux `arm_smmu_cmdq_issue_cmdlist` with commands a
    /// guest built, `arm_vsmmu_cache_invalidate`): the unit decodes them, and refuses an
    /// illegal one with CERROR_ILL, which is skipped as any other.
    func issueRaw(_ w0: UInt64, _ w1: UInt64) throws(IOMMUError) {
        if isFull(prod, cons) { try waitForRoom() }
        let a = slot(prod)
        do {
            try memory.store64(a, w0)
            try memory.store64(a + 8, w1)
        } catch { throw .ioError("command queue memory: \(error)") }
        prod = (prod &+ 1) & pointerMask
        commandsIssued &+= 1
    }

    /// Publishes PROD and waits until the unit made room (Linux
    /// `arm_smmu_cmdq_poll_until_not_full`).
    @inline(never)
    private func waitForRoom() throws(IOMMUError) {
        cons = readCons()
        guard isFull(prod, cons) else { return }
        fullWaits &+= 1
        unit.write32(SMMUv3Register.cmdqProd, prod)
        try waitHandlingErrors { [self] in
            cons = readCons()
            return !isFull(prod, cons)
        }
    }

    /// Appends a CMD_SYNC that writes 0 over itself by MSI, publishes PROD and waits for the
    /// write (Linux `arm_smmu_cmdq_issue_cmdlist` with `sync`, MSI polling). Throws ETIMEDOUT
    /// when it does not come within `timeoutNs`.
    func sync() throws(IOMMUError) {
        let at = prod
        let address = slot(at)
        try issue(.sync(CommandSync(signal: .irq, msiAddress: address, msiData: 0, msiAttr: 0xF, msh: 3)))
        syncs &+= 1
        unit.write32(SMMUv3Register.cmdqProd, prod)
        try waitHandlingErrors { [self] in
            (try? memory.load32(address)) == 0 || consumed(at)
        }
        cons = readCons()
    }

    /// Publishes PROD without waiting (Linux `arm_smmu_cmdq_issue_cmd` without sync: the
    /// commands take effect when the unit gets to them).
    func publish() {
        unit.write32(SMMUv3Register.cmdqProd, prod)
    }

    /// Issues `commands` and a sync.
    func issueAndSync(_ commands: SMMUCommand...) throws(IOMMUError) {
        for c in commands { try issue(c) }
        try sync()
    }

    /// Runs hardware until `done`, skipping refused commands on the way.
    private func waitHandlingErrors(_ done: () -> Bool) throws(IOMMUError) {
        let deadline = scheduler.now &+ timeoutNs
        while true {
            let remaining = deadline > scheduler.now ? deadline - scheduler.now : 0
            do { try scheduler.wait(until: { done() || errorActive() }, timeoutNs: remaining) } catch {
                timeouts &+= 1
                throw .timedOut("command queue of \(unit.configuration.name) did not complete")
            }
            if done() { return }
            skipError()
        }
    }

    /// Linux `arm_smmu_cmdq_skip_err`, then the GERRORN acknowledgement of
    /// `arm_smmu_gerror_handler`: an illegal command at CONS becomes a CMD_SYNC (CS = SIG_SEV,
    /// no MSI); on CERROR_ABT and CERROR_ATC_INV_SYNC the command is retried as it is.
    func skipError() {
        guard errorActive() else { return }
        let raw = unit.read32(SMMUv3Register.cmdqCons)
        let error = (raw >> SMMUv3Bits.cmdqConsErrShift) & 0x7F
        if error == UInt32(CERROR.ill.rawValue) {
            let replacement = SMMUCommand.sync(.linux(msiAddress: nil)).encode()
            let a = slot(raw & pointerMask)
            try? memory.store64(a, replacement.w0)
            try? memory.store64(a + 8, replacement.w1)
        }
        errorsSkipped &+= 1
        let gerror = unit.read32(SMMUv3Register.gerror)
        let gerrorn = unit.read32(SMMUv3Register.gerrorn)
        unit.write32(SMMUv3Register.gerrorn, gerrorn ^ ((gerror ^ gerrorn) & SMMUv3Bits.gerrorCMDQ))
    }
}
