import Platform
import Formats
import Hardware

/// A device's DMA workload: every `intervalNs` (hardware time: the device runs on its own)
/// it picks one of the buffers its driver gave it and reads or writes part of it. The
/// driver changes the target list as it maps and unmaps, as real drivers post buffers.
public final class TrafficStream: @unchecked Sendable {
    public struct Target: Equatable, Sendable {
        public var address: UInt64
        public var length: UInt64
        /// Only writes (a receive buffer mapped from-device).
        public var writeOnly: Bool
        public init(address: UInt64, length: UInt64, write writeOnly: Bool = false) {
            self.address = address; self.length = length; self.writeOnly = writeOnly
        }
    }

    public let endpoint: PCIeEndpoint
    public let pasid: PASID?
    public var targets: [Target] = []
    public var intervalNs: UInt64
    public private(set) var running = false
    public private(set) var issued: UInt64 = 0
    let scheduler: Scheduler

    public init(endpoint: PCIeEndpoint, pasid: PASID? = nil, intervalNs: UInt64, scheduler: Scheduler) {
        self.endpoint = endpoint; self.pasid = pasid; self.intervalNs = intervalNs; self.scheduler = scheduler
    }

    public func start() {
        guard !running else { return }
        running = true
        scheduler.schedule(after: scheduler.random(below: intervalNs) + 1, kind: .hardware) { [weak self] in self?.tick() }
    }

    public func stop() { running = false }

    private func tick() {
        guard running else { return }
        if !targets.isEmpty {
            let t = targets[Int(scheduler.random(below: UInt64(targets.count)))]
            let length = min(t.length, 256 << scheduler.random(below: 5))
            let offset = t.length > length ? scheduler.random(below: (t.length - length) / 64 + 1) * 64 : 0
            issued += 1
            if scheduler.random(below: 2) == 0 || t.writeOnly {
                let byte = UInt8(truncatingIfNeeded: issued)
                endpoint.submit(.write(t.address + offset, [UInt8](repeating: byte, count: Int(length)), pasid: pasid))
            } else {
                endpoint.submit(.read(t.address + offset, length: Int(length), pasid: pasid))
            }
        }
        scheduler.schedule(after: intervalNs / 2 + scheduler.random(below: intervalNs), kind: .hardware) { [weak self] in self?.tick() }
    }
}
