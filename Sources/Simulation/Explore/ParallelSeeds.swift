import Foundation
import Synchronization

/// Runs independent jobs `0..<count` on `jobs` threads and returns their results in index
/// order, so the outcome does not depend on how many threads ran them. `progress` is called
/// (from a worker, serialised) after each job with the number done.
enum ParallelJobs {
    static func map<T: Sendable>(count: Int, jobs: Int, progress: (@Sendable (Int) -> Void)? = nil,
                                 _ body: @escaping @Sendable (Int) -> T) -> [T] {
        guard count > 0 else { return [] }
        let state = Mutex<JobState<T>>(JobState(count: count))
        let workers = max(1, min(jobs, count))
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            while true {
                let i: Int? = state.withLock { s in
                    guard s.next < count else { return nil }
                    s.next += 1
                    return s.next - 1
                }
                guard let i else { return }
                let r = body(i)
                state.withLock { s in
                    s.results[i] = r
                    s.done += 1
                    progress?(s.done)
                }
            }
        }
        // Every index ran exactly once (the workers stop only when `next` reached `count`).
        return state.withLock { s in s.results.compactMap { $0 } }
    }
}

/// Shared state of a `ParallelJobs.map` (guarded by its mutex).
final class JobState<T>: @unchecked Sendable {
    var next = 0
    var done = 0
    var results: [T?]
    init(count: Int) { results = [T?](repeating: nil, count: count) }
}
