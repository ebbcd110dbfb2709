/// Why a frame could not be allocated or freed.
public enum FrameError: Error, Equatable, Sendable {
    /// No free frame left in the allocator's region (Linux: -ENOMEM).
    case outOfMemory
    /// A fault-injection point made this allocation fail (Linux: -ENOMEM).
    case injected
    /// The address is not a frame this allocator handed out and still holds.
    case notAllocated(address: UInt64)
}

/// Allocator of 4 KiB frames for software: page-table pages, queues, DMA buffers.
///
/// Frames come from a fixed region of `PhysicalMemory`; each is zeroed and backed when
/// handed out, zeroed and unbacked when freed. Every allocation is counted (`inUse`, `peak`,
/// per-purpose tallies), so a scenario can assert that teardown leaked nothing.
/// Freeing a frame that is not allocated is reported, never a trap.
public final class FrameAllocator: @unchecked Sendable {
    /// What a frame is used for; counted separately so leaks name their owner.
    public enum Purpose: Int, CaseIterable, Sendable {
        case pageTable, rootTable, contextTable, pasidDirectory, pasidTable, queue, dmaBuffer, other
    }

    public let memory: PhysicalMemory
    public let firstFrame: UInt64
    public let endFrame: UInt64
    public let faults: FaultInjector?

    private var nextFresh: UInt64
    private var freeList: [UInt64] = []
    /// Allocation bitmap over the region (1 = allocated), for `free` validation.
    private var allocated: [UInt64]
    private var purposeOf: [UInt8]

    public private(set) var inUse: Int = 0
    public private(set) var peak: Int = 0
    public private(set) var totalAllocations: Int = 0
    public private(set) var totalFrees: Int = 0
    public private(set) var inUseByPurpose = [Int](repeating: 0, count: Purpose.allCases.count)

    /// An allocator over frames `[firstFrame, endFrame)` of `memory`.
    public init(memory: PhysicalMemory, firstFrame: UInt64 = 1, endFrame: UInt64? = nil, faults: FaultInjector? = nil) {
        let end = min(endFrame ?? memory.frameCount, memory.frameCount)
        self.memory = memory
        self.firstFrame = min(firstFrame, end)
        self.endFrame = end
        self.nextFresh = self.firstFrame
        self.faults = faults
        let count = Int(end - self.firstFrame)
        self.allocated = [UInt64](repeating: 0, count: (count + 63) / 64)
        self.purposeOf = [UInt8](repeating: 0, count: count)
    }

    /// Frames still available.
    public var available: Int { Int(endFrame - nextFresh) + freeList.count }

    /// Allocates one zeroed, backed frame and returns its physical address.
    public func allocate(_ purpose: Purpose = .other) throws(FrameError) -> UInt64 {
        if let faults, faults.shouldFail(.frameAlloc) { throw .injected }
        let frame: UInt64
        if let f = freeList.popLast() {
            frame = f
        } else if nextFresh < endFrame {
            frame = nextFresh
            nextFresh += 1
        } else {
            throw .outOfMemory
        }
        do { try memory.populate(frame: frame) } catch { throw .outOfMemory }
        let i = Int(frame - firstFrame)
        allocated[i >> 6] |= 1 << UInt64(i & 63)
        purposeOf[i] = UInt8(purpose.rawValue)
        inUse += 1
        inUseByPurpose[purpose.rawValue] += 1
        totalAllocations += 1
        if inUse > peak { peak = inUse }
        return frame << PhysicalMemory.frameShift
    }

    /// Returns the frame at `address` (zeroed and unbacked). Errors if it is not allocated.
    public func free(_ address: UInt64) throws(FrameError) {
        let frame = address >> PhysicalMemory.frameShift
        guard address & (PhysicalMemory.frameSize - 1) == 0, frame >= firstFrame, frame < endFrame else {
            throw .notAllocated(address: address)
        }
        let i = Int(frame - firstFrame)
        let bit: UInt64 = 1 << UInt64(i & 63)
        guard allocated[i >> 6] & bit != 0 else { throw .notAllocated(address: address) }
        allocated[i >> 6] &= ~bit
        try? memory.discard(frame: frame)
        freeList.append(frame)
        inUse -= 1
        inUseByPurpose[Int(purposeOf[i])] -= 1
        totalFrees += 1
    }

    /// Whether `address` is a frame this allocator currently holds as allocated.
    public func isAllocated(_ address: UInt64) -> Bool {
        let frame = address >> PhysicalMemory.frameShift
        guard frame >= firstFrame, frame < endFrame else { return false }
        let i = Int(frame - firstFrame)
        return allocated[i >> 6] & (1 << UInt64(i & 63)) != 0
    }

    /// Frames in use for `purpose`.
    public func inUse(_ purpose: Purpose) -> Int { inUseByPurpose[purpose.rawValue] }
}
