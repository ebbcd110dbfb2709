import Platform
import Kernel

// How a run stops before its end: a failed step of a plain run, or its budget.
extension ScenarioRunner {
    /// Why a run stopped early.
    enum Stop {
        case step(StepRecord)
        case budget(BudgetExceeded.Budget)
    }

    /// A plain run stopped at a step that failed: `file:line: step '…' failed at T ns: ERRNO: …`
    /// (`file: …` for a step of no line: probe, teardown, a ring recycle).
    public struct StepFailed: Error, CustomStringConvertible {
        public var scenario: String
        /// The scenario's file (a built-in's name with `.yaml`).
        public var file: String
        public var record: StepRecord
        /// What the run had done when it stopped (counters, log, failed steps; no teardown
        /// ran and no expectation was checked). Nil only for a value made by hand.
        public var outcome: ScenarioOutcome?
        public var description: String {
            "\(file)\(record.line > 0 ? ":\(record.line)" : ""): step '\(record.label)' failed at \(record.time) ns: \(record.error ?? "?")"
        }
    }

    /// A run stopped because it went past `machine.max-events` or `machine.max-wall-s` (a
    /// runaway scenario): the scheduler stopped running events, the run unwound and was not
    /// torn down.
    public struct BudgetExceeded: Error, CustomStringConvertible {
        public enum Budget: String, Sendable {
            case events = "max-events"
            case wall = "max-wall-s"
        }
        public var scenario: String
        public var file: String
        /// The budget's line in the file (0: its default applied).
        public var line: Int
        public var budget: Budget
        /// The budget, in words (`50000000 events`, `300.0 s of host time`).
        public var limit: String
        public var eventsRun: UInt64
        public var virtualTimeNs: UInt64
        /// What the run had done when it stopped.
        public var outcome: ScenarioOutcome?
        public var description: String {
            "\(file)\(line > 0 ? ":\(line)" : ""): run stopped after \(eventsRun) events at \(virtualTimeNs) ns of virtual time: "
                + "it went past machine.\(budget.rawValue) (\(limit)\(line > 0 ? "" : ", the default")); a scenario that needs more can raise it"
        }
    }

    /// Gives the scheduler the scenario's budget. The wall clock is read every 4096 events.
    func setBudget() {
        let machine = scenario.machine
        let begin = HostClock.now()
        let wallLimitNs = UInt64(machine.maxWallSeconds * 1e9)
        m.scheduler.setBudget(events: machine.maxEvents, checkEvery: 4096) {
            HostClock.elapsed(begin, HostClock.now()) < wallLimitNs
        }
    }

    /// Stops the run once the scheduler has spent its budget (a step, the timeline and the
    /// teardown call this where they could go on).
    func noteBudget() {
        guard abort == nil, m.scheduler.budgetSpent else { return }
        let budget: BudgetExceeded.Budget = m.scheduler.eventsRun >= scenario.machine.maxEvents ? .events : .wall
        abort = .budget(budget)
        note("run stopped: machine.\(budget.rawValue) exceeded")
    }

    /// The error a stopped run throws, carrying what it had done.
    func stopped(_ stop: Stop, outcome: ScenarioOutcome) -> any Error {
        switch stop {
        case .step(let record):
            return StepFailed(scenario: scenario.name, file: scenario.file, record: record, outcome: outcome)
        case .budget(let budget):
            let machine = scenario.machine
            return BudgetExceeded(scenario: scenario.name, file: scenario.file,
                                  line: budget == .events ? machine.maxEventsLine : machine.maxWallLine, budget: budget,
                                  limit: budget == .events ? "\(machine.maxEvents) events" : "\(machine.maxWallSeconds) s of host time",
                                  eventsRun: m.scheduler.eventsRun, virtualTimeNs: m.scheduler.budgetSpentAtNs, outcome: outcome)
        }
    }
}
