import Testing
@testable import Platform

/// Collects what events did, for order checks (one per test; no sharing).
final class EventLog: @unchecked Sendable {
    var entries: [String] = []
    var times: [UInt64] = []
    func add(_ s: String, at t: UInt64) { entries.append(s); times.append(t) }
}

@Suite("Scheduler")
struct SchedulerTests {
    @Test("events run in time order, whatever order they were scheduled in")
    func timeOrder() {
        let s = Scheduler(seed: 1)
        let log = EventLog()
        for t in [UInt64(300), 100, 500, 200, 400] {
            s.schedule(at: t) { log.add("t\(t)", at: s.now) }
        }
        #expect(s.pendingCount == 5)
        #expect(s.runUntilIdle() == 5)
        #expect(log.entries == ["t100", "t200", "t300", "t400", "t500"])
        #expect(log.times == [100, 200, 300, 400, 500])
        #expect(s.now == 500)
        #expect(s.eventsRun == 5)
        #expect(s.pendingCount == 0)
    }

    @Test("hardware and software events interleave by time")
    func kindsInterleave() {
        let s = Scheduler(seed: 2)
        let log = EventLog()
        s.schedule(at: 30, kind: .software) { log.add("sw30", at: s.now) }
        s.schedule(at: 10, kind: .hardware) { log.add("hw10", at: s.now) }
        s.schedule(at: 20, kind: .software) { log.add("sw20", at: s.now) }
        s.schedule(at: 40, kind: .hardware) { log.add("hw40", at: s.now) }
        s.runUntilIdle()
        #expect(log.entries == ["hw10", "sw20", "sw30", "hw40"])
    }

    func sameTimeOrder(seed: UInt64, count: Int = 10) -> [Int] {
        let s = Scheduler(seed: seed)
        let log = EventLog()
        for i in 0..<count {
            s.schedule(at: 1000, kind: i % 3 == 0 ? .software : .hardware) { log.add("\(i)", at: s.now) }
        }
        s.runUntilIdle()
        return log.entries.map { Int($0)! }
    }

    @Test("same-time events run in the same order for the same seed on fresh schedulers")
    func sameTimeSameSeed() {
        for seed in [UInt64(0), 7, 99] {
            let a = sameTimeOrder(seed: seed), b = sameTimeOrder(seed: seed)
            #expect(a == b)
            #expect(a.sorted() == Array(0..<10))
        }
    }

    @Test("same-time event order depends on the seed")
    func sameTimeSeedMatters() {
        let base = sameTimeOrder(seed: 7)
        let others = (UInt64(100)..<110).map { sameTimeOrder(seed: $0) }
        #expect(others.contains { $0 != base })
        // Not simply insertion order for every seed either.
        #expect((others + [base]).contains { $0 != Array(0..<10) })
    }

    @Test("events scheduled in the past run at the current time")
    func pastEventsRunNow() {
        let s = Scheduler(seed: 3)
        s.run(until: 1000)
        var ranAt: UInt64?
        s.schedule(at: 10) { ranAt = s.now }
        s.runUntilIdle()
        #expect(ranAt == 1000)
        #expect(s.now == 1000)
    }

    @Test("schedule(after:) adds the delay to now")
    func scheduleAfter() {
        let s = Scheduler(seed: 3)
        s.run(until: 250)
        var ranAt: UInt64?
        s.schedule(after: 50) { ranAt = s.now }
        s.runUntilIdle()
        #expect(ranAt == 300)
    }

    @Test("schedule(after:) saturates at UInt64.max instead of overflowing")
    func scheduleAfterSaturates() {
        let s = Scheduler(seed: 4)
        s.run(until: 1000)
        var ranAt: UInt64?
        s.schedule(after: .max) { ranAt = s.now }
        s.schedule(after: .max - 500) { }
        s.run(until: .max - 1)
        #expect(ranAt == nil)
        #expect(s.runUntilIdle() == 2)
        #expect(ranAt == .max)
        #expect(s.now == .max)
    }

    @Test("advance(by:) saturates and runs what falls due")
    func advanceSaturates() {
        let s = Scheduler(seed: 4)
        var ran = false
        s.schedule(at: 10) { ran = true }
        s.advance(by: 5)
        #expect(!ran)
        #expect(s.now == 5)
        s.advance(by: .max)
        #expect(ran)
        #expect(s.now == .max)
    }

    @Test("a cancelled event does not run and is not pending")
    func cancelPreventsRun() {
        let s = Scheduler(seed: 5)
        var ran: [String] = []
        let a = s.schedule(at: 10) { ran.append("a") }
        s.schedule(at: 20) { ran.append("b") }
        let c = s.schedule(at: 30, kind: .software) { ran.append("c") }
        s.cancel(a)
        s.cancel(c)
        #expect(s.pendingCount == 1)
        #expect(s.runUntilIdle() == 1)
        #expect(ran == ["b"])
        #expect(s.eventsRun == 1)
        #expect(s.pendingCount == 0)
    }

    @Test("cancelling an event that already ran does nothing")
    func cancelAfterRun() {
        let s = Scheduler(seed: 5)
        var count = 0
        let a = s.schedule(at: 10) { count += 1 }
        s.runUntilIdle()
        s.cancel(a)
        #expect(s.pendingCount == 0)
        s.schedule(at: 20) { count += 1 }
        #expect(s.pendingCount == 1)
        s.runUntilIdle()
        #expect(count == 2)
    }

    @Test("runUntilIdle advances now to the last event and respects maxEvents")
    func runUntilIdle() {
        let s = Scheduler(seed: 6)
        for t in stride(from: UInt64(100), through: 1000, by: 100) { s.schedule(at: t) {} }
        #expect(s.runUntilIdle(maxEvents: 3) == 3)
        #expect(s.now == 300)
        #expect(s.runUntilIdle() == 7)
        #expect(s.now == 1000)
        #expect(s.runUntilIdle() == 0)
        #expect(s.now == 1000)
    }

    @Test("run(until:) runs only events due by then and sets now to the limit")
    func runUntil() {
        let s = Scheduler(seed: 6)
        var ran: [UInt64] = []
        for t in [UInt64(10), 20, 30, 40] { s.schedule(at: t) { ran.append(t) } }
        s.run(until: 25)
        #expect(ran == [10, 20])
        #expect(s.now == 25)
        s.run(until: 30)
        #expect(ran == [10, 20, 30])
        #expect(s.now == 30)
        s.run(until: 5)   // the clock never goes back
        #expect(s.now == 30)
        s.run(until: 1000)
        #expect(ran == [10, 20, 30, 40])
        #expect(s.now == 1000)
    }

    @Test("events scheduled by a running event run in the same pass")
    func chainedEvents() {
        let s = Scheduler(seed: 8)
        var ran: [UInt64] = []
        s.schedule(at: 10) {
            ran.append(s.now)
            s.schedule(after: 5) { ran.append(s.now) }
        }
        s.runUntilIdle()
        #expect(ran == [10, 15])
    }

    // MARK: Waits

    @Test("wait returns as soon as a hardware event makes the condition true")
    func waitReturnsOnHardware() throws {
        let s = Scheduler(seed: 9)
        var done = false
        var later = false
        s.schedule(at: 500) { done = true }
        s.schedule(at: 600) { later = true }
        try s.wait(until: { done }, timeoutNs: 10_000)
        #expect(done)
        #expect(s.now == 500)
        #expect(!later)
    }

    @Test("wait returns at once when the condition already holds")
    func waitAlreadyTrue() throws {
        let s = Scheduler(seed: 9)
        var ran = false
        s.schedule(at: 5) { ran = true }
        try s.wait(until: { true }, timeoutNs: 100)
        #expect(!ran)
        #expect(s.now == 0)
    }

    @Test("wait throws timedOut at the deadline when the condition never holds")
    func waitTimesOut() {
        let s = Scheduler(seed: 10)
        s.run(until: 100)
        var hwRan = false
        s.schedule(at: 200) { hwRan = true }
        #expect(throws: SchedulerError.timedOut(at: 1100)) { try s.wait(until: { false }, timeoutNs: 1000) }
        #expect(hwRan)
        #expect(s.now == 1100)
    }

    @Test("wait does not hang behind a hardware event that keeps rescheduling itself")
    func waitDoesNotHang() {
        let s = Scheduler(seed: 10)
        var ticks = 0
        func tick() { ticks += 1; s.schedule(after: 10) { tick() } }
        s.schedule(at: 0) { tick() }
        #expect(throws: SchedulerError.timedOut(at: 1000)) { try s.wait(until: { false }, timeoutNs: 1000) }
        #expect(ticks == 101)  // t = 0, 10, ..., 1000
    }

    @Test("wait with a timeout past UInt64.max saturates instead of overflowing")
    func waitSaturates() throws {
        let s = Scheduler(seed: 10)
        s.run(until: 50)
        var done = false
        s.schedule(at: 70) { done = true }
        try s.wait(until: { done }, timeoutNs: .max)
        #expect(s.now == 70)
    }

    @Test("wait never runs software events, even ones due before the hardware event")
    func waitSkipsSoftware() throws {
        let s = Scheduler(seed: 11)
        var softwareRan = false
        var hardwareDone = false
        s.schedule(at: 10, kind: .software) { softwareRan = true }
        s.schedule(at: 50, kind: .hardware) { hardwareDone = true }
        try s.wait(until: { hardwareDone }, timeoutNs: 1000)
        #expect(hardwareDone)
        #expect(!softwareRan)
        #expect(s.pendingCount == 1)
        s.runUntilIdle()
        #expect(softwareRan)
    }

    @Test("a condition only software could make true times out inside wait")
    func waitSoftwareConditionTimesOut() {
        let s = Scheduler(seed: 11)
        var flag = false
        s.schedule(at: 10, kind: .software) { flag = true }
        #expect(throws: SchedulerError.timedOut(at: 500)) { try s.wait(until: { flag }, timeoutNs: 500) }
        #expect(!flag)
    }

    // MARK: Yield points

    @Test("a yield point with the never policy runs nothing and takes no time")
    func yieldNever() {
        let s = Scheduler(seed: 12)
        s.yieldPolicy = .never
        var ran = false
        s.schedule(at: 0) { ran = true }
        for _ in 0..<100 { s.yieldPoint(YieldSite("test")) }
        #expect(!ran)
        #expect(s.yieldsTaken == 0)
        #expect(s.yieldCounts.isEmpty)
        #expect(s.now == 0)
    }

    @Test("a yield point with probability 1 runs due hardware events but never software events")
    func yieldAlways() {
        let s = Scheduler(seed: 13)
        s.yieldPolicy = YieldPolicy(probability: 1, maxAdvanceNs: 0)
        s.run(until: 100)
        var log: [String] = []
        s.schedule(at: 100, kind: .hardware) { log.append("hw-now") }
        s.schedule(at: 100, kind: .software) { log.append("sw-now") }
        s.schedule(at: 50, kind: .software) { log.append("sw-past") }
        s.schedule(at: 150, kind: .hardware) { log.append("hw-later") }
        let site = YieldSite("between-clear-and-flush")
        s.yieldPoint(site)
        #expect(log == ["hw-now"])
        #expect(s.yieldsTaken == 1)
        #expect(s.yieldCounts[site] == 1)
        #expect(s.now == 100)
        #expect(s.pendingCount == 3)
    }

    @Test("a taken yield point advances time by at most maxAdvanceNs and runs hardware due by then")
    func yieldAdvances() {
        let s = Scheduler(seed: 14)
        s.yieldPolicy = YieldPolicy(probability: 1, maxAdvanceNs: 1000)
        var hwAt: UInt64?
        var swRan = false
        s.schedule(at: 0, kind: .hardware) { hwAt = s.now }
        s.schedule(at: 0, kind: .software) { swRan = true }
        for _ in 0..<20 {
            let before = s.now
            s.yieldPoint(YieldSite("y"))
            #expect(s.now >= before && s.now - before <= 1000)
        }
        #expect(hwAt == 0)
        #expect(!swRan)
        #expect(s.yieldsTaken == 20)
        #expect(s.yieldCounts[YieldSite("y")] == 20)
    }

    @Test("a taken yield point with maxAdvanceNs = UInt64.max saturates instead of trapping")
    func yieldMaxAdvanceSaturates() async {
        // Run in a child process: an arithmetic-overflow trap must not take the test runner down.
        await #expect(processExitsWith: .success) {
            let s = Scheduler(seed: 15)
            s.yieldPolicy = YieldPolicy(probability: 1, maxAdvanceNs: .max)
            s.run(until: 10)
            var ran = false
            s.schedule(at: 20) { ran = true }
            s.yieldPoint(YieldSite("huge"))
            precondition(s.yieldsTaken == 1 && s.now >= 10)
            precondition(ran == (s.now >= 20))
        }
    }

    // MARK: Determinism

    /// A scenario of randomly timed hardware and software events that spawn more events and
    /// hit yield points; returns what ran, when.
    func scenario(seed: UInt64) -> [String] {
        let s = Scheduler(seed: seed)
        s.yieldPolicy = YieldPolicy(probability: 0.5, maxAdvanceNs: 200)
        let log = EventLog()
        var budget = 200
        func spawn(_ name: String) {
            guard budget > 0 else { return }
            budget -= 1
            let kind: EventKind = s.random(below: 2) == 0 ? .hardware : .software
            s.schedule(after: s.random(below: 4) * 100, kind: kind) {
                log.add("\(name)@\(s.now)", at: s.now)
                if kind == .software { s.yieldPoint(YieldSite("sw")) }
                for i in 0..<Int(s.random(below: 3)) { spawn("\(name).\(i)") }
            }
        }
        for i in 0..<8 { spawn("e\(i)") }
        s.runUntilIdle()
        return log.entries + ["yields=\(s.yieldsTaken)", "now=\(s.now)", "run=\(s.eventsRun)"]
    }

    @Test("a random scenario replayed with the same seed gives the same log")
    func scenarioReplay() {
        for seed in [UInt64(1), 2, 3] {
            let a = scenario(seed: seed)
            #expect(a == scenario(seed: seed))
            #expect(a.count > 10)
        }
    }

    @Test("a random scenario run with another seed gives a different log")
    func scenarioSeedsDiffer() {
        let a = scenario(seed: 1)
        #expect((UInt64(2)..<6).contains { scenario(seed: $0) != a })
    }

    @Test("random(below:) draws from the seeded stream")
    func randomIsSeeded() {
        let a = Scheduler(seed: 21), b = Scheduler(seed: 21)
        let xs = (0..<20).map { _ in a.random(below: 1000) }
        #expect(xs == (0..<20).map { _ in b.random(below: 1000) })
        #expect(xs.allSatisfy { $0 < 1000 })
        #expect(a.seed == 21)
    }
}

@Suite("SchedulerBudget: a budget stops a runaway: no event runs past it, the clock stays, waits time out")
struct SchedulerBudgetTests {
    /// An event that schedules itself again 10 ns later, forever.
    final class Ticker {
        var ticks = 0
        func start(_ s: Scheduler) { s.schedule(after: 10) { [self, unowned s] in ticks += 1; start(s) } }
    }

    @Test("no more than the event limit runs; then runs return, the clock stays at the stop, and waits time out")
    func eventLimit() {
        let s = Scheduler(seed: 1)
        let t = Ticker()
        t.start(s)
        s.setBudget(events: 100, checkEvery: 1_000_000) { true }
        s.run(until: 1_000_000)
        #expect(t.ticks == 100 && s.eventsRun == 100)
        #expect(s.budgetSpent && s.budgetSpentAtNs == 1_000 && s.now == 1_000)
        #expect(!s.runNext())
        #expect(throws: SchedulerError.self) { try s.wait(until: { false }, timeoutNs: 50) }
        #expect(t.ticks == 100)
    }

    @Test("the check is asked every interval events, and a no stops the scheduler")
    func checkEveryInterval() {
        let s = Scheduler(seed: 1)
        let t = Ticker()
        t.start(s)
        var asked: [UInt64] = []
        s.setBudget(events: .max, checkEvery: 64) { asked.append(s.eventsRun); return asked.count < 3 }
        s.run(until: 1_000_000)
        #expect(asked == [64, 128, 192])
        #expect(s.eventsRun == 192 && s.budgetSpent)
    }

    @Test("without a budget the scheduler runs everything due")
    func noBudget() {
        let s = Scheduler(seed: 1)
        let t = Ticker()
        t.start(s)
        s.run(until: 100_000)
        #expect(t.ticks == 10_000 && !s.budgetSpent && s.now == 100_000)
    }
}
