import Platform
import Formats

extension VTdUnit {
    /// Performs a DMA read of `buffer.count` bytes at `address` for `source`, page by page:
    /// each page is translated and copied from physical memory. Stops at the first fault and
    /// returns the bytes transferred and the fault, if any. Payloads are really copied.
    public func dmaRead(source: RequesterID, pasid: PASID?, address: UInt64, into buffer: UnsafeMutableRawBufferPointer,
                        access: DMAAccess = .read) -> (transferred: Int, fault: DMAFault?) {
        transfer(source: source, pasid: pasid, address: address, count: buffer.count, access: access.union(.read)) { (pa: UInt64, offset: Int, n: Int) throws(MemoryError) in
            try memory.deviceRead(pa, into: UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<offset + n]))
        }
    }

    /// Performs a DMA write of `bytes` at `address` for `source` (see `dmaRead`).
    public func dmaWrite(source: RequesterID, pasid: PASID?, address: UInt64, from bytes: UnsafeRawBufferPointer,
                         access: DMAAccess = .write) -> (transferred: Int, fault: DMAFault?) {
        transfer(source: source, pasid: pasid, address: address, count: bytes.count, access: access.union(.write)) { (pa: UInt64, offset: Int, n: Int) throws(MemoryError) in
            try memory.deviceWrite(pa, from: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n]))
        }
    }

    private func transfer(source: RequesterID, pasid: PASID?, address: UInt64, count: Int, access: DMAAccess,
                          copy: (UInt64, Int, Int) throws(MemoryError) -> Void) -> (transferred: Int, fault: DMAFault?) {
        var done = 0
        let now = scheduler.now
        while done < count {
            let (iova, o) = address.addingReportingOverflow(UInt64(done))
            guard !o else { return (done, DMAFault(address: address, reason: .smAddressBeyondMax)) }
            let chunk = min(count - done, Int(4096 - (iova & 0xFFF)))
            switch translate(source: source, pasid: pasid, address: iova, access: access) {
            case .fault(let reason):
                reportAccess(DMAAccessRecord(source: source, pasid: pasid, address: iova, length: UInt64(chunk),
                                             access: access, physical: nil, fault: reason, time: now))
                platform.trace.record(TraceEvent(time: now, kind: .dmaFault, track: trackID, a: iova, b: UInt64(reason.rawValue),
                                                 c: pasid.map { UInt64($0.rawValue) } ?? .max))
                return (done, DMAFault(address: iova, reason: reason))
            case .translated(let pa, _, _):
                do { try copy(pa, done, chunk) } catch {
                    return (done, DMAFault(address: iova, reason: nil))
                }
                countersStorage.pointee.dmaBytes &+= UInt64(chunk)
                reportAccess(DMAAccessRecord(source: source, pasid: pasid, address: iova, length: UInt64(chunk),
                                             access: access, physical: pa, fault: nil, time: now))
            }
            done += chunk
        }
        return (done, nil)
    }
}
