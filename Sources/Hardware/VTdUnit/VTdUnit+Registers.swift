import Platform
import Formats

extension VTdUnit {
    /// VT-d architecture version reported in VER_REG (major 6, minor 0 → 0x60).
    public static let versionRegisterValue: UInt32 = 0x60

    /// Bytes of register space: up to the last fault-recording register.
    public var registerSpaceSize: UInt32 { configuration.capability.faultRecordingOffset + UInt32(faultRecords.count) * 16 }

    // MARK: 64-bit access

    /// A 64-bit MMIO read at `offset`. Reserved or unknown offsets read as zero.
    public func read64(_ offset: UInt32) -> UInt64 {
        switch offset {
        case VTdRegister.capability: return configuration.capability.raw
        case VTdRegister.extendedCapability: return configuration.extendedCapability.raw
        case VTdRegister.rootTableAddress: return rootTableAddressRegister
        case VTdRegister.invalidationQueueHead: return invalidationQueueHead
        case VTdRegister.invalidationQueueTail: return invalidationQueueTail
        case VTdRegister.invalidationQueueAddress: return invalidationQueueAddress
        case VTdRegister.invalidationQueueErrorRecord: return invalidationQueueErrorRecord
        case VTdRegister.pageRequestQueueHead: return pageRequestQueueHead
        case VTdRegister.pageRequestQueueTail: return pageRequestQueueTail
        case VTdRegister.pageRequestQueueAddress: return pageRequestQueueAddress
        default:
            if let (i, half) = faultRecordSlot(offset), half == 0 { return faultRecords[i].0 }
            if let (i, half) = faultRecordSlot(offset), half == 8 { return faultRecords[i].1 }
            // The upper half of an access at the very top of the offset space reads as zero.
            let high = offset <= UInt32.max - 4 ? read32(offset + 4) : 0
            return UInt64(read32(offset)) | UInt64(high) << 32
        }
    }

    /// A 64-bit MMIO write at `offset`. Writes to read-only or unknown offsets are ignored.
    public func write64(_ offset: UInt32, _ value: UInt64) {
        trace(offset, value)
        switch offset {
        case VTdRegister.rootTableAddress:
            rootTableAddressRegister = value & (addressMask | 0xC00)
        case VTdRegister.invalidationQueueAddress:
            // Writable only while queued invalidation is disabled (VT-d §11.4.9.3).
            guard globalStatus & VTdGlobal.queuedInvalidationEnable == 0 else { return }
            invalidationQueueAddress = value & (addressMask | 0x807)
        case VTdRegister.invalidationQueueTail:
            writeQueueTail(value)
        case VTdRegister.pageRequestQueueAddress:
            pageRequestQueueAddress = value & (addressMask | 0x7)
            pageRequestQueueHead = 0
            pageRequestQueueTail = 0
        case VTdRegister.pageRequestQueueHead:
            // Software consumes entries by moving the head (bits 18:5); beyond the queue is ignored.
            let v = value & 0x7FFE0
            if v < pageRequestQueueBytes { pageRequestQueueHead = v }
        case VTdRegister.pageRequestQueueTail,
             VTdRegister.invalidationQueueHead, VTdRegister.capability, VTdRegister.extendedCapability,
             VTdRegister.invalidationQueueErrorRecord:
            return
        default:
            if let (i, half) = faultRecordSlot(offset), half == 8 {
                // F is RW1C; the rest is read-only.
                if value & (1 << 63) != 0 { faultRecords[i].1 &= ~(1 << 63) }
                return
            }
            write32(offset, UInt32(truncatingIfNeeded: value))
            if offset <= UInt32.max - 4 { write32(offset + 4, UInt32(truncatingIfNeeded: value >> 32)) }
        }
    }

    // MARK: 32-bit access

    /// A 32-bit MMIO read at `offset`. Reserved or unknown offsets read as zero.
    public func read32(_ offset: UInt32) -> UInt32 {
        switch offset {
        case VTdRegister.version: return Self.versionRegisterValue
        case VTdRegister.globalStatus: return globalStatus
        case VTdRegister.faultStatus:
            var v = faultStatus & ~VTdFaultStatus.primaryPendingFault
            if primaryPendingFault { v |= VTdFaultStatus.primaryPendingFault }
            return v
        case VTdRegister.faultEventControl: return faultEventControl
        case VTdRegister.invalidationCompletionStatus: return invalidationCompletionStatus
        case VTdRegister.invalidationEventControl: return invalidationEventControl
        case VTdRegister.pageRequestStatus: return pageRequestStatus
        case VTdRegister.pageRequestEventControl: return pageRequestEventControl
        case VTdRegister.pageRequestQueueHead, VTdRegister.pageRequestQueueTail, VTdRegister.pageRequestQueueAddress:
            return UInt32(truncatingIfNeeded: read64(offset))
        case VTdRegister.pageRequestQueueHead + 4, VTdRegister.pageRequestQueueTail + 4, VTdRegister.pageRequestQueueAddress + 4:
            return UInt32(truncatingIfNeeded: read64(offset - 4) >> 32)
        case VTdRegister.capability, VTdRegister.extendedCapability, VTdRegister.rootTableAddress,
             VTdRegister.invalidationQueueHead, VTdRegister.invalidationQueueTail, VTdRegister.invalidationQueueAddress,
             VTdRegister.invalidationQueueErrorRecord:
            return UInt32(truncatingIfNeeded: read64(offset))
        case VTdRegister.capability + 4, VTdRegister.extendedCapability + 4, VTdRegister.rootTableAddress + 4,
             VTdRegister.invalidationQueueHead + 4, VTdRegister.invalidationQueueTail + 4,
             VTdRegister.invalidationQueueAddress + 4, VTdRegister.invalidationQueueErrorRecord + 4:
            return UInt32(truncatingIfNeeded: read64(offset - 4) >> 32)
        default:
            if let (i, part) = faultRecordSlot(offset) {
                let q = part < 8 ? faultRecords[i].0 : faultRecords[i].1
                return UInt32(truncatingIfNeeded: part % 8 == 0 ? q : q >> 32)
            }
            return 0
        }
    }

    /// A 32-bit MMIO write at `offset`.
    public func write32(_ offset: UInt32, _ value: UInt32) {
        trace(offset, UInt64(value))
        switch offset {
        case VTdRegister.globalCommand: globalCommand(value)
        case VTdRegister.faultStatus:
            // PFO, IQE, ICE, ITE are RW1C.
            let clear = value & (VTdFaultStatus.primaryFaultOverflow | VTdFaultStatus.invalidationQueueError
                | VTdFaultStatus.invalidationCompletionError | VTdFaultStatus.invalidationTimeoutError)
            let hadIQE = faultStatus & VTdFaultStatus.invalidationQueueError != 0
            faultStatus &= ~clear
            if hadIQE && faultStatus & VTdFaultStatus.invalidationQueueError == 0 {
                invalidationQueueErrorRecord = 0
                kickQueue()
            }
        case VTdRegister.faultEventControl:
            faultEventControl = setMask(faultEventControl, value, handler: onFaultEvent)
        case VTdRegister.invalidationEventControl:
            invalidationEventControl = setMask(invalidationEventControl, value, handler: onInvalidationEvent)
        case VTdRegister.invalidationCompletionStatus:
            if value & 1 != 0 { invalidationCompletionStatus &= ~1 }
        case VTdRegister.pageRequestStatus:
            // PPR and PRO are RW1C.
            pageRequestStatus &= ~(value & (VTdPageRequestStatus.pending | VTdPageRequestStatus.overflow))
        case VTdRegister.pageRequestEventControl:
            pageRequestEventControl = setMask(pageRequestEventControl, value, handler: onPageRequestEvent)
        case VTdRegister.pageRequestQueueHead, VTdRegister.pageRequestQueueAddress:
            write64(offset, (read64(offset) & 0xFFFF_FFFF_0000_0000) | UInt64(value))
        case VTdRegister.pageRequestQueueHead + 4, VTdRegister.pageRequestQueueAddress + 4:
            write64(offset - 4, (read64(offset - 4) & 0xFFFF_FFFF) | UInt64(value) << 32)
        case VTdRegister.rootTableAddress, VTdRegister.invalidationQueueAddress, VTdRegister.invalidationQueueTail:
            write64(offset, (read64(offset) & 0xFFFF_FFFF_0000_0000) | UInt64(value))
        case VTdRegister.rootTableAddress + 4, VTdRegister.invalidationQueueAddress + 4, VTdRegister.invalidationQueueTail + 4:
            write64(offset - 4, (read64(offset - 4) & 0xFFFF_FFFF) | UInt64(value) << 32)
        default:
            if let (i, part) = faultRecordSlot(offset), part == 12, value & (1 << 31) != 0 {
                faultRecords[i].1 &= ~(1 << 63)
            }
        }
    }

    /// Updates IM in an event control register; unmasking delivers a pending interrupt.
    private func setMask(_ old: UInt32, _ value: UInt32, handler: (() -> Void)?) -> UInt32 {
        var v = (old & ~VTdEventControl.interruptMask) | (value & VTdEventControl.interruptMask)
        if v & VTdEventControl.interruptMask == 0 && v & VTdEventControl.interruptPending != 0 {
            v &= ~VTdEventControl.interruptPending
            deliver(handler)
        }
        return v
    }

    /// GCMD_REG: each command takes effect at once and is reflected in GSTS_REG (VT-d §11.4.4).
    private func globalCommand(_ value: UInt32) {
        if value & VTdGlobal.setRootTablePointer != 0 {
            activeRootTable = rootTableAddressRegister & ~0xFFF
            activeTTM = VTdRootTableAddress.mode(rootTableAddressRegister)
            globalStatus |= VTdGlobal.setRootTablePointer
        }
        if value & VTdGlobal.translationEnable != 0 {
            translationEnabled = true
            globalStatus |= VTdGlobal.translationEnable
        } else {
            translationEnabled = false
            globalStatus &= ~VTdGlobal.translationEnable
        }
        if value & VTdGlobal.queuedInvalidationEnable != 0 {
            if globalStatus & VTdGlobal.queuedInvalidationEnable == 0 {
                // Enabling QI resets the head to 0 (VT-d §6.5.2).
                invalidationQueueHead = 0
                globalStatus |= VTdGlobal.queuedInvalidationEnable
                kickQueue()
            }
        } else {
            globalStatus &= ~VTdGlobal.queuedInvalidationEnable
        }
        // WBF completes immediately: this model has no write buffer (CAP.RWBF = 0).
        globalStatus &= ~VTdGlobal.writeBufferFlush
    }

    /// (register index, byte offset within it) when `offset` is inside a fault-recording register.
    private func faultRecordSlot(_ offset: UInt32) -> (Int, UInt32)? {
        let base = configuration.capability.faultRecordingOffset
        guard offset >= base else { return nil }
        let i = Int((offset - base) / 16)
        guard i < faultRecords.count else { return nil }
        return (i, (offset - base) % 16)
    }

    private func trace(_ offset: UInt32, _ value: UInt64) {
        platform.trace.record(TraceEvent(time: scheduler.now, kind: .registerWrite, track: trackID, a: UInt64(offset), b: value))
    }
}
