import Platform

/// The pages behind one mapping (Linux `struct iopt_pages`): a run of user memory (a VA
/// range of a process, or a range of a file) that areas of one or more IOASes map, whole or
/// in part (`IOAS_COPY` shares them). Nothing is pinned when it is made: a page is pinned
/// when its first user appears (an area filling a domain, or an access pinning it) and
/// unpinned when its last goes, and each pinned page is charged to the ledger once.
final class IOPTPages {
    enum Source {
        case user(UserMemory, address: UInt64)
        case file(PinnableFile, offset: UInt64)
    }

    let source: Source
    let pageCount: Int
    let writable: Bool
    /// How and to whom pins are charged (changes with IOAS_CHANGE_PROCESS).
    var accountMode: PinAccountMode
    var ledger: PinLedger
    /// Physical frame of each page while it is pinned (0: not pinned); made at the first pin.
    private(set) var frames: [UInt64] = []
    /// Users of each page: areas holding it for their domains, and access pins.
    private var users: [UInt32] = []
    /// Pages pinned now (charged to the ledger).
    private(set) var pinnedPages = 0
    /// Areas referring to these pages.
    var areaRefs = 0

    init(source: Source, pageCount: Int, writable: Bool, accountMode: PinAccountMode, ledger: PinLedger) {
        self.source = source; self.pageCount = pageCount; self.writable = writable
        self.accountMode = accountMode; self.ledger = ledger
    }

    var isFile: Bool { if case .file = source { return true } else { return false } }

    /// Adds a user to pages `range`, pinning those that had none. All or nothing: on EFAULT
    /// or ENOMEM nothing changes.
    func pin(_ range: Range<Int>, faults: FaultInjector) throws(Errno) {
        guard !range.isEmpty else { return }
        if frames.isEmpty {
            frames = [UInt64](repeating: 0, count: pageCount)
            users = [UInt32](repeating: 0, count: pageCount)
        }
        var fresh = 0
        for i in range where users[i] == 0 { fresh += 1 }
        if fresh > 0 {
            try ledger.charge(accountMode, UInt64(fresh), faults: faults)
            var i = range.lowerBound
            while i < range.upperBound {
                guard users[i] == 0 else { i += 1; continue }
                var end = i + 1
                while end < range.upperBound, users[end] == 0 { end += 1 }
                let got = pinRun(i..<end, faults: faults)
                guard got == end - i else {
                    // Undo this call's pins: the run's pinned prefix, and earlier runs.
                    unpinFrames(i..<i + got)
                    for j in range.lowerBound..<i where users[j] == 0 && frames[j] != 0 { unpinFrames(j..<j + 1) }
                    ledger.uncharge(accountMode, UInt64(fresh))
                    throw Errno.fault("page \(i + got) of the mapping cannot be pinned")
                }
                i = end
            }
            pinnedPages += fresh
        }
        for i in range { users[i] += 1 }
    }

    /// Drops a user of pages `range`; pages left with none are unpinned and uncharged.
    func unpin(_ range: Range<Int>) {
        guard !range.isEmpty, !frames.isEmpty else { return }
        var released = 0
        var i = range.lowerBound
        while i < range.upperBound {
            users[i] -= 1
            guard users[i] == 0 else { i += 1; continue }
            var end = i + 1
            while end < range.upperBound, users[end] == 1 { users[end] = 0; end += 1 }
            unpinFrames(i..<end)
            released += end - i
            i = end
        }
        pinnedPages -= released
        ledger.uncharge(accountMode, UInt64(released))
    }

    /// Pins pages `range` at the source; returns how many from the start were pinned.
    private func pinRun(_ range: Range<Int>, faults: FaultInjector) -> Int {
        if faults.shouldFail(.iommufdPin) { return 0 }
        return frames.withUnsafeMutableBufferPointer { all in
            let out = UnsafeMutableBufferPointer(rebasing: all[range])
            switch source {
            case .user(let memory, let address):
                return memory.pinPages(at: address + UInt64(range.lowerBound) << 12, write: writable, into: out)
            case .file(let file, let offset):
                return file.pinPages(at: offset + UInt64(range.lowerBound) << 12, write: writable, into: out)
            }
        }
    }

    private func unpinFrames(_ range: Range<Int>) {
        guard !range.isEmpty else { return }
        frames.withUnsafeMutableBufferPointer { all in
            let run = UnsafeBufferPointer(rebasing: all[range])
            switch source {
            case .user(let memory, _): memory.unpinPages(run)
            case .file(let file, _): file.unpinPages(run)
            }
            for i in range { all[i] = 0 }
        }
    }

    /// Runs `body` over the frames (valid for pinned pages).
    func withFrames(_ body: (UnsafeBufferPointer<UInt64>) throws(Errno) -> Void) throws(Errno) {
        try frames.withUnsafeBufferPointer { (b) throws(Errno) in try body(b) }
    }

    /// A holder gives up its use of `range` without unpinning: a device may still reach the
    /// pages through a translation whose invalidation failed, so they stay pinned for good.
    func leakPin(_ range: Range<Int>) { leakedPages += range.count }
    private(set) var leakedPages = 0

    /// Whether every page of `range` is pinned.
    func isPinned(_ range: Range<Int>) -> Bool {
        guard !frames.isEmpty else { return range.isEmpty }
        for i in range where users[i] == 0 { return false }
        return true
    }
}
