import Platform
import Kernel
import Formats

/// A fault queue for user space (the iommufd fault object, drivers/iommu/iommufd/eventq.c):
/// a domain allocated with it delivers its page request groups here; user space reads whole
/// groups as records and writes one response per group, by cookie. Nothing is answered on a
/// timer: a group waits until user space answers, its attachment is detached or replaced,
/// or the queue is closed (then it is answered Invalid Request).
public final class FaultQueue: IOPFHandler, @unchecked Sendable {
    /// One fault record as `read` returns it (`struct iommu_hwpt_pgfault`, 40 bytes).
    public struct Record: Equatable, Sendable {
        /// `IOMMU_PGFAULT_FLAGS_PASID_VALID` (bit 0), `LAST_PAGE` (bit 1), as reported.
        public var flags: UInt32
        public var devID: UInt32
        public var pasid: UInt32
        public var groupIndex: UInt32
        /// `IOMMU_PGFAULT_PERM_READ/WRITE/EXEC/PRIV` (bits 0–3).
        public var permissions: UInt32
        public var address: UInt64
        /// A hint, always 0 (as in Linux).
        public var length: UInt32
        public var cookie: UInt32
        public static let size = 40

        public init(flags: UInt32, devID: UInt32, pasid: UInt32, groupIndex: UInt32, permissions: UInt32, address: UInt64,
                    length: UInt32, cookie: UInt32) {
            self.flags = flags; self.devID = devID; self.pasid = pasid; self.groupIndex = groupIndex
            self.permissions = permissions; self.address = address; self.length = length; self.cookie = cookie
        }
    }

    /// Response codes user space may write (`IOMMUFD_PAGE_RESP_*`).
    public static let responseSuccess: UInt32 = 0
    public static let responseInvalid: UInt32 = 1

    unowned(unsafe) let core: IOMMUCore
    /// Groups not yet read, oldest first.
    private var deliver: [IOPFGroup] = []
    /// Groups before this index were read (popping the front of an array costs a move).
    private var head = 0
    /// Groups read and not yet answered, by cookie.
    private var responses: [UInt32: IOPFGroup] = [:]
    private var lowestFreeCookie: UInt32 = 1
    public private(set) var isClosed = false
    public private(set) var groupsDelivered = 0
    public private(set) var autoResponses = 0
    /// Called when a group arrives (the reader's wake-up; poll's EPOLLIN).
    public var onReadable: (() -> Void)?
    /// The `dev_id` records carry: the device's ID in the iommufd context that owns the
    /// queue (the core's own number when the queue is used without one).
    public var deviceID: (Device) -> UInt32 = { $0.objectID }

    public init(core: IOMMUCore) { self.core = core }

    /// Groups waiting to be read, and read groups waiting for their response.
    public var undelivered: Int { deliver.count - head }
    public var awaitingResponse: Int { responses.count }

    private func compact() {
        if head > 0 { deliver.removeFirst(head); head = 0 }
    }

    // MARK: IOPFHandler

    public func handle(_ group: IOPFGroup) throws(IOMMUError) {
        guard !isClosed else { throw .noDevice("the fault queue is closed") }
        deliver.append(group)
        onReadable?()
    }

    /// Answers Invalid Request every group of (`device`, `pasid`) on `domain`, read or not
    /// (Linux `iommufd_auto_response_faults`).
    public func detached(_ device: Device, pasid: PASID?, from domain: IOMMUDomain) {
        let match = { (g: IOPFGroup) in g.device === device && g.pasid == pasid && g.domain === domain }
        compact()
        let unread = deliver.filter(match)
        deliver.removeAll(where: match)
        let read = responses.filter { match($0.value) }.sorted { $0.key < $1.key }
        for (cookie, _) in read {
            responses[cookie] = nil
            if cookie < lowestFreeCookie { lowestFreeCookie = cookie }
        }
        for g in unread + read.map(\.value) {
            autoResponses += 1
            core.respond(g, .invalidRequest)
        }
    }

    // MARK: User API

    /// Reads whole groups, at most `maxRecords` records (Linux `read()` with a buffer of
    /// `maxRecords` × 40 bytes): a group that does not fit stays for the next read. Each
    /// group gets a cookie that all its records carry.
    public func read(maxRecords: Int) -> [Record] {
        var out: [Record] = []
        take(maxRecords: maxRecords) { out.append($0) }
        return out
    }

    /// Reads whole groups into `buffer` as `struct iommu_hwpt_pgfault` records (the file's
    /// `read()`); returns the bytes written. No allocation.
    public func read(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        var at = 0
        take(maxRecords: buffer.count / Record.size) { r in
            Self.encode(r, into: buffer, at: at)
            at += Record.size
        }
        return at
    }

    /// Hands out whole groups, oldest first, as records, while they fit in `maxRecords`;
    /// each group gets the lowest free cookie (Linux: an xarray with ALLOC1).
    private func take(maxRecords: Int, _ emit: (Record) -> Void) {
        var n = 0
        while head < deliver.count, n + deliver[head].faults.count <= maxRecords {
            let g = deliver[head]
            head += 1
            if head == deliver.count { deliver.removeAll(keepingCapacity: true); head = 0 } else if head >= 64 { compact() }
            var cookie = lowestFreeCookie
            while responses[cookie] != nil { cookie &+= 1 }
            lowestFreeCookie = cookie &+ 1
            g.cookie = cookie
            responses[cookie] = g
            groupsDelivered += 1
            let dev = deviceID(g.device)
            for f in g.faults {
                // Only PASID_VALID and LAST_PAGE are uAPI flags (the core's NEEDS_PASID is not).
                emit(Record(flags: f.flags.rawValue & 0x3, devID: dev, pasid: f.pasid.rawValue, groupIndex: UInt32(f.groupIndex),
                            permissions: f.permissions.rawValue, address: f.address, length: 0, cookie: cookie))
            }
            n += g.faults.count
        }
    }

    /// Writes `r` as `struct iommu_hwpt_pgfault` (include/uapi/linux/iommufd.h: flags,
    /// dev_id, pasid, grpid, perm, __reserved, addr @24, length @32, cookie @36).
    public static func encode(_ r: Record, into b: UnsafeMutableRawBufferPointer, at o: Int) {
        b.storeBytes(of: r.flags.littleEndian, toByteOffset: o, as: UInt32.self)
        b.storeBytes(of: r.devID.littleEndian, toByteOffset: o + 4, as: UInt32.self)
        b.storeBytes(of: r.pasid.littleEndian, toByteOffset: o + 8, as: UInt32.self)
        b.storeBytes(of: r.groupIndex.littleEndian, toByteOffset: o + 12, as: UInt32.self)
        b.storeBytes(of: r.permissions.littleEndian, toByteOffset: o + 16, as: UInt32.self)
        b.storeBytes(of: UInt32(0), toByteOffset: o + 20, as: UInt32.self)
        b.storeBytes(of: r.address.littleEndian, toByteOffset: o + 24, as: UInt64.self)
        b.storeBytes(of: r.length.littleEndian, toByteOffset: o + 32, as: UInt32.self)
        b.storeBytes(of: r.cookie.littleEndian, toByteOffset: o + 36, as: UInt32.self)
    }

    /// Writes one response (Linux `write()` of a `struct iommu_hwpt_page_response`): the code
    /// must be SUCCESS (0) or INVALID (1) and the cookie one that was read and not answered;
    /// otherwise `EINVAL` and nothing changes.
    public func respond(cookie: UInt32, code: UInt32) throws(IOMMUError) {
        let c: PageResponseCode
        switch code {
        case Self.responseSuccess: c = .success
        case Self.responseInvalid: c = .invalidRequest
        default: throw .invalidArgument("response code \(code) (only SUCCESS 0 and INVALID 1)")
        }
        guard let g = responses.removeValue(forKey: cookie) else { throw .invalidArgument("unknown cookie \(cookie)") }
        if cookie < lowestFreeCookie { lowestFreeCookie = cookie }
        core.respond(g, c)
    }

    /// Closes the queue (the fd released): every group still here is answered Invalid Request.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        compact()
        let all = deliver + responses.sorted { $0.key < $1.key }.map(\.value)
        deliver = []
        responses = [:]
        lowestFreeCookie = 1
        for g in all {
            autoResponses += 1
            core.respond(g, .invalidRequest)
        }
    }
}

extension IOMMUCore {
    /// A new fault queue for user space (Linux `IOMMU_FAULT_QUEUE_ALLOC`).
    public func allocFaultQueue() -> FaultQueue { FaultQueue(core: self) }

    /// Makes `queue` take the recoverable faults of `domain` (Linux `IOMMU_HWPT_ALLOC` with
    /// `IOMMU_HWPT_FAULT_ID_VALID`): only for user domains not yet attached anywhere.
    public func setFaultQueue(_ queue: FaultQueue, for domain: IOMMUDomain) throws(IOMMUError) {
        guard !queue.isClosed else { throw .invalidArgument("the fault queue is closed") }
        try setFaultHandler(queue, for: domain)
    }
}
