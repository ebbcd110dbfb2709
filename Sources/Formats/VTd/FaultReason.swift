/// VT-d DMA-remapping fault reasons recorded in the FR field of a fault record
/// (VT-d spec §7.1.3 and appendix; scalable-mode codes 0x30–0x90 as Linux
/// drivers/iommu/intel/dmar.c `dma_remap_sm_fault_reasons` lists them).
public enum VTdFaultReason: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// Translation is enabled but no valid root table pointer was latched (legacy code 8).
    case rootTableInvalid = 0x08
    case smInvalidRootTableAddress = 0x30
    case smTTM0ForRequestWithPASID = 0x31
    case smTTM0ForPageGroupRequest = 0x32
    case smRootEntryAccessError = 0x38
    case smRootEntryNotPresent = 0x39
    case smRootEntryReserved = 0x3A
    case smContextEntryAccessError = 0x40
    case smContextEntryNotPresent = 0x41
    case smContextEntryReserved = 0x42
    case smContextEntryInvalid = 0x43
    case smDTEClear = 0x44
    case smPASIDEnableClear = 0x45
    case smPASIDTooLarge = 0x46
    case smPREClear = 0x47
    case smRIDPASIDError = 0x48
    case smPASIDDirectoryAccessError = 0x50
    case smPASIDDirectoryNotPresent = 0x51
    case smPASIDDirectoryReserved = 0x52
    case smPASIDEntryAccessError = 0x58
    case smPASIDEntryNotPresent = 0x59
    case smPASIDEntryReserved = 0x5A
    case smPASIDEntryInvalid = 0x5B
    case smEREClear = 0x5C
    case smSREClear = 0x5D
    case smFirstStageAccessError = 0x70
    case smFirstStageNotPresent = 0x71
    case smFirstStageReserved = 0x72
    case smFirstStagePML4AccessError = 0x73
    case smNestedFirstStageBeyondMGAW = 0x74
    case smNestedFirstStagePML4ReadError = 0x75
    case smNestedFirstStageReadError = 0x76
    case smNestedFirstStageWriteError = 0x77
    case smSecondStageAccessError = 0x78
    case smSecondStagePermission = 0x79
    case smSecondStageReserved = 0x7A
    case smSecondStagePointerInvalid = 0x7B
    case smSecondStageADNoSnoop = 0x7C
    case smNonCanonicalAddress = 0x80
    case smUserSupervisor = 0x81
    case smNoExecute = 0x82
    case smAddressBeyondMax = 0x83
    case smSecondStageOutputBeyondMax = 0x84
    case smNoWrite = 0x85
    case smNoRead = 0x86
    case smInterruptAddress = 0x87
    case smFirstStageADNoSnoop = 0x90

    public var description: String {
        let hex = String(rawValue, radix: 16)
        return "0x\(hex.count < 2 ? "0" + hex : hex) \(name)"
    }

    /// The Linux wording of the reason (dmar.c).
    public var name: String {
        switch self {
        case .rootTableInvalid: return "Error attempting to access root table"
        case .smInvalidRootTableAddress: return "SM: Invalid Root Table Address"
        case .smTTM0ForRequestWithPASID: return "SM: TTM 0 for request with PASID"
        case .smTTM0ForPageGroupRequest: return "SM: TTM 0 for page group request"
        case .smRootEntryAccessError: return "SM: Error attempting to access Root Entry"
        case .smRootEntryNotPresent: return "SM: Present bit in Root Entry is clear"
        case .smRootEntryReserved: return "SM: Non-zero reserved field set in Root Entry"
        case .smContextEntryAccessError: return "SM: Error attempting to access Context Entry"
        case .smContextEntryNotPresent: return "SM: Present bit in Context Entry is clear"
        case .smContextEntryReserved: return "SM: Non-zero reserved field set in the Context Entry"
        case .smContextEntryInvalid: return "SM: Invalid Context Entry"
        case .smDTEClear: return "SM: DTE field in Context Entry is clear"
        case .smPASIDEnableClear: return "SM: PASID Enable field in Context Entry is clear"
        case .smPASIDTooLarge: return "SM: PASID is larger than the max in Context Entry"
        case .smPREClear: return "SM: PRE field in Context-Entry is clear"
        case .smRIDPASIDError: return "SM: RID_PASID field error in Context-Entry"
        case .smPASIDDirectoryAccessError: return "SM: Error attempting to access the PASID Directory Entry"
        case .smPASIDDirectoryNotPresent: return "SM: Present bit in Directory Entry is clear"
        case .smPASIDDirectoryReserved: return "SM: Non-zero reserved field set in PASID Directory Entry"
        case .smPASIDEntryAccessError: return "SM: Error attempting to access PASID Table Entry"
        case .smPASIDEntryNotPresent: return "SM: Present bit in PASID Table Entry is clear"
        case .smPASIDEntryReserved: return "SM: Non-zero reserved field set in PASID Table Entry"
        case .smPASIDEntryInvalid: return "SM: Invalid Scalable-Mode PASID Table Entry"
        case .smEREClear: return "SM: ERE field is clear in PASID Table Entry"
        case .smSREClear: return "SM: SRE field is clear in PASID Table Entry"
        case .smFirstStageAccessError: return "SM: Error attempting to access first-level paging entry"
        case .smFirstStageNotPresent: return "SM: Present bit in first-level paging entry is clear"
        case .smFirstStageReserved: return "SM: Non-zero reserved field set in first-level paging entry"
        case .smFirstStagePML4AccessError: return "SM: Error attempting to access FL-PML4 entry"
        case .smNestedFirstStageBeyondMGAW: return "SM: First-level entry address beyond MGAW in Nested translation"
        case .smNestedFirstStagePML4ReadError: return "SM: Read permission error in FL-PML4 entry in Nested translation"
        case .smNestedFirstStageReadError: return "SM: Read permission error in first-level paging entry in Nested translation"
        case .smNestedFirstStageWriteError: return "SM: Write permission error in first-level paging entry in Nested translation"
        case .smSecondStageAccessError: return "SM: Error attempting to access second-level paging entry"
        case .smSecondStagePermission: return "SM: Read/Write permission error in second-level paging entry"
        case .smSecondStageReserved: return "SM: Non-zero reserved field set in second-level paging entry"
        case .smSecondStagePointerInvalid: return "SM: Invalid second-level page table pointer"
        case .smSecondStageADNoSnoop: return "SM: A/D bit update needed in second-level entry when set up in no snoop"
        case .smNonCanonicalAddress: return "SM: Address in first-level translation is not canonical"
        case .smUserSupervisor: return "SM: U/S set 0 for first-level translation with user privilege"
        case .smNoExecute: return "SM: No execute permission for request with PASID and ER=1"
        case .smAddressBeyondMax: return "SM: Address beyond the DMA hardware max"
        case .smSecondStageOutputBeyondMax: return "SM: Second-level entry address beyond the max"
        case .smNoWrite: return "SM: No write permission for Write/AtomicOp request"
        case .smNoRead: return "SM: No read permission for Read/AtomicOp request"
        case .smInterruptAddress: return "SM: Invalid address-interrupt address"
        case .smFirstStageADNoSnoop: return "SM: A/D bit update needed in first-level entry when set up in no snoop"
        }
    }
}
