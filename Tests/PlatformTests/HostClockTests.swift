import Testing
@testable import Platform

@Suite("HostClock")
struct HostClockTests {
    @Test("the clock measures the same intervals as CLOCK_MONOTONIC, whether it reads the CPU counter or not")
    func agreesWithMonotonic() {
        _ = HostClock.now()  // calibrates (2 ms) outside the measured interval
        // Each side read twice around the other so preemption between reads is bounded.
        let m0 = HostClock.monotonic(), h0 = HostClock.now()
        while HostClock.monotonic() &- m0 < 20_000_000 {}
        let h1 = HostClock.now(), m1 = HostClock.monotonic()
        let host = Double(h1 &- h0), mono = Double(m1 &- m0)
        // The calibration is over 2 ms with reads of tens of ns: well inside 2%.
        #expect(h1 > h0)
        #expect(abs(host - mono) <= 0.02 * mono + 200_000, "host clock \(host) ns against CLOCK_MONOTONIC \(mono) ns")
    }

    @Test("the clock never reads backwards in one thread")
    func monotonicInOneThread() {
        var last = HostClock.now()
        var backwards = 0
        for _ in 0..<100_000 {
            let t = HostClock.now()
            if t < last { backwards += 1 }
            last = t
        }
        #expect(backwards == 0)
    }

    @Test("a spin returns only once its deadline has passed on CLOCK_MONOTONIC too")
    func spinReachesTheDeadline() {
        let m0 = HostClock.monotonic()
        HostClock.spin(1_000_000)
        let elapsed = HostClock.monotonic() &- m0
        // 1 ms within the calibration's 2% error.
        #expect(elapsed >= 980_000, "spun \(elapsed) ns for 1 ms")
    }

    @Test("the counter scale converts counts to nanoseconds from its base, clamping counts before it")
    func counterScaleArithmetic() {
        // 0.5 ns per count (a 2 GHz counter) in 32.32 fixed point.
        let scale = HostClock.CounterScale(baseCount: 1_000, baseNs: 5_000, multiplier: 1 << 31)
        #expect(scale.nanoseconds(3_000) == 6_000)
        #expect(scale.nanoseconds(500) == 5_000)
        // An hour of a 4 GHz counter does not overflow the product.
        let hour: UInt64 = 4_000_000_000 * 3_600
        let fast = HostClock.CounterScale(baseCount: 0, baseNs: 0, multiplier: 1 << 30)
        #expect(fast.nanoseconds(hour) == hour / 4)
    }

    @Test("an interval whose end reads earlier than its start (another CPU's counter) is 0, not a trap")
    func elapsedNeverUnderflows() {
        #expect(HostClock.elapsed(1_000, 1_250) == 250)
        #expect(HostClock.elapsed(1_250, 1_000) == 0)
        #expect(HostClock.elapsed(.max, 0) == 0)
    }
}
