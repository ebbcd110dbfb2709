import Platform
import Synchronization

/// Runs `body(i)` for i in 0..<count on that many real OS threads at once and waits for all
/// (benchmarks: per-thread CPU slots need real threads, not a task pool). The bodies start
/// only once every thread exists; if the system refuses one, none runs (the bodies may wait
/// for each other, so running some would hang) and the result is false.
func runOnThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) -> Bool {
    /// 0: wait, 1: run, 2: cancelled.
    final class Gate: Sendable { let state = Atomic<Int>(0) }
    let gate = Gate()
    var threads: [HostThread] = []
    for i in 0..<count {
        let t = HostThread.start {
            var s = gate.state.load(ordering: .acquiring)
            while s == 0 { s = gate.state.load(ordering: .acquiring) }
            if s == 1 { body(i) }
        }
        guard let t else { break }
        threads.append(t)
    }
    let all = threads.count == count
    gate.state.store(all ? 1 : 2, ordering: .releasing)
    for t in threads { t.join() }
    return all
}

/// Latency samples (ns) with mean and percentiles.
struct Samples {
    var values: [Double] = []
    var total: Double = 0
    var count = 0

    init(capacity: Int) { values.reserveCapacity(capacity) }

    mutating func add(_ v: Double, weight: Int = 1) {
        if values.count < values.capacity { values.append(v) }
        total += v * Double(weight)
        count += weight
    }

    mutating func merge(_ o: Samples) {
        values += o.values
        total += o.total
        count += o.count
    }

    var mean: Double { count == 0 ? 0 : total / Double(count) }

    func percentile(_ p: Double) -> Double { percentileOf(values, p) }
}

/// The `p` quantile (0…1) of `values`, 0 when empty.
func percentileOf<C: Collection<Double>>(_ values: C, _ p: Double) -> Double {
    guard !values.isEmpty else { return 0 }
    let s = values.sorted()
    return s[min(s.count - 1, Int(Double(s.count) * p))]
}

func median(_ v: [Double]) -> Double {
    guard !v.isEmpty else { return 0 }
    let s = v.sorted()
    return s[s.count / 2]
}
