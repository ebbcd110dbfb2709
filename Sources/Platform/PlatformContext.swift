#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization
#if canImport(Dispatch)
import Dispatch
#endif

/// What every simulated component of one machine shares: its memory, the software frame
/// allocator, the scheduler, fault injection and tracing. One per machine; no globals, so
/// many machines can run side by side in one process.
public final class PlatformContext: @unchecked Sendable {
    public let memory: PhysicalMemory
    public let frames: FrameAllocator
    public let scheduler: Scheduler
    public let faults: FaultInjector
    public let trace: TraceBuffer

    /// Whether software runs on real threads (benchmarks) rather than in the simulator's
    /// single thread. Then waits for hardware spend its modelled latency as real time,
    /// timers are real timers and clocks read the host's clock. Set before use.
    @exclusivity(unchecked) public var realThreads = false {
        didSet { scheduler.realTimeWaits = realThreads }
    }

    /// Serialises software that drives hardware and waits for it (submitting invalidations
    /// and waiting for their completion, Linux's `qi->q_lock`). In simulation hardware runs
    /// inside such waits, so with real threads only one thread may run it at a time.
    /// A spin lock, as Linux's `raw_spinlock_t`: waiters would spin on the hardware anyway.
    @usableFromInline let hardwareLock = SpinLock()

    /// A platform with `memorySize` bytes of RAM (default 4 GiB), seeded with `seed`.
    /// `sharedMemory`: physical memory a real process's pages can share (the C ABI).
    public init(memorySize: UInt64 = 4 << 30, seed: UInt64 = 0, sharedMemory: Bool = false) throws(MemoryError) {
        let memory = try PhysicalMemory(size: memorySize, shared: sharedMemory)
        let faults = FaultInjector(seed: seed)
        self.memory = memory
        self.faults = faults
        // Frame 0 is kept out of the allocator so physical address 0 is never handed out.
        self.frames = FrameAllocator(memory: memory, firstFrame: 1, faults: faults)
        self.scheduler = Scheduler(seed: seed)
        self.trace = TraceBuffer()
    }

    /// A reference that events scheduled by `owner` hold instead of a weak one (a weak
    /// reference gives its target a side table, which makes every retain and release of a hot
    /// object slow). The owner clears it in `deinit`, so a late event finds nothing.
    public final class BackRef<Owner: AnyObject>: @unchecked Sendable {
        public unowned(unsafe) var target: Owner?
        public init() {}
    }

    /// Runs `body` holding the hardware lock (not re-entrant). Inlined, so the body is not a
    /// closure call.
    @inlinable @inline(__always)
    public func withHardware<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        try hardwareLock.withLock(body)
    }

    /// Nanoseconds: virtual time in simulation, the host's monotonic clock with real threads.
    public func clockNs() -> UInt64 {
        realThreads ? HostClock.now() : scheduler.now
    }

    /// Runs `action` as software after `delayNs` (a kernel timer): a software event in
    /// simulation, a real timer with real threads.
    public func startTimer(afterNs delayNs: UInt64, _ action: @escaping @Sendable () -> Void) {
        if realThreads {
            // A thread of its own, as a kernel timer has its own context: a shared pool can be
            // kept busy by the work the timer is meant to interrupt, and the timer would starve.
            let deadline = HostClock.monotonic() &+ delayNs
            let thread = HostThread.start {
                while true {
                    let now = HostClock.monotonic()
                    guard now < deadline else { break }
                    let left = deadline - now
                    usleep(useconds_t(min(left / 1000 + 1, 100_000)))
                }
                action()
            }
            if let thread { thread.detach() } else {
                #if canImport(Dispatch)
                DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(min(delayNs, UInt64(Int.max)))), execute: action)
                #endif
            }
        } else {
            scheduler.schedule(after: delayNs, kind: .software, action)
        }
    }
}
