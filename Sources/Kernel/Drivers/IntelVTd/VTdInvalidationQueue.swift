import Platform
import Formats
import Hardware

/// The driver's side of a unit's queued-invalidation interface (Linux `qi_submit_sync`,
/// drivers/iommu/intel/dmar.c): descriptors are written at the tail in memory, IQT is
/// advanced, and a wait descriptor with a status write tells software when the hardware
/// has done everything before it.
final class VTdInvalidationQueue {
    let unit: VTdUnit
    let platform: PlatformContext
    let base: UInt64
    let statusAddress: UInt64
    /// 256-bit descriptors in one 4 KiB page (a power of two: offsets wrap with a mask).
    static let slots: UInt64 = 128
    static let bytes: UInt64 = slots * 32
    @exclusivity(unchecked) var tail: UInt64 = 0
    @exclusivity(unchecked) var nextStatus: UInt32 = 1
    /// The last batch's wait completed, so the hardware has consumed everything written.
    @exclusivity(unchecked) private var queueIsEmpty = true
    /// Virtual time a wait may take before it is a time-out.
    var timeoutNs: UInt64 = 1_000_000
    /// Descriptors per submission before a wait (Linux `QI_MAX_BATCHED_DESC_COUNT`).
    static let batchLimit = 16
    @exclusivity(unchecked) private(set) var submissions: UInt64 = 0
    @exclusivity(unchecked) private(set) var descriptorsSubmitted: UInt64 = 0
    @exclusivity(unchecked) private(set) var timeouts: UInt64 = 0
    @exclusivity(unchecked) private(set) var queueErrors: UInt64 = 0

    /// The platform's memory and scheduler, held directly: reaching them through `platform`
    /// (another module's class) costs a retain and release per use.
    let memory: PhysicalMemory
    let scheduler: Scheduler

    init(unit: VTdUnit, platform: PlatformContext, base: UInt64, statusAddress: UInt64) {
        self.unit = unit; self.platform = platform; self.base = base; self.statusAddress = statusAddress
        memory = platform.memory
        scheduler = platform.scheduler
    }

    /// Submits `descriptors` in batches, each followed by a wait descriptor, and waits for
    /// each batch. Throws `ETIMEDOUT` if a wait does not complete, `EIO` if the hardware
    /// reports an invalidation-queue error (the bad descriptor is replaced and the queue
    /// restarted, as Linux `qi_check_fault` does).
    /// Holds the platform's hardware lock throughout (Linux holds `qi->q_lock` from writing
    /// the descriptors until the wait completes).
    /// With `drain`, each batch's wait descriptor also drains page requests and responses
    /// (PD, Linux `QI_OPT_WAIT_DRAIN`).
    func submitAndWait(_ descriptors: [InvalidationDescriptor], drain: Bool = false) throws(IOMMUError) {
        try descriptors.withUnsafeBufferPointer { d throws(IOMMUError) in try submitAndWait(d, drain: drain) }
    }

    func submitAndWait(_ descriptors: UnsafeBufferPointer<InvalidationDescriptor>, drain: Bool = false) throws(IOMMUError) {
        try platform.withHardware { () throws(IOMMUError) in
            var i = 0
            repeat {
                let end = min(descriptors.count, i + Self.batchLimit)
                try submitBatch(UnsafeBufferPointer(rebasing: descriptors[i..<end]), drain: drain)
                i = end
            } while i < descriptors.count
        }
    }

    /// Submits descriptors given as raw bits (each batch followed by a wait), as Linux's
    /// `qi_submit_sync` takes the `qi_desc`s its callers built: the fuzzers put garbage here.
    func submitRawAndWait(_ descriptors: [RawDescriptor]) throws(IOMMUError) {
        try platform.withHardware { () throws(IOMMUError) in
            var i = 0
            repeat {
                let end = min(descriptors.count, i + Self.batchLimit)
                try submitBatch(count: end - i, drain: false) { descriptors[i + $0] }
                i = end
            } while i < descriptors.count
        }
    }

    private func write(_ d: InvalidationDescriptor) throws(IOMMUError) { try write(d.encode()) }

    private func write(_ raw: RawDescriptor) throws(IOMMUError) {
        do { try memory.store256(base + tail, raw.qw0, raw.qw1, raw.qw2, raw.qw3) } catch {
            throw .ioError("invalidation queue memory: \(error)")
        }
        tail = (tail &+ 32) & (Self.bytes - 1)
    }

    private func submitBatch(_ batch: UnsafeBufferPointer<InvalidationDescriptor>, drain: Bool) throws(IOMMUError) {
        try submitBatch(count: batch.count, drain: drain) { batch[$0].encode() }
    }

    private func submitBatch(count: Int, drain: Bool, _ descriptor: (Int) -> RawDescriptor) throws(IOMMUError) {
        // Normally the queue is empty here (every batch is waited for); after a time-out the
        // hardware may still be behind, so wait for room as Linux's `qi_submit_sync` does.
        // As Linux, the room is counted in software (`qi->free_cnt`): every completed wait
        // means everything before it is done and the queue is empty again; only after a
        // time-out or an error does the hardware's head have to be read.
        let needed = UInt64(count + 1)
        if !queueIsEmpty, freeSlots() < needed {
            do { try scheduler.wait(until: { freeSlots() >= needed }, timeoutNs: timeoutNs) } catch {
                timeouts += 1
                throw .timedOut("invalidation queue on \(unit.configuration.name) has no room")
            }
        }
        queueIsEmpty = false
        let status = nextStatus
        nextStatus = nextStatus == .max ? 1 : nextStatus + 1
        for i in 0..<count { try write(descriptor(i)) }
        try write(.wait(InvalidationWait(statusWrite: true, fence: true, pageDrain: drain, statusData: status, statusAddress: statusAddress)))
        submissions += 1
        descriptorsSubmitted += UInt64(count)
        unit.write64(VTdRegister.invalidationQueueTail, tail)
        let written = statusWritten(status)
        if written || queueStopped() {
            // Real-thread runs: the unit worked inline and the wait is already written.
            scheduler.settleRealTimeDebt()
        } else {
            do { try scheduler.wait(until: { waitDone(status) }, timeoutNs: timeoutNs) } catch {
                timeouts += 1
                throw .timedOut("invalidation wait on \(unit.configuration.name) did not complete")
            }
        }
        // A written status means the unit went through every descriptor before the wait
        // (it stops at a bad one with IQE set and never reaches the wait), so, as Linux's
        // polling loop, only a wait that ended otherwise looks at the fault status.
        if written || statusWritten(status) {
            queueIsEmpty = true
            return
        }
        if unit.read32(VTdRegister.faultStatus) & VTdFaultStatus.invalidationQueueError != 0 {
            queueErrors += 1
            recoverFromQueueError()
            throw .ioError("invalidation queue error on \(unit.configuration.name)")
        }
    }

    /// Free descriptor slots between the tail and the hardware's head (one always stays empty).
    private func freeSlots() -> UInt64 {
        let mask = Self.bytes - 1
        let head = unit.read64(VTdRegister.invalidationQueueHead) & mask
        return ((head &+ Self.bytes &- tail &- 32) & mask) / 32
    }

    /// Whether the wait with `status` has written it, or the queue stopped with an error.
    @inline(__always)
    private func waitDone(_ status: UInt32) -> Bool { statusWritten(status) || queueStopped() }

    /// IQE: the unit stopped at a descriptor it refused.
    @inline(__always)
    private func queueStopped() -> Bool {
        unit.read32(VTdRegister.faultStatus) & VTdFaultStatus.invalidationQueueError != 0
    }

    @inline(__always)
    private func statusWritten(_ status: UInt32) -> Bool { (try? memory.load32(statusAddress)) == status }

    /// Replaces the descriptor at the head (the one the hardware refused) with a harmless
    /// wait without status write, then clears IQE so the queue continues (Linux
    /// `qi_check_fault`). A later descriptor of the same batch may stop the queue again: each
    /// stop is recovered the same way (at most once per slot), so the queue is never left stopped.
    private func recoverFromQueueError() {
        let u = unit
        let t = tail
        let nop = InvalidationDescriptor.wait(InvalidationWait(statusWrite: false, fence: false)).encode()
        for _ in 0..<Int(Self.bytes / 32) {
            let head = unit.read64(VTdRegister.invalidationQueueHead)
            try? memory.store256(base + (head & (Self.bytes - 1)), nop.qw0, nop.qw1, 0, 0)
            unit.write32(VTdRegister.faultStatus, VTdFaultStatus.invalidationQueueError)
            _ = try? scheduler.wait(until: {
                u.read64(VTdRegister.invalidationQueueHead) == t
                    || u.read32(VTdRegister.faultStatus) & VTdFaultStatus.invalidationQueueError != 0
            }, timeoutNs: timeoutNs)
            guard u.read32(VTdRegister.faultStatus) & VTdFaultStatus.invalidationQueueError != 0 else { return }
            queueErrors += 1
        }
    }
}
