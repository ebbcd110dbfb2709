import Platform

/// The pages behind one mapping (Linux `struct iopt_pages`): a run of user memory (a VA
/// range of a process, or a range of a file) that areas of one or more IOASes map, whole or
/// in part (`IOAS_COPY` shares them). Nothing is pinned when it is made: a page is pinned
/// when its first user appears (an area filling a domain, or an access pinning it) and
/// unpinned when its last goes, and each pinned page is charged to the ledger once.
///
/// Pins are tracked in chunks of 512 pages made as pages get pinned, so a mapping of any
/// size costs memory only for what is pinned (a user may map terabytes it never backs).
/// Pinning goes a chunk at a time and charges what each chunk pinned after pinning it
/// (Linux pins the whole range, then charges it once: the two differ only when the limit is
/// reached in a chunk before a page that cannot be pinned, ENOMEM here, EFAULT there).
final class IOPTPages {
    enum Source {
        case user(UserMemory, address: UInt64)
        case file(PinnableFile, offset: UInt64)
    }

    /// Frames and user counts of up to 512 consecutive pages, in one raw block: a header
    /// (pinned pages, page count), the frames, the user counts. No object, no array
    /// headers: one allocation per chunk on the map path. Freed with the pages.
    struct Chunk {
        let raw: UnsafeMutableRawPointer
        static let header = 16

        static func make(count: Int) -> Chunk {
            let bytes = header + count * 12
            let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
            raw.storeBytes(of: count, toByteOffset: 8, as: Int.self)
            return Chunk(raw: raw)
        }

        func free() { raw.deallocate() }
        var count: Int { raw.load(fromByteOffset: 8, as: Int.self) }
        var pinned: Int {
            get { raw.load(as: Int.self) }
            nonmutating set { raw.storeBytes(of: newValue, as: Int.self) }
        }
        var frames: UnsafeMutablePointer<UInt64> { (raw + Self.header).assumingMemoryBound(to: UInt64.self) }
        var users: UnsafeMutablePointer<UInt32> { (raw + Self.header + count * 8).assumingMemoryBound(to: UInt32.self) }
    }

    static let chunkShift = 9
    static let chunkPages = 1 << chunkShift

    let source: Source
    let pageCount: Int
    let writable: Bool
    /// How and to whom pins are charged (changes with IOAS_CHANGE_PROCESS).
    var accountMode: PinAccountMode
    var ledger: PinLedger
    private var first: Chunk?
    private var others: [Int: Chunk] = [:]
    /// Pages pinned now (charged to the ledger).
    private(set) var pinnedPages = 0
    /// Areas referring to these pages.
    var areaRefs = 0

    init(source: Source, pageCount: Int, writable: Bool, accountMode: PinAccountMode, ledger: PinLedger) {
        self.source = source; self.pageCount = pageCount; self.writable = writable
        self.accountMode = accountMode; self.ledger = ledger
    }

    deinit {
        first?.free()
        for c in others.values { c.free() }
    }

    var isFile: Bool { if case .file = source { return true } else { return false } }

    @inline(__always)
    private func chunk(_ c: Int) -> Chunk? { c == 0 ? first : others[c] }

    private func makeChunk(_ c: Int) -> Chunk {
        if let x = chunk(c) { return x }
        let x = Chunk.make(count: min(Self.chunkPages, pageCount - (c << Self.chunkShift)))
        if c == 0 { first = x } else { others[c] = x }
        return x
    }

    /// The frame of pinned page `i` (0 if it is not pinned).
    @inline(__always)
    func frame(_ i: Int) -> UInt64 {
        guard let x = chunk(i >> Self.chunkShift) else { return 0 }
        return x.frames[i & (Self.chunkPages - 1)]
    }

    /// Runs of physically contiguous pinned pages over `range`, in order: (first page,
    /// page count, first frame). Runs continue across chunks.
    func forEachRun(_ range: Range<Int>, _ body: (Int, Int, UInt64) throws(Errno) -> Void) throws(Errno) {
        var start = range.lowerBound, count = 0, base: UInt64 = 0
        var i = range.lowerBound
        while i < range.upperBound {
            let c = i >> Self.chunkShift
            let end = min((c + 1) << Self.chunkShift, range.upperBound)
            guard let x = chunk(c) else { i = end; continue }
            let offset = c << Self.chunkShift
            for k in i..<end {
                let f = x.frames[k - offset]
                if count > 0 && f == base &+ UInt64(count) << 12 {
                    count += 1
                } else {
                    if count > 0 { try body(start, count, base) }
                    start = k; count = 1; base = f
                }
            }
            i = end
        }
        if count > 0 { try body(start, count, base) }
    }

    /// Whether any page of `x` has a user.
    private func chunkInUse(_ x: Chunk) -> Bool {
        for k in 0..<x.count where x.users[k] > 0 { return true }
        return false
    }

    /// Adds a user to pages `range`, pinning those that had none. All or nothing: on EFAULT
    /// or ENOMEM nothing changes.
    func pin(_ range: Range<Int>, faults: FaultInjector) throws(Errno) {
        guard !range.isEmpty else { return }
        // Pages this call pinned, run by run, and the pages it charged, for the undo. Most
        // calls pin one run: it is kept aside, so the common case allocates no list.
        var firstFresh: (Chunk, Range<Int>)?
        var moreFresh: [(Chunk, Range<Int>)] = []
        func record(_ x: Chunk, _ r: Range<Int>) {
            if firstFresh == nil { firstFresh = (x, r) } else { moreFresh.append((x, r)) }
        }
        var charged: UInt64 = 0
        func undo() {
            if let (x, r) = firstFresh { unpinFrames(x, r) }
            for (x, r) in moreFresh { unpinFrames(x, r) }
            ledger.uncharge(accountMode, charged)
            // Chunks this call made and left empty go again (a huge mapping whose pin failed
            // far in keeps no memory for it).
            for (c, x) in others where x.pinned == 0 && !chunkInUse(x) { others[c] = nil; x.free() }
        }
        var i = range.lowerBound
        while i < range.upperBound {
            let c = i >> Self.chunkShift, offset = c << Self.chunkShift
            let end = min(offset + Self.chunkPages, range.upperBound)
            let x = makeChunk(c)
            var here = 0
            var k = i - offset
            while k < end - offset {
                guard x.users[k] == 0 else { k += 1; continue }
                var e = k + 1
                while e < end - offset, x.users[e] == 0 { e += 1 }
                let got = pinRun(x, k..<e, firstPage: offset + k, faults: faults)
                if got > 0 { record(x, k..<k + got); here += got }
                guard got == e - k else {
                    undo()
                    // A file page past the file's end is EINVAL (memfd_pin_folios); any
                    // other page that cannot be pinned is EFAULT.
                    if case .file(let f, let start) = source, start &+ UInt64(offset + k + got) << 12 >= f.length {
                        throw Errno.inval("page \(offset + k + got) of the mapping is past the end of the file")
                    }
                    throw Errno.fault("page \(offset + k + got) of the mapping cannot be pinned")
                }
                k = e
            }
            do { try ledger.charge(accountMode, UInt64(here), faults: faults) } catch {
                undo()
                throw error
            }
            charged += UInt64(here)
            i = end
        }
        var added = 0
        if let (x, r) = firstFresh { x.pinned += r.count; added += r.count }
        for (x, r) in moreFresh { x.pinned += r.count; added += r.count }
        pinnedPages += added
        i = range.lowerBound
        while i < range.upperBound {
            let c = i >> Self.chunkShift, offset = c << Self.chunkShift
            let end = min(offset + Self.chunkPages, range.upperBound)
            if let x = chunk(c) { for k in (i - offset)..<(end - offset) { x.users[k] += 1 } }
            i = end
        }
    }

    /// Drops a user of pages `range`; pages left with none are unpinned and uncharged.
    func unpin(_ range: Range<Int>) {
        guard !range.isEmpty else { return }
        var released = 0
        var i = range.lowerBound
        while i < range.upperBound {
            let c = i >> Self.chunkShift, offset = c << Self.chunkShift
            let end = min(offset + Self.chunkPages, range.upperBound)
            guard let x = chunk(c) else { i = end; continue }
            var k = i - offset
            while k < end - offset {
                x.users[k] -= 1
                guard x.users[k] == 0 else { k += 1; continue }
                var e = k + 1
                while e < end - offset, x.users[e] == 1 { x.users[e] = 0; e += 1 }
                unpinFrames(x, k..<e)
                x.pinned -= e - k
                released += e - k
                k = e
            }
            if x.pinned == 0 && c != 0 { others.removeValue(forKey: c)?.free() }
            i = end
        }
        pinnedPages -= released
        ledger.uncharge(accountMode, UInt64(released))
    }

    /// Pins pages `r` of chunk `x` (page `firstPage` of the set first) at the source; returns
    /// how many from the start were pinned.
    private func pinRun(_ x: Chunk, _ r: Range<Int>, firstPage: Int, faults: FaultInjector) -> Int {
        if faults.shouldFail(.iommufdPin) { return 0 }
        let out = UnsafeMutableBufferPointer(start: x.frames + r.lowerBound, count: r.count)
        switch source {
        case .user(let memory, let address):
            return memory.pinPages(at: address + UInt64(firstPage) << 12, write: writable, into: out)
        case .file(let file, let offset):
            return file.pinPages(at: offset + UInt64(firstPage) << 12, write: writable, into: out)
        }
    }

    private func unpinFrames(_ x: Chunk, _ r: Range<Int>) {
        guard !r.isEmpty else { return }
        let run = UnsafeBufferPointer(start: x.frames + r.lowerBound, count: r.count)
        switch source {
        case .user(let memory, _): memory.unpinPages(run)
        case .file(let file, _): file.unpinPages(run)
        }
        (x.frames + r.lowerBound).update(repeating: 0, count: r.count)
    }

}
