/// One broken isolation or lifetime invariant, as the oracle found it.
public struct Violation: Equatable, Sendable, CustomStringConvertible {
    /// A short stable name: `unpermitted-access`, `stale-translation`, `unexpected-fault`,
    /// `replace-not-hitless`, `did-reserved`, `did-double-allocation`, `did-reuse-while-cached`,
    /// `did-released-while-cached`, `frame-leak`, `did-leak`, `pasid-leak`, `domain-leak`.
    public var invariant: String
    public var detail: String
    /// Scheduler events run when it was found.
    public var event: UInt64
    /// Virtual time (ns).
    public var time: UInt64

    public var description: String { "[\(invariant)] at \(time) ns (event \(event)): \(detail)" }
}
