import Platform
import Formats

/// Why a DMA stopped short, on either architecture.
public struct DMAFault: Equatable, Sendable {
    /// The input address that faulted.
    public var address: UInt64
    /// VT-d: the translation fault, or nil when translation succeeded but memory was not
    /// there (or the unit is an SMMUv3).
    public var reason: VTdFaultReason?
    /// SMMUv3: the event that terminated the transaction (nil for a silent abort: an abort
    /// STE, GBPA.ABORT, a fault whose recording was off).
    public var event: SMMUEventID?
    /// SMMUv3 stall model: the transaction is held under this STAG until software resumes or
    /// terminates it (IHI 0070 §3.12.2); it has not ended.
    public var stallTag: UInt16?

    public init(address: UInt64, reason: VTdFaultReason? = nil, event: SMMUEventID? = nil, stallTag: UInt16? = nil) {
        self.address = address; self.reason = reason; self.event = event; self.stallTag = stallTag
    }
}

/// Something that checks every DMA access a unit performs (the simulator's oracle). A class,
/// held unretained by the unit, so the per-access call costs no reference counting.
open class DMAAccessChecker {
    public init() {}
    /// Called for every access `unit` (the index given at `attach`) performed or refused.
    open func check(unit: Int, _ record: DMAAccessRecord) {}
}

/// Who sees a unit's accesses: the checker (held unretained, so the per-access call costs no
/// reference counting; it must outlive the unit's DMA, as the machine that owns both ensures)
/// and an optional observer closure.
public struct DMAAccessWatch {
    var checker: Unmanaged<DMAAccessChecker>?
    var index = 0
    public var observer: ((DMAAccessRecord) -> Void)?

    public init() {}

    /// Makes `checker` see every access, as unit number `index`.
    public mutating func attach(_ checker: DMAAccessChecker, index: Int) {
        self.checker = Unmanaged.passUnretained(checker)
        self.index = index
    }

    @inline(__always)
    func report(_ record: DMAAccessRecord) {
        if let c = checker {
            let i = index
            c._withUnsafeGuaranteedRef { $0.check(unit: i, record) }
        }
        if let o = observer { o(record) }
    }
}

/// One DMA access a unit performed (or refused), for observers. On SMMUv3 `source` is the
/// StreamID (the requester ID) and `pasid` the SubstreamID.
public struct DMAAccessRecord: Equatable, Sendable {
    public var source: RequesterID
    public var pasid: PASID?
    public var address: UInt64
    public var length: UInt64
    public var access: DMAAccess
    /// The physical address used, or nil when the request faulted.
    public var physical: UInt64?
    /// VT-d: the fault reason of a refused request.
    public var fault: VTdFaultReason?
    public var time: UInt64
    /// A translated request (PCIe AT = translated): the device used a translation from its
    /// device TLB; `address` is the untranslated address that translation was for.
    public var translated: Bool = false
    /// SMMUv3: the event of a terminated transaction (nil with `physical` nil: a silent abort).
    public var event: SMMUEventID? = nil

    public init(source: RequesterID, pasid: PASID?, address: UInt64, length: UInt64, access: DMAAccess,
                physical: UInt64?, fault: VTdFaultReason?, time: UInt64, translated: Bool = false, event: SMMUEventID? = nil) {
        self.source = source; self.pasid = pasid; self.address = address; self.length = length; self.access = access
        self.physical = physical; self.fault = fault; self.time = time; self.translated = translated; self.event = event
    }

    /// What refused the request, as the architecture names it (nil when it was performed).
    public var refusal: String? {
        guard physical == nil else { return nil }
        if let fault { return "\(fault)" }
        if let event { return "\(event)" }
        return "abort"
    }
}
