import Platform
import Synchronization

/// Runs independent jobs `0..<count` on `jobs` threads.
enum ParallelJobs {
    /// Runs every job and hands each result to `consume` (serialised, in completion order,
    /// with the number of jobs done so far) as soon as it is ready, keeping nothing: memory
    /// stays flat however many jobs run. `consume` must not depend on the order it is called
    /// in if the outcome is to be independent of the number of threads.
    static func forEach<T>(count: Int, jobs: Int, _ body: @escaping @Sendable (Int) -> T,
                           consume: (_ index: Int, _ result: T, _ done: Int) -> Void) {
        guard count > 0 else { return }
        withoutActuallyEscaping(consume) { consume in
            let state = Mutex<JobState>(JobState())
            let sink = UncheckedBox(consume)
            let worker: @Sendable () -> Void = {
                while true {
                    let i: Int? = state.withLock { s in
                        guard s.next < count else { return nil }
                        s.next += 1
                        return s.next - 1
                    }
                    guard let i else { return }
                    let r = UncheckedBox(body(i))
                    state.withLock { s in
                        s.done += 1
                        sink.value(i, r.value, s.done)
                    }
                }
            }
            // Own threads, not Dispatch's pool: runs last seconds to hours and would starve
            // everything else the process schedules there (timers, other work). The calling
            // thread is one of the workers; if the system gives no more threads it does all.
            let threads = (1..<max(1, min(jobs, count))).compactMap { _ in HostThread.start(worker) }
            worker()
            for t in threads { t.join() }
        }
    }

    /// Runs every job and returns the results in index order, so the outcome does not depend
    /// on how many threads ran them. `progress` is called (serialised) after each job.
    static func map<T: Sendable>(count: Int, jobs: Int, progress: (@Sendable (Int) -> Void)? = nil,
                                 _ body: @escaping @Sendable (Int) -> T) -> [T] {
        var results = [T?](repeating: nil, count: count)
        forEach(count: count, jobs: jobs, body) { i, r, done in
            results[i] = r
            progress?(done)
        }
        // Every index ran exactly once (the workers stop only when `next` reached `count`).
        return results.compactMap { $0 }
    }
}

/// Shared state of a `ParallelJobs` run (guarded by its mutex).
struct JobState: Sendable {
    var next = 0
    var done = 0
}

/// Carries a value across the workers; every use is serialised by the jobs' mutex.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
