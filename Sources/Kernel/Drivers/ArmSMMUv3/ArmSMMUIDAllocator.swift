/// ASIDs or VMIDs of the Arm SMMUv3 driver (Linux `arm_smmu_asid_xa`, a global xarray
/// allocated with `XA_LIMIT(1, (1 << asid_bits) - 1)`, and `smmu->vmid_map`, an IDA allocated in
/// [1, (1 << vmid_bits) - 1]).
///
/// 0 is never handed out: ASID 0 is left unused as Linux leaves it, and VMID 0 tags the
/// stage 1 STEs of the NS-EL1 StreamWorld (`arm_smmu_make_cdtable_ste` leaves S2VMID 0).
/// Values come lowest-free first, so a released ID is reused at once and a missing TLBI before
/// the release shows up quickly. The caller releases an ID only after the TLBI by that ID
/// completed (`arm_smmu_domain_free_paging`: the io-pgtable free flushes the context first);
/// an ID whose TLBI failed is quarantined and never handed out again.
public struct ArmSMMUIDAllocator: Sendable {
    private var words: [UInt64]
    /// One past the largest ID (2^bits).
    public let limit: Int
    public private(set) var allocated = 0
    public private(set) var quarantined: [UInt16] = []

    public init(bits: Int) {
        limit = 1 << max(1, min(16, bits))
        words = [UInt64](repeating: 0, count: (limit + 63) / 64)
        words[0] = 1
    }

    public func isInUse(_ id: UInt16) -> Bool {
        Int(id) < limit && words[Int(id) / 64] & (1 << UInt64(id % 64)) != 0
    }

    /// The lowest free ID below `below` (a unit with fewer ASID bits than the global space), or nil.
    mutating func allocate(below: Int? = nil) -> UInt16? {
        let end = min(limit, below ?? limit)
        for w in 0..<words.count where words[w] != .max {
            let bit = (~words[w]).trailingZeroBitCount
            let value = w * 64 + bit
            guard value < end else { return nil }
            words[w] |= 1 << UInt64(bit)
            allocated += 1
            return UInt16(value)
        }
        return nil
    }

    /// Gives `id` back; false if it was not handed out (0 or free).
    mutating func free(_ id: UInt16) -> Bool {
        guard id != 0, isInUse(id) else { return false }
        words[Int(id) / 64] &= ~(1 << UInt64(id % 64))
        allocated -= 1
        return true
    }

    /// `id` may still tag TLB entries (its TLBI failed): it stays taken for good.
    mutating func quarantine(_ id: UInt16) { quarantined.append(id) }
}
