/// The iommufd commands of the pinned uAPI: Linux v6.17 include/uapi/linux/iommufd.h, whose
/// last command is `IOMMU_HW_QUEUE_ALLOC` (0x94). Every number is `_IO(';', nr)` =
/// 0x3b00 | nr (no direction or size bits: the size is the struct's first u32). `size` and
/// `minimumSize` are the kernel's `sizeof` and `offsetofend(struct, last)` of the
/// `IOCTL_OP` table in drivers/iommu/iommufd/main.c (x86-64).
public enum IOMMUFDCommand: UInt8, CaseIterable, Sendable {
    case destroy = 0x80
    case ioasAlloc = 0x81
    case ioasAllowIOVAs = 0x82
    case ioasCopy = 0x83
    case ioasIOVARanges = 0x84
    case ioasMap = 0x85
    case ioasUnmap = 0x86
    case option = 0x87
    case vfioIOAS = 0x88
    case hwptAlloc = 0x89
    case getHWInfo = 0x8a
    case hwptSetDirtyTracking = 0x8b
    case hwptGetDirtyBitmap = 0x8c
    case hwptInvalidate = 0x8d
    case faultQueueAlloc = 0x8e
    case ioasMapFile = 0x8f
    case viommuAlloc = 0x90
    case vdeviceAlloc = 0x91
    case ioasChangeProcess = 0x92
    case veventqAlloc = 0x93
    case hwQueueAlloc = 0x94

    /// `IOMMUFD_TYPE` (';').
    public static let type: UInt32 = 0x3b

    /// The ioctl number (`_IO(IOMMUFD_TYPE, nr)`).
    @inlinable public var number: UInt32 { Self.type << 8 | UInt32(rawValue) }

    /// `sizeof` the command's struct.
    public var size: Int {
        switch self {
        case .destroy, .ioasChangeProcess: return 8
        case .ioasAlloc, .vfioIOAS: return 12
        case .hwptSetDirtyTracking, .faultQueueAlloc: return 16
        case .ioasAllowIOVAs, .ioasUnmap, .option, .vdeviceAlloc: return 24
        case .ioasIOVARanges, .hwptInvalidate, .veventqAlloc: return 32
        case .ioasCopy, .ioasMap, .getHWInfo, .ioasMapFile, .viommuAlloc, .hwQueueAlloc: return 40
        case .hwptAlloc, .hwptGetDirtyBitmap: return 48
        }
    }

    /// The smallest `size` the kernel accepts (older layouts of grown structs).
    public var minimumSize: Int {
        switch self {
        case .getHWInfo: return 32      // before out_capabilities
        case .hwptAlloc: return 24      // before data_type..fault_id
        case .veventqAlloc: return 28   // trailing __reserved optional
        case .viommuAlloc: return 24    // before data_len, data_uptr
        default: return size
        }
    }

    /// The kernel's macro name.
    public var name: String {
        switch self {
        case .destroy: return "IOMMU_DESTROY"
        case .ioasAlloc: return "IOMMU_IOAS_ALLOC"
        case .ioasAllowIOVAs: return "IOMMU_IOAS_ALLOW_IOVAS"
        case .ioasCopy: return "IOMMU_IOAS_COPY"
        case .ioasIOVARanges: return "IOMMU_IOAS_IOVA_RANGES"
        case .ioasMap: return "IOMMU_IOAS_MAP"
        case .ioasUnmap: return "IOMMU_IOAS_UNMAP"
        case .option: return "IOMMU_OPTION"
        case .vfioIOAS: return "IOMMU_VFIO_IOAS"
        case .hwptAlloc: return "IOMMU_HWPT_ALLOC"
        case .getHWInfo: return "IOMMU_GET_HW_INFO"
        case .hwptSetDirtyTracking: return "IOMMU_HWPT_SET_DIRTY_TRACKING"
        case .hwptGetDirtyBitmap: return "IOMMU_HWPT_GET_DIRTY_BITMAP"
        case .hwptInvalidate: return "IOMMU_HWPT_INVALIDATE"
        case .faultQueueAlloc: return "IOMMU_FAULT_QUEUE_ALLOC"
        case .ioasMapFile: return "IOMMU_IOAS_MAP_FILE"
        case .viommuAlloc: return "IOMMU_VIOMMU_ALLOC"
        case .vdeviceAlloc: return "IOMMU_VDEVICE_ALLOC"
        case .ioasChangeProcess: return "IOMMU_IOAS_CHANGE_PROCESS"
        case .veventqAlloc: return "IOMMU_VEVENTQ_ALLOC"
        case .hwQueueAlloc: return "IOMMU_HW_QUEUE_ALLOC"
        }
    }
}

/// Flag and type values of the pinned uAPI (include/uapi/linux/iommufd.h, v6.17).
public enum UAPI {
    // enum iommufd_ioas_map_flags
    public static let mapFixedIOVA: UInt32 = 1 << 0
    public static let mapWriteable: UInt32 = 1 << 1
    public static let mapReadable: UInt32 = 1 << 2
    // enum iommufd_option, iommufd_option_ops
    public static let optionRlimitMode: UInt32 = 0
    public static let optionHugePages: UInt32 = 1
    public static let optionOpSet: UInt16 = 0
    public static let optionOpGet: UInt16 = 1
    // enum iommufd_vfio_ioas_op
    public static let vfioIOASGet: UInt16 = 0
    public static let vfioIOASSet: UInt16 = 1
    public static let vfioIOASClear: UInt16 = 2
    // enum iommufd_hwpt_alloc_flags
    public static let hwptAllocNestParent: UInt32 = 1 << 0
    public static let hwptAllocDirtyTracking: UInt32 = 1 << 1
    public static let hwptFaultIDValid: UInt32 = 1 << 2
    public static let hwptAllocPASID: UInt32 = 1 << 3
    // enum iommu_hwpt_data_type
    public static let hwptDataNone: UInt32 = 0
    public static let hwptDataVTdS1: UInt32 = 1
    public static let hwptDataARMSMMUv3: UInt32 = 2
    // enum iommu_hw_info_type, iommufd_hw_info_flags, iommufd_hw_capabilities
    public static let hwInfoTypeDefault: UInt32 = 0
    public static let hwInfoTypeIntelVTd: UInt32 = 1
    public static let hwInfoTypeARMSMMUv3: UInt32 = 2
    public static let hwInfoFlagInputType: UInt32 = 1 << 0
    public static let hwCapDirtyTracking: UInt64 = 1 << 0
    public static let hwCapPCIPASIDExec: UInt64 = 1 << 1
    public static let hwCapPCIPASIDPriv: UInt64 = 1 << 2
    // dirty tracking
    public static let dirtyTrackingEnable: UInt32 = 1
    public static let getDirtyBitmapNoClear: UInt32 = 1
    // enum iommu_hwpt_invalidate_data_type
    public static let invalidateDataVTdS1: UInt32 = 0
    public static let invalidateDataARMSMMUv3: UInt32 = 1
    // enum iommu_viommu_type, iommu_veventq_type, iommu_hw_queue_type
    public static let viommuTypeDefault: UInt32 = 0
    public static let veventqTypeDefault: UInt32 = 0
    public static let hwQueueTypeDefault: UInt32 = 0
    /// `struct iommu_iova_range` (16 bytes: start, last inclusive).
    public static let iovaRangeSize = 16
}
