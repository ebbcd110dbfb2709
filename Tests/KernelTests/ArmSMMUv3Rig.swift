import Testing
import Platform
import Formats
import Hardware
@testable import Kernel

/// A core with the SMMUv3 driver over one emulated unit. PCIe endpoints are not connected
/// to SMMUv3 yet, so DMA is the unit's `translate` called with the device's StreamID; fake
/// endpoints (`addEndpoint`) take ATC invalidations and PRG responses.
final class ArmSMMUv3Rig {
    let platform: PlatformContext
    let unit: SMMUv3Unit
    let driver: ArmSMMUv3Driver
    let core: IOMMUCore
    var smmu: ArmSMMUDevice { driver.units[0] }
    /// Fake endpoints by StreamID (`addEndpoint`), and the STE in force at each ATS Enable
    /// change the driver made (device name, on, STE).
    var endpoints: [UInt32: FakeSMMUEndpoint] = [:]
    var atsControlSTEs: [(String, Bool, StreamTableEntry)] = []

    init(features: SMMUv3Features = SMMUv3Features(), policy: DMAPolicy = .strict, trace: Bool = false,
         preferred: ArmSMMUStage? = nil) throws {
        platform = try PlatformContext(memorySize: 64 << 20, seed: 1)
        platform.trace.enabled = trace
        unit = SMMUv3Unit(configuration: SMMUv3Configuration(features: features), platform: platform)
        driver = try ArmSMMUv3Driver(platform: platform, hardware: [unit])
        driver.preferredStage = preferred
        core = IOMMUCore(platform: platform, policy: policy)
        core.register(driver)
    }

    static func rid(_ bus: UInt8, _ dev: UInt8, _ fn: UInt8 = 0) -> RequesterID { RequesterID(bus: bus, device: dev, function: fn) }

    @discardableResult
    func add(_ name: String, bus: UInt8 = 0, dev: UInt8, fn: UInt8 = 0) throws -> Device {
        try core.probe([DeviceDescription(name: name, requesterID: Self.rid(bus, dev, fn))], driver: driver)[0]
    }

    /// An unmanaged domain attached to `device`'s group (which a user now owns).
    func ownedDomain(for device: Device) throws -> IOMMUDomain {
        let g = try #require(device.group)
        if !g.dmaOwned { try core.claimDMAOwner(g) }
        let d = try core.allocDomain(for: device)
        try core.attach(d, to: g)
        return d
    }

    func buffer() throws -> UInt64 { try platform.frames.allocate(.dmaBuffer) }

    func sid(_ device: Device) -> UInt32 { UInt32(device.requesterID.rawValue) }

    func translate(_ device: Device, _ address: UInt64, _ access: DMAAccess = .read) -> SMMUv3TranslationResult {
        unit.translate(streamID: sid(device), address: address, access: access)
    }

    func physical(_ device: Device, _ address: UInt64, _ access: DMAAccess = .read) -> UInt64? {
        if case .translated(let pa, _, _) = translate(device, address, access) { return pa }
        return nil
    }

    func fault(_ device: Device, _ address: UInt64, _ access: DMAAccess = .read) -> SMMUEventID? {
        if case .terminated(let e) = translate(device, address, access) { return e }
        return nil
    }

    /// Runs every pending event, software included (interrupt handlers).
    func settle() { _ = platform.scheduler.runUntilIdle() }

    func commands(_ op: SMMUCommandOpcode) -> UInt64 { unit.counters.commandsByOpcode[Int(op.rawValue)] }
}
