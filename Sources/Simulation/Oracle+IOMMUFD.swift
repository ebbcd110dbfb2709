import Platform
import Formats
import Kernel
import IOMMUFD

/// The user API's invariants: every domain of an IOAS translates exactly what the IOAS
/// maps (whatever HWPT a device reaches it through), and a closed context leaves no pin.
extension Oracle {
    /// Compares each domain's settled mappings with the IOAS's areas and their pinned frames.
    public func checkIOAS(_ ioas: IOAS, context: String) {
        checks &+= 1
        var expected: [(start: UInt64, end: UInt64, physical: UInt64)] = []
        ioas.forEachTranslation { iova, pa, length, _ in
            if let last = expected.last, last.end == iova, last.physical &+ (last.end - last.start) == pa {
                expected[expected.count - 1].end = iova + length
            } else {
                expected.append((iova, iova + length, pa))
            }
        }
        for d in ioas.attachedDomains where !d.isDestroyed {
            var actual: [(start: UInt64, end: UInt64, physical: UInt64)] = []
            for r in shadow(of: d) {
                if let last = actual.last, last.end == r.start, last.physical &+ (last.end - last.start) == r.physical {
                    actual[actual.count - 1].end = r.end
                } else {
                    actual.append((r.start, r.end, r.physical))
                }
            }
            guard actual.count == expected.count, zip(actual, expected).allSatisfy({ $0.start == $1.start && $0.end == $1.end && $0.physical == $1.physical }) else {
                let first = zip(actual, expected).first { $0.start != $1.start || $0.end != $1.end || $0.physical != $1.physical }
                violate("ioas-domain-mismatch", "\(context) \(ioas): \(d) maps \(actual.count) range(s), the IOAS \(expected.count)" +
                        (first.map { " (first difference at \(Self.hex(min($0.0.start, $0.1.start))))" } ?? ""))
                return
            }
        }
    }

    /// After close: the context's ledger is back at zero and its process holds no pin.
    public func checkPinsReleased(_ ctx: IOMMUFDContext, context: String) {
        checks &+= 1
        // Pages of mappings whose invalidation failed stay pinned on purpose (a device may
        // still reach them): reported on their own, as the designed outcome of that failure.
        if ctx.ledger.chargedPages > UInt64(ctx.pagesKeptAfterFailedUnmap) {
            violate("pins-left", "\(context) closed with \(ctx.ledger.chargedPages) page(s) still charged to RLIMIT_MEMLOCK")
        }
        if ctx.pinsKeptAfterFailedUnmap > 0 {
            violate("pins-kept", "\(context) kept the pins of \(ctx.pinsKeptAfterFailedUnmap) mapping(s) whose invalidation failed")
        }
        if !ctx.objects.isEmpty { violate("object-leak", "\(context) closed with \(ctx.objects.count) object(s) left") }
    }
}
