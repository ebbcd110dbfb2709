/// Hot-path helpers of the DMA layer shared by the API, the cookie, the flush queue and the
/// IOVA allocator.

extension Unmanaged {
    /// Runs `body` with the instance borrowed: no reference counting, which on objects
    /// shared by several CPUs would make every call contend for one cache line. The caller
    /// guarantees the instance is alive for the call.
    @inline(__always)
    func borrow<R>(_ body: (Instance) throws(IOMMUError) -> R) throws(IOMMUError) -> R {
        try _withUnsafeGuaranteedRef { i in Result { () throws(IOMMUError) in try body(i) } }.get()
    }
}

/// The slot a CPU number selects among `count` per-CPU structures (never negative).
@inline(__always)
func cpuSlot(_ cpu: Int, _ count: Int) -> Int {
    // In range (the API checked it) without dividing; otherwise wrapped.
    UInt(bitPattern: cpu) < UInt(count) ? cpu : Int(UInt(bitPattern: cpu) % UInt(count))
}
