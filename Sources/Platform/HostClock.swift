#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The host's monotonic clock, for real-thread runs (benchmarks) where modelled hardware
/// time is spent as real time.
public enum HostClock {
    /// Nanoseconds of the host's monotonic clock.
    @inline(__always)
    public static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
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
}
