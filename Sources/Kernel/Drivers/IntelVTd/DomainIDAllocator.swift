import Platform
import Formats

/// The domain IDs of one VT-d unit (Linux `iommu->domain_ida`, drivers/iommu/intel/iommu.c).
///
/// DID 0 is reserved (caching-mode hardware tags non-present entries with it); DID 1
/// (`FLPT_DEFAULT_DID`) is reserved and shared by pass-through/identity and SVA entries,
/// because VT-d §6.2.3.1 wants first-stage-only and pass-through entries under a DID apart
/// from second-stage ones. Both stay reserved for the unit's lifetime. Others are handed out
/// lowest-first from 2 up to `CAP.ND` (so a freed DID is reused at once: a missing
/// invalidation before release shows up quickly).
public struct DomainIDAllocator: Sendable {
    public static let reserved = DomainID(0)
    public static let shared = DomainID(1)
    public static let first: UInt16 = 2

    private var words: [UInt64]
    public let limit: Int
    /// DIDs handed out and not freed (reserved ones excluded).
    public private(set) var allocated = 0
    /// DIDs that may still tag cached entries because their invalidation failed; they are
    /// never handed out again.
    public private(set) var quarantined: [DomainID] = []

    public init(numberOfDomains: Int) {
        limit = max(Int(Self.first) + 1, min(numberOfDomains, 1 << 16))
        words = [UInt64](repeating: 0, count: (limit + 63) / 64)
        words[0] = 0b11
    }

    public func isInUse(_ did: DomainID) -> Bool {
        Int(did.rawValue) < limit && words[Int(did.rawValue) / 64] & (1 << UInt64(did.rawValue % 64)) != 0
    }

    /// Both reserved DIDs are still marked in use.
    public var reservedIntact: Bool { isInUse(Self.reserved) && isInUse(Self.shared) }

    mutating func allocate() -> DomainID? {
        for w in 0..<words.count where words[w] != .max {
            let bit = (~words[w]).trailingZeroBitCount
            let value = w * 64 + bit
            guard value < limit else { return nil }
            words[w] |= 1 << UInt64(bit)
            allocated += 1
            return DomainID(UInt16(value))
        }
        return nil
    }

    /// Frees a DID; reserved or free DIDs are refused.
    mutating func free(_ did: DomainID) -> Bool {
        guard did.rawValue >= Self.first, isInUse(did) else { return false }
        words[Int(did.rawValue) / 64] &= ~(1 << UInt64(did.rawValue % 64))
        allocated -= 1
        return true
    }

    mutating func quarantine(_ did: DomainID) {
        quarantined.append(did)
    }
}
