import Formats

/// The direction of a streaming DMA mapping (Linux `enum dma_data_direction`).
public enum DMADirection: String, Sendable, CaseIterable {
    /// The device reads and writes the buffer.
    case bidirectional
    /// The device reads the buffer (a transmit ring).
    case toDevice
    /// The device writes the buffer (a receive ring).
    case fromDevice

    /// What the IOMMU lets the device do (Linux `dma_info_to_prot`).
    public var permissions: PagePermissions {
        switch self {
        case .bidirectional: return .readWrite
        case .toDevice: return .read
        case .fromDevice: return .write
        }
    }
}

/// One element of a scatter list (Linux `struct scatterlist`): a physically contiguous
/// piece of a buffer.
public struct ScatterSegment: Equatable, Sendable {
    public var physical: UInt64
    public var length: UInt64
    public init(physical: UInt64, length: UInt64) { self.physical = physical; self.length = length }
}

/// A scatter list mapped into one contiguous IOVA range (Linux `iommu_dma_map_sg`): each
/// segment starts at its own offset within a granule, segments follow each other granule
/// by granule.
public struct DMAScatterMapping: Equatable, Sendable {
    /// The DMA address of each segment, in list order.
    public var addresses: [UInt64]
    /// Lengths, as given.
    public var lengths: [UInt64]
    /// The whole IOVA range (granule aligned) that `unmapSG` releases.
    public var iova: UInt64
    public var size: UInt64
}
