import Platform
import Formats

extension VTdUnit {
    /// Counts a translation fault and records it in the fault-recording registers unless
    /// fault processing is disabled (FPD) for the entry that failed.

    func noteFault(_ reason: VTdFaultReason, source: RequesterID, pasid: PASID?, address: UInt64, access: DMAAccess, fpd: Bool) {
        countersStorage.pointee.faults &+= 1
        if fpd {
            countersStorage.pointee.faultsSuppressedByFPD &+= 1
            return
        }
        recordFault(FaultRecord(source: source, reason: reason.rawValue, address: address, pasid: pasid,
                                isRead: !access.contains(.write), execute: access.contains(.execute),
                                privileged: access.contains(.privileged)))
    }

    /// Primary fault logging (VT-d §7.2.1): faults go to the fault-recording registers in
    /// turn. While PFO is set, or when the next register still holds an unserviced fault (F
    /// set), the new fault is dropped and PFO is set: the first faults are never overwritten.
    /// The fault event is raised when PPF goes from clear to set.
    func recordFault(_ record: FaultRecord) {
        let now = scheduler.now
        if faultStatus & VTdFaultStatus.primaryFaultOverflow != 0 || faultRecords[nextFaultRecord].1 & (1 << 63) != 0
            || platform.faults.shouldFail(.faultRecordOverflow) {
            faultStatus |= VTdFaultStatus.primaryFaultOverflow
            countersStorage.pointee.faultsLostToOverflow &+= 1
            platform.trace.record(TraceEvent(time: now, kind: .faultDropped, track: trackID, a: UInt64(record.reason),
                                             b: record.address, c: UInt64(record.source.rawValue)))
            return
        }
        let wasPending = primaryPendingFault
        let index = nextFaultRecord
        faultRecords[index] = record.encode()
        nextFaultRecord = (index + 1) % faultRecords.count
        countersStorage.pointee.faultsRecorded &+= 1
        platform.trace.record(TraceEvent(time: now, kind: .faultRecorded, track: trackID, a: UInt64(record.reason),
                                         b: record.address, c: UInt64(record.source.rawValue)))
        if !wasPending {
            faultStatus = (faultStatus & ~0xFF00) | UInt32(index) << 8
            raiseInterrupt(control: &faultEventControl, handler: onFaultEvent)
        }
    }

    /// PPF: some fault record still has F set.
    var primaryPendingFault: Bool { faultRecords.contains { $0.1 & (1 << 63) != 0 } }

    /// The fault records as decoded values (register index, record), for tests and reports.
    public var pendingFaultRecords: [(index: Int, record: FaultRecord)] {
        faultRecords.enumerated().compactMap { i, r in FaultRecord.decode(r.0, r.1).map { (i, $0) } }
    }
}
