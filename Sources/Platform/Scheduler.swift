/// Who an event belongs to: hardware (devices, IOMMU units, the fabric) or software
/// (kernel work: interrupt handlers, work items, timers, scenario actions).
///
/// Only hardware events run at software yield points and inside software waits, so software
/// is never re-entered behind its own locks (design §3).
public enum EventKind: UInt8, Sendable {
    case hardware, software
}

/// Identifies a scheduled event, for cancellation.
public struct EventID: Hashable, Sendable {
    public let raw: UInt64
}

/// A place in software where a real CPU could be overtaken by a device (between clearing a
/// PTE and flushing, between writing a PASID entry and invalidating it, ...).
public struct YieldSite: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public init(_ name: String) { self.name = name }
    public var description: String { name }
}

/// How yield points behave.
public struct YieldPolicy: Equatable, Sendable {
    /// Chance that a yield point lets due hardware events run.
    public var probability: Double
    /// At a taken yield point, virtual time may advance by up to this many ns (CPU time
    /// spent), so hardware events scheduled slightly later can overtake the CPU too.
    public var maxAdvanceNs: UInt64

    public init(probability: Double, maxAdvanceNs: UInt64) {
        self.probability = probability
        self.maxAdvanceNs = maxAdvanceNs
    }

    /// Yield points do nothing.
    public static let never = YieldPolicy(probability: 0, maxAdvanceNs: 0)
}

/// Errors of waits on the scheduler.
public enum SchedulerError: Error, Equatable, Sendable {
    /// The condition did not hold before the virtual-time limit.
    case timedOut(at: UInt64)
}

/// Discrete-event scheduler in virtual time (nanoseconds).
///
/// Events run in time order; events at the same instant run in an order chosen by the
/// seeded RNG (a random tie-break key drawn when the event is scheduled). With the same
/// seed and the same calls, the order is the same, always. There is no global state: each
/// machine owns its scheduler.
public final class Scheduler: @unchecked Sendable {
    @usableFromInline struct Entry {
        var time: UInt64
        var tiebreak: UInt64
        var id: UInt64
        var action: () -> Void

        @inline(__always)
        func precedes(_ other: Entry) -> Bool {
            if time != other.time { return time < other.time }
            if tiebreak != other.tiebreak { return tiebreak < other.tiebreak }
            return id < other.id
        }
    }

    /// Current virtual time in ns.
    @exclusivity(unchecked) public private(set) var now: UInt64 = 0
    /// The seeded RNG for tie-breaks and yield decisions.
    public private(set) var rng: SeededRNG
    public let seed: UInt64
    @exclusivity(unchecked) public var yieldPolicy: YieldPolicy = .never
    /// Real-thread runs (benchmarks): a software wait also spends, as real time in the
    /// calling thread, the virtual time the hardware took to satisfy it, so modelled
    /// hardware latency costs what it would on a real machine.
    @exclusivity(unchecked) public var realTimeWaits = false
    /// Hardware work done inline in real-thread runs (no events) that the next wait must
    /// still spend as real time.
    @exclusivity(unchecked) public var realTimeDebtNs: UInt64 = 0
    /// Host-clock time before which hardware work started inline is not done (its latency
    /// counted from when it started), or 0: the next wait spins until then. A deadline
    /// rather than a debt, so the work already done inline needs no second clock read.
    @exclusivity(unchecked) public var realTimeDueNs: UInt64 = 0
    public private(set) var eventsRun: UInt64 = 0
    public private(set) var yieldsTaken: UInt64 = 0
    public private(set) var yieldCounts: [YieldSite: Int] = [:]

    private var hardwareHeap: [Entry] = []
    private var softwareHeap: [Entry] = []
    private var cancelled: Set<UInt64> = []
    private var nextID: UInt64 = 1

    /// The run's budget (`setBudget`): the scheduler has stopped running events, and the
    /// virtual time it stopped at (the clock stays there).
    public private(set) var budgetSpent = false
    public private(set) var budgetSpentAtNs: UInt64 = 0
    private var eventLimit: UInt64 = .max
    private var budgetInterval: UInt64 = .max
    private var budgetCheck: (() -> Bool)?
    /// `eventsRun` at which `runNext` next consults the budget (.max: no budget; one
    /// comparison per event).
    @exclusivity(unchecked) private var nextBudgetCheck: UInt64 = .max

    public init(seed: UInt64) {
        self.seed = seed
        self.rng = SeededRNG(seed: seed)
    }

    /// Events waiting to run (including cancelled ones not yet reaped).
    public var pendingCount: Int { hardwareHeap.count + softwareHeap.count - cancelled.count }

    /// Draws a random number from the scheduler's stream (for components without their own).
    public func random(below bound: UInt64) -> UInt64 { rng.next(below: bound) }

    // MARK: Scheduling

    /// Schedules `action` at virtual time `time` (events in the past run at `now`).
    @discardableResult
    public func schedule(at time: UInt64, kind: EventKind = .hardware, _ action: @escaping () -> Void) -> EventID {
        let id = nextID
        nextID += 1
        let entry = Entry(time: max(time, now), tiebreak: rng.next(), id: id, action: action)
        switch kind {
        case .hardware: Self.push(entry, into: &hardwareHeap)
        case .software: Self.push(entry, into: &softwareHeap)
        }
        return EventID(raw: id)
    }

    /// Schedules `action` `delay` ns from now (saturating).
    @discardableResult
    public func schedule(after delay: UInt64, kind: EventKind = .hardware, _ action: @escaping () -> Void) -> EventID {
        let (t, overflow) = now.addingReportingOverflow(delay)
        return schedule(at: overflow ? .max : t, kind: kind, action)
    }

    /// Cancels a pending event; cancelling an event that already ran does nothing.
    public func cancel(_ id: EventID) {
        if hardwareHeap.contains(where: { $0.id == id.raw }) || softwareHeap.contains(where: { $0.id == id.raw }) {
            cancelled.insert(id.raw)
        }
    }

    /// Drops every pending event without running it. Pending closures hold the objects they
    /// act on (units, links, endpoints), which hold the platform and so this scheduler: the
    /// owner of a machine calls this when it goes, or those cycles keep its memory alive.
    public func discardPending() {
        hardwareHeap = []
        softwareHeap = []
        cancelled = []
    }

    // MARK: Budget

    /// Bounds a run that might not end (a runaway scenario): at most `events` events run in
    /// all, and every `interval` events `check` (a host-clock deadline, say) is asked whether
    /// the run may go on. Once either says no the scheduler runs no event any more
    /// (`budgetSpent`): runs return, waits time out and yield points pass, so whatever was
    /// running unwinds and its owner reports the stop. Consulting the budget costs one
    /// comparison per event.
    public func setBudget(events: UInt64, checkEvery interval: UInt64, _ check: @escaping () -> Bool) {
        eventLimit = events
        budgetInterval = max(1, interval)
        budgetCheck = check
        budgetSpent = false
        nextBudgetCheck = nextCheckPoint()
    }

    /// The event count of the next budget check: an interval on, never past the limit.
    private func nextCheckPoint() -> UInt64 {
        let (next, overflow) = eventsRun.addingReportingOverflow(budgetInterval)
        return min(eventLimit, overflow ? .max : next)
    }

    /// Whether another event may run (called when `eventsRun` reached `nextBudgetCheck`).
    private func budgetAllows() -> Bool {
        guard !budgetSpent else { return false }
        guard eventsRun < eventLimit, budgetCheck?() ?? true else {
            budgetSpent = true
            budgetSpentAtNs = now
            return false
        }
        nextBudgetCheck = nextCheckPoint()
        return true
    }

    // MARK: Running

    /// Runs the earliest event (of any kind, or hardware only), if it is due by `notAfter`.
    /// Returns false when there was none.
    @discardableResult
    public func runNext(hardwareOnly: Bool = false, notAfter: UInt64 = .max) -> Bool {
        if eventsRun >= nextBudgetCheck && !budgetAllows() { return false }
        while true {
            let useHardware: Bool
            if hardwareOnly || softwareHeap.isEmpty {
                guard !hardwareHeap.isEmpty else { return false }
                useHardware = true
            } else if hardwareHeap.isEmpty {
                useHardware = false
            } else {
                useHardware = hardwareHeap[0].precedes(softwareHeap[0])
            }
            let head = useHardware ? hardwareHeap[0] : softwareHeap[0]
            guard head.time <= notAfter else { return false }
            let entry = useHardware ? Self.pop(&hardwareHeap) : Self.pop(&softwareHeap)
            if !cancelled.isEmpty, cancelled.remove(entry.id) != nil { continue }
            if entry.time > now { now = entry.time }
            eventsRun += 1
            entry.action()
            return true
        }
    }

    /// Runs events until none is left (or `maxEvents` ran). Returns how many ran.
    @discardableResult
    public func runUntilIdle(maxEvents: Int = .max) -> Int {
        var n = 0
        while n < maxEvents, runNext() { n += 1 }
        return n
    }

    /// Runs every event due at or before `time`, then sets the clock to `time`. When the clock
    /// is already past `time` (software took longer than the gap), everything due by now runs
    /// instead: an overdue event runs late, it is never starved.
    public func run(until time: UInt64) {
        let target = max(time, now)
        while runNext(notAfter: target) {}
        if time > now && !budgetSpent { now = time }
    }

    /// Advances the clock by `delay` ns, running what falls due (CPU time spent).
    public func advance(by delay: UInt64) {
        let (t, o) = now.addingReportingOverflow(delay)
        run(until: o ? .max : t)
    }

    /// Software waits for `condition`, letting only hardware run, for at most `timeoutNs`
    /// of virtual time. Throws `.timedOut` (never hangs) if it does not hold by then.
    public func wait(until condition: () -> Bool, timeoutNs: UInt64) throws(SchedulerError) {
        let (deadline, o) = now.addingReportingOverflow(timeoutNs)
        let limit = o ? UInt64.max : deadline
        let start = now
        defer {
            if realTimeWaits {
                HostClock.spin((now &- start) &+ realTimeDebtNs)
                realTimeDebtNs = 0
                spinUntilDue()
            }
        }
        while !condition() {
            guard runNext(hardwareOnly: true, notAfter: limit) else {
                if limit > now { now = limit }
                if condition() { return }
                throw .timedOut(at: now)
            }
        }
    }

    /// For a wait whose condition already holds (real-thread runs, where the hardware worked
    /// inline): spends, as real time, the hardware latency owed, as `wait` would have.
    @inline(__always)
    public func settleRealTimeDebt() {
        guard realTimeWaits else { return }
        HostClock.spin(realTimeDebtNs)
        realTimeDebtNs = 0
        spinUntilDue()
    }

    @inline(__always)
    private func spinUntilDue() {
        guard realTimeDueNs != 0 else { return }
        HostClock.spin(until: realTimeDueNs)
        realTimeDueNs = 0
    }

    /// A software yield point: the seed decides whether hardware overtakes the CPU here.
    /// When it does, up to `yieldPolicy.maxAdvanceNs` of CPU time passes and due hardware
    /// events run; software events never run here.
    public func yieldPoint(_ site: YieldSite) {
        guard yieldPolicy.probability > 0 else { return }
        guard rng.chance(yieldPolicy.probability) else { return }
        yieldsTaken += 1
        yieldCounts[site, default: 0] += 1
        let m = yieldPolicy.maxAdvanceNs
        let advanceBy = m == 0 ? 0 : m == .max ? rng.next() : rng.next(below: m + 1)
        let (t, o) = now.addingReportingOverflow(advanceBy)
        let limit = o ? UInt64.max : t
        while runNext(hardwareOnly: true, notAfter: limit) {}
        if limit > now { now = limit }
    }

    // MARK: Binary heap

    // Sift with a hole: each level moves one entry instead of swapping two, and the closure
    // in an entry is moved, never copied (no reference counting while sifting).
    private static func push(_ e: Entry, into heap: inout [Entry]) {
        heap.append(e)
        heap.withUnsafeMutableBufferPointer { h in
            var i = h.count - 1
            guard i > 0, let base = h.baseAddress else { return }
            let moving = (base + i).move()
            while i > 0 {
                let parent = (i - 1) / 2
                guard moving.precedes(base[parent]) else { break }
                (base + i).moveInitialize(from: base + parent, count: 1)
                i = parent
            }
            (base + i).initialize(to: moving)
        }
    }

    private static func pop(_ heap: inout [Entry]) -> Entry {
        let last = heap.removeLast()
        if heap.isEmpty { return last }
        return heap.withUnsafeMutableBufferPointer { h in
            guard let base = h.baseAddress else { return last }
            let top = base.move()
            let n = h.count
            var i = 0
            while true {
                let l = 2 * i + 1
                guard l < n else { break }
                let r = l + 1
                let c = r < n && base[r].precedes(base[l]) ? r : l
                guard base[c].precedes(last) else { break }
                (base + i).moveInitialize(from: base + c, count: 1)
                i = c
            }
            (base + i).initialize(to: last)
            return top
        }
    }
}
