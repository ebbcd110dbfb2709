/// A named place where a failure can be injected (like the kernel's fail_nth sites).
@frozen
public struct FaultPoint: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    @inlinable public init(_ name: String) { self.name = name }
    public var description: String { name }
    // The points are computed (a literal name, no storage): a stored `static let` would cost
    // an addressor call and a retain of its name at every `shouldFail`, even when injection
    // is off.

    /// Software frame allocation (page tables, queues, buffers).
    @inlinable public static var frameAlloc: FaultPoint { FaultPoint("frame.alloc") }
    /// VT-d invalidation wait that never completes (reported as a time-out).
    @inlinable public static var invalidationTimeout: FaultPoint { FaultPoint("hw.invalidation-timeout") }
    /// The unit drops an invalidation descriptor without applying it.
    @inlinable public static var invalidationDrop: FaultPoint { FaultPoint("hw.invalidation-drop") }
    /// The unit applies a descriptor `invalidationDelayNs` late (within the driver's wait).
    @inlinable public static var invalidationDelay: FaultPoint { FaultPoint("hw.invalidation-delay") }
    public static let invalidationDelayNs: UInt64 = 20_000
    /// A fault finds the fault-recording registers full: it is lost and PFO is set.
    @inlinable public static var faultRecordOverflow: FaultPoint { FaultPoint("hw.fault-overflow") }
    /// A driver's domain-ID allocation.
    @inlinable public static var didAlloc: FaultPoint { FaultPoint("kernel.did-alloc") }
    /// The core's global PASID allocation.
    @inlinable public static var pasidAlloc: FaultPoint { FaultPoint("kernel.pasid-alloc") }
    /// A driver's domain allocation (default and user domains).
    @inlinable public static var domainAlloc: FaultPoint { FaultPoint("kernel.domain-alloc") }
    /// iommufd's own points (Linux `fail_iommufd`): an object's allocation (ENOMEM),
    /// pinning a batch of user pages (EFAULT), charging pins to RLIMIT_MEMLOCK (ENOMEM), and
    /// copying from or to user memory (EFAULT).
    @inlinable public static var iommufdObjectAlloc: FaultPoint { FaultPoint("iommufd.object-alloc") }
    @inlinable public static var iommufdPin: FaultPoint { FaultPoint("iommufd.pin") }
    @inlinable public static var iommufdAccount: FaultPoint { FaultPoint("iommufd.account") }
    @inlinable public static var iommufdUserCopy: FaultPoint { FaultPoint("iommufd.user-copy") }
    /// The selftest mock driver's `map_pages` (Linux `iommufd_should_fail` there: ENOENT).
    @inlinable public static var mockMapPages: FaultPoint { FaultPoint("iommufd.mock-map-pages") }

    /// Every point the code consults, in one list: scenario files may name only these (a
    /// misspelt point would inject nothing). A point is declared here, beside the others,
    /// never in the layer that uses it, and listed here (a test checks that every point the
    /// sources construct by name is in this list).
    public static var all: [FaultPoint] {
        [.frameAlloc, .didAlloc, .pasidAlloc, .domainAlloc, .invalidationTimeout, .invalidationDrop, .invalidationDelay,
         .faultRecordOverflow, .iommufdObjectAlloc, .iommufdPin, .iommufdAccount, .iommufdUserCopy, .mockMapPages]
    }

    /// The point called `name`, if the code has one.
    public static func named(_ name: String) -> FaultPoint? { all.first { $0.name == name } }
}

/// Decides, at named fault points, whether an operation should fail.
///
/// Modes mirror the kernel's fault-injection knobs: off (free on the hot path), count only
/// (to learn how many points a run reaches), fail the Nth hit (fail_nth), or fail with a
/// seeded probability. What fired is recorded so a sweep can check the matching rollback.
public final class FaultInjector: @unchecked Sendable {
    public enum Mode: Equatable, Sendable {
        /// Never fail; nothing is counted.
        case off
        /// Never fail; count hits per point.
        case count
        /// Fail the `n`th hit (1-based) counted over `only` (or every point when nil).
        case failNth(Int, only: FaultPoint? = nil)
        /// Fail each hit of the points in `only` (every point when nil) with probability `p`.
        case probability(Double, only: Set<FaultPoint>? = nil)
        /// Fail the `n`th hit (1-based) counted over the points in `among` (Linux's per-task
        /// `fail-nth`: only the injection points it covers count).
        case failNthAmong(Int, among: Set<FaultPoint>)
    }

    public var mode: Mode {
        didSet { active = mode != .off }
    }
    @exclusivity(unchecked) @usableFromInline var active = false
    private var rng: SeededRNG
    public private(set) var hits: [FaultPoint: Int] = [:]
    public private(set) var totalHits = 0
    /// Hits that were made to fail, in order: the point and its global hit number.
    public private(set) var fired: [(point: FaultPoint, hit: Int)] = []

    public init(mode: Mode = .off, seed: UInt64 = 0) {
        self.mode = mode
        self.active = mode != .off
        self.rng = SeededRNG(seed: seed ^ 0xFA17_FA17)
    }

    /// Whether the operation at `point` should fail now. Costs one branch when off.
    @inlinable @inline(__always)
    public func shouldFail(_ point: FaultPoint) -> Bool {
        guard active else { return false }
        return evaluate(point)
    }

    @usableFromInline
    func evaluate(_ point: FaultPoint) -> Bool {
        hits[point, default: 0] += 1
        totalHits += 1
        let fail: Bool
        switch mode {
        case .off, .count:
            fail = false
        case .failNth(let n, let only):
            if let only {
                fail = point == only && hits[point] == n
            } else {
                fail = totalHits == n
            }
        case .probability(let p, let only):
            fail = (only?.contains(point) ?? true) && rng.chance(p)
        case .failNthAmong(let n, let among):
            if among.contains(point) { countedAmong += 1 }
            fail = among.contains(point) && countedAmong == n
        }
        if fail { fired.append((point, totalHits)) }
        return fail
    }

    /// Hits counted by `failNthAmong` since the last reset.
    public private(set) var countedAmong = 0

    /// Forgets all counts and fired records (the mode is kept).
    public func reset() {
        hits = [:]
        totalHits = 0
        countedAmong = 0
        fired = []
    }
}
