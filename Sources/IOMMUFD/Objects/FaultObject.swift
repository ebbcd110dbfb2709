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
    public func closeFile() {
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
        out.withUnsafeMutableBytes { b in for (i, r) in records.enumerated() { FaultQueue.encode(r, into: b, at: i * Self.recordSize) } }
        return out
    }

    /// `read(fd, buffer, count)` into caller memory: the bytes read.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        guard isFileOpen else { throw Errno(Errno.EBADF, "the fault file is closed") }
        guard buffer.count % Self.recordSize == 0 else { throw Errno(Errno.ESPIPE, "read of \(buffer.count) bytes: not a multiple of 40") }
        return queue.read(into: buffer)
    }

    /// `write()` of response records: each must name a cookie that was read and not
    /// answered and a code SUCCESS or INVALID; stops at the first bad one, returning the
    /// bytes taken before it (EINVAL if it is the first); ESPIPE unless the length is a
    /// multiple of the response size.
    public func write(_ bytes: [UInt8]) throws(Errno) -> Int {
        var result: Result<Int, Errno> = .success(0)
        bytes.withUnsafeBytes { b in
            do throws(Errno) { result = .success(try write(from: b)) } catch { result = .failure(error) }
        }
        return try result.get()
    }

    /// `write(fd, buffer, count)` from caller memory.
    public func write(from bytes: UnsafeRawBufferPointer) throws(Errno) -> Int {
        guard isFileOpen else { throw Errno(Errno.EBADF, "the fault file is closed") }
        guard bytes.count % Self.responseSize == 0 else { throw Errno(Errno.ESPIPE, "write of \(bytes.count) bytes: not a multiple of 8") }
        var done = 0
        while done < bytes.count {
            let cookie = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: done, as: UInt32.self))
            let code = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: done + 4, as: UInt32.self))
            do throws(IOMMUError) { try queue.respond(cookie: cookie, code: code) } catch {
                if done == 0 { throw Errno(error) }
                break
            }
            done += Self.responseSize
        }
        return done
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
