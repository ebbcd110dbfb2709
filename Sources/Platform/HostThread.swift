#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A real OS thread (benchmarks: per-thread CPU slots and device/handler pairs need real
/// threads, not a task pool).
public struct HostThread {
    private let thread: pthread_t

    /// Starts `body` on a new thread; nil if the system gives none (the body does not run).
    public static func start(_ body: @escaping () -> Void) -> HostThread? {
        final class Job {
            let run: () -> Void
            init(_ run: @escaping () -> Void) { self.run = run }
        }
        let job = Unmanaged.passRetained(Job(body)).toOpaque()
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            guard let arg else { return nil }
            Unmanaged<Job>.fromOpaque(arg).takeRetainedValue().run()
            return nil
        }, job)
        guard rc == 0 else {
            Unmanaged<Job>.fromOpaque(job).release()
            return nil
        }
        return HostThread(thread: t)
    }

    /// Waits for the thread's body to return.
    public func join() { pthread_join(thread, nil) }

    /// Lets the thread end on its own: its resources go when its body returns.
    public func detach() { pthread_detach(thread) }
}
