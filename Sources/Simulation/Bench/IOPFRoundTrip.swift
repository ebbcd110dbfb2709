#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CIOMMUSupport
import Platform
import Formats

/// The IO page-fault round trip on two real threads (`iommu-sim bench iopf`), over the real
/// in-memory formats:
///
/// - the **device thread** plays the endpoint and the unit's page-request side: it writes
///   page request descriptors (VT-d §7.4.1, the prq.c layout) into a 2048-entry page request
///   queue in physical memory, advances the tail register and raises the page request event
///   when the handler waits for it; then it waits for the page group response, decodes it
///   (invalidation-queue type 9) and retries the translation: a first-stage walk of every
///   page of the group, which must now succeed with write access;
/// - the **handler thread** plays the PRQ interrupt thread and the SVA fault handler: it
///   consumes descriptors from head to tail, keeps partial requests until the
///   group's LAST, makes every page resident in the process's x86-64 page table and writes
///   one SUCCESS page group response per group.
///
/// With `blocking` hand-off the handler sleeps (futex) until the event, as an interrupt
/// thread does; with `polling` it spins. The device always spins: it is hardware waiting for
/// a PCIe message. The device keeps at most `credits` page requests outstanding (the PRI
/// outstanding page request allocation): with credits equal to the group size one group is
/// in flight at a time and the latency is the bare round trip; with more, groups pipeline
/// as a real device's do. Nothing allocates per fault; page-table pages are allocated as
/// the table grows, as in the kernel.
public final class IOPFRoundTrip: @unchecked Sendable {
    public enum HandOff: String, CaseIterable, Sendable { case blocking, polling }

    public struct Result: Sendable {
        public var handOff: HandOff
        public var groupSize: Int
        public var groups: Int
        public var credits: Int
        /// Round-trip latency per group, ns (request written → retried translations done).
        public var p50Ns: Double
        public var p99Ns: Double
        public var meanNs: Double
        public var elapsedNs: UInt64
        /// Groups whose response or retry was wrong (must be 0).
        public var errors: Int
        /// Times the handler went to sleep (blocking hand-off).
        public var sleeps: Int
        public var faults: Int { groups * groupSize }
        public var faultsPerSecond: Double { elapsedNs == 0 ? 0 : Double(faults) * 1e9 / Double(elapsedNs) }
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    static let prqEntries: UInt64 = 2048
    static let responseEntries: UInt64 = 256
    static let pool = 64

    let memory: PhysicalMemory
    let frames: FrameAllocator
    let prqBase: UInt64
    let responseBase: UInt64
    /// Shared words, each on its own cache line: PQT, PQH, response tail and head, handler
    /// errors, the event count, the handler's armed (sleeping) flag and the stop flag.
    let shared: UnsafeMutableRawPointer
    let dataFrames: [UInt64]
    let requester = RequesterID(bus: 0, device: 6, function: 0)
    let pasid = PASID(truncating: 1)

    public init(memory: PhysicalMemory, frames: FrameAllocator) throws {
        self.memory = memory
        self.frames = frames
        do {
            prqBase = try frames.allocateContiguous(Int(Self.prqEntries * PageRequestDescriptor.size / 4096), .queue)
            responseBase = try frames.allocate(.queue)
            try memory.zero(prqBase, count: Self.prqEntries * PageRequestDescriptor.size)
            try memory.zero(responseBase, count: 4096)
            var pool: [UInt64] = []
            for _ in 0..<Self.pool { pool.append(try frames.allocate(.dmaBuffer)) }
            dataFrames = pool
        } catch { throw Failure(description: "memory for the queues: \(error)") }
        shared = UnsafeMutableRawPointer.allocate(byteCount: 8 * 64, alignment: 64)
        shared.initializeMemory(as: UInt8.self, repeating: 0, count: 8 * 64)
    }

    deinit {
        shared.deallocate()
        try? frames.free(responseBase)
        for f in dataFrames { try? frames.free(f) }
        for i in 0..<Int(Self.prqEntries * PageRequestDescriptor.size / 4096) { try? frames.free(prqBase + UInt64(i) * 4096) }
    }

    private var prqTail: UnsafeMutableRawPointer { shared }
    private var prqHead: UnsafeMutableRawPointer { shared + 64 }
    private var responseTail: UnsafeMutableRawPointer { shared + 128 }
    private var responseHead: UnsafeMutableRawPointer { shared + 192 }
    private var handlerErrors: UnsafeMutableRawPointer { shared + 256 }
    private var events: UnsafeMutablePointer<UInt32> { (shared + 320).assumingMemoryBound(to: UInt32.self) }
    private var sleeping: UnsafeMutableRawPointer { shared + 384 }
    private var stopFlag: UnsafeMutableRawPointer { shared + 448 }

    /// Runs `groups` round trips of `groupSize` pages each, at most `credits` pages
    /// outstanding (default: one group), and returns their latencies.
    /// `gapNs`: the device works that long between the end of a round trip and its next
    /// request (time enough for a blocking handler to fall asleep).
    public func run(handOff: HandOff, groups: Int, groupSize: Int, credits: Int? = nil, gapNs: UInt64 = 0) throws -> Result {
        let credits = credits ?? groupSize
        guard groups > 0, (1...512).contains(groupSize), credits >= groupSize, credits / groupSize <= 256 else {
            throw Failure(description: "groups > 0, 1...512 pages per group, credits for one to 256 groups")
        }
        for i in 0..<8 { (shared + i * 64).storeBytes(of: 0, as: UInt64.self) }
        let table: IOPageTable<FirstStageFormat>
        do { table = try IOPageTable(memory: memory, frames: frames, levels: 4, maxLeafLevel: 1) } catch {
            throw Failure(description: "page table: \(error)")
        }
        defer {
            var gather = UnmapGather()
            table.destroy(into: &gather)
            for t in gather.freedTables { try? frames.free(t) }
        }
        let latencies = UnsafeMutablePointer<UInt64>.allocate(capacity: groups)
        defer { latencies.deallocate() }
        let outcome = UnsafeMutablePointer<Int>.allocate(capacity: 4) // errors, sleeps, handler errors, elapsed
        outcome.initialize(repeating: 0, count: 4)
        defer { outcome.deallocate() }
        let root = table.root
        try runPair(
            device: { [self] in
                let start = Self.now()
                outcome[0] = self.device(groups: groups, groupSize: groupSize, credits: credits, gapNs: gapNs, root: root, latencies: latencies)
                outcome[3] = Int(Self.now() &- start)
                ciommu_store32(self.stopFlag, 1)
                ciommu_fetch_add32(self.events, 1)
                ciommu_futex_wake(self.events)
            },
            handler: { [self] in
                let (sleeps, errors) = self.handler(table: table, blocking: handOff == .blocking)
                outcome[1] = sleeps
                outcome[2] = errors
            })
        var sorted = [UInt64](UnsafeBufferPointer(start: latencies, count: groups))
        sorted.sort()
        let total = sorted.reduce(0.0) { $0 + Double($1) }
        return Result(handOff: handOff, groupSize: groupSize, groups: groups, credits: credits,
                      p50Ns: Double(sorted[sorted.count / 2]), p99Ns: Double(sorted[min(sorted.count - 1, sorted.count * 99 / 100)]),
                      meanNs: total / Double(groups), elapsedNs: UInt64(outcome[3]), errors: outcome[0] + outcome[2], sleeps: outcome[1])
    }

    @inline(__always) static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    // MARK: Device side

    /// Returns the number of groups that went wrong.
    private func device(groups: Int, groupSize: Int, credits: Int, gapNs: UInt64, root: UInt64, latencies: UnsafeMutablePointer<UInt64>) -> Int {
        let size = Self.prqEntries * PageRequestDescriptor.size
        let mask = PageTableGeometry.addressMask(width: 52)
        var tail: UInt64 = 0
        var responseHeadValue: UInt64 = 0
        var errors = 0
        let base: UInt64 = 0x10_0000_0000
        // Start times of the groups in flight, by group number modulo 256.
        let startTimes = UnsafeMutablePointer<UInt64>.allocate(capacity: 256)
        defer { startTimes.deallocate() }
        var sent = 0, done = 0, inFlight = 0
        var spins = 0, lastProgress = Self.now()
        while done < groups {
            if sent < groups && inFlight + groupSize <= credits {
                if gapNs > 0 {
                    let until = lastProgress &+ gapNs
                    while Self.now() < until { ciommu_cpu_relax() }
                }
                let k = sent
                startTimes[k & 255] = Self.now()
                let first = base &+ UInt64(k * groupSize) << 12
                let index = UInt16(k & 0x1FF)
                for j in 0..<groupSize {
                    // One slot always stays empty: wait while the queue is full.
                    while (tail + PageRequestDescriptor.size) % size == ciommu_load64(prqHead) { ciommu_cpu_relax() }
                    let d = PageRequestDescriptor(requester: requester, pasid: pasid, read: true, write: true,
                                                  lastInGroup: j == groupSize - 1, groupIndex: index, address: first &+ UInt64(j) << 12)
                    let raw = d.encode()
                    let at = prqBase + tail
                    do {
                        try memory.deviceStore(at, raw.qw0)
                        try memory.deviceStore(at + 8, raw.qw1)
                        try memory.deviceStore(at + 16, raw.qw2)
                        try memory.deviceStore(at + 24, raw.qw3)
                    } catch { errors += 1 }
                    tail = (tail + PageRequestDescriptor.size) % size
                    ciommu_store64(prqTail, tail)
                    // The page request event: wakes the handler if it went to sleep. The tail
                    // is published first; a handler arming its sleep re-checks the tail after
                    // arming (a store, then a load on both sides: one sees the other).
                    if ciommu_exchange32(sleeping, 0) != 0 {
                        ciommu_fetch_add32(events, 1)
                        ciommu_futex_wake(events)
                    }
                }
                sent += 1
                inFlight += groupSize
                continue
            }
            // The next page group response (the handler answers groups in order).
            guard ciommu_load64(responseTail) != responseHeadValue else {
                spins += 1
                if spins & 0xFFFFF == 0 && Self.now() - lastProgress > 10_000_000_000 {
                    writeToStandardError("iopf: no response for 10 s: sent \(sent) done \(done) tail \(tail) head \(ciommu_load64(prqHead)) responses \(ciommu_load64(responseTail)) sleeping \(ciommu_load32(sleeping)) events \(ciommu_load32(events)) handlerErrors \(ciommu_load64(handlerErrors))")
                    return errors + groups - done
                }
                ciommu_cpu_relax(); continue
            }
            lastProgress = Self.now()
            let k = done
            let first = base &+ UInt64(k * groupSize) << 12
            let slot = responseBase + (responseHeadValue % Self.responseEntries) * 16
            var ok = false
            if let q0 = try? memory.deviceLoad(slot, as: UInt64.self), let q1 = try? memory.deviceLoad(slot + 8, as: UInt64.self),
               case .success(.pageGroupResponse(let r)) = InvalidationDescriptor.decode(RawDescriptor(q0, q1), wide: false) {
                ok = r.groupIndex == UInt16(k & 0x1FF) && r.responseCode == PageResponseCode.success.rawValue && r.pasid == pasid
            }
            responseHeadValue += 1
            ciommu_store64(responseHead, responseHeadValue)
            // Retry: the translation of every page of the group now succeeds.
            for j in 0..<groupSize {
                let va = first &+ UInt64(j) << 12
                do {
                    let w = try PageTableWalker.walk(FirstStageFormat.self, memory: memory, root: root, levels: 4, input: va,
                                                     addressMask: mask, maxLeafLevel: 1)
                    if !w.permissions.contains(.write) { ok = false }
                } catch { ok = false }
            }
            if !ok { errors += 1 }
            latencies[k] = Self.now() &- startTimes[k & 255]
            done += 1
            inFlight -= groupSize
        }
        return errors
    }

    // MARK: Handler side

    /// Returns (times it slept, requests that went wrong).
    private func handler(table: IOPageTable<FirstStageFormat>, blocking: Bool) -> (Int, Int) {
        let size = Self.prqEntries * PageRequestDescriptor.size
        var head: UInt64 = 0
        var responseTailValue: UInt64 = 0
        var sleeps = 0, errors = 0
        var partial = 0
        var next = 0
        let pool = dataFrames
        let perms: PagePermissions = [.read, .write, .user]
        while true {
            let tail = ciommu_load64(prqTail)
            if tail == head {
                if ciommu_load32(stopFlag) != 0 { break }
                if !blocking { ciommu_cpu_relax(); continue }
                // Arm the event, then re-check: a request published before the arming is
                // seen here; one published after finds the handler armed and wakes it.
                let seen = ciommu_load32(events)
                ciommu_store32(sleeping, 1)
                if ciommu_load64(prqTail) == head && ciommu_load32(stopFlag) == 0 {
                    sleeps += 1
                    ciommu_futex_wait(events, seen)
                }
                ciommu_store32(sleeping, 0)
                continue
            }
            while head != tail {
                let at = prqBase + head
                var decoded: PageRequestDescriptor?
                if let q0 = try? memory.load64(at), let q1 = try? memory.load64(at + 8), let q2 = try? memory.load64(at + 16),
                   let q3 = try? memory.load64(at + 24), case .success(let d) = PageRequestDescriptor.decode(RawDescriptor(q0, q1, q2, q3)) {
                    decoded = d
                }
                head = (head + PageRequestDescriptor.size) % size
                ciommu_store64(prqHead, head)
                guard let d = decoded else { errors += 1; ciommu_store64(handlerErrors, UInt64(errors)); continue }
                // The SVA handler makes the page resident (handle_mm_fault).
                do {
                    try table.map(iova: d.address & ~0xFFF, physical: pool[next], size: 4096, permissions: perms)
                } catch { errors += 1 }
                next = next + 1 == pool.count ? 0 : next + 1
                partial += 1
                guard d.lastInGroup else { continue }
                partial = 0
                // One page group response per group, through the invalidation queue.
                while responseTailValue - ciommu_load64(responseHead) >= Self.responseEntries { ciommu_cpu_relax() }
                let raw = InvalidationDescriptor.pageGroupResponse(
                    PageGroupResponse(requester: d.requester, pasid: d.pasid, responseCode: PageResponseCode.success.rawValue,
                                      groupIndex: d.groupIndex)).encode()
                let slot = responseBase + (responseTailValue % Self.responseEntries) * 16
                do {
                    try memory.store64(slot, raw.qw0)
                    try memory.store64(slot + 8, raw.qw1)
                } catch { errors += 1 }
                responseTailValue += 1
                ciommu_store64(responseTail, responseTailValue)
            }
        }
        return (sleeps, errors + partial)
    }

    /// The platform's floor for a blocking hand-off: the median time from waking a thread
    /// asleep on a futex (after `gapNs` of quiet) until it has answered through a spun-on
    /// word — the hand-off cost a blocking round trip cannot go below.
    public func wakeLatencyNs(iterations: Int = 2000, gapNs: UInt64) throws -> Double {
        guard iterations > 0 else { throw Failure(description: "iterations > 0") }
        let words = UnsafeMutablePointer<UInt32>.allocate(capacity: 32)
        words.initialize(repeating: 0, count: 32)
        defer { words.deallocate() }
        let ping = words, pong = words + 16
        let samples = UnsafeMutablePointer<UInt64>.allocate(capacity: iterations)
        defer { samples.deallocate() }
        func waitChange(_ w: UnsafeMutablePointer<UInt32>, from v: UInt32) {
            while ciommu_load32(w) == v { ciommu_futex_wait(w, v) }
        }
        try runPair(
            device: {
                for i in 0..<iterations {
                    let quiet = Self.now() &+ gapNs
                    while Self.now() < quiet { ciommu_cpu_relax() }
                    let seen = ciommu_load32(pong)
                    let t0 = Self.now()
                    ciommu_fetch_add32(ping, 1)
                    ciommu_futex_wake(ping)
                    while ciommu_load32(pong) == seen { ciommu_cpu_relax() }
                    samples[i] = Self.now() &- t0
                }
            },
            handler: {
                for i in 0..<iterations {
                    waitChange(ping, from: UInt32(truncatingIfNeeded: i))
                    ciommu_fetch_add32(pong, 1)
                }
            })
        var v = [UInt64](UnsafeBufferPointer(start: samples, count: iterations))
        v.sort()
        return Double(v[v.count / 2])
    }

    /// Runs `handler` on a thread of its own and `device` on the calling thread, and waits
    /// for both. No thread, no run: an error.
    private func runPair(device: () -> Void, handler: @escaping () -> Void) throws {
        guard let thread = HostThread.start(handler) else { throw Failure(description: "no handler thread (pthread_create failed)") }
        device()
        thread.join()
    }
}

/// A line on standard error (the watchdog's diagnosis).
func writeToStandardError(_ s: String) {
    var bytes = Array((s + "\n").utf8)
    _ = write(2, &bytes, bytes.count)
}
