import Testing
import Platform
import Formats
import Hardware
@testable import Kernel

/// A PCIe function as the SMMUv3 unit sees it, for driver tests: it records the ATC
/// invalidations and PRG responses it receives (with the virtual time), completes each
/// invalidation after `completionDelayNs`, and keeps a shared log with the driver's ATS
/// Enable changes so tests can check their order.
final class FakeSMMUEndpoint: SMMUv3EndpointPort {
    struct ATCInvalidation: Equatable {
        var ssid: UInt32?
        var global: Bool
        var address: UInt64
        var size: UInt8
        var time: UInt64
        /// Bytes covered (size 52: everything).
        var bytes: UInt64 { size >= 52 ? .max : 4096 << UInt64(size) }
        func covers(_ address: UInt64, _ length: UInt64) -> Bool {
            bytes == .max || (self.address <= address && address + length <= self.address + bytes)
        }
    }
    struct PRIResponse: Equatable {
        var ssid: UInt32?
        var groupIndex: UInt16
        var response: PageResponseCode
    }

    let streamID: UInt32
    let scheduler: Scheduler
    var smmuLink: PCIeLink? { nil }
    var completionDelayNs: UInt64 = 0
    private(set) var invalidations: [ATCInvalidation] = []
    private(set) var completedAt: [UInt64] = []
    private(set) var responses: [PRIResponse] = []
    /// "atc-inv", "ats-on", "ats-off" in arrival order.
    var log: [String] = []
    /// Called when an invalidation arrives (before its completion is sent).
    var onInvalidation: ((ATCInvalidation) -> Void)?

    init(streamID: UInt32, scheduler: Scheduler) { self.streamID = streamID; self.scheduler = scheduler }

    func receiveATCInvalidation(ssid: UInt32?, global: Bool, address: UInt64, size: UInt8, completion: @escaping () -> Void) {
        let inv = ATCInvalidation(ssid: ssid, global: global, address: address, size: size, time: scheduler.now)
        invalidations.append(inv)
        log.append("atc-inv")
        onInvalidation?(inv)
        if completionDelayNs == 0 {
            completedAt.append(scheduler.now)
            completion()
        } else {
            scheduler.schedule(after: completionDelayNs, kind: .hardware) { [weak self] in
                self?.completedAt.append(self?.scheduler.now ?? 0)
                completion()
            }
        }
    }

    func receivePRIResponse(ssid: UInt32?, groupIndex: UInt16, response: PageResponseCode) {
        responses.append(PRIResponse(ssid: ssid, groupIndex: groupIndex, response: response))
    }

    func clear() { invalidations = []; completedAt = []; responses = []; log = [] }
}

extension ArmSMMUv3Rig {
    /// Probes a device (after connecting a fake endpoint for its StreamID) with the given
    /// capabilities; the endpoint's log also records the driver's ATS Enable changes.
    func addEndpoint(_ name: String, dev: UInt8, pasids: UInt32 = 0, ats: Bool = false, pri: Bool = false,
                     canStall: Bool = false) throws -> (Device, FakeSMMUEndpoint) {
        let rid = Self.rid(0, dev)
        let ep = FakeSMMUEndpoint(streamID: UInt32(rid.rawValue), scheduler: platform.scheduler)
        unit.connect(ep)
        endpoints[UInt32(rid.rawValue)] = ep
        if driver.onDeviceATSControl == nil {
            driver.onDeviceATSControl = { [unowned self] device, on in
                self.endpoints[UInt32(device.requesterID.rawValue)]?.log.append(on ? "ats-on" : "ats-off")
                self.atsControlSTEs.append((device.name, on, StreamTableEntry(words: (device.driverData as? ArmSMMUMaster)?.ste ?? [])))
            }
        }
        let d = try core.probe([DeviceDescription(name: name, requesterID: rid, maxPASIDs: pasids, ats: ats, pri: pri,
                                                  canStall: canStall)], driver: driver)[0]
        return (d, ep)
    }

    static func master(_ device: Device) throws -> ArmSMMUMaster { try #require(device.driverData as? ArmSMMUMaster) }
    static func ste(_ device: Device) throws -> StreamTableEntry { StreamTableEntry(words: try master(device).ste) }
}
