import Platform
import Formats
import Kernel

/// The run-time side of a buffer set or a DMA ring: where each buffer is for the device
/// (IOVA, or physical address in an identity domain), how long, and whether it is posted
/// (mapped and handed to the device). DMA streams pick targets from these.
final class LiveBuffers {
    let name: String
    /// DMA address of each buffer.
    @exclusivity(unchecked) var addresses: [UInt64]
    /// Frames behind each buffer, page by page.
    var frames: [[UInt64]]
    @exclusivity(unchecked) var live: [Bool]
    let length: UInt64
    /// The device may only write (a receive buffer) or only read.
    let writeOnly: Bool
    let readOnly: Bool
    /// The domain the set was mapped into (nil while unmapped or identity).
    var domain: IOMMUDomain?
    var mapped = false

    init(name: String, count: Int, length: UInt64, writeOnly: Bool = false, readOnly: Bool = false) {
        self.name = name
        self.length = length
        self.writeOnly = writeOnly
        self.readOnly = readOnly
        addresses = [UInt64](repeating: 0, count: count)
        frames = [[UInt64]](repeating: [], count: count)
        live = [Bool](repeating: false, count: count)
    }

    var count: Int { addresses.count }
}
