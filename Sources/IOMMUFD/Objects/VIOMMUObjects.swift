import Platform
import Kernel

/// A vIOMMU (Linux `struct iommufd_viommu`, drivers/iommu/iommufd/viommu.c): the driver's
/// vIOMMU over a nesting parent, with the vDEVICEs, event queues, hardware queues and
/// nested HWPTs made on it, and the file windows its driver exposed.
public final class VIOMMUObject: IOMMUFDObject {
    public let viommu: IOMMUVIOMMU
    public let parent: HWPTPaging
    /// The physical unit it stands for (the device's driver and unit).
    let driver: ObjectIdentifier
    let unit: Int
    var vdevices: [UInt64: VDeviceObject] = [:]
    var eventQueues: [VEventQueueObject] = []

    init(viommu: IOMMUVIOMMU, parent: HWPTPaging, device: Device) {
        self.viommu = viommu; self.parent = parent
        driver = ObjectIdentifier(device.driver); unit = device.unit
        super.init(type: .viommu)
    }

    override func destroy(_ ctx: IOMMUFDContext) {
        viommu.reportEvent = nil
        viommu.destroy()
        viommu.addMmapRegion = nil
        viommu.removeMmapRegion = nil
        parent.users -= 1
    }
}

/// A vDEVICE (Linux `struct iommufd_vdevice`): a bound device's identity (`virt_id`) inside
/// a vIOMMU, one per device. It holds the vIOMMU and the device.
public final class VDeviceObject: IOMMUFDObject {
    public let viommu: VIOMMUObject
    public let device: DeviceObject
    public let virtualID: UInt64

    init(viommu: VIOMMUObject, device: DeviceObject, virtualID: UInt64) {
        self.viommu = viommu; self.device = device; self.virtualID = virtualID
        super.init(type: .vdevice)
    }

    override func destroy(_ ctx: IOMMUFDContext) {
        viommu.vdevices[virtualID] = nil
        viommu.viommu.virtualDevices[virtualID] = nil
        viommu.users -= 1
        device.vdevice = nil
        device.users -= 1
    }
}

/// A vEVENTQ (Linux `struct iommufd_veventq`): events of one type the driver reports for a
/// vIOMMU, read through its file as {flags, sequence} headers and payloads. A full queue
/// loses events and says so with one LOST_EVENTS header at its tail.
public final class VEventQueueObject: IOMMUFDObject {
    public let viommu: VIOMMUObject
    public let eventType: UInt32
    public let depth: UInt32
    /// Queued events: nil payload is the LOST_EVENTS header.
    private(set) var events: [(sequence: UInt32, payload: [UInt8]?)] = []
    /// Normal events queued (the LOST header does not count).
    public private(set) var count = 0
    private var sequence: UInt32 = 0
    public private(set) var isFileOpen = true
    /// Called when events become readable or the queue empties (the C ABI's eventfd).
    public var onReadinessChange: ((Bool) -> Void)?

    public static let headerSize = 8
    public static let flagLostEvents: UInt32 = 1

    init(viommu: VIOMMUObject, type: UInt32, depth: UInt32) {
        self.viommu = viommu; eventType = type; self.depth = depth
        super.init(type: .veventq)
    }

    private func nextSequence() -> UInt32 {
        let s = sequence
        sequence = sequence == UInt32(Int32.max) ? 0 : sequence + 1
        return s
    }

    /// Linux `iommufd_viommu_report_event` for this queue: a full queue (re)places the LOST
    /// header at the tail; a normal event removes a LOST header that is last.
    func report(_ payload: [UInt8]) {
        if count >= Int(depth) {
            if let last = events.last, last.payload == nil { events.removeLast() }
            events.append((nextSequence(), nil))
        } else {
            if let last = events.last, last.payload == nil { events.removeLast() }
            events.append((nextSequence(), payload))
            count += 1
        }
        onReadinessChange?(true)
    }

    /// read() of the file (Linux `iommufd_veventq_fops_read`): whole events while they fit,
    /// 0 when the first does not (or nothing waits); never blocks.
    public func read(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        var done = 0
        var taken = 0
        for e in events {
            let size = Self.headerSize + (e.payload?.count ?? 0)
            guard buffer.count - done >= size else { break }
            let flags: UInt32 = e.payload == nil ? Self.flagLostEvents : 0
            buffer.storeBytes(of: flags.littleEndian, toByteOffset: done, as: UInt32.self)
            buffer.storeBytes(of: e.sequence.littleEndian, toByteOffset: done + 4, as: UInt32.self)
            if let p = e.payload {
                for (i, b) in p.enumerated() { buffer[done + 8 + i] = b }
                count -= 1
            }
            done += size
            taken += 1
        }
        events.removeFirst(taken)
        if events.isEmpty { onReadinessChange?(false) }
        return done
    }

    /// Bytes the whole queue would read.
    public var readableBytes: Int { events.reduce(0) { $0 + Self.headerSize + ($1.payload?.count ?? 0) } }

    /// The file was closed: the queue can be destroyed once nothing else holds it.
    public func closeFile() {
        guard isFileOpen else { return }
        isFileOpen = false
        onReadinessChange = nil
        users -= 1
    }

    override func destroy(_ ctx: IOMMUFDContext) {
        events = []
        count = 0
        viommu.eventQueues.removeAll { $0 === self }
        viommu.users -= 1
    }
}

/// A hardware queue (Linux `struct iommufd_hw_queue`): guest memory, pinned and locked
/// through an internal access, that the driver gives to the unit as a command queue.
public final class HWQueueObject: IOMMUFDObject {
    public let viommu: VIOMMUObject
    public let index: UInt32
    let access: AccessObject
    let iova: UInt64
    let length: UInt64
    /// The queue this one depends on (it cannot be destroyed first).
    var dependsOn: HWQueueObject?

    init(viommu: VIOMMUObject, index: UInt32, access: AccessObject, iova: UInt64, length: UInt64) {
        self.viommu = viommu; self.index = index; self.access = access; self.iova = iova; self.length = length
        super.init(type: .hwQueue)
    }

    override func destroy(_ ctx: IOMMUFDContext) {
        viommu.viommu.destroyHardwareQueue(index: index)
        dependsOn?.users -= 1
        dependsOn = nil
        access.unpinPages(iova: iova, length: length)
        access.users -= 1
        ctx.destroyAccess(access)
        viommu.users -= 1
    }
}
