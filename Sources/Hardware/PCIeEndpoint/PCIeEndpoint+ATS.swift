import Platform
import Formats

/// The device TLB (PCIe ATS "ATC") of an endpoint.
public struct ATSConfiguration: Equatable, Sendable {
    /// The device uses ATS: it asks the unit for translations, caches them and makes
    /// translated requests. Without it, `atsAccess` makes untranslated requests.
    public var enabled: Bool
    public var deviceTLBEntries: Int
    public var deviceTLBWays: Int
    public init(enabled: Bool = false, deviceTLBEntries: Int = 64, deviceTLBWays: Int = 4) {
        self.enabled = enabled; self.deviceTLBEntries = deviceTLBEntries; self.deviceTLBWays = deviceTLBWays
    }
}

/// The device's Page Request Interface.
public struct PRIConfiguration: Equatable, Sendable {
    public var enabled: Bool
    /// Outstanding page request allocation (PCIe PRI capability): page requests the device
    /// may have outstanding; each is returned when its group's response arrives.
    public var credits: Int
    /// Most pages one page request group asks for.
    public var maxPagesPerGroup: Int
    /// Translation attempts after successful responses before the access gives up.
    public var retryLimit: Int
    /// Most time between two page requests of one group: a device sends a group's requests
    /// one by one, a seeded 0...this apart, so a stop can catch a group half sent.
    public var requestSpacingNs: UInt64
    /// The device hands out the lowest free PRG index (a free list) rather than the next one
    /// round the 512: indices of answered or abandoned groups come back at once.
    public var lowestFreeGroupIndex: Bool
    public init(enabled: Bool = false, credits: Int = 64, maxPagesPerGroup: Int = 32, retryLimit: Int = 4,
                requestSpacingNs: UInt64 = 100, lowestFreeGroupIndex: Bool = false) {
        self.enabled = enabled; self.credits = credits; self.maxPagesPerGroup = maxPagesPerGroup; self.retryLimit = retryLimit
        self.requestSpacingNs = requestSpacingNs; self.lowestFreeGroupIndex = lowestFreeGroupIndex
    }
}

/// Protocol breaches a guest-controlled device may commit (the "misbehaving device").
public struct Misbehaviour: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Sends more page requests than its credits allow.
    public static let exceedCredits = Misbehaviour(rawValue: 1 << 0)
    /// Starts a group under an index another outstanding group still uses.
    public static let reuseGroupIndices = Misbehaviour(rawValue: 1 << 1)
    /// Sends invalidation completions for invalidations never requested.
    public static let unsolicitedCompletions = Misbehaviour(rawValue: 1 << 2)
    /// Keeps sending page requests for a PASID it was told to stop.
    public static let requestsAfterStop = Misbehaviour(rawValue: 1 << 3)
    public static let all: Misbehaviour = [.exceedCredits, .reuseGroupIndices, .unsolicitedCompletions, .requestsAfterStop]
}

/// Something unexpected the device saw, for the oracle.
public enum PRIAnomaly: Equatable, Sendable {
    /// A page group response for a group the device never sent or already had answered.
    case unexpectedResponse(pasid: PASID?, groupIndex: UInt16)
    /// A response for a group sent under an earlier use of the PASID reached the device
    /// after the PASID was started again: it belongs to the previous owner.
    case responseCrossedPASIDReuse(pasid: PASID, groupIndex: UInt16)
    /// A translation request issued before the PASID's stop completed was refused
    /// (Unsupported Request, a recorded fault) after it: the stop was reported too early.
    case requestFaultedAfterStop(pasid: PASID, issuedNs: UInt64, stoppedNs: UInt64)
}

/// A `stopPASID` call waiting to complete.
struct StopWaiter {
    var pasid: PASID
    /// Also wait until the PASID's page request groups are answered (a stop without marker).
    var waitForGroups: Bool
    /// Translation requests with a lower serial were issued before the stop: it waits for them.
    var serialAtStop: UInt64
    var completion: () -> Void
}

/// Counts of the device's ATS and PRI activity.
public struct ATSCounters: Equatable, Sendable {
    public var accesses: UInt64 = 0
    public var deviceTLBHits: UInt64 = 0
    public var translationRequests: UInt64 = 0
    public var translatedRequests: UInt64 = 0
    public var pageRequests: UInt64 = 0
    public var groups: UInt64 = 0
    public var stopMarkers: UInt64 = 0
    public var responses: UInt64 = 0
    public var successResponses: UInt64 = 0
    public var invalidResponses: UInt64 = 0
    public var failureResponses: UInt64 = 0
    public var unexpectedResponses: UInt64 = 0
    /// Responses for groups abandoned by a stop marker (harmless while the PASID is unused).
    public var staleResponses: UInt64 = 0
    public var retries: UInt64 = 0
    public var completed: UInt64 = 0
    public var failed: UInt64 = 0
    public var deviceTLBInvalidations: UInt64 = 0
    public var deviceTLBEntriesInvalidated: UInt64 = 0
    public var creditWaits: UInt64 = 0
    /// Function resets (FLR) the device went through.
    public var resets: UInt64 = 0
    public init() {}
}

/// A cached translation of one 4 KiB page.
struct DeviceTLBEntry {
    var physical: UInt64
    var permissions: UInt8
    static let empty = DeviceTLBEntry(physical: 0, permissions: 0)
}

/// How an ATS access ended.
public enum ATSAccessOutcome: Equatable, Sendable {
    case completed
    /// The unit answered Unsupported Request (ATS not enabled, broken configuration).
    case unsupportedRequest
    /// Not accessible and the device has no (working) PRI.
    case noAccess
    /// The page request group was answered Invalid Request.
    case invalidResponse
    /// The group was answered Response Failure: PRI is now disabled.
    case responseFailure
    /// Still not accessible after `retryLimit` successful responses.
    case retriesExhausted
    /// The PASID was stopped while the access waited.
    case stopped
    /// An untranslated or translated request faulted.
    case fault(DMAFault)
}

/// The outcome of one `atsAccess`.
public struct ATSAccessResult: Equatable, Sendable {
    public var outcome: ATSAccessOutcome
    /// Bytes moved before the end.
    public var transferred: Int
    /// Page request groups it sent.
    public var groups: Int
    public var time: UInt64
}

/// PRI state of the device.
public struct PRIState: Sendable {
    /// Page requests outstanding (credits in use).
    public var creditsInUse = 0
    /// Response Failure seen: PRI stays off until reset.
    public var failed = false
    /// Outstanding groups by PRG index (a misbehaving device may reuse an index).
    var groups: [UInt16: [OutstandingGroup]] = [:]
    var nextIndex: UInt16 = 0
    /// Use count per PASID (bumped by `startPASID`) and stopped PASIDs.
    var epochs: [UInt32: UInt64] = [:]
    var stopped: Set<UInt32> = []
    /// Groups abandoned by a stop marker: (PASID, index) → the epoch they were sent in.
    var abandoned: [UInt64: UInt64] = [:]
    /// Groups outstanding now.
    public var outstandingGroups: Int { groups.values.reduce(0) { $0 + $1.count } }
}

struct OutstandingGroup: @unchecked Sendable {
    var pasid: PASID?
    var pages: Int
    var epoch: UInt64
    var op: ATSOperation
}

/// One access in progress through ATS.
final class ATSOperation {
    let pasid: PASID?
    let address: UInt64
    let length: Int
    let write: Bool
    let completion: (ATSAccessResult) -> Void
    var done = 0
    var retries = 0
    var groups = 0
    var finished = false
    init(pasid: PASID?, address: UInt64, length: Int, write: Bool, completion: @escaping (ATSAccessResult) -> Void) {
        self.pasid = pasid; self.address = address; self.length = length; self.write = write; self.completion = completion
    }
}

extension PCIeEndpoint {
    static func tlbKey1(_ pasid: PASID?) -> UInt64 { pasid.map { UInt64($0.rawValue) } ?? 1 << 32 }
    static func groupKey(_ pasid: PASID?, _ index: UInt16) -> UInt64 {
        (pasid.map { UInt64($0.rawValue) } ?? 1 << 32) << 16 | UInt64(index)
    }

    /// Entries the device TLB holds.
    public var deviceTLBOccupancy: Int { deviceTLB.count }

    /// Device-TLB entries for `pasid` whose page lies in [start, end] (the oracle checks that
    /// an unmap leaves none behind).
    public func deviceTLBEntries(pasid: PASID?, start: UInt64, end: UInt64) -> [(address: UInt64, physical: UInt64)] {
        var found: [(UInt64, UInt64)] = []
        let k = Self.tlbKey1(pasid)
        deviceTLB.forEach { key0, key1, e in
            let a = key0 << 12
            if key1 == k && a <= end && a &+ 0xFFF >= start { found.append((a, e.physical)) }
        }
        return found
    }

    // MARK: Accesses

    /// Accesses `length` bytes at `address` (of `pasid`) through ATS: device-TLB hits make
    /// translated requests; misses ask the unit for a translation; pages not accessible are
    /// requested with PRI (one group for the pages still missing, up to `maxPagesPerGroup`),
    /// and after a Success response the translation is tried again. `completion` runs as a
    /// hardware event when the access ends. Without ATS the access is an untranslated DMA.
    public func atsAccess(pasid: PASID?, address: UInt64, length: Int, write: Bool,
                          completion: @escaping (ATSAccessResult) -> Void) {
        let op = ATSOperation(pasid: pasid, address: address, length: max(0, min(length, 1 << 24)), write: write,
                              completion: completion)
        atsCounters.accesses &+= 1
        platform.scheduler.schedule(after: requestLatencyNs, kind: .hardware) { [ref] in ref.target?.advance(op) }
    }

    func finish(_ op: ATSOperation, _ outcome: ATSAccessOutcome) {
        guard !op.finished else { return }
        op.finished = true
        if outcome == .completed { atsCounters.completed &+= 1 } else { atsCounters.failed &+= 1 }
        op.completion(ATSAccessResult(outcome: outcome, transferred: op.done, groups: op.groups, time: platform.scheduler.now))
    }

    private func isStopped(_ pasid: PASID?) -> Bool {
        guard let p = pasid else { return false }
        return priState.stopped.contains(p.rawValue) && !misbehaviour.contains(.requestsAfterStop)
    }

    /// Moves the access on as far as the device TLB allows, then asks for what is missing.
    func advance(_ op: ATSOperation) {
        guard !op.finished else { return }
        if isStopped(op.pasid) { finish(op, .stopped); return }
        if !atsConfiguration.enabled {
            let r = transferNow(write: op.write, address: op.address &+ UInt64(op.done), length: op.length - op.done, pasid: op.pasid)
            op.done += r.transferred
            if let stag = r.fault?.stallTag {
                // Held by an SMMUv3's stall model: the access goes on once software resolves it.
                stalledTLPs[stag]?.operation = op
                return
            }
            finish(op, r.fault.map { .fault($0) } ?? .completed)
            return
        }
        let key1 = Self.tlbKey1(op.pasid)
        while op.done < op.length {
            let (va, o) = op.address.addingReportingOverflow(UInt64(op.done))
            if o { finish(op, .fault(overflowFault(op.address))); return }
            guard let hit = deviceTLB.lookup(va >> 12, key1) else { break }
            let perms = PagePermissions(rawValue: hit.pointee.payload.permissions)
            guard perms.contains(op.write ? .write : .read) else { break }
            atsCounters.deviceTLBHits &+= 1
            let n = min(op.length - op.done, Int(4096 - (va & 0xFFF)))
            let offset = Int(va & 0xFFF)
            let pa = hit.pointee.payload.physical | (va & 0xFFF)
            atsCounters.translatedRequests &+= 1
            if let f = upstream.translatedAccess(source: requesterID, pasid: op.pasid, address: va, physical: pa,
                                             buffer: UnsafeMutableRawBufferPointer(rebasing: staging[offset..<offset + n]),
                                             write: op.write) {
                finish(op, .fault(f)); return
            }
            if op.write { counters.bytesWritten &+= UInt64(n) } else { counters.bytesRead &+= UInt64(n) }
            op.done += n
        }
        if op.done >= op.length { finish(op, .completed); return }
        requestTranslation(op)
    }

    /// ATS translation request for the page the access stopped at.
    private func requestTranslation(_ op: ATSOperation) {
        let va = op.address &+ UInt64(op.done)
        atsCounters.translationRequests &+= 1
        let u = upstream, rid = requesterID, pasid = op.pasid, write = op.write
        let issued = u.platform.scheduler.now
        let serial = nextTranslationSerial
        nextTranslationSerial &+= 1
        translationsInFlight[Self.tlbKey1(pasid), default: []].append(serial)
        link.up { [ref, link] in
            let answer = u.atsTranslate(source: rid, pasid: pasid, address: va, write: write)
            link.down { ref.target?.translationCompleted(op, va: va, answer, issued: issued, serial: serial) }
        }
    }

    private func translationCompleted(_ op: ATSOperation, va: UInt64, _ answer: ATSCompletion, issued: UInt64, serial: UInt64) {
        // In place (an emptied list keeps its storage for the PASID's next request).
        let key = Self.tlbKey1(op.pasid)
        if let at = translationsInFlight[key]?.firstIndex(of: serial) { translationsInFlight[key]?.remove(at: at) }
        // Issued before the PASID's stop completed, refused after it: the stop came too early.
        if answer == .unsupportedRequest, let p = op.pasid, let stop = stopCompletedAt[p.rawValue], serial < stop.serial {
            onAnomaly?(.requestFaultedAfterStop(pasid: p, issuedNs: issued, stoppedNs: stop.time))
        }
        defer { checkStopWaiters() }
        guard !op.finished else { return }
        switch answer {
        case .unsupportedRequest:
            finish(op, .unsupportedRequest)
        case .translated(let base, let shift, let perms) where perms.contains(op.write ? .write : .read):
            let pageInSuperpage = (va & ((UInt64(1) << UInt64(shift)) - 1)) & ~0xFFF
            deviceTLB.insert(va >> 12, Self.tlbKey1(op.pasid), DeviceTLBEntry(physical: base | pageInSuperpage, permissions: perms.rawValue))
            advance(op)
        case .translated, .noAccess:
            requestPages(op)
        }
    }

    // MARK: PRI

    /// Sends one page request group for the pages the access still needs.
    private func requestPages(_ op: ATSOperation) {
        guard priConfiguration.enabled, !priState.failed else { finish(op, .noAccess); return }
        if isStopped(op.pasid) { finish(op, .stopped); return }
        guard op.retries < priConfiguration.retryLimit else { finish(op, .retriesExhausted); return }
        let va = op.address &+ UInt64(op.done)
        let start = va & ~0xFFF
        // Bytes left from the page start (length is at most 16 MiB: no overflow, whatever the address).
        let remainingPages = (op.length - op.done + Int(va & 0xFFF) + 0xFFF) >> 12
        let pages = max(1, min(remainingPages, priConfiguration.maxPagesPerGroup, max(1, priConfiguration.credits)))
        let overCredit = priState.creditsInUse + pages > priConfiguration.credits
        guard !overCredit || misbehaviour.contains(.exceedCredits), let index = allocateGroupIndex() else {
            atsCounters.creditWaits &+= 1
            creditWaiters.append(op)
            return
        }
        priState.creditsInUse += pages
        let epoch = priState.epochs[op.pasid?.rawValue ?? .max] ?? 0
        priState.groups[index, default: []].append(OutstandingGroup(pasid: op.pasid, pages: pages, epoch: epoch, op: op))
        op.groups += 1
        atsCounters.groups &+= 1
        let u = upstream, s = platform.scheduler, spacing = priConfiguration.requestSpacingNs
        var at = s.now
        for i in 0..<pages {
            let d = PageRequestDescriptor(requester: requesterID, pasid: op.pasid, read: true, write: op.write,
                                          lastInGroup: i == pages - 1, groupIndex: index, address: start &+ UInt64(i) << 12)
            if i > 0, spacing > 0 { at &+= s.random(below: spacing + 1) }
            if at == s.now {
                sendPageRequest(d)
            } else {
                // Later requests go only while the group is still the device's: a stop
                // marker or a reset abandons the rest of it.
                s.schedule(at: at, kind: .hardware) { [ref] in
                    guard let e = ref.target, e.priState.groups[index]?.contains(where: { $0.op === op }) == true else { return }
                    e.sendPageRequest(d)
                }
            }
        }
        if misbehaviour.contains(.unsolicitedCompletions) {
            let rid = requesterID
            link.up { u.unsolicitedInvalidationCompletion(from: rid) }
        }
    }

    func sendPageRequest(_ d: PageRequestDescriptor) {
        atsCounters.pageRequests &+= 1
        let u = upstream
        link.up(pageRequest: true) { u.pageRequest(d) }
    }

    /// A free PRG index (a misbehaving device may take a busy one).
    private func allocateGroupIndex() -> UInt16? {
        if misbehaviour.contains(.reuseGroupIndices), let busy = priState.groups.keys.min() { return busy }
        if priConfiguration.lowestFreeGroupIndex {
            return (0..<UInt16(512)).first { priState.groups[$0] == nil }
        }
        for _ in 0..<512 {
            let i = priState.nextIndex
            priState.nextIndex = (i + 1) & 0x1FF
            if priState.groups[i] == nil { return i }
        }
        return nil
    }

    private func wakeCreditWaiters() {
        guard !creditWaiters.isEmpty else { return }
        let waiting = creditWaiters
        creditWaiters = []
        for op in waiting { requestPages(op) }
    }

    /// A page group response arrived from the unit.
    func pageResponseArrived(_ r: PageGroupResponse) {
        counters.pageGroupResponses &+= 1
        atsCounters.responses &+= 1
        platform.trace.record(TraceEvent(time: platform.scheduler.now, kind: .pageResponse, track: trackID,
                                              a: UInt64(r.groupIndex), b: UInt64(r.responseCode),
                                              c: r.pasid.map { UInt64($0.rawValue) } ?? .max))
        if pageGroupResponses.count < 4096 { pageGroupResponses.append(r) }
        let index = r.groupIndex & 0x1FF
        guard var list = priState.groups[index], let at = list.firstIndex(where: { $0.pasid == r.pasid }) else {
            let key = Self.groupKey(r.pasid, index)
            if let epoch = priState.abandoned.removeValue(forKey: key) {
                atsCounters.staleResponses &+= 1
                // The previous owner's answer reached a PASID that is in use again.
                if let p = r.pasid, (priState.epochs[p.rawValue] ?? 0) > epoch && !priState.stopped.contains(p.rawValue) {
                    onAnomaly?(.responseCrossedPASIDReuse(pasid: p, groupIndex: index))
                }
                return
            }
            atsCounters.unexpectedResponses &+= 1
            if misbehaviour.isEmpty { onAnomaly?(.unexpectedResponse(pasid: r.pasid, groupIndex: index)) }
            return
        }
        let g = list.remove(at: at)
        priState.groups[index] = list.isEmpty ? nil : list
        priState.creditsInUse -= g.pages
        let op = g.op
        switch PageResponseCode(rawValue: r.responseCode) {
        case .success?:
            atsCounters.successResponses &+= 1
            atsCounters.retries &+= 1
            op.retries += 1
            advance(op)
        case .invalidRequest?:
            atsCounters.invalidResponses &+= 1
            finish(op, .invalidResponse)
        case .responseFailure?, nil:
            // PCIe: Response Failure (and reserved codes) make the function stop using PRI.
            atsCounters.failureResponses &+= 1
            priState.failed = true
            finish(op, .responseFailure)
            let waiting = creditWaiters
            creditWaiters = []
            for w in waiting { finish(w, .responseFailure) }
        }
        checkStopWaiters()
        wakeCreditWaiters()
    }

    // MARK: PASID stop and start

    /// The device driver stops the device using `pasid` (before unbinding it). With a stop
    /// marker, outstanding groups of the PASID are abandoned (their credits returned) and a
    /// stop marker follows the page requests already sent. Without, the device waits until
    /// every outstanding group of the PASID is answered. Either way `completion` runs only
    /// once the PASID's translation requests issued before the stop have completed: a
    /// function reports a PASID stopped after its outstanding non-posted requests complete
    /// (PCIe PASID stop), not its page requests, which the stop marker covers.
    public func stopPASID(_ pasid: PASID, stopMarker: Bool, completion: @escaping () -> Void) {
        priState.stopped.insert(pasid.rawValue)
        let waiting = creditWaiters.filter { $0.pasid == pasid }
        creditWaiters.removeAll { $0.pasid == pasid }
        for op in waiting { finish(op, .stopped) }
        if stopMarker {
            let epoch = priState.epochs[pasid.rawValue] ?? 0
            for (index, list) in priState.groups {
                let mine = list.filter { $0.pasid == pasid }
                guard !mine.isEmpty else { continue }
                let rest = list.filter { $0.pasid != pasid }
                priState.groups[index] = rest.isEmpty ? nil : rest
                for g in mine {
                    priState.creditsInUse -= g.pages
                    priState.abandoned[Self.groupKey(pasid, index)] = epoch
                    finish(g.op, .stopped)
                }
            }
            // The marker is a PRI message: a function without PRI has none to send.
            if priConfiguration.enabled {
                atsCounters.stopMarkers &+= 1
                let d = PageRequestDescriptor(requester: requesterID, pasid: pasid, read: false, write: false,
                                              lastInGroup: true, groupIndex: 0, address: 0)
                let u = upstream
                link.up(pageRequest: true) { u.pageRequest(d) }
            }
            wakeCreditWaiters()
        }
        stopWaiters.append(StopWaiter(pasid: pasid, waitForGroups: !stopMarker, serialAtStop: nextTranslationSerial,
                                      completion: completion))
        checkStopWaiters()
    }

    func checkStopWaiters() {
        guard !stopWaiters.isEmpty else { return }
        var still: [StopWaiter] = []
        var ready: [StopWaiter] = []
        for w in stopWaiters {
            // Only requests issued before the stop count: a device that goes on using the PASID
            // (requests-after-stop) cannot hold its own stop back.
            let oldest = translationsInFlight[Self.tlbKey1(w.pasid)]?.first
            let translating = !stopIgnoresTranslations && oldest.map { $0 < w.serialAtStop } == true
            let grouped = w.waitForGroups && priState.groups.values.contains { $0.contains { $0.pasid == w.pasid } }
            if translating || grouped { still.append(w) } else { ready.append(w) }
        }
        stopWaiters = still
        for w in ready {
            stopCompletedAt[w.pasid.rawValue] = (platform.scheduler.now, nextTranslationSerial)
            w.completion()
        }
    }

    /// The device driver starts using `pasid` again (after a new bind): a new use of it.
    public func startPASID(_ pasid: PASID) {
        priState.epochs[pasid.rawValue, default: 0] += 1
        priState.stopped.remove(pasid.rawValue)
    }

    /// Function reset (FLR): the device TLB is emptied, outstanding page request groups are
    /// forgotten (a response that still arrives for one is discarded as stale while its
    /// index is unused; as on hardware, one arriving after the index was given to a new
    /// group is taken for it, so a driver quiesces the device's page requests first), credits
    /// come back, and PRI works again after a Response Failure (the failure state lasts until
    /// reset, PCIe PRI). Stopped PASIDs stay stopped until the driver starts them again; a
    /// stop waiting for its groups completes.
    public func resetATS() {
        for (index, list) in priState.groups {
            for g in list {
                priState.abandoned[Self.groupKey(g.pasid, index)] = g.pasid.flatMap { priState.epochs[$0.rawValue] } ?? 0
                finish(g.op, .stopped)
            }
        }
        for op in creditWaiters { finish(op, .stopped) }
        creditWaiters = []
        priState.groups = [:]
        priState.creditsInUse = 0
        priState.failed = false
        _ = deviceTLB.removeAll { _, _, _ in true }
        atsCounters.resets &+= 1
        checkStopWaiters()
    }

    // MARK: Device-TLB invalidation

    /// An invalidation request travels down the link, is applied, and its completion travels
    /// back up behind every page request sent before it.
    func deviceTLBInvalidationArrived(pasid: PASID?, address: UInt64, sizeBit: Bool, global: Bool, completion: @escaping () -> Void) {
        counters.deviceTLBInvalidations &+= 1
        atsCounters.deviceTLBInvalidations &+= 1
        // PCIe ATS invalidate: with S set, the number of trailing one bits from bit 12 gives
        // the size (2^(ones+1) pages); without, one page.
        var lo = address & ~0xFFF
        var hi = lo | 0xFFF
        if sizeBit {
            let ones = (~(address >> 12)).trailingZeroBitCount
            if ones >= 51 { lo = 0; hi = .max } else {
                let size = UInt64(1) << UInt64(12 + ones + 1)
                lo = address & ~(size - 1)
                hi = lo | (size - 1)
            }
        }
        invalidateDeviceTLB(pasid: pasid, lo: lo, hi: hi, global: global)
        platform.scheduler.schedule(after: upstream.deviceTLBInvalidationNs, kind: .hardware) { [link] in
            link.up { completion() }
        }
    }

    /// Drops the device-TLB entries of `pasid` (nil: those without PASID; `global` with a
    /// PASID: every PASID's) whose page is in [lo, hi].
    func invalidateDeviceTLB(pasid: PASID?, lo: UInt64, hi: UInt64, global: Bool) {
        let key = Self.tlbKey1(pasid)
        let n = deviceTLB.removeAll { key0, key1, _ in
            let a = key0 << 12
            return (key1 == key || (global && pasid != nil && key1 != Self.tlbKey1(nil))) && a >= lo && a <= hi
        }
        atsCounters.deviceTLBEntriesInvalidated &+= UInt64(n)
    }
}

extension PCIeEndpoint {
    // MARK: VTdEndpointPort

    public func receiveDeviceTLBInvalidation(pasid: PASID?, address: UInt64, sizeBit: Bool, global: Bool, completion: @escaping () -> Void) {
        link.down { [ref] in
            ref.target?.deviceTLBInvalidationArrived(pasid: pasid, address: address, sizeBit: sizeBit, global: global, completion: completion)
        }
    }

    public func receivePageGroupResponse(_ response: PageGroupResponse) {
        pageResponseArrived(response)
    }
}
