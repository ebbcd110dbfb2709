import Platform
import Formats

/// An emulated PCIe endpoint: a requester ID and a DMA engine whose requests go through
/// its IOMMU unit (VT-d or SMMUv3, `UpstreamUnit`) as scheduler events, one 4 KiB-bounded chunk at a time, so DMA interleaves
/// with software and with the unit's own work. Payloads are really copied to and from
/// physical memory. With ATS it also has a device TLB and makes translated requests; with
/// PRI it asks for pages with page request groups (PCIeEndpoint+ATS.swift).
public final class PCIeEndpoint: VTdEndpointPort, SMMUv3EndpointPort, @unchecked Sendable {
    public enum Direction: Sendable { case toDevice, fromDevice }

    /// One DMA transfer. `.fromDevice` writes `data` to memory at `address`;
    /// `.toDevice` reads `length` bytes from memory at `address`.
    public struct Request: Sendable {
        public var direction: Direction
        public var address: UInt64
        public var length: Int
        public var pasid: PASID?
        public var privileged: Bool
        public var data: [UInt8]

        public static func write(_ address: UInt64, _ data: [UInt8], pasid: PASID? = nil, privileged: Bool = false) -> Request {
            Request(direction: .fromDevice, address: address, length: data.count, pasid: pasid, privileged: privileged, data: data)
        }
        public static func read(_ address: UInt64, length: Int, pasid: PASID? = nil, privileged: Bool = false) -> Request {
            Request(direction: .toDevice, address: address, length: length, pasid: pasid, privileged: privileged, data: [])
        }
    }

    /// What became of a transfer.
    public struct Completion: Sendable {
        public var id: UInt64
        public var request: Request
        /// Bytes moved before the end or the first fault.
        public var transferred: Int
        public var fault: DMAFault?
        /// Bytes read (for `.toDevice`).
        public var data: [UInt8]
        public var time: UInt64
    }

    public struct Counters: Equatable, Sendable {
        public var requests: UInt64 = 0
        public var completed: UInt64 = 0
        public var faulted: UInt64 = 0
        public var bytesRead: UInt64 = 0
        public var bytesWritten: UInt64 = 0
        public var deviceTLBInvalidations: UInt64 = 0
        public var pageGroupResponses: UInt64 = 0
        /// TLPs held by an SMMUv3's stall model, and how many of them completed when resumed.
        public var stalls: UInt64 = 0
        public var stallsCompleted: UInt64 = 0
    }

    public let name: String
    public let requesterID: RequesterID
    /// The IOMMU it sits behind.
    public let upstream: UpstreamUnit
    public let platform: PlatformContext
    public let trackID: UInt32
    /// Time from issuing a request to its first chunk reaching the unit.
    public var requestLatencyNs: UInt64 = 200
    /// Time between consecutive 4 KiB chunks of one request.
    public var chunkIntervalNs: UInt64 = 40
    @exclusivity(unchecked) public internal(set) var counters = Counters()
    /// Recent faulted completions (bounded).
    @exclusivity(unchecked) public private(set) var faults: [Completion] = []
    public let faultLogLimit = 1024
    public internal(set) var pageGroupResponses: [PageGroupResponse] = []
    private var nextID: UInt64 = 1

    /// The fabric to the unit.
    public let link: PCIeLink
    /// PASIDs the device's PASID capability allows (0: no PASID capability).
    public var maxPASIDs: UInt32 = 0
    /// ATS: the device TLB (keyed by 4 KiB page and PASID) and whether translations are used.
    public let atsConfiguration: ATSConfiguration
    let deviceTLB: TaggedCache<DeviceTLBEntry>
    /// PRI: configuration and state (outstanding groups, credits, PASID use).
    public var priConfiguration: PRIConfiguration
    @exclusivity(unchecked) public internal(set) var priState = PRIState()
    /// Ways this device breaks the protocol on purpose (guest-controlled behaviour).
    public var misbehaviour: Misbehaviour = []
    /// ATS and PRI event counts.
    @exclusivity(unchecked) public internal(set) var atsCounters = ATSCounters()
    /// Told of protocol anomalies seen at the device (the simulator's oracle listens).
    public var onAnomaly: ((PRIAnomaly) -> Void)?
    /// Accesses waiting for credits or a group index, oldest first.
    var creditWaiters: [ATSOperation] = []
    /// `stopPASID` calls waiting for their PASID's outstanding translation requests (and,
    /// without a stop marker, its page request groups) to complete.
    var stopWaiters: [StopWaiter] = []
    /// Serial numbers of translation requests sent and not yet answered, by PASID (`tlbKey1`;
    /// an emptied list stays), oldest first (the lanes are FIFO), and the next serial.
    var translationsInFlight: [UInt64: [UInt64]] = [:]
    var nextTranslationSerial: UInt64 = 0
    /// When each PASID's last stop completed, and the first serial issued after it.
    var stopCompletedAt: [UInt32: (time: UInt64, serial: UInt64)] = [:]
    /// Test-only broken behaviour: a stop reports completion without waiting for the PASID's
    /// translation requests (PCIe requires them to complete first). Oracle-strength runs only.
    public var stopIgnoresTranslations = false
    /// TLPs held by an SMMUv3's stall model, by STAG (PCIeEndpoint+SMMUv3.swift).
    var stalledTLPs: [UInt16: StalledTLP] = [:]

    public init(name: String, requesterID: RequesterID, upstream: UpstreamUnit,
                ats: ATSConfiguration = ATSConfiguration(), pri: PRIConfiguration = PRIConfiguration()) {
        self.name = name
        self.requesterID = requesterID
        self.upstream = upstream
        self.platform = upstream.platform
        self.trackID = platform.trace.track(named: name)
        self.link = PCIeLink(scheduler: platform.scheduler, latencyNs: upstream.linkNs)
        self.atsConfiguration = ats
        self.deviceTLB = TaggedCache(capacity: max(1, ats.deviceTLBEntries), ways: max(1, ats.deviceTLBWays), empty: .empty)
        self.priConfiguration = pri
        ref.target = self
        switch upstream {
        case .vtd(let u): u.connect(self)
        case .smmuv3(let u): u.connect(self)
        }
    }

    /// An endpoint behind a VT-d unit.
    public convenience init(name: String, requesterID: RequesterID, unit: VTdUnit,
                            ats: ATSConfiguration = ATSConfiguration(), pri: PRIConfiguration = PRIConfiguration()) {
        self.init(name: name, requesterID: requesterID, upstream: .vtd(unit), ats: ats, pri: pri)
    }

    /// An endpoint behind an SMMUv3 (its StreamID is its requester ID).
    public convenience init(name: String, requesterID: RequesterID, smmu: SMMUv3Unit,
                            ats: ATSConfiguration = ATSConfiguration(), pri: PRIConfiguration = PRIConfiguration()) {
        self.init(name: name, requesterID: requesterID, upstream: .smmuv3(smmu), ats: ats, pri: pri)
    }

    /// Issues `request`; `completion` runs (as part of the last hardware event) when it ends.
    @discardableResult
    public func submit(_ request: Request, completion: ((Completion) -> Void)? = nil) -> UInt64 {
        let id = nextID
        nextID += 1
        counters.requests += 1
        let state = TransferState(id: id, request: request, completion: completion)
        if request.direction == .toDevice { state.data = [UInt8](repeating: 0, count: max(0, request.length)) }
        platform.scheduler.schedule(after: requestLatencyNs, kind: .hardware) { [ref] in ref.target?.step(state) }
        return id
    }

    final class TransferState {
        let id: UInt64
        let request: Request
        let completion: ((Completion) -> Void)?
        var done = 0
        var data: [UInt8] = []
        init(id: UInt64, request: Request, completion: ((Completion) -> Void)?) {
            self.id = id; self.request = request; self.completion = completion
        }
    }

    /// Moves one chunk (up to the next 4 KiB boundary) and schedules the next.
    func step(_ s: TransferState) {
        let r = s.request
        let total = r.direction == .fromDevice ? r.data.count : max(0, r.length)
        var fault: DMAFault?
        if s.done < total {
            let (iova, o) = r.address.addingReportingOverflow(UInt64(s.done))
            let chunk = o ? 0 : min(total - s.done, Int(4096 - (iova & 0xFFF)))
            var access: DMAAccess = r.direction == .fromDevice ? .write : .read
            if r.privileged { access.insert(.privileged) }
            let moved: Int
            if o {
                moved = 0
                fault = overflowFault(r.address)
            } else if r.direction == .fromDevice {
                (moved, fault) = r.data.withUnsafeBytes { all in
                    upstream.dmaWrite(source: requesterID, pasid: r.pasid, address: iova,
                                      from: UnsafeRawBufferPointer(rebasing: all[s.done..<s.done + chunk]), access: access)
                }
                counters.bytesWritten += UInt64(moved)
            } else {
                let offset = s.done
                (moved, fault) = s.data.withUnsafeMutableBytes { all in
                    upstream.dmaRead(source: requesterID, pasid: r.pasid, address: iova,
                                     into: UnsafeMutableRawBufferPointer(rebasing: all[offset..<offset + chunk]), access: access)
                }
                counters.bytesRead += UInt64(moved)
            }
            s.done += moved
            if let stag = fault?.stallTag {
                // Held by the SMMUv3 stall model: the chunk completes when software resolves it.
                holdStalled(stag, StalledTLP(address: iova, pasid: r.pasid, length: chunk, write: r.direction == .fromDevice,
                                             stagingOffset: nil, transfer: s))
                return
            }
            if fault == nil && s.done < total {
                platform.scheduler.schedule(after: chunkIntervalNs, kind: .hardware) { [ref] in ref.target?.step(s) }
                return
            }
        }
        finishTransfer(s, fault)
    }

    /// Ends a submitted transfer: its completion runs now.
    func finishTransfer(_ s: TransferState, _ fault: DMAFault?) {
        let r = s.request
        let total = r.direction == .fromDevice ? r.data.count : max(0, r.length)
        let now = platform.scheduler.now
        let c = Completion(id: s.id, request: r, transferred: s.done, fault: fault, data: s.data, time: now)
        counters.completed += 1
        if fault != nil {
            counters.faulted += 1
            if faults.count < faultLogLimit { faults.append(c) }
        }
        let kind: TraceKind = r.direction == .fromDevice ? .dmaWrite : .dmaRead
        platform.trace.record(TraceEvent(time: now, kind: kind, track: trackID, a: r.address, b: UInt64(s.done), c: UInt64(total)))
        s.completion?(c)
    }

    // MARK: Streaming DMA (simulator traffic)

    /// Largest write TLP (Max_Payload_Size) and read request (Max_Read_Request_Size): each
    /// TLP of a streamed transfer is translated on its own, as the unit sees it.
    @exclusivity(unchecked) public var maxPayloadBytes = 256
    @exclusivity(unchecked) public var maxReadRequestBytes = 512
    /// Payload staging for streamed transfers (a device's internal buffer), allocated once.
    let staging: UnsafeMutableRawBufferPointer = {
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 64)
        for i in 0..<4096 { b[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        return b
    }()

    /// What scheduled chunk events hold (cleared in deinit, so late events find nothing).
    let ref = PlatformContext.BackRef<PCIeEndpoint>()

    deinit {
        ref.target = nil
        staging.deallocate()
    }

    /// Performs a transfer now, as TLPs reaching the unit at this instant (no events, no
    /// allocation): a write moves the device's staging bytes to memory, a read moves memory
    /// into them. Stops at the first fault. Returns the bytes moved and the fault.
    @discardableResult
    public func transferNow(write: Bool, address: UInt64, length: Int, pasid: PASID? = nil) -> (transferred: Int, fault: DMAFault?) {
        let buffer = staging
        counters.requests &+= 1
        let tlp = write ? maxPayloadBytes : maxReadRequestBytes
        var done = 0
        var fault: DMAFault?
        while done < length {
            let (iova, o) = address.addingReportingOverflow(UInt64(done))
            if o { fault = overflowFault(address); break }
            let n = min(length - done, tlp, Int(4096 - (iova & 0xFFF)))
            let offset = Int(iova & 0xFFF)
            let moved: Int
            if write {
                (moved, fault) = upstream.dmaWrite(source: requesterID, pasid: pasid, address: iova,
                                                   from: UnsafeRawBufferPointer(rebasing: buffer[offset..<offset + n]), access: .write)
            } else {
                (moved, fault) = upstream.dmaRead(source: requesterID, pasid: pasid, address: iova,
                                                  into: UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<offset + n]), access: .read)
            }
            done += moved
            if let stag = fault?.stallTag {
                // The device stops behind the held TLP, which completes when it is resolved.
                holdStalled(stag, StalledTLP(address: iova, pasid: pasid, length: n, write: write, stagingOffset: offset, transfer: nil))
                break
            }
            if fault != nil { break }
        }
        if write { counters.bytesWritten &+= UInt64(done) } else { counters.bytesRead &+= UInt64(done) }
        counters.completed &+= 1
        let now = platform.scheduler.now
        if let fault, fault.stallTag == nil {
            counters.faulted &+= 1
            if faults.count < faultLogLimit {
                let r = write ? Request(direction: .fromDevice, address: address, length: length, pasid: pasid, privileged: false, data: [])
                              : Request.read(address, length: length, pasid: pasid)
                faults.append(Completion(id: 0, request: r, transferred: done, fault: fault, data: [], time: now))
            }
        }
        platform.trace.record(TraceEvent(time: now, kind: write ? .dmaWrite : .dmaRead, track: trackID, a: address, b: UInt64(done), c: UInt64(length)))
        return (done, fault)
    }

}
