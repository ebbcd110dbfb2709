/// What every simulated component of one machine shares: its memory, the software frame
/// allocator, the scheduler, fault injection and tracing. One per machine; no globals, so
/// many machines can run side by side in one process.
public final class PlatformContext: @unchecked Sendable {
    public let memory: PhysicalMemory
    public let frames: FrameAllocator
    public let scheduler: Scheduler
    public let faults: FaultInjector
    public let trace: TraceBuffer

    /// A platform with `memorySize` bytes of RAM (default 4 GiB), seeded with `seed`.
    public init(memorySize: UInt64 = 4 << 30, seed: UInt64 = 0) throws(MemoryError) {
        let memory = try PhysicalMemory(size: memorySize)
        let faults = FaultInjector(seed: seed)
        self.memory = memory
        self.faults = faults
        // Frame 0 is kept out of the allocator so physical address 0 is never handed out.
        self.frames = FrameAllocator(memory: memory, firstFrame: 1, faults: faults)
        self.scheduler = Scheduler(seed: seed)
        self.trace = TraceBuffer()
    }
}
