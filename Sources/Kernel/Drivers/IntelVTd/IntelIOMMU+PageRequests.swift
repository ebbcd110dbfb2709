import Platform
import Formats
import Hardware

/// Page requests on the driver side (drivers/iommu/intel/prq.c): the queue in memory, the
/// interrupt-thread handler, page group responses and the PASID drain.
extension IntelIOMMU {
    /// 2^4 pages: 2048 descriptors of 32 bytes (Linux `PRQ_ORDER`).
    static let pageRequestQueueOrder: UInt8 = 4
    var pageRequestQueueBytes: UInt64 { 4096 << UInt64(Self.pageRequestQueueOrder) }

    /// Allocates the queue, programs PQA/PQH and unmasks the page request event.
    func enablePageRequests() throws(IOMMUError) {
        guard extendedCapability.pageRequests else { return }
        let base: UInt64
        do { base = try platform.frames.allocateContiguous(1 << Int(Self.pageRequestQueueOrder), .queue) } catch {
            throw .noMemory("page request queue of \(name)")
        }
        pageRequestQueue = base
        unit.write64(VTdRegister.pageRequestQueueHead, 0)
        unit.write64(VTdRegister.pageRequestQueueAddress, VTdPageRequestQueueAddress.make(base: base, sizeOrder: Self.pageRequestQueueOrder))
        unit.onPageRequestEvent = { [ref] in ref.target?.handlePageRequests() }
        unit.write32(VTdRegister.pageRequestEventControl, 0)
    }

    func disablePageRequests() {
        guard pageRequestQueue != 0 else { return }
        unit.write32(VTdRegister.pageRequestEventControl, VTdEventControl.interruptMask)
        unit.onPageRequestEvent = nil
        unit.write64(VTdRegister.pageRequestQueueAddress, 0)
        for i in 0..<(UInt64(1) << UInt64(Self.pageRequestQueueOrder)) { freeFrame(pageRequestQueue + i * 4096) }
        pageRequestQueue = 0
    }

    /// The page request interrupt thread (Linux `prq_event_thread`): clears PPR first, then
    /// handles every descriptor between head and tail, moves the head to the tail, and clears
    /// an overflow once the queue is empty (discarding partial groups, whose last request may
    /// have been lost).
    func handlePageRequests() {
        guard pageRequestQueue != 0 else { return }
        unit.write32(VTdRegister.pageRequestStatus, VTdPageRequestStatus.pending)
        let size = pageRequestQueueBytes
        let tail = unit.read64(VTdRegister.pageRequestQueueTail) % size
        var head = unit.read64(VTdRegister.pageRequestQueueHead) % size
        while head != tail {
            let at = pageRequestQueue + head
            var raw = RawDescriptor(0, 0)
            do {
                raw.qw0 = try memory.load64(at); raw.qw1 = try memory.load64(at + 8)
                raw.qw2 = try memory.load64(at + 16); raw.qw3 = try memory.load64(at + 24)
            } catch { break }
            handlePageRequest(raw)
            head = (head + PageRequestDescriptor.size) % size
        }
        unit.write64(VTdRegister.pageRequestQueueHead, head)
        if unit.read32(VTdRegister.pageRequestStatus) & VTdPageRequestStatus.overflow != 0 {
            let h = unit.read64(VTdRegister.pageRequestQueueHead), t = unit.read64(VTdRegister.pageRequestQueueTail)
            if h == t {
                if let q = iopfQueue { driver?.core?.discardPartialFaults(q) }
                unit.write32(VTdRegister.pageRequestStatus, VTdPageRequestStatus.overflow)
                pageRequestOverflowsCleared += 1
            }
        }
        pageRequestPasses += 1
    }

    /// One queue entry: stop markers are dropped, bad requests answered Invalid Request when
    /// they end a group, the rest reported to the core.
    func handlePageRequest(_ raw: RawDescriptor) {
        pageRequestsHandled += 1
        let d: PageRequestDescriptor
        switch PageRequestDescriptor.decode(raw) {
        case .success(let v): d = v
        case .failure:
            badPageRequests += 1
            if raw.qw1 & 4 != 0 {
                let pasid = raw.qw0 & (1 << 8) != 0 ? PASID(truncating: UInt32(truncatingIfNeeded: raw.qw0 >> 32)) : nil
                sendResponse(RequesterID(rawValue: UInt16(truncatingIfNeeded: raw.qw0 >> 16)), pasid: pasid,
                             groupIndex: UInt16((raw.qw1 >> 3) & 0x1FF), .invalidRequest)
            }
            return
        }
        if d.isStopMarker {
            stopMarkersDropped += 1
            return
        }
        // Linux `prq_event_thread` bad-request checks: a non-canonical address, a privileged
        // request with read or write, an execute request with read; and an unknown device.
        let canonical = d.pasid == nil || VTdUnit.isCanonical(d.address, levels: 4)
        guard canonical, !(d.privileged && (d.read || d.write)), !(d.execute && d.read),
              let info = devices[d.requester.rawValue], let core = driver?.core else {
            badPageRequests += 1
            if d.lastInGroup { sendResponse(d.requester, pasid: d.pasid, groupIndex: d.groupIndex, .invalidRequest) }
            return
        }
        var flags: PageFault.Flags = []
        if d.lastInGroup { flags.insert(.lastPage) }
        if d.pasid != nil { flags.formUnion([.pasidValid, .needsPASID]) }
        var perms: FaultPermissions = []
        if d.read { perms.insert(.read) }
        if d.write { perms.insert(.write) }
        if d.execute { perms.insert(.exec) }
        if d.privileged { perms.insert(.priv) }
        core.reportPageFault(info.device, PageFault(flags: flags, pasid: d.pasid ?? .noPASID, groupIndex: d.groupIndex,
                                                    permissions: perms, address: d.address, privateData: d.privateData))
    }

    /// A page group response through the invalidation queue (Linux `intel_iommu_page_response`).
    func sendResponse(_ rid: RequesterID, pasid: PASID?, groupIndex: UInt16, _ code: PageResponseCode) {
        let r = PageGroupResponse(requester: rid, pasid: pasid, responseCode: code.rawValue, groupIndex: groupIndex)
        do { try queue.submitAndWait([.pageGroupResponse(r)]) } catch { pageResponsesLost += 1 }
    }

    /// Whether a descriptor of `rid` and `pasid` (0: without PASID) is still in the queue.
    public func pageRequestQueueHolds(_ rid: RequesterID, pasid: UInt32) -> Bool {
        let size = pageRequestQueueBytes
        let tail = unit.read64(VTdRegister.pageRequestQueueTail) % size
        var head = unit.read64(VTdRegister.pageRequestQueueHead) % size
        while head != tail {
            guard let q0 = try? memory.load64(pageRequestQueue + head) else { return false }
            let r = UInt16(truncatingIfNeeded: q0 >> 16)
            let p: UInt32 = q0 & (1 << 8) != 0 ? UInt32((q0 >> 32) & 0xFFFFF) : 0
            if r == rid.rawValue && p == pasid { return true }
            head = (head + PageRequestDescriptor.size) % size
        }
        return false
    }

    /// Drains page requests of (`info`, `pasid`) after its entry was torn down, in Linux's
    /// order (`intel_iommu_drain_pasid_prq`): (1) the handler sees every request of it still
    /// in the queue; (2) the core's fault work is flushed; (3) VT-d §7.10: a fenced wait, the
    /// IOTLB and device-TLB invalidations, and a page-drain wait, so requests and responses
    /// in flight are out of the fabric; (4) if the queue overflowed meanwhile, again; then the
    /// PASID's partial groups are dropped.
    func drainPageRequests(_ info: VTdDeviceInfo, pasid: UInt32, did: DomainID, pgtt: PGTT?) {
        guard info.pri, pageRequestQueue != 0 else { return }
        pageRequestDrains += 1
        // Last: the PASID's groups still partial will never complete (PCIe: after the stop,
        // the function sends none of their remaining requests).
        defer { driver?.core?.discardPartialFaults(info.device, pasid: pasid == 0 ? nil : PASID(truncating: pasid)) }
        // One handler pass consumes up to the tail it reads; nothing arrives while it runs.
        if pageRequestQueueHolds(info.requesterID, pasid: pasid) { handlePageRequests() }
        driver?.core?.flushFaultWork(info.device)
        let p = PASID(truncating: pasid)
        for _ in 0..<8 {
            var ds: [InvalidationDescriptor] = [.wait(InvalidationWait(statusWrite: false, fence: true))]
            ds.append(iotlbInvalidation(did: did, pasid: p, pgtt: pgtt))
            if info.ats && extendedCapability.deviceTLB {
                ds.append(deviceTLBInvalidation(info.requesterID, pasid: pasid, address: 0, mask: 52))
            }
            // The last wait drains page requests and responses (PD); a driver that forgets it
            // lets requests still inside the unit land after the PASID moved on.
            let drain = !bugs.contains(.skipPageDrainWait)
            do { try queue.submitAndWait(ds, drain: drain) } catch { pageRequestDrainErrors += 1 }
            guard unit.read32(VTdRegister.pageRequestStatus) & VTdPageRequestStatus.overflow != 0 else { return }
            handlePageRequests()
        }
    }
}
