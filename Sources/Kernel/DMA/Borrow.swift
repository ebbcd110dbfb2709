/// Hot-path helpers of the DMA layer shared by the API, the cookie and the flush queue
/// (the CPU-slot rule, `cpuSlot`, is Platform's, beside `PerCPU`).

extension Unmanaged {
    /// Runs `body` with the instance borrowed: no reference counting, which on objects
    /// shared by several CPUs would make every call contend for one cache line. The caller
    /// guarantees the instance is alive for the call.
    @inline(__always)
    func borrow<R>(_ body: (Instance) throws(IOMMUError) -> R) throws(IOMMUError) -> R {
        try _withUnsafeGuaranteedRef { i in Result { () throws(IOMMUError) in try body(i) } }.get()
    }
}
