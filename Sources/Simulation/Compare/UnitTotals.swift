import Formats

/// The machine's IOMMU counters summed over its units, as `RunResult` sums them: IOTLB
/// hits and misses, translation faults, invalidation descriptors (VT-d: context, IOTLB,
/// device-TLB and their PASID forms; SMMUv3: CFGI, TLBI and ATC_INV commands) and waits
/// (VT-d wait descriptors, SMMUv3 CMD_SYNCs).
public struct UnitTotals: Sendable, Equatable {
    public var iotlbHits: UInt64 = 0
    public var iotlbMisses: UInt64 = 0
    public var faults: UInt64 = 0
    public var invalidations: UInt64 = 0
    public var waits: UInt64 = 0

    public init() {}

    static let vtdTypes: [UInt8] = [
        InvalidationDescriptor.contextCacheType, InvalidationDescriptor.iotlbType, InvalidationDescriptor.deviceTLBType,
        InvalidationDescriptor.pasidIOTLBType, InvalidationDescriptor.pasidCacheType, InvalidationDescriptor.pasidDeviceTLBType,
    ]
    /// SMMUv3 opcodes of CFGI_* (0x03–0x06), TLBI_* (0x10–0x30) and ATC_INV (0x40).
    static let smmuOpcodes: [Int] = [0x03, 0x04, 0x05, 0x06, 0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x22, 0x28, 0x2A, 0x30, 0x40]

    public init(_ m: Machine) {
        for u in m.units {
            let c = u.counters
            iotlbHits &+= c.iotlbHits; iotlbMisses &+= c.iotlbMisses; faults &+= c.faults
            for t in Self.vtdTypes { invalidations &+= c.descriptorsByType[Int(t)] }
            waits &+= c.waitsCompleted
        }
        for u in m.smmuUnits {
            let c = u.counters
            iotlbHits &+= c.tlbHits; iotlbMisses &+= c.tlbMisses
            faults &+= c.eventsRecorded &+ c.eventsLost &+ c.faultsNotRecorded
            for op in Self.smmuOpcodes where op < c.commandsByOpcode.count { invalidations &+= c.commandsByOpcode[op] }
            waits &+= c.syncsCompleted
        }
    }
}
