#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CIOMMUSupport

/// The host's monotonic clock, for real-thread runs (benchmarks) where modelled hardware
/// time is spent as real time.
///
/// Where the kernel itself keeps time with the CPU's counter (clocksource `tsc` on x86,
/// `arch_sys_counter` on Arm: invariant and synchronised across CPUs), the clock reads that
/// counter directly, scaled to nanoseconds by a factor measured against `CLOCK_MONOTONIC`
/// once per process: one RDTSC (about 12 ns on the development VM) instead of a vDSO
/// `clock_gettime` (about 30 ns, with its serialising fence). Waits spin on this clock, so
/// a cheaper read means less overshoot past the deadline and less overhead before it.
/// Elsewhere it is `clock_gettime(CLOCK_MONOTONIC)`.
public enum HostClock {
    /// Nanoseconds of the host's monotonic clock. Inlined into callers: a load of the
    /// published scale, the counter read and a multiply.
    @inlinable @inline(__always)
    public static func now() -> UInt64 {
        let multiplier = ciommu_counter_multiplier()
        guard multiplier > 1 else { return nowUncalibrated(multiplier) }
        return CounterScale(baseCount: ciommu_counter_base_count(), baseNs: ciommu_counter_base_ns(), multiplier: multiplier)
            .nanoseconds(ciommu_cycle_counter())
    }

    /// Nanoseconds from `start` to `end`, two readings of `now()`; 0 if `end` is earlier (a
    /// thread that moved to a CPU whose counter is slightly behind).
    @inlinable @inline(__always)
    public static func elapsed(_ start: UInt64, _ end: UInt64) -> UInt64 {
        end > start ? end &- start : 0
    }

    /// Busy-waits `ns` nanoseconds in the calling thread (what a CPU polling for hardware
    /// completion spends).
    public static func spin(_ ns: UInt64) {
        guard ns > 0 else { return }
        spin(until: now() &+ ns)
    }

    /// Busy-waits until the clock reads at least `deadline`.
    public static func spin(until deadline: UInt64) {
        while now() < deadline {}
    }

    /// `CLOCK_MONOTONIC` through the C library.
    @inline(__always)
    public static func monotonic() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// Whether `now()` reads the CPU's counter (false: `clock_gettime`).
    public static var usesCycleCounter: Bool {
        _ = calibration
        return ciommu_counter_multiplier() > 1
    }

    /// Counter to nanoseconds: `baseNs + (counter - baseCount) * multiplier / 2^32`.
    @usableFromInline
    struct CounterScale {
        @usableFromInline var baseCount: UInt64
        @usableFromInline var baseNs: UInt64
        /// Nanoseconds per count in 32.32 fixed point.
        @usableFromInline var multiplier: UInt64

        @inlinable
        init(baseCount: UInt64, baseNs: UInt64, multiplier: UInt64) {
            self.baseCount = baseCount; self.baseNs = baseNs; self.multiplier = multiplier
        }

        @inlinable @inline(__always)
        func nanoseconds(_ count: UInt64) -> UInt64 {
            // A read that raced ahead of the calibration's own is clamped to its base.
            guard count > baseCount else { return baseNs }
            let (high, low) = (count &- baseCount).multipliedFullWidth(by: multiplier)
            return baseNs &+ (high << 32 | low >> 32)
        }
    }

    /// Before the first calibration (0) it runs it, once for the process; when the counter
    /// is not used (1) the C library's clock answers.
    @usableFromInline @inline(never)
    static func nowUncalibrated(_ multiplier: UInt64) -> UInt64 {
        if multiplier == 0 {
            _ = calibration
            if ciommu_counter_multiplier() > 1 { return now() }
        }
        return monotonic()
    }

    /// Runs `calibrate` once and publishes its result.
    private static let calibration: Void = {
        let scale = calibrate()
        ciommu_set_counter_scale(scale.baseCount, scale.baseNs, max(1, scale.multiplier))
    }()

    /// Measures the counter's rate against `CLOCK_MONOTONIC` over 2 ms, if the kernel's own
    /// clocksource is that counter; otherwise the counter is not used.
    private static func calibrate() -> CounterScale {
        let unused = CounterScale(baseCount: 0, baseNs: 0, multiplier: 0)
        guard kernelClockIsCycleCounter(), ciommu_cycle_counter() != 0 else { return unused }
        let start = simultaneousReading()
        while monotonic() &- start.ns < 2_000_000 {}
        let end = simultaneousReading()
        // A stall of seconds (a paused VM) would overflow the fixed-point scale: no counter then.
        guard end.count > start.count, end.ns > start.ns, end.ns &- start.ns < 1_000_000_000 else { return unused }
        let multiplier = ((end.ns &- start.ns) << 32) / (end.count &- start.count)
        // Sanity: a counter between 10 MHz and 100 GHz.
        guard (1 << 32) / 100...(100 << 32) ~= multiplier else { return unused }
        return CounterScale(baseCount: end.count, baseNs: end.ns, multiplier: multiplier)
    }

    /// A `CLOCK_MONOTONIC` reading and the counter at the same moment: the counter is read on
    /// both sides of the clock, and of 16 tries the one with the closest pair is kept, so a
    /// preemption between two reads (a loaded machine) cannot skew the calibration.
    private static func simultaneousReading() -> (ns: UInt64, count: UInt64) {
        var best = (ns: UInt64(0), count: UInt64(0), width: UInt64.max)
        for _ in 0..<16 {
            let before = ciommu_cycle_counter()
            let ns = monotonic()
            let after = ciommu_cycle_counter()
            guard after >= before else { continue }
            if after &- before < best.width { best = (ns, before &+ (after &- before) / 2, after &- before) }
        }
        return (best.ns, best.count)
    }

    private static func kernelClockIsCycleCounter() -> Bool {
        #if os(Linux)
        guard let f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r") else { return false }
        defer { fclose(f) }
        var buffer = [CChar](repeating: 0, count: 64)
        guard fgets(&buffer, Int32(buffer.count), f) != nil else { return false }
        let bytes = buffer.prefix(while: { $0 != 0 && $0 != 10 && $0 != 32 }).map { UInt8(bitPattern: $0) }
        let name = String(decoding: bytes, as: UTF8.self)
        #if arch(x86_64)
        return name == "tsc"
        #elseif arch(arm64)
        return name == "arch_sys_counter"
        #else
        return false
        #endif
        #else
        return false
        #endif
    }
}
