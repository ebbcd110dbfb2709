import Platform
import Kernel

/// A fault object (Linux `struct iommufd_fault`, drivers/iommu/iommufd/eventq.c): the
/// queue that HWPTs allocated with it deliver their page request groups to, and the file
/// user space reads `iommu_hwpt_pgfault` records from and writes
/// `iommu_hwpt_page_response` records to. The open file and every HWPT using it hold it:
/// closing the file does not stop delivery (groups wait for a reader, as in Linux), and
/// only its destruction answers every group still here INVALID.
public final class FaultObject: IOMMUFDObject {
    public let queue: FaultQueue
    public private(set) var isFileOpen = true

    init(ctx: IOMMUFDContext) {
        queue = FaultQueue(core: ctx.core)
        super.init(type: .fault)
        queue.deviceID = { [unowned(unsafe) ctx] device in ctx.deviceObject(for: device)?.id ?? 0 }
    }

    override func destroy(_ ctx: IOMMUFDContext) { queue.close() }

    /// Closes the file (its reference goes; the object stays while HWPTs use it).
    func closeFile() {
        guard isFileOpen else { return }
        isFileOpen = false
        users -= 1
    }

    static let recordSize = 40
    static let responseSize = 8

    /// `read()` of `count` bytes: whole groups only, never blocking (0 bytes when nothing
    /// fits); ESPIPE unless `count` is a multiple of the record size.
    public func read(count: Int) throws(Errno) -> [UInt8] {
        guard isFileOpen else { throw Errno(Errno.EBADF, "the fault file is closed") }
        guard count >= 0, count % Self.recordSize == 0 else { throw Errno(Errno.ESPIPE, "read of \(count) bytes: not a multiple of 40") }
        let records = queue.read(maxRecords: count / Self.recordSize)
        var out = [UInt8](repeating: 0, count: records.count * Self.recordSize)
        for (i, r) in records.enumerated() { Self.encode(r, into: &out, at: i * Self.recordSize) }
        return out
    }

    /// `write()` of response records: each must name a cookie that was read and not
    /// answered and a code SUCCESS or INVALID; stops at the first bad one, returning the
    /// bytes taken before it (EINVAL if it is the first); ESPIPE unless the length is a
    /// multiple of the response size.
    public func write(_ bytes: [UInt8]) throws(Errno) -> Int {
        guard isFileOpen else { throw Errno(Errno.EBADF, "the fault file is closed") }
        guard bytes.count % Self.responseSize == 0 else { throw Errno(Errno.ESPIPE, "write of \(bytes.count) bytes: not a multiple of 8") }
        var done = 0
        while done < bytes.count {
            let r = StructBytes(bytes: Array(bytes[done..<done + Self.responseSize]))
            do throws(IOMMUError) { try queue.respond(cookie: r.u32(0), code: r.u32(4)) } catch {
                if done == 0 { throw Errno(error) }
                break
            }
            done += Self.responseSize
        }
        return done
    }

    /// Encodes a record as `struct iommu_hwpt_pgfault` (40 bytes).
    static func encode(_ r: FaultQueue.Record, into out: inout [UInt8], at o: Int) {
        func put32(_ off: Int, _ v: UInt32) { for i in 0..<4 { out[o + off + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
        put32(0, r.flags); put32(4, r.devID); put32(8, r.pasid); put32(12, r.groupIndex); put32(16, r.permissions)
        put32(20, 0)
        for i in 0..<8 { out[o + 24 + i] = UInt8(truncatingIfNeeded: r.address >> (8 * UInt64(i))) }
        put32(32, r.length); put32(36, r.cookie)
    }

    /// Decodes one record read from the file.
    public static func decode(_ bytes: [UInt8], at o: Int = 0) -> FaultQueue.Record {
        let b = StructBytes(bytes: Array(bytes[o..<o + recordSize]))
        return FaultQueue.Record(flags: b.u32(0), devID: b.u32(4), pasid: b.u32(8), groupIndex: b.u32(12), permissions: b.u32(16),
                                 address: b.u64(24), length: b.u32(32), cookie: b.u32(36))
    }
}

extension IOMMUFDContext {
    /// IOMMU_FAULT_QUEUE_ALLOC's object and file; returns the object.
    public func allocFault() throws(Errno) -> FaultObject {
        let f = FaultObject(ctx: self)
        try add(f)
        f.users = 1 // the file
        return f
    }

    /// The fault object behind a fault file descriptor the context handed out.
    public func faultObject(_ id: UInt32) throws(Errno) -> FaultObject { try get(id, .fault) }

    /// Closes a fault file (`close(fd)`).
    public func closeFaultFile(_ id: UInt32) throws(Errno) {
        let f: FaultObject = try get(id, .fault)
        f.closeFile()
    }
}
