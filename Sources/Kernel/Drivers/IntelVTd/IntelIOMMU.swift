import Platform
import Formats
import Hardware

/// Per-device state of the VT-d driver (Linux `struct device_domain_info`): where its
/// context entry and PASID tables are.
final class VTdDeviceInfo {
    let requesterID: RequesterID
    let unit: Int
    let pasidDirectory: UInt64
    /// Directory entries (2^(PDTS+7)).
    let directoryEntries: UInt64
    /// Leaf PASID tables by directory index.
    var leafTables: [UInt64: UInt64] = [:]
    let ats: Bool
    /// Page requests enabled in its context entry (PRE) and reported to the core.
    let pri: Bool
    /// The core's device (it outlives this state, which goes at release).
    unowned(unsafe) let device: Device
    init(device: Device, unit: Int, pasidDirectory: UInt64, directoryEntries: UInt64, ats: Bool, pri: Bool) {
        self.device = device
        self.requesterID = device.requesterID; self.unit = unit; self.pasidDirectory = pasidDirectory
        self.directoryEntries = directoryEntries; self.ats = ats; self.pri = pri
    }
    /// PASIDs the tables can hold.
    var pasidLimit: UInt32 { UInt32(directoryEntries * 64) }
}

/// One VT-d remapping unit as the driver sees it (Linux `struct intel_iommu`): its root
/// table, invalidation queue, domain IDs and fault interrupt. All access to the hardware
/// goes through registers and memory.
public final class IntelIOMMU: @unchecked Sendable {
    public let index: Int
    public let unit: VTdUnit
    let platform: PlatformContext
    let capability: VTdCapability
    let extendedCapability: VTdExtendedCapability
    let rootTable: UInt64
    let queue: VTdInvalidationQueue
    let queueFrame: UInt64
    let statusFrame: UInt64
    public internal(set) var domainIDs: DomainIDAllocator
    /// Probed devices by requester ID.
    var devices: [UInt16: VTdDeviceInfo] = [:]
    /// Devices per context table (by bus and half), to free a table when it empties.
    var contextTableUsers: [UInt16: Int] = [:]
    /// The driver that owns this unit (set once at bring-up; not counted).
    unowned(unsafe) var driver: VTdDriver?
    public private(set) var isEnabled = false
    /// Frames kept after a failed invalidation (the hardware may still walk them through a
    /// stale cache entry): freed only once translation is off.
    var retainedFrames: [UInt64] = []
    var retainedContextTables: [UInt64] = []
    /// DIDs an injected bug released early (their regular release is skipped).
    var releasedEarly: Set<UInt16> = []
    /// Fault records read and reported; overflows (PFO) seen.
    public internal(set) var faultsHandled = 0
    public internal(set) var overflowsSeen = 0
    /// The page request queue (0: none) and the core's fault queue for this unit.
    var pageRequestQueue: UInt64 = 0
    public internal(set) var iopfQueue: IOPFQueue?
    /// Page request handling: handler passes, descriptors handled, bad ones, stop markers
    /// dropped, overflows cleared, PASID drains and their errors, responses that failed.
    public internal(set) var pageRequestPasses = 0
    public internal(set) var pageRequestsHandled = 0
    public internal(set) var badPageRequests = 0
    public internal(set) var stopMarkersDropped = 0
    public internal(set) var pageRequestOverflowsCleared = 0
    public internal(set) var pageRequestDrains = 0
    public internal(set) var pageRequestDrainErrors = 0
    public internal(set) var pageResponsesLost = 0

    /// Most PASID-directory entries one frame holds (PDTS 2: 512 × 64 = 32768 PASIDs).
    static let maxDirectoryEntries: UInt64 = 512

    /// What the fault interrupt handler holds instead of a weak reference (cleared in deinit).
    let ref = PlatformContext.BackRef<IntelIOMMU>()

    deinit { ref.target = nil }

    init(index: Int, unit: VTdUnit, platform: PlatformContext) throws(IOMMUError) {
        self.index = index
        self.unit = unit
        self.platform = platform
        capability = VTdCapability(raw: unit.read64(VTdRegister.capability))
        extendedCapability = VTdExtendedCapability(raw: unit.read64(VTdRegister.extendedCapability))
        guard extendedCapability.scalableMode, extendedCapability.queuedInvalidation else {
            throw .noDevice("\(unit.configuration.name) lacks scalable mode or queued invalidation")
        }
        domainIDs = DomainIDAllocator(numberOfDomains: capability.numberOfDomains)
        var got: [UInt64] = []
        do {
            got.append(try platform.frames.allocate(.rootTable))
            got.append(try platform.frames.allocate(.queue))
            got.append(try platform.frames.allocate(.queue))
        } catch {
            for f in got { try? platform.frames.free(f) }
            throw .noMemory("\(unit.configuration.name) tables")
        }
        rootTable = got[0]; queueFrame = got[1]; statusFrame = got[2]
        queue = VTdInvalidationQueue(unit: unit, platform: platform, base: queueFrame, statusAddress: statusFrame)
        ref.target = self
    }

    var name: String { unit.configuration.name }

    /// Brings the unit up (Linux `init_dmars`): root table latched in scalable mode, queued
    /// invalidation enabled, every cache invalidated globally, fault events unmasked, then
    /// translation enabled.
    func enable() throws(IOMMUError) {
        unit.write64(VTdRegister.rootTableAddress, rootTable | VTdRootTableAddress.scalableMode)
        unit.write32(VTdRegister.globalCommand, VTdGlobal.setRootTablePointer)
        guard unit.read32(VTdRegister.globalStatus) & VTdGlobal.setRootTablePointer != 0 else {
            throw .noDevice("\(name) did not latch the root table")
        }
        unit.write64(VTdRegister.invalidationQueueAddress, VTdQueueAddress.make(base: queueFrame, sizeOrder: 0, wide: true))
        unit.write64(VTdRegister.invalidationQueueTail, 0)
        unit.write32(VTdRegister.globalCommand, VTdGlobal.queuedInvalidationEnable)
        try queue.submitAndWait([.contextCache(.global), .pasidCache(.global), .iotlb(.global)])
        try enablePageRequests()
        unit.onFaultEvent = { [ref] in ref.target?.handleFaultInterrupt() }
        unit.write32(VTdRegister.faultEventControl, 0)
        unit.write32(VTdRegister.globalCommand, VTdGlobal.queuedInvalidationEnable | VTdGlobal.translationEnable)
        guard unit.read32(VTdRegister.globalStatus) & VTdGlobal.translationEnable != 0 else {
            throw .noDevice("\(name) did not enable translation")
        }
        isEnabled = true
    }

    /// Turns translation and queued invalidation off and frees the unit's own frames.
    func shutdown() {
        guard isEnabled else { return }
        unit.write32(VTdRegister.globalCommand, 0)
        unit.write32(VTdRegister.faultEventControl, VTdEventControl.interruptMask)
        unit.onFaultEvent = nil
        disablePageRequests()
        // Translation is off: tables kept after failed invalidations can go now. A context
        // table is still linked from the root table until now (reused if a device came back).
        for f in retainedFrames { try? platform.frames.free(f) }
        retainedFrames = []
        for f in retainedContextTables { try? platform.frames.free(f) }
        retainedContextTables = []
        for f in [rootTable, queueFrame, statusFrame] { try? platform.frames.free(f) }
        isEnabled = false
    }

    // MARK: Domain IDs

    /// Hands out a DID (`ENOSPC` when none is left).
    func allocateDID() throws(IOMMUError) -> DomainID {
        if platform.faults.shouldFail(.didAlloc) { throw .noSpace("domain ID on \(name) (injected)") }
        guard let did = domainIDs.allocate() else { throw .noSpace("no free domain ID on \(name)") }
        if let driver { driver.core?.observer?.domainIDAllocated(driver: driver, unit: index, did: did) }
        return did
    }

    /// Gives a DID back. The caller has already invalidated every cache entry tagged with
    /// it (or, if that failed, the DID is quarantined instead and never reused).
    func releaseDID(_ did: DomainID, invalidated: Bool) {
        if !releasedEarly.isEmpty, releasedEarly.remove(did.rawValue) != nil { return }
        platform.scheduler.yieldPoint(KernelYield.beforeDIDRelease)
        guard invalidated else {
            domainIDs.quarantine(did)
            return
        }
        if domainIDs.free(did), let driver { driver.core?.observer?.domainIDReleased(driver: driver, unit: index, did: did) }
    }

    /// Broken behaviour injected through the core (oracle-strength checks only).
    var bugs: InjectedBugs { driver?.core?.injectedBugs ?? [] }

    /// Injected bug `releaseDIDBeforeFlush`: the DID goes back to the allocator now, before
    /// the invalidation that should precede it; the later regular release is skipped.
    func releaseDIDEarly(_ did: DomainID) {
        guard domainIDs.free(did) else { return }
        releasedEarly.insert(did.rawValue)
        if let driver { driver.core?.observer?.domainIDReleased(driver: driver, unit: index, did: did) }
    }

    // MARK: Faults

    /// The fault interrupt handler (Linux `dmar_fault`): reads each fault-recording register
    /// from FSTS.FRI on while F is set, clears F, reports the fault to the core, then clears
    /// PFO.
    func handleFaultInterrupt() {
        let status = unit.read32(VTdRegister.faultStatus)
        let base = capability.faultRecordingOffset
        let count = capability.numberOfFaultRecords
        var i = VTdFaultStatus.faultRecordIndex(status) % count
        for _ in 0..<count {
            let offset = base + UInt32(i) * 16
            let lo = unit.read64(offset)
            let hi = unit.read64(offset + 8)
            guard let record = FaultRecord.decode(lo, hi) else { break }
            unit.write32(offset + 12, 1 << 31)
            faultsHandled += 1
            if let driver, let core = driver.core { core.reportFault(driver: driver, unit: index, record: record) }
            i = (i + 1) % count
        }
        if status & VTdFaultStatus.primaryFaultOverflow != 0 {
            overflowsSeen += 1
            unit.write32(VTdRegister.faultStatus, VTdFaultStatus.primaryFaultOverflow)
        }
    }
}
