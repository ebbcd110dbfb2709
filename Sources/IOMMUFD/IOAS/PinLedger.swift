import Platform

/// How pinned pages are charged (Linux `enum iopt_pages_account_mode`, chosen by
/// `IOMMU_OPTION_RLIMIT_MODE`): to the user's `locked_vm` (iommufd's default), to the
/// process's `pinned_vm` (VFIO's way), or not at all (CAP_IPC_LOCK).
public enum PinAccountMode: Equatable, Sendable {
    case none, user, mm
}

/// The RLIMIT_MEMLOCK ledger of one user and process (Linux `user->locked_vm` and
/// `mm->pinned_vm`): every page an IOAS pins is charged once, in its pages' mode, and
/// uncharged when unpinned. At teardown it must be back at zero.
public final class PinLedger: @unchecked Sendable {
    /// RLIMIT_MEMLOCK in pages (unlimited by default).
    public var limitPages: UInt64
    public private(set) var userPages: UInt64 = 0
    public private(set) var mmPages: UInt64 = 0
    /// Most pages ever charged at once.
    public private(set) var peakPages: UInt64 = 0

    public init(limitPages: UInt64 = .max) { self.limitPages = limitPages }

    /// Charges `pages` (Linux `incr_user_locked_vm` / `update_mm_locked_vm`): ENOMEM past
    /// the limit, and nothing charged then.
    func charge(_ mode: PinAccountMode, _ pages: UInt64, faults: FaultInjector) throws(Errno) {
        guard pages > 0, mode != .none else { return }
        if faults.shouldFail(.iommufdAccount) { throw Errno.nomem("pin accounting (injected)") }
        switch mode {
        case .none: return
        case .user:
            guard userPages <= limitPages, pages <= limitPages - userPages else {
                throw Errno.nomem("RLIMIT_MEMLOCK: \(userPages) + \(pages) pages locked exceeds \(limitPages)")
            }
            userPages += pages
        case .mm:
            guard mmPages <= limitPages, pages <= limitPages - mmPages else {
                throw Errno.nomem("RLIMIT_MEMLOCK: \(mmPages) + \(pages) pages pinned exceeds \(limitPages)")
            }
            mmPages += pages
        }
        peakPages = max(peakPages, userPages + mmPages)
    }

    func uncharge(_ mode: PinAccountMode, _ pages: UInt64) {
        switch mode {
        case .none: return
        case .user: userPages -= min(pages, userPages)
        case .mm: mmPages -= min(pages, mmPages)
        }
    }

    /// Moves `pages` charged in `mode` to `other` (IOAS_CHANGE_PROCESS).
    func transfer(_ mode: PinAccountMode, _ pages: UInt64, to other: PinLedger, faults: FaultInjector) throws(Errno) {
        try other.charge(mode, pages, faults: faults)
        uncharge(mode, pages)
    }

    /// Pages charged now, in both modes.
    public var chargedPages: UInt64 { userPages + mmPages }
}
