import Platform
import Formats

/// Dirty tracking through the core (what iommufd's `iopt_set_dirty_tracking` and
/// `iopt_read_and_clear_dirty_data` call on a domain), so that observers see when tracking
/// starts and what each read reported.
extension IOMMUCore {
    /// Turns dirty tracking of `domain` on or off (Linux `set_dirty_tracking`).
    public func setDirtyTracking(_ domain: IOMMUDomain, _ enabled: Bool) throws(IOMMUError) {
        try checkAlive(domain)
        try domain.setDirtyTracking(enabled)
        observer?.dirtyTrackingChanged(domain, enabled: enabled)
    }

    /// Reads (and clears, unless `clear` is false) the dirty bits of [iova, iova + size)
    /// (Linux `read_and_clear_dirty`), calling `record` with each dirty leaf; with no
    /// `record` it only clears.
    public func readAndClearDirty(_ domain: IOMMUDomain, iova: UInt64, size: UInt64, clear: Bool,
                                  _ record: ((UInt64, UInt64) -> Void)?) throws(IOMMUError) {
        try checkAlive(domain)
        // Only reads that report are watched; a clearing-only read (no record) is allowed
        // while tracking is off and must stay recognisable as such to the driver.
        guard let observer, let record else { return try domain.readAndClearDirty(iova: iova, size: size, clear: clear, record) }
        observer.dirtyReadBegan(domain)
        var reported: [(UInt64, UInt64)] = []
        do {
            try domain.readAndClearDirty(iova: iova, size: size, clear: clear) { start, length in
                reported.append((start, length))
                record(start, length)
            }
        } catch {
            observer.dirtyReadFailed(domain, cleared: clear)
            throw error
        }
        observer.dirtyReadEnded(domain, iova: iova, size: size, cleared: clear, reported: reported)
    }
}
