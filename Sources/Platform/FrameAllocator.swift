import Synchronization

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
///
/// Thread safe (one lock): page tables grow from several threads in the DMA benchmarks.
public final class FrameAllocator: @unchecked Sendable {
    /// What a frame is used for; counted separately so leaks name their owner.
    public enum Purpose: Int, CaseIterable, Sendable {
        case pageTable, rootTable, contextTable, pasidDirectory, pasidTable, queue, dmaBuffer, other
    }

    public let memory: PhysicalMemory
    public let firstFrame: UInt64
    public let endFrame: UInt64
    public let faults: FaultInjector?
    /// Called with each frame's address as it is freed, before it can be handed out again
    /// (the simulator's oracle checks that no cache may still reach it), with its purpose and
    /// the owner tag it was allocated with. Set before use.
    public var freeObserver: ((_ address: UInt64, _ purpose: Purpose, _ owner: UInt32) -> Void)?
    /// Called with each frame allocated with a non-zero owner tag (a page table's pages), so
    /// the oracle knows every frame a structure the hardware walks is made of. Set before use.
    public var ownedAllocationObserver: ((_ address: UInt64, _ purpose: Purpose, _ owner: UInt32) -> Void)?

    struct State {
        var nextFresh: UInt64
        /// Fresh frames below this have had their host pages faulted in.
        var prefaultedEnd: UInt64 = 0
        var freeList: [UInt64] = []
        /// Allocation bitmap over the region (1 = allocated), for `free` validation.
        var allocated: [UInt64]
        var purposeOf: [UInt8]
        /// The owner tag of each allocated frame (0: none).
        var ownerOf: [UInt32]
        var nextOwnerTag: UInt32 = 1
        var inUse = 0
        var peak = 0
        var totalAllocations = 0
        var totalFrees = 0
        var inUseByPurpose = [Int](repeating: 0, count: Purpose.allCases.count)

        /// Marks frame number `i` of the region allocated for `purpose` and counts it.
        mutating func take(_ i: Int, _ purpose: Purpose, owner: UInt32 = 0) {
            allocated[i >> 6] |= 1 << UInt64(i & 63)
            purposeOf[i] = UInt8(purpose.rawValue)
            ownerOf[i] = owner
            inUse += 1
            inUseByPurpose[purpose.rawValue] += 1
            totalAllocations += 1
            if inUse > peak { peak = inUse }
        }
    }
    private let state: Mutex<State>

    /// An allocator over frames `[firstFrame, endFrame)` of `memory`.
    public init(memory: PhysicalMemory, firstFrame: UInt64 = 1, endFrame: UInt64? = nil, faults: FaultInjector? = nil) {
        let end = min(endFrame ?? memory.frameCount, memory.frameCount)
        self.memory = memory
        self.firstFrame = min(firstFrame, end)
        self.endFrame = end
        self.faults = faults
        let count = Int(end - self.firstFrame)
        state = Mutex(State(nextFresh: self.firstFrame, allocated: [UInt64](repeating: 0, count: (count + 63) / 64),
                            purposeOf: [UInt8](repeating: 0, count: count), ownerOf: [UInt32](repeating: 0, count: count)))
    }

    /// Fresh frames are handed out in order; the host pages behind each aligned chunk of this
    /// many frames are faulted in together when the first of them goes out.
    static let prefaultChunk: UInt64 = 64

    /// Frames still available.
    public var available: Int { state.withLock { Int(endFrame - $0.nextFresh) + $0.freeList.count } }
    public var inUse: Int { state.withLock { $0.inUse } }
    public var peak: Int { state.withLock { $0.peak } }
    public var totalAllocations: Int { state.withLock { $0.totalAllocations } }
    public var totalFrees: Int { state.withLock { $0.totalFrees } }

    /// A fresh owner tag (never 0, never handed out twice by this allocator): a structure made
    /// of many frames (a page table) allocates them all under its tag.
    public func makeOwnerTag() -> UInt32 {
        state.withLock { s in
            let t = s.nextOwnerTag
            s.nextOwnerTag = s.nextOwnerTag == .max ? 1 : s.nextOwnerTag + 1
            return t
        }
    }

    /// Allocates one zeroed, backed frame and returns its physical address. `owner` tags the
    /// frame as part of a structure (see `makeOwnerTag`); 0: none. `injectable` false: not a
    /// fault-injection point (a frame that stands for memory the emulated kernel would not
    /// allocate, such as a user page it pins).
    public func allocate(_ purpose: Purpose = .other, owner: UInt32 = 0, injectable: Bool = true) throws(FrameError) -> UInt64 {
        if injectable, let faults, faults.shouldFail(.frameAlloc) { throw .injected }
        let first = firstFrame, end = endFrame
        var prefault: Range<UInt64>? = nil
        let frame: UInt64? = state.withLock { s in
            let frame: UInt64
            if let f = s.freeList.popLast() {
                frame = f
            } else if s.nextFresh < end {
                frame = s.nextFresh
                s.nextFresh += 1
                if frame >= s.prefaultedEnd {
                    // A fresh chunk: bring in the host pages up to the next chunk boundary.
                    s.prefaultedEnd = min((frame | (Self.prefaultChunk - 1)) + 1, end)
                    prefault = frame..<s.prefaultedEnd
                }
            } else {
                return nil
            }
            s.take(Int(frame - first), purpose, owner: owner)
            return frame
        }
        guard let frame else { throw .outOfMemory }
        if owner != 0 { ownedAllocationObserver?(frame << PhysicalMemory.frameShift, purpose, owner) }
        if let prefault { memory.prefault(frames: prefault) }
        // Frames are inside memory by construction; populating is idempotent.
        try? memory.populate(frame: frame)
        return frame << PhysicalMemory.frameShift
    }

    /// Allocates `count` physically contiguous zeroed frames (queues larger than a page, as
    /// the 64 KiB page request queue). They come from the never-used part of the region and
    /// are freed one by one with `free`. Returns the first frame's address.
    /// `alignment` (frames, a power of two) aligns the first frame, as huge pages are; the
    /// fresh frames skipped to reach it go to the free list.
    public func allocateContiguous(_ count: Int, _ purpose: Purpose = .other, alignment: Int = 1) throws(FrameError) -> UInt64 {
        guard count > 0, alignment > 0, alignment & (alignment - 1) == 0 else { throw .outOfMemory }
        if let faults, faults.shouldFail(.frameAlloc) { throw .injected }
        let first = firstFrame, end = endFrame
        let mask = UInt64(alignment - 1)
        let start: UInt64? = state.withLock { s in
            let aligned = (s.nextFresh + mask) & ~mask
            guard aligned <= end, end - aligned >= UInt64(count) else { return nil }
            for skipped in s.nextFresh..<aligned { s.freeList.append(skipped) }
            let start = aligned
            s.nextFresh = aligned + UInt64(count)
            s.prefaultedEnd = max(s.prefaultedEnd, s.nextFresh)
            for frame in start..<start + UInt64(count) { s.take(Int(frame - first), purpose) }
            return start
        }
        guard let start else { throw .outOfMemory }
        memory.prefault(frames: start..<start + UInt64(count))
        for frame in start..<start + UInt64(count) { try? memory.populate(frame: frame) }
        return start << PhysicalMemory.frameShift
    }

    /// Returns the frame at `address` (zeroed and unbacked). Errors if it is not allocated.
    /// `neverPublished`: the frame was allocated but never made reachable (a table page that
    /// lost a race to be linked); it is reported to the observer without its owner.
    public func free(_ address: UInt64, neverPublished: Bool = false) throws(FrameError) {
        let frame = address >> PhysicalMemory.frameShift
        guard address & (PhysicalMemory.frameSize - 1) == 0, frame >= firstFrame, frame < endFrame else {
            throw .notAllocated(address: address)
        }
        let i = Int(frame - firstFrame)
        let bit: UInt64 = 1 << UInt64(i & 63)
        // Claim the frame first (so a double free is refused), zero it, then publish it.
        let freed: (Purpose, UInt32)? = state.withLock { s in
            guard s.allocated[i >> 6] & bit != 0 else { return nil }
            s.allocated[i >> 6] &= ~bit
            let p = Purpose(rawValue: Int(s.purposeOf[i])) ?? .other
            let owner = s.ownerOf[i]
            s.ownerOf[i] = 0
            s.inUse -= 1
            s.inUseByPurpose[p.rawValue] -= 1
            s.totalFrees += 1
            return (p, owner)
        }
        guard let (purpose, owner) = freed else { throw .notAllocated(address: address) }
        freeObserver?(address, purpose, neverPublished ? 0 : owner)
        try? memory.discard(frame: frame)
        state.withLock { $0.freeList.append(frame) }
    }

    /// Whether `address` is a frame this allocator currently holds as allocated.
    public func isAllocated(_ address: UInt64) -> Bool {
        let frame = address >> PhysicalMemory.frameShift
        guard frame >= firstFrame, frame < endFrame else { return false }
        let i = Int(frame - firstFrame)
        return state.withLock { $0.allocated[i >> 6] & (1 << UInt64(i & 63)) != 0 }
    }

    /// Every allocated frame with its purpose, in address order (the fuzzers find the
    /// structures a device's garbage may reach this way).
    public func allocatedFrames() -> [(address: UInt64, purpose: Purpose)] {
        state.withLock { s in
            var out: [(address: UInt64, purpose: Purpose)] = []
            for (w, bits) in s.allocated.enumerated() where bits != 0 {
                for b in 0..<64 where bits & (1 << UInt64(b)) != 0 {
                    let i = w * 64 + b
                    out.append(((firstFrame + UInt64(i)) << PhysicalMemory.frameShift, Purpose(rawValue: Int(s.purposeOf[i])) ?? .other))
                }
            }
            return out
        }
    }

    /// Frames in use for `purpose`.
    public func inUse(_ purpose: Purpose) -> Int { state.withLock { $0.inUseByPurpose[purpose.rawValue] } }
}
