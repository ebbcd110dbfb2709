/// Durations in virtual ns, each with a weight (pages, or 1 per operation), and their
/// weighted percentiles. Appending is amortised O(1); percentiles sort a copy once.
public struct DurationSamples: Sendable, Equatable {
    public private(set) var durations: [UInt64] = []
    public private(set) var weights: [UInt64] = []
    public private(set) var totalWeight: UInt64 = 0

    public init() {}

    public mutating func add(_ ns: UInt64, weight: UInt64 = 1) {
        guard weight > 0 else { return }
        durations.append(ns)
        weights.append(weight)
        totalWeight &+= weight
    }

    public var isEmpty: Bool { durations.isEmpty }
    public var max: UInt64 { durations.max() ?? 0 }

    /// Weighted percentiles (`q` in 0...1) by the nearest-rank rule: the smallest duration
    /// such that at least `q` of the total weight lies at or below it. 0 when empty.
    public func percentiles(_ qs: [Double]) -> [UInt64] {
        guard totalWeight > 0 else { return qs.map { _ in 0 } }
        let order = durations.indices.sorted { durations[$0] < durations[$1] }
        return qs.map { q in
            let rank = Swift.max(1, UInt64((min(Swift.max(q, 0), 1) * Double(totalWeight)).rounded(.up)))
            var seen: UInt64 = 0
            for i in order {
                seen &+= weights[i]
                if seen >= rank { return durations[i] }
            }
            return durations[order[order.count - 1]]
        }
    }
}

/// A histogram of virtual durations in power-of-two buckets: bucket 0 holds 0 ns, bucket k
/// (1 ≤ k < 64) holds [2^(k-1), 2^k). Fixed storage: recording never allocates.
public struct LatencyHistogram: Sendable, Equatable {
    public static let buckets = 40
    public private(set) var counts = [UInt64](repeating: 0, count: LatencyHistogram.buckets)
    public private(set) var count: UInt64 = 0
    public private(set) var totalNs: UInt64 = 0
    public private(set) var maxNs: UInt64 = 0

    public init() {}

    @inline(__always)
    public mutating func record(_ ns: UInt64) {
        let b = ns == 0 ? 0 : Swift.min(64 - ns.leadingZeroBitCount, Self.buckets - 1)
        counts[b] &+= 1
        count &+= 1
        totalNs &+= ns
        if ns > maxNs { maxNs = ns }
    }

    /// The lower bound of bucket `b` in ns.
    public static func lowerBound(_ b: Int) -> UInt64 { b == 0 ? 0 : UInt64(1) << UInt64(b - 1) }

    public var meanNs: Double { count == 0 ? 0 : Double(totalNs) / Double(count) }
}
