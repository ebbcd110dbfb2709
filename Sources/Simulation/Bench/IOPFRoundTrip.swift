import Platform
import Formats
import Hardware
import Kernel

/// The IO page-fault round trip on the system's own path (targets T11, and with the fault
/// object T15): an ATS device bound to a process (SVA) touches pages not yet resident; the
/// device sends a page request group; the emulated unit queues it in its page request queue
/// and interrupts; the VT-d driver's PRQ handler reports it to the core; the core's IOPF
/// pipeline builds the group and hands it to the SVA handler, which faults the pages in and
/// answers; the response goes back through the unit's invalidation queue to the device,
/// which retries its translation and completes. Everything runs in the simulator's one
/// thread (the pipeline's hand-off is a work queue run by the scheduler), so the figures
/// are host time per round trip through all of it, without the oracle.
public final class IOPFRoundTrip {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public struct Result: Sendable {
        /// Pages faulted and groups answered.
        public var faults: Int
        public var groups: Int
        /// Per group: request to completion of the access, host ns.
        public var p50Ns: Double
        public var p99Ns: Double
        public var faultsPerSecond: Double
        /// Accesses that did not complete (none expected).
        public var errors: Int
    }

    let machine: Machine
    let process: Process
    let endpoint: PCIeEndpoint
    let pasid: PASID

    /// A machine with one VT-d unit and one ATS/PRI/PASID device bound to a process.
    public init(memorySize: UInt64 = 512 << 20, maxPagesPerGroup: Int = 512) throws {
        do {
            machine = try Machine(seed: 1, memorySize: memorySize, units: [VTdConfiguration(name: "dmar0")], policy: .strict)
            machine.detachOracle()
            let desc = DeviceDescription(name: "accel", requesterID: RequesterID(bus: 0, device: 4, function: 0), maxPASIDs: 1 << 8,
                                         ats: true, pri: true)
            let (dev, ep) = try machine.addDevices([desc], pri: [PRIConfiguration(credits: 512, maxPagesPerGroup: maxPagesPerGroup,
                                                                                  requestSpacingNs: 0)])[0]
            endpoint = ep
            process = try machine.core.createProcess()
            let bind = try machine.core.svaBind(dev, to: process)
            pasid = bind.pasid
            ep.startPASID(bind.pasid)
        } catch { throw Failure(description: "setup: \(error)") }
    }

    /// `groups` accesses of `groupSize` fresh pages each (one page request group each), at
    /// most `outstanding` in flight; each round maps a fresh region and unmaps it after.
    public func run(groups: Int, groupSize: Int, outstanding: Int = 1) throws -> Result {
        guard groups > 0, (1...512).contains(groupSize), outstanding > 0, groups * groupSize <= 1 << 20 else {
            throw Failure(description: "groups \(groups), group size \(groupSize) (1...512), outstanding \(outstanding)")
        }
        let pages = groups * groupSize
        let region: UInt64
        do { region = try process.mmap(length: UInt64(pages) << 12, permissions: .readWrite) } catch {
            throw Failure(description: "mmap: \(error)")
        }
        defer { try? process.munmap(address: region, length: UInt64(pages) << 12) }
        let scheduler = machine.scheduler
        var latencies = [UInt64](repeating: 0, count: groups)
        var errors = 0, finished = 0, issued = 0, inFlight = 0
        let start = HostClock.now()
        while finished < groups {
            while inFlight < outstanding && issued < groups {
                let i = issued
                let begin = HostClock.now()
                endpoint.atsAccess(pasid: pasid, address: region + UInt64(i * groupSize) << 12, length: groupSize << 12, write: true) { r in
                    latencies[i] = HostClock.elapsed(begin, HostClock.now())
                    if r.outcome != .completed { errors += 1 }
                    finished += 1
                    inFlight -= 1
                }
                issued += 1
                inFlight += 1
            }
            guard scheduler.runNext() else { break }
        }
        let elapsed = HostClock.elapsed(start, HostClock.now())
        if finished < groups { errors += groups - finished }
        latencies.sort()
        return Result(faults: pages, groups: groups, p50Ns: Double(latencies[groups / 2]),
                      p99Ns: Double(latencies[min(groups - 1, groups * 99 / 100)]),
                      faultsPerSecond: elapsed == 0 ? 0 : Double(pages) * 1e9 / Double(elapsed), errors: errors)
    }
}
