import Platform
import Formats

/// Drives a `VTdUnit` the way a hardware verification bench does: it writes root, context
/// and PASID tables into physical memory, programs registers, and submits descriptors to the
/// invalidation queue. It is not a driver (no policy, no DID management): tests and
/// benchmarks use it to put the unit in a known state.
public final class VTdTestBench: @unchecked Sendable {
    public enum BenchError: Error, Equatable {
        case frames(FrameError)
        case memory(MemoryError)
        case pdtsTooLarge
        /// The queue is full, or a multi-page queue could not be made contiguous.
        case queueFull
        case waitTimedOut
    }

    public let platform: PlatformContext
    public let unit: VTdUnit
    public let rootTable: UInt64
    public private(set) var queue: UInt64 = 0
    public private(set) var queueSizeOrder: UInt8 = 0
    public private(set) var statusPage: UInt64 = 0
    private var tail: UInt64 = 0
    private var nextStatus: UInt32 = 1

    public init(platform: PlatformContext, unit: VTdUnit) throws(BenchError) {
        self.platform = platform
        self.unit = unit
        do { rootTable = try platform.frames.allocate(.rootTable) } catch { throw .frames(error) }
    }

    var memory: PhysicalMemory { platform.memory }

    private func alloc(_ p: FrameAllocator.Purpose) throws(BenchError) -> UInt64 {
        do { return try platform.frames.allocate(p) } catch { throw .frames(error) }
    }

    private func store(_ pa: UInt64, _ v: UInt64) throws(BenchError) {
        do { try memory.store64(pa, v) } catch { throw .memory(error) }
    }

    private func load(_ pa: UInt64) throws(BenchError) -> UInt64 {
        do { return try memory.load64(pa) } catch { throw .memory(error) }
    }

    /// Latches the root table in scalable mode, optionally sets up a 256-bit invalidation
    /// queue of 2^`queueOrder` pages, and turns translation on.
    public func enable(queueOrder: UInt8 = 0, translation: Bool = true) throws(BenchError) {
        unit.write64(VTdRegister.rootTableAddress, rootTable | VTdRootTableAddress.scalableMode)
        unit.write32(VTdRegister.globalCommand, VTdGlobal.setRootTablePointer)
        var gcmd: UInt32 = 0
        if queue == 0 {
            queueSizeOrder = queueOrder
            queue = try alloc(.queue)
            // A larger queue needs physically contiguous frames.
            for i in 1..<(1 << Int(queueOrder)) {
                guard try alloc(.queue) == queue + UInt64(i) * 4096 else { throw .queueFull }
            }
            statusPage = try alloc(.queue)
            unit.write64(VTdRegister.invalidationQueueAddress, VTdQueueAddress.make(base: queue, sizeOrder: queueOrder, wide: true))
        }
        gcmd |= VTdGlobal.queuedInvalidationEnable
        unit.write32(VTdRegister.globalCommand, gcmd)
        tail = 0
        if translation { gcmd |= VTdGlobal.translationEnable }
        unit.write32(VTdRegister.globalCommand, gcmd)
    }

    /// Writes a context entry for `rid` with a fresh PASID directory of 2^(pdts+7) entries
    /// (pdts ≤ 2 so it fits one frame). Returns the directory address.
    @discardableResult
    public func setContext(_ rid: RequesterID, pdts: UInt8 = 0, ridPASID: UInt32 = 0, fpd: Bool = false,
                           pasidEnable: Bool = true, deviceTLB: Bool = false, pageRequest: Bool = false) throws(BenchError) -> UInt64 {
        guard pdts <= 2 else { throw .pdtsTooLarge }
        let rootEntry = rootTable + UInt64(rid.bus) * 16
        let upper = rid.devfn >= 128
        var half = try load(rootEntry + (upper ? 8 : 0))
        if half & 1 == 0 {
            half = try alloc(.contextTable) | 1
            try store(rootEntry + (upper ? 8 : 0), half)
        }
        let dir = try alloc(.pasidDirectory)
        let ce = ScalableContextEntry(present: true, fpd: fpd, deviceTLB: deviceTLB, pasidEnable: pasidEnable,
                                      pageRequest: pageRequest, pdts: pdts, pasidDirectory: dir, ridPASID: ridPASID)
        let ca = (half & ~0xFFF) + UInt64(rid.devfn & 0x7F) * 32
        try store(ca + 8, ce.val.1); try store(ca + 16, 0); try store(ca + 24, 0)
        try store(ca, ce.val.0)
        return dir
    }

    /// Address of the context entry of `rid` (zero if its context table does not exist).
    public func contextEntryAddress(_ rid: RequesterID) -> UInt64 {
        let rootEntry = rootTable + UInt64(rid.bus) * 16 + (rid.devfn >= 128 ? 8 : 0)
        guard let half = try? memory.load64(rootEntry), half & 1 != 0 else { return 0 }
        return (half & ~0xFFF) + UInt64(rid.devfn & 0x7F) * 32
    }

    /// Writes `entry` as the PASID-table entry of (`rid`, `pasid`), present bit last.
    /// Returns the entry's address.
    @discardableResult
    public func setPASIDEntry(_ rid: RequesterID, pasid: UInt32, _ entry: PASIDEntry) throws(BenchError) -> UInt64 {
        let address = try pasidEntryAddress(rid, pasid: pasid, create: true)
        for i in stride(from: 7, through: 1, by: -1) { try store(address + UInt64(i) * 8, entry.val[i]) }
        try store(address, entry.val[0])
        return address
    }

    /// Address of the PASID-table entry of (`rid`, `pasid`), creating the table if asked.
    public func pasidEntryAddress(_ rid: RequesterID, pasid: UInt32, create: Bool = false) throws(BenchError) -> UInt64 {
        let ca = contextEntryAddress(rid)
        let c0 = ca == 0 ? 0 : try load(ca)
        guard c0 & 1 != 0 else { throw .memory(.unbacked(address: ca)) }
        let dir = c0 & ~0xFFF
        let (di, ti) = PASIDDirectoryEntry.indices(of: pasid)
        var de = try load(dir + di * 8)
        if de & 1 == 0 {
            guard create else { throw .memory(.unbacked(address: dir + di * 8)) }
            de = PASIDDirectoryEntry(table: try alloc(.pasidTable)).raw
            try store(dir + di * 8, de)
        }
        return (de & ~0xFFF) + ti * 64
    }

    /// Writes descriptors at the queue tail and advances IQT (without waiting).
    public func submit(_ descriptors: [InvalidationDescriptor]) throws(BenchError) {
        let bytes: UInt64 = 4096 << UInt64(queueSizeOrder)
        for d in descriptors {
            let raw = d.encode()
            let slot = queue + tail
            try store(slot, raw.qw0); try store(slot + 8, raw.qw1); try store(slot + 16, raw.qw2); try store(slot + 24, raw.qw3)
            let next = (tail + 32) % bytes
            guard next != unit.read64(VTdRegister.invalidationQueueHead) else { throw .queueFull }
            tail = next
        }
        unit.write64(VTdRegister.invalidationQueueTail, tail)
    }

    /// Submits `descriptors` followed by a wait descriptor and runs hardware until the wait's
    /// status is written (or `timeoutNs` passes).
    public func invalidate(_ descriptors: [InvalidationDescriptor], timeoutNs: UInt64 = 1_000_000) throws(BenchError) {
        let data = nextStatus
        nextStatus &+= 1
        try submit(descriptors + [.wait(InvalidationWait(statusWrite: true, fence: true, statusData: data, statusAddress: statusPage))])
        do {
            try platform.scheduler.wait(until: { (try? self.memory.load32(self.statusPage)) == data }, timeoutNs: timeoutNs)
        } catch { throw .waitTimedOut }
    }
}
