/// VT-d remapping-unit register offsets (VT-d spec §10.4; Linux include/linux/intel-iommu.h
/// `DMAR_*_REG`). Registers are accessed as 32- or 64-bit MMIO at these byte offsets.
public enum VTdRegister {
    @inlinable public static var version: UInt32 { 0x00 }          // VER_REG (32)
    @inlinable public static var capability: UInt32 { 0x08 }       // CAP_REG (64)
    @inlinable public static var extendedCapability: UInt32 { 0x10 } // ECAP_REG (64)
    @inlinable public static var globalCommand: UInt32 { 0x18 }    // GCMD_REG (32)
    @inlinable public static var globalStatus: UInt32 { 0x1C }     // GSTS_REG (32)
    @inlinable public static var rootTableAddress: UInt32 { 0x20 } // RTADDR_REG (64)
    @inlinable public static var contextCommand: UInt32 { 0x28 }   // CCMD_REG (64)
    @inlinable public static var faultStatus: UInt32 { 0x34 }      // FSTS_REG (32)
    @inlinable public static var faultEventControl: UInt32 { 0x38 } // FECTL_REG (32)
    @inlinable public static var faultEventData: UInt32 { 0x3C }
    @inlinable public static var faultEventAddress: UInt32 { 0x40 }
    @inlinable public static var faultEventUpperAddress: UInt32 { 0x44 }
    @inlinable public static var invalidationQueueHead: UInt32 { 0x80 }    // IQH_REG (64)
    @inlinable public static var invalidationQueueTail: UInt32 { 0x88 }    // IQT_REG (64)
    @inlinable public static var invalidationQueueAddress: UInt32 { 0x90 } // IQA_REG (64)
    @inlinable public static var invalidationCompletionStatus: UInt32 { 0x9C } // ICS_REG (32)
    @inlinable public static var invalidationEventControl: UInt32 { 0xA0 } // IECTL_REG (32)
    @inlinable public static var invalidationQueueErrorRecord: UInt32 { 0xB0 } // IQERCD_REG (64)
    @inlinable public static var pageRequestQueueHead: UInt32 { 0xC0 }     // PQH_REG (64)
    @inlinable public static var pageRequestQueueTail: UInt32 { 0xC8 }     // PQT_REG (64)
    @inlinable public static var pageRequestQueueAddress: UInt32 { 0xD0 }  // PQA_REG (64)
    @inlinable public static var pageRequestStatus: UInt32 { 0xDC }        // PRS_REG (32)
    @inlinable public static var pageRequestEventControl: UInt32 { 0xE0 }  // PECTL_REG (32)
    /// IOTLB registers (IVA, IOTLB) at ECAP.IRO * 16.
    @inlinable public static var iotlbRegisters: UInt32 { 0xF0 }
    /// First fault-recording register at CAP.FRO * 16; each is 128 bits.
    @inlinable public static var faultRecording: UInt32 { 0x220 }
}

/// GCMD_REG / GSTS_REG bits (VT-d §11.4.4, §11.4.5): command bit N sets status bit N.
public enum VTdGlobal {
    @inlinable public static var translationEnable: UInt32 { 1 << 31 }      // TE / TES
    @inlinable public static var setRootTablePointer: UInt32 { 1 << 30 }    // SRTP / RTPS
    @inlinable public static var setFaultLog: UInt32 { 1 << 29 }            // SFL / FLS
    @inlinable public static var enableAdvancedFaultLog: UInt32 { 1 << 28 } // EAFL / AFLS
    @inlinable public static var writeBufferFlush: UInt32 { 1 << 27 }       // WBF / WBFS
    @inlinable public static var queuedInvalidationEnable: UInt32 { 1 << 26 } // QIE / QIES
    @inlinable public static var interruptRemappingEnable: UInt32 { 1 << 25 } // IRE / IRES
    @inlinable public static var setInterruptRemapTablePointer: UInt32 { 1 << 24 } // SIRTP / IRTPS
    @inlinable public static var compatibilityFormatInterrupt: UInt32 { 1 << 23 } // CFI / CFIS
}

/// RTADDR_REG fields (VT-d §11.4.6): root table address 63:12, TTM 11:10.
public enum VTdRootTableAddress {
    /// Translation table mode: 0 legacy, 1 scalable, 2 reserved, 3 abort-DMA.
    public static func mode(_ v: UInt64) -> UInt8 { UInt8((v >> 10) & 3) }
    @inlinable public static var scalableMode: UInt64 { 1 << 10 }
    @inlinable public static var abortDMAMode: UInt64 { 3 << 10 }
}

/// FSTS_REG bits (VT-d §11.4.7.1).
public enum VTdFaultStatus {
    @inlinable public static var primaryFaultOverflow: UInt32 { 1 << 0 }   // PFO (RW1C)
    @inlinable public static var primaryPendingFault: UInt32 { 1 << 1 }    // PPF (RO)
    @inlinable public static var invalidationQueueError: UInt32 { 1 << 4 } // IQE (RW1C)
    @inlinable public static var invalidationCompletionError: UInt32 { 1 << 5 } // ICE (RW1C)
    @inlinable public static var invalidationTimeoutError: UInt32 { 1 << 6 }    // ITE (RW1C)
    /// FRI: bits 15:8, index of the first pending fault record.
    public static func faultRecordIndex(_ v: UInt32) -> Int { Int((v >> 8) & 0xFF) }
}

/// Event control registers (FECTL, IECTL, PECTL): IM bit 31 (mask), IP bit 30 (pending).
public enum VTdEventControl {
    @inlinable public static var interruptMask: UInt32 { 1 << 31 }
    @inlinable public static var interruptPending: UInt32 { 1 << 30 }
}

/// IQA_REG fields (VT-d §11.4.9.3): base 63:12, DW bit 11 (256-bit descriptors), QS 2:0
/// (queue is 2^QS 4 KiB pages).
public enum VTdQueueAddress {
    @inlinable public static var wideDescriptors: UInt64 { 1 << 11 }
    public static func make(base: UInt64, sizeOrder: UInt8, wide: Bool) -> UInt64 {
        (base & ~0xFFF) | (wide ? wideDescriptors : 0) | UInt64(sizeOrder & 7)
    }
}

/// IQERCD_REG IQEI codes (VT-d §11.4.9.x, bits 3:0): why the invalidation queue stopped.
public enum InvalidationQueueErrorCode: UInt8, Sendable, CaseIterable {
    case none = 0
    /// The tail written is beyond the queue or not aligned to the descriptor size.
    case invalidTail = 1
    /// A descriptor fetch failed (queue memory not accessible).
    case fetchError = 2
    /// Reserved or unsupported descriptor type.
    case invalidType = 3
    /// Reserved bits set in a descriptor.
    case reservedBits = 4
    /// A 256-bit descriptor type submitted in a 128-bit queue.
    case needsWideDescriptors = 5
    /// The status address of a wait descriptor is not accessible.
    case invalidWaitAddress = 6
}

/// CAP_REG fields (VT-d §11.4.2).
public struct VTdCapability: Equatable, Sendable {
    public var raw: UInt64
    public init(raw: UInt64) { self.raw = raw }

    /// Number of domain IDs: 2^(4 + 2*ND).
    public var numberOfDomains: Int { 1 << (4 + 2 * Int(raw & 7)) }
    public var cachingMode: Bool { raw & (1 << 7) != 0 }
    /// SAGAW bits 12:8: bit 1 = 39-bit (3-level), bit 2 = 48-bit (4-level), bit 3 = 57-bit (5-level).
    public var sagaw: UInt8 { UInt8((raw >> 8) & 0x1F) }
    public func supportsSecondStage(levels: Int) -> Bool { (3...5).contains(levels) && sagaw & (1 << (levels - 2)) != 0 }
    /// MGAW bits 21:16: maximum guest address width minus one.
    public var mgaw: Int { Int((raw >> 16) & 0x3F) + 1 }
    /// FRO bits 33:24: fault-recording register offset in 16-byte units.
    public var faultRecordingOffset: UInt32 { UInt32((raw >> 24) & 0x3FF) * 16 }
    /// SLLPS bits 37:34: bit 0 = 2 MiB, bit 1 = 1 GiB second-stage superpages.
    public var secondStageLargePages: UInt8 { UInt8((raw >> 34) & 0xF) }
    public var pageSelectiveInvalidation: Bool { raw & (1 << 39) != 0 }
    /// NFR bits 47:40: number of fault-recording registers minus one.
    public var numberOfFaultRecords: Int { Int((raw >> 40) & 0xFF) + 1 }
    /// MAMV bits 53:48: maximum address-mask value for page-selective invalidation.
    public var maximumAddressMask: UInt8 { UInt8((raw >> 48) & 0x3F) }
    public var firstStage1GPages: Bool { raw & (1 << 56) != 0 }
    public var firstStage5Level: Bool { raw & (1 << 60) != 0 }

    public static func make(domainIDBits: Int = 16, sagawLevels: [Int] = [4, 5], mgaw: Int = 57, faultRecords: Int = 8,
                            faultRecordingOffset: UInt32 = VTdRegister.faultRecording, largePages2M: Bool = true,
                            largePages1G: Bool = true, maxAddressMask: UInt8 = 18, cachingMode: Bool = false) -> VTdCapability {
        var v: UInt64 = UInt64(max(0, min(6, (domainIDBits - 4) / 2)))
        if cachingMode { v |= 1 << 7 }
        for l in sagawLevels where (3...5).contains(l) { v |= 1 << UInt64(8 + l - 2) }
        v |= UInt64((mgaw - 1) & 0x3F) << 16
        v |= UInt64((faultRecordingOffset / 16) & 0x3FF) << 24
        if largePages2M { v |= 1 << 34 }
        if largePages1G { v |= 1 << 35 }
        v |= 1 << 39 // PSI
        v |= UInt64((faultRecords - 1) & 0xFF) << 40
        v |= UInt64(maxAddressMask & 0x3F) << 48
        v |= 1 << 54 | 1 << 55 // DWD, DRD
        if largePages1G { v |= 1 << 56 } // FS1GP
        v |= 1 << 60 // FS5LP
        return VTdCapability(raw: v)
    }
}

/// ECAP_REG fields (VT-d §11.4.3).
public struct VTdExtendedCapability: Equatable, Sendable {
    public var raw: UInt64
    public init(raw: UInt64) { self.raw = raw }

    public var queuedInvalidation: Bool { raw & (1 << 1) != 0 }       // QI
    public var deviceTLB: Bool { raw & (1 << 2) != 0 }                // DT
    public var passThrough: Bool { raw & (1 << 6) != 0 }              // PT
    public var iotlbRegisterOffset: UInt32 { UInt32((raw >> 8) & 0x3FF) * 16 } // IRO
    public var nested: Bool { raw & (1 << 26) != 0 }                  // NEST
    public var pageRequests: Bool { raw & (1 << 29) != 0 }            // PRS
    public var executeRequests: Bool { raw & (1 << 30) != 0 }         // ERS
    public var supervisorRequests: Bool { raw & (1 << 31) != 0 }      // SRS
    /// PSS bits 39:35: PASID size supported, minus one (20 bits → 19).
    public var pasidBits: Int { Int((raw >> 35) & 0x1F) + 1 }
    public var pasid: Bool { raw & (1 << 40) != 0 }                   // PASID
    public var scalableMode: Bool { raw & (1 << 43) != 0 }            // SMTS
    public var secondStageAD: Bool { raw & (1 << 45) != 0 }           // SSADS
    public var secondStage: Bool { raw & (1 << 46) != 0 }             // SSTS
    public var firstStage: Bool { raw & (1 << 47) != 0 }              // FSTS
    public var extendedAccessed: Bool { raw & (1 << 52) != 0 }        // EAFS

    public static func make(passThrough: Bool = true, nested: Bool = true, pageRequests: Bool = true,
                            deviceTLB: Bool = true, pasidBits: Int = 20, firstStage: Bool = true,
                            secondStage: Bool = true, secondStageAD: Bool = true) -> VTdExtendedCapability {
        var v: UInt64 = 1 << 1 // QI
        if deviceTLB { v |= 1 << 2 }
        if passThrough { v |= 1 << 6 }
        v |= UInt64((VTdRegister.iotlbRegisters / 16) & 0x3FF) << 8
        if nested { v |= 1 << 26 }
        if pageRequests { v |= 1 << 29 }
        v |= 1 << 30 | 1 << 31 // ERS, SRS
        v |= UInt64((pasidBits - 1) & 0x1F) << 35
        v |= 1 << 40 // PASID
        v |= 1 << 43 // SMTS
        if secondStageAD { v |= 1 << 45 }
        if secondStage { v |= 1 << 46 }
        if firstStage { v |= 1 << 47 }
        return VTdExtendedCapability(raw: v)
    }
}

/// A primary fault record, 128 bits (VT-d §11.4.14, FRCD_REG).
/// - qw0: `FI` 63:12 (faulting page address).
/// - qw1: `SID` 15:0, `PRIV` 29 (bit 93), `EXE` 30 (bit 94), `PP` 31 (bit 95, PASID present),
///   `FR` 39:32 (bits 103:96), `PV` 59:40 (bits 123:104, PASID value), `AT` 61:60,
///   `T` 62 (bit 126: 1 = read, 0 = write; Linux `dma_frcd_type`), `F` 63 (bit 127, fault).
public struct FaultRecord: Equatable, Sendable {
    public var source: RequesterID
    public var reason: UInt8
    public var address: UInt64
    public var pasid: PASID?
    public var isRead: Bool
    public var execute: Bool
    public var privileged: Bool

    public init(source: RequesterID, reason: UInt8, address: UInt64, pasid: PASID?, isRead: Bool,
                execute: Bool = false, privileged: Bool = false) {
        self.source = source; self.reason = reason; self.address = address & ~0xFFF
        self.pasid = pasid; self.isRead = isRead; self.execute = execute; self.privileged = privileged
    }

    /// The two quadwords with F set.
    public func encode() -> (UInt64, UInt64) {
        var hi = UInt64(source.rawValue) | UInt64(reason) << 32 | 1 << 63
        if privileged { hi |= 1 << 29 }
        if execute { hi |= 1 << 30 }
        if let pasid { hi |= 1 << 31 | UInt64(pasid.rawValue) << 40 }
        if isRead { hi |= 1 << 62 }
        return (address & ~0xFFF, hi)
    }

    /// Decodes a record; nil when F is clear.
    public static func decode(_ lo: UInt64, _ hi: UInt64) -> FaultRecord? {
        guard hi & (1 << 63) != 0 else { return nil }
        let pp = hi & (1 << 31) != 0
        return FaultRecord(source: RequesterID(rawValue: UInt16(truncatingIfNeeded: hi)), reason: UInt8((hi >> 32) & 0xFF),
                           address: lo & ~0xFFF, pasid: pp ? PASID(truncating: UInt32((hi >> 40) & 0xFFFFF)) : nil,
                           isRead: hi & (1 << 62) != 0, execute: hi & (1 << 30) != 0, privileged: hi & (1 << 29) != 0)
    }
}
