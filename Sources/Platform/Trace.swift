/// What a trace event records. Arguments `a`, `b`, `c` are interpreted per kind.
public enum TraceKind: UInt16, Sendable, CaseIterable {
    /// a = IOVA, b = physical address, c = length. Track: the device.
    case dmaRead, dmaWrite
    /// a = IOVA, b = fault reason, c = PASID or `UInt64.max`. Track: the device.
    case dmaFault
    /// a = fault reason, b = address, c = source ID. Track: the IOMMU unit.
    case faultRecorded
    /// a = fault reason, b = address, c = source ID. Track: the IOMMU unit.
    case faultDropped
    /// a = descriptor type, b = qword 0, c = queue index. Track: the IOMMU unit.
    case descriptorCompleted
    /// a = descriptor type, b = qword 0, c = queue index. Track: the IOMMU unit.
    case descriptorDropped
    /// a = IQEI error code, b = head. Track: the IOMMU unit.
    case invalidationQueueError
    /// a = register offset, b = value. Track: the IOMMU unit.
    case registerWrite
    /// a = interrupt kind. Track: the raiser.
    case interrupt
    /// a = site id. Track: software.
    case yieldPoint
    /// A stretch of software work: a = label id, b = begin time, c = end time (the event's
    /// time is the end). Track: the software context.
    case span
    /// A sampled counter: a = label id, b = value × 1000. Track: the counter's owner.
    case counter
    /// A page request entered the unit: a = page address, b = PRG index | LPIG << 9 | stop << 10,
    /// c = PASID or `UInt64.max`. Track: the device.
    case pageRequest
    /// A page group response reached the device: a = PRG index, b = response code,
    /// c = PASID or `UInt64.max`. Track: the device.
    case pageResponse
    /// free-form: a, b, c as the emitter defines.
    case custom
    /// An SMMUv3 command took effect: a = opcode, b = CMDQ_CONS. Track: the IOMMU unit.
    case commandCompleted
}

/// One compact trace record (40 bytes, no references).
public struct TraceEvent: Sendable, Equatable {
    public var time: UInt64
    public var kind: TraceKind
    public var track: UInt32
    public var a: UInt64
    public var b: UInt64
    public var c: UInt64

    public init(time: UInt64, kind: TraceKind, track: UInt32, a: UInt64 = 0, b: UInt64 = 0, c: UInt64 = 0) {
        self.time = time; self.kind = kind; self.track = track; self.a = a; self.b = b; self.c = c
    }
}

/// An append-only buffer of trace events with named tracks. Recording costs one branch
/// when disabled. Bounded: past `capacity` events, further ones are counted as dropped.
public final class TraceBuffer: @unchecked Sendable {
    @exclusivity(unchecked) public var enabled: Bool
    public let capacity: Int
    public private(set) var events: [TraceEvent] = []
    public private(set) var dropped = 0
    public private(set) var trackNames: [String] = []

    public init(enabled: Bool = false, capacity: Int = 1 << 22) {
        self.enabled = enabled
        self.capacity = capacity
    }

    /// Registers a track (a device, a unit, a software context) and returns its id.
    public func track(named name: String) -> UInt32 {
        if let i = trackNames.firstIndex(of: name) { return UInt32(i) }
        trackNames.append(name)
        return UInt32(trackNames.count - 1)
    }

    @inlinable @inline(__always)
    public func record(_ event: @autoclosure () -> TraceEvent) {
        guard enabled else { return }
        append(event())
    }

    @usableFromInline
    func append(_ event: TraceEvent) {
        if events.count < capacity { events.append(event) } else { dropped += 1 }
    }

    public private(set) var labels: [String] = []
    private var labelIDs: [String: UInt64] = [:]

    /// The id of a label (span names, counter names), registering it on first use.
    public func label(_ name: String) -> UInt64 {
        if let id = labelIDs[name] { return id }
        labels.append(name)
        labelIDs[name] = UInt64(labels.count - 1)
        return UInt64(labels.count - 1)
    }

    public func clear() {
        events.removeAll(keepingCapacity: true)
        dropped = 0
    }
}
