import Testing
import Formats
import Hardware
import Kernel
import IOMMUFD

/// IOMMU_HWPT_ALLOC check order (drivers/iommu/iommufd/hw_pagetable.c iommufd_hwpt_alloc).
@Suite struct HWPTAllocRuleTests {
    struct Setup {
        let rig: IOMMUFDRig
        let devID: UInt32
        let ioas: UInt32
    }

    static func setup() throws -> Setup {
        let rig = try IOMMUFDRig()
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let devID = try rig.ctx.bind(dev)
        return Setup(rig: rig, devID: devID, ioas: try rig.ioasAlloc())
    }

    func alloc(_ s: Setup, dev: UInt32? = nil, pt: UInt32? = nil, flags: UInt32 = 0, reserved: UInt32 = 0,
               dataType: UInt32 = 0, dataLength: UInt32 = 0, fault: UInt32 = 0, reserved2: UInt32 = 0) -> (rc: Int32, id: UInt32) {
        let (rc, out) = s.rig.run(.hwptAlloc) { b in
            b.set32(4, flags); b.set32(8, dev ?? s.devID); b.set32(12, pt ?? s.ioas); b.set32(20, reserved)
            b.set32(24, dataType); b.set32(28, dataLength); b.set64(32, dataLength > 0 ? 0x4000_0000 : 0)
            b.set32(40, fault); b.set32(44, reserved2)
        }
        return (rc, out.u32(16))
    }

    @Test func aNonZeroReservedIsEOPNOTSUPPBeforeEveryOtherCheckButReserved2IsNotChecked() throws {
        let s = try Self.setup()
        #expect(alloc(s, reserved: 1).rc == -Errno.EOPNOTSUPP)
        #expect(alloc(s, dev: 999, pt: 999, reserved: 1, dataType: UAPI.hwptDataVTdS1).rc == -Errno.EOPNOTSUPP)
        let ok = alloc(s, reserved2: 7)
        #expect(ok.rc == 0 && s.rig.ctx.object(ok.id)?.type == .hwptPaging)
    }

    @Test func dataTypeAndDataLengthMustAgreeOrItIsEINVALBeforeTheDeviceLookup() throws {
        let s = try Self.setup()
        #expect(alloc(s, dataType: UAPI.hwptDataVTdS1, dataLength: 0).rc == -Errno.EINVAL)
        #expect(alloc(s, dataType: UAPI.hwptDataNone, dataLength: 24).rc == -Errno.EINVAL)
        #expect(alloc(s, dev: 999, dataType: UAPI.hwptDataVTdS1).rc == -Errno.EINVAL)
        #expect(alloc(s, dev: 999, dataLength: 24).rc == -Errno.EINVAL)
        // The short (24-byte) layout has no data fields: they read as NONE / 0.
        #expect(s.rig.run(.hwptAlloc, size: 24) { $0.set32(8, s.devID); $0.set32(12, s.ioas) }.rc == 0)
    }

    @Test func anUnknownDeviceIsENOENTButAMissingPtIDIsEINVALNotENOENT() throws {
        let s = try Self.setup()
        #expect(alloc(s, dev: 999).rc == -Errno.ENOENT)
        #expect(alloc(s, dev: s.ioas).rc == -Errno.ENOENT)         // an ID of another type
        #expect(alloc(s, dev: 999, pt: 999).rc == -Errno.ENOENT)   // the device is looked up first
        #expect(alloc(s, pt: 999).rc == -Errno.EINVAL)
        #expect(alloc(s, pt: 0).rc == -Errno.EINVAL)
    }

    @Test func aPtIDThatIsNeitherAnIOASNorAPagingHWPTIsEINVAL() throws {
        let s = try Self.setup()
        #expect(alloc(s, pt: s.devID).rc == -Errno.EINVAL)
        let fault = s.rig.run(.faultQueueAlloc).out.u32(8)
        #expect(alloc(s, pt: fault).rc == -Errno.EINVAL)
        #expect(s.rig.ctx.objects.allSatisfy { $0.type != .hwptPaging })
    }

    @Test func aBadFaultIDWithFaultIDValidIsENOENTAndLeavesNoHWPTNoDomainAndNoIDTaken() throws {
        let s = try Self.setup()
        let objects = s.rig.ctx.objects.map(\.id)
        let domains = s.rig.core.liveDomains.count
        let nextID = (objects.max() ?? 0) + 1
        #expect(alloc(s, flags: UAPI.hwptFaultIDValid, fault: 999).rc == -Errno.ENOENT)
        #expect(alloc(s, flags: UAPI.hwptFaultIDValid, fault: s.ioas).rc == -Errno.ENOENT) // not a fault object
        #expect(alloc(s, flags: UAPI.hwptFaultIDValid, fault: 0).rc == -Errno.ENOENT)
        #expect(s.rig.ctx.objects.map(\.id) == objects)
        #expect(s.rig.core.liveDomains.count == domains)
        // The IOAS has no domain left: no aperture reserved, alignment back to 1.
        let ranges = s.rig.run(.ioasIOVARanges) { $0.set32(4, s.ioas) }
        #expect(ranges.out.u32(8) == 1 && ranges.out.u64(24) == 1)
        #expect(try s.rig.ioasObject(s.ioas).users == 0)
        // The ID the failed HWPT had is the next one handed out.
        let ok = alloc(s)
        #expect(ok.rc == 0 && ok.id == nextID)
        // Without FAULT_ID_VALID, fault_id is ignored.
        #expect(alloc(s, fault: 999).rc == 0)
        let fault = s.rig.run(.faultQueueAlloc).out.u32(8)
        let withFault = alloc(s, flags: UAPI.hwptFaultIDValid, fault: fault)
        #expect(withFault.rc == 0 && s.rig.ctx.object(fault)?.users == 2) // its file and the HWPT
    }

    @Test func faultIDValidWithNestParentAndUnknownFlagsAreEOPNOTSUPPAndLeaveNothing() throws {
        let s = try Self.setup()
        let fault = s.rig.run(.faultQueueAlloc).out.u32(8)
        let objects = s.rig.ctx.objects.count, domains = s.rig.core.liveDomains.count
        #expect(alloc(s, flags: UAPI.hwptFaultIDValid | UAPI.hwptAllocNestParent, fault: fault).rc == -Errno.EOPNOTSUPP)
        #expect(alloc(s, flags: 1 << 4).rc == -Errno.EOPNOTSUPP)
        // On an IOAS, driver data for a paging domain is refused by the VT-d driver.
        #expect(alloc(s, dataType: UAPI.hwptDataVTdS1, dataLength: 24).rc == -Errno.EOPNOTSUPP)
        #expect(s.rig.ctx.objects.count == objects && s.rig.core.liveDomains.count == domains)
        // Each flag alone is fine.
        #expect(alloc(s, flags: UAPI.hwptAllocNestParent).rc == 0)
        #expect(alloc(s, flags: UAPI.hwptFaultIDValid, fault: fault).rc == 0)
    }

    @Test
    func aNestedHWPTGetsTheDriversAnswerBeforeItsFaultIDIsLookedUp() throws {
        let s = try Self.setup()
        let parent = alloc(s, flags: UAPI.hwptAllocNestParent)
        try #require(parent.rc == 0)
        let data = try s.rig.guestRAM(4096)
        func nested(flags: UInt32, fault: UInt32) -> Int32 {
            s.rig.run(.hwptAlloc) { b in
                b.set32(4, flags); b.set32(8, s.devID); b.set32(12, parent.id)
                // 16 bytes: shorter than iommu_hwpt_vtd_s1, which the driver refuses (EINVAL).
                b.set32(24, UAPI.hwptDataVTdS1); b.set32(28, 16); b.set64(32, data); b.set32(40, fault)
            }.rc
        }
        let driver = nested(flags: 0, fault: 0)
        #expect(driver == -Errno.EINVAL)
        #expect(nested(flags: UAPI.hwptFaultIDValid, fault: 999) == driver)
    }
}

/// IOMMU_HWPT_INVALIDATE, IOMMU_HWPT_GET_DIRTY_BITMAP and IOMMU_HWPT_SET_DIRTY_TRACKING
/// (hw_pagetable.c, io_pagetable.c iommufd_check_iova_range) on a VT-d paging HWPT.
@Suite struct HWPTInvalidateAndDirtyTests {
    /// A paging HWPT made with HWPT_ALLOC on an IOAS (which it raises to 4 KiB alignment).
    static func setup() throws -> (rig: IOMMUFDRig, ioas: UInt32, hwpt: UInt32) {
        let rig = try IOMMUFDRig()
        let (dev, _) = try rig.addDevice("nic", dev: 1)
        let devID = try rig.ctx.bind(dev)
        let ioas = try rig.ioasAlloc()
        let h = rig.hwptAlloc(dev: devID, pt: ioas)
        try #require(h.rc == 0)
        return (rig, ioas, h.id)
    }

    /// {size, hwpt_id @4, data_uptr @8, data_type @16, entry_len @20, entry_num @24, __reserved @28}.
    func invalidate(_ rig: IOMMUFDRig, _ id: UInt32, uptr: UInt64 = 0x4000_0000, entryLength: UInt32 = 32,
                    entries: UInt32 = 3, reserved: UInt32 = 0) -> (rc: Int32, entries: UInt32) {
        let (rc, out) = rig.run(.hwptInvalidate) { s in
            s.set32(4, id); s.set64(8, uptr); s.set32(16, UAPI.invalidateDataVTdS1); s.set32(20, entryLength)
            s.set32(24, entries); s.set32(28, reserved)
        }
        return (rc, out.u32(24))
    }

    @Test func invalidateWritesEntryNumBackAsZeroOnEveryErrorBeforeTheDriver() throws {
        let (rig, ioas, hwpt) = try Self.setup()
        let paging = invalidate(rig, hwpt)
        #expect(paging.rc == -Errno.EINVAL && paging.entries == 0)
        let missing = invalidate(rig, 999)
        #expect(missing.rc == -Errno.ENOENT && missing.entries == 0)
        let notHWPT = invalidate(rig, ioas)
        #expect(notHWPT.rc == -Errno.EINVAL && notHWPT.entries == 0)
        let noPointer = invalidate(rig, hwpt, uptr: 0)
        #expect(noPointer.rc == -Errno.EINVAL && noPointer.entries == 0)
    }

    @Test func entriesWithoutADataPointerOrEntryLengthAreEINVALBeforeTheHWPTLookup() throws {
        let (rig, _, _) = try Self.setup()
        #expect(invalidate(rig, 999, uptr: 0, entries: 1).rc == -Errno.EINVAL)
        #expect(invalidate(rig, 999, entryLength: 0, entries: 1).rc == -Errno.EINVAL)
        // With no entries both are ignored: the lookup answers (a probe).
        #expect(invalidate(rig, 999, uptr: 0, entryLength: 0, entries: 0).rc == -Errno.ENOENT)
    }

    @Test
    func invalidateWithANonZeroReservedIsEOPNOTSUPPAndStillWritesEntryNumZero() throws {
        let (rig, _, hwpt) = try Self.setup()
        let r = invalidate(rig, hwpt, entries: 5, reserved: 1)
        #expect(r.rc == -Errno.EOPNOTSUPP && r.entries == 0)
    }

    /// {size, hwpt_id @4, flags @8, __reserved @12, iova @16, length @24, page_size @32, data @40}.
    func dirtyBitmap(_ rig: IOMMUFDRig, _ id: UInt32, iova: UInt64 = 0x10_0000, length: UInt64 = 0x4000,
                     pageSize: UInt64 = 4096, flags: UInt32 = 0, reserved: UInt32 = 0) -> Int32 {
        rig.run(.hwptGetDirtyBitmap) { s in
            s.set32(4, id); s.set32(8, flags); s.set32(12, reserved); s.set64(16, iova); s.set64(24, length)
            s.set64(32, pageSize); s.set64(40, 0x4000_0000)
        }.rc
    }

    @Test func dirtyBitmapRangeChecksComeAfterTheHWPTLookupAndBeforeTheMissingDirtyOperations() throws {
        let (rig, ioas, hwpt) = try Self.setup()
        #expect(dirtyBitmap(rig, hwpt, flags: 2) == -Errno.EOPNOTSUPP)
        #expect(dirtyBitmap(rig, 999, reserved: 1) == -Errno.EOPNOTSUPP)
        #expect(dirtyBitmap(rig, 999) == -Errno.ENOENT)
        #expect(dirtyBitmap(rig, ioas, length: .max) == -Errno.ENOENT)          // the lookup comes first
        // iova + length - 1 overflows (length 0 wraps unless iova is 0).
        #expect(dirtyBitmap(rig, hwpt, iova: 0x1000, length: .max) == -Errno.EOVERFLOW)
        #expect(dirtyBitmap(rig, hwpt, iova: 0x1000, length: 0) == -Errno.EOVERFLOW)
        #expect(dirtyBitmap(rig, hwpt, iova: .max - 0xFFF, length: 0x2000, pageSize: 0) == -Errno.EOVERFLOW)
        // Not aligned to the IOAS (4 KiB with the domain), even when aligned to page_size.
        #expect(dirtyBitmap(rig, hwpt, iova: 0x10_0800, length: 0x1000, pageSize: 0x800) == -Errno.EINVAL)
        #expect(dirtyBitmap(rig, hwpt, iova: 0x10_0000, length: 0x1800, pageSize: 0x800) == -Errno.EINVAL)
        #expect(dirtyBitmap(rig, hwpt, pageSize: 0) == -Errno.EINVAL)
        #expect(dirtyBitmap(rig, hwpt, iova: 0x10_1000, length: 0x2000, pageSize: 0x2000) == -Errno.EINVAL)
        #expect(dirtyBitmap(rig, hwpt, iova: 0x10_0000, length: 0x3000, pageSize: 0x2000) == -Errno.EINVAL)
        // A well-formed range reaches the domain, which has no dirty tracking.
        #expect(dirtyBitmap(rig, hwpt, iova: 0x10_0000, length: 0x4000, pageSize: 0x2000) == -Errno.EOPNOTSUPP)
        #expect(dirtyBitmap(rig, hwpt, flags: UAPI.getDirtyBitmapNoClear) == -Errno.EOPNOTSUPP)
    }

    /// {size, flags @4, hwpt_id @8, __reserved @12}.
    func setDirty(_ rig: IOMMUFDRig, _ id: UInt32, flags: UInt32 = UAPI.dirtyTrackingEnable, reserved: UInt32 = 0) -> Int32 {
        rig.run(.hwptSetDirtyTracking) { s in s.set32(4, flags); s.set32(8, id); s.set32(12, reserved) }.rc
    }

    @Test func setDirtyTrackingFlagsOtherThanEnableAreEOPNOTSUPPBeforeTheLookupAndReservedIsNotChecked() throws {
        let (rig, ioas, hwpt) = try Self.setup()
        #expect(setDirty(rig, hwpt, flags: 2) == -Errno.EOPNOTSUPP)
        #expect(setDirty(rig, hwpt, flags: 3) == -Errno.EOPNOTSUPP)
        #expect(setDirty(rig, 999, flags: 2) == -Errno.EOPNOTSUPP)
        #expect(setDirty(rig, 999) == -Errno.ENOENT)
        #expect(setDirty(rig, ioas) == -Errno.ENOENT)
        #expect(setDirty(rig, 999, reserved: 1) == -Errno.ENOENT)                // not EOPNOTSUPP
        // A paging HWPT without dirty operations: enable and disable are both EOPNOTSUPP.
        #expect(setDirty(rig, hwpt) == -Errno.EOPNOTSUPP)
        #expect(setDirty(rig, hwpt, flags: 0) == -Errno.EOPNOTSUPP)
    }
}
