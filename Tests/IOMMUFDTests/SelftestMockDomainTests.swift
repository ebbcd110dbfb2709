import Testing
import Platform
import Kernel
import IOMMUFD
@testable import Simulation

/// IOMMU_TEST_CMD's framing and the mock devices MOCK_DOMAIN makes (notes: mock-driver §1,
/// §2 MOCK_DOMAIN, the selftest object).
@Suite struct SelftestMockDomainTests {
    // MARK: Framing

    @Test func testCmdIsENOTTYWithoutARegisteredMockDriver() throws {
        let t = try SelftestRig(registerMock: false)
        let r = t.cmd(IOMMUTestOp.setTemporaryMemoryLimit.rawValue) { $0.set32(16, 65536) }
        #expect(r.rc == -Errno.ENOTTY)
        #expect(t.cmd(IOMMUTestOp.mockDomain.rawValue, id: try t.ioas()).rc == -Errno.ENOTTY)
        #expect(t.core.devices.isEmpty)
    }

    @Test func unknownOpsAreEOPNOTSUPPWithTheMockDriver() throws {
        let t = try SelftestRig()
        #expect(t.cmd(0).rc == -Errno.EOPNOTSUPP)
        #expect(t.cmd(22).rc == -Errno.EOPNOTSUPP)
        #expect(t.cmd(0xffff_ffff).rc == -Errno.EOPNOTSUPP)
        // A known op is served (SET_TEMP_MEMORY_LIMIT to its default).
        #expect(t.cmd(IOMMUTestOp.setTemporaryMemoryLimit.rawValue) { $0.set32(16, 65536) }.rc == 0)
    }

    @Test func sizeBelow68IsEINVALAnd68IsAccepted() throws {
        let t = try SelftestRig()
        let limit = IOMMUTestOp.setTemporaryMemoryLimit.rawValue
        #expect(t.cmd(limit, size: 67) { $0.set32(16, 65536) }.rc == -Errno.EINVAL)
        #expect(t.cmd(limit, size: 0) { $0.set32(16, 65536) }.rc == -Errno.EINVAL)
        #expect(t.cmd(limit, size: 68) { $0.set32(16, 65536) }.rc == 0)
    }

    @Test func nonZeroBytesPast72AreE2BIGAndAZeroTailIsAccepted() throws {
        let t = try SelftestRig()
        let limit = IOMMUTestOp.setTemporaryMemoryLimit.rawValue
        #expect(t.cmd(limit, size: 80) { $0.set32(16, 65536); $0.set8(75, 1) }.rc == -Errno.E2BIG)
        #expect(t.cmd(limit, size: 80) { $0.set32(16, 65536); $0.set8(79, 0x80) }.rc == -Errno.E2BIG)
        #expect(t.cmd(limit, size: 80) { $0.set32(16, 65536) }.rc == 0)
        // An unknown op with a bad tail: the framing answers first.
        #expect(t.cmd(0, size: 80) { $0.set8(72, 1) }.rc == -Errno.E2BIG)
    }

    // MARK: MOCK_DOMAIN

    @Test func mockDomainTakesStdevNIdevNPlus1AndAnAutoHWPTNPlus2() throws {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        #expect(ioas == 1)
        let (rc, a) = t.mockDomain(ioas)
        #expect(rc == 0)
        #expect(a == .init(stdev: 2, hwpt: 4, idev: 3))
        #expect(t.ctx.object(2) is SelftestObject)
        #expect(t.ctx.object(3) is DeviceObject)
        let h = try #require(t.ctx.object(4) as? HWPTPaging)
        #expect(h.isAutoDomain && h.domain is MockPagingDomain)
        #expect(t.core.devices.count == 1)
        #expect((t.ctx.object(2) as? SelftestObject)?.device === t.core.devices.first)
    }

    @Test func aSecondMockDeviceOnTheIOASSharesTheAutoHWPT() throws {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        let a = try t.requireMock(ioas)
        let b = try t.requireMock(ioas)
        #expect(b == .init(stdev: 5, hwpt: a.hwpt, idev: 6))
        #expect(t.core.devices.count == 2)
        // Attaching straight to the auto HWPT gives that HWPT back.
        let c = try t.requireMock(a.hwpt)
        #expect(c == .init(stdev: 7, hwpt: a.hwpt, idev: 8))
    }

    @Test func aFailedMockDomainFlagsGivesBackItsIDsAndLeavesNoDevice() throws {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        let a = try t.requireMock(ioas)
        let devices = t.core.devices.count
        let objects = t.ctx.objects.count
        #expect(t.mockDomain(ioas, flags: 8).rc == -Errno.EINVAL)
        #expect(t.core.devices.count == devices)
        #expect(t.ctx.objects.count == objects)
        // A failure after the device was made and bound (pt_id missing) undoes it all too.
        #expect(t.mockDomain(999).rc == -Errno.ENOENT)
        #expect(t.mockDomain(a.idev).rc == -Errno.EINVAL)
        #expect(t.core.devices.count == devices)
        #expect(t.ctx.objects.count == objects)
        // The IDs the failures took are reused.
        let c = try t.requireMock(ioas, flags: 0)
        #expect(c == .init(stdev: 5, hwpt: a.hwpt, idev: 6))
        #expect(t.core.devices.count == devices + 1)
    }

    @Test func destroyOfTheIdevIsEBUSYWhileItsStdevLives() throws {
        let t = try SelftestRig()
        let a = try t.requireMock(try t.ioas())
        #expect(t.destroy(a.idev) == -Errno.EBUSY)
        #expect(t.ctx.object(a.idev) is DeviceObject)
        #expect(t.core.devices.count == 1)
    }

    @Test func destroyOfTheStdevReleasesTheDeviceAndTheLastOneFreesTheAutoHWPT() throws {
        let t = try SelftestRig()
        let ioas = try t.ioas()
        let domainsBefore = t.core.liveDomains.count
        let a = try t.requireMock(ioas)
        let b = try t.requireMock(ioas)
        #expect(t.core.liveDomains.count == domainsBefore + 1)
        let deviceA = try #require((t.ctx.object(a.stdev) as? SelftestObject)?.device)
        #expect(t.destroy(a.stdev) == 0)
        #expect(t.core.devices.count == 1)
        #expect(!t.core.devices.contains { $0 === deviceA })
        #expect(deviceA.isReleased)
        #expect(t.destroy(a.idev) == -Errno.ENOENT)
        #expect(t.destroy(a.stdev) == -Errno.ENOENT)
        // b still holds the shared auto HWPT.
        #expect(t.ctx.object(a.hwpt) is HWPTPaging)
        #expect(t.destroy(ioas) == -Errno.EBUSY)
        #expect(t.destroy(b.stdev) == 0)
        #expect(t.core.devices.isEmpty)
        #expect(t.ctx.object(a.hwpt) == nil)
        #expect(t.destroy(a.hwpt) == -Errno.ENOENT)
        #expect(t.core.liveDomains.count == domainsBefore)
        #expect(t.destroy(ioas) == 0)
        #expect(t.mock.warnings.isEmpty)
    }

    @Test func mockDomainReplaceReturnsTheResolvedHWPTAndTakesTheStdevOnly() throws {
        let t = try SelftestRig()
        let ioas = try t.ioas(), ioas2 = try t.ioas()
        let m = try t.requireMock(ioas)
        #expect(m == .init(stdev: 3, hwpt: 5, idev: 4))
        let r = t.replace(m.stdev, ioas2)
        #expect(r.rc == 0 && r.id == 6)
        #expect(t.replace(m.stdev, m.hwpt).rc == -Errno.ENOENT)   // the old auto HWPT went
        #expect(t.replace(m.idev, ioas).rc == -Errno.ENOENT)      // an idev is not a stdev
        #expect(t.replace(m.stdev, m.idev).rc == -Errno.EINVAL)   // nor a page table
        let again = t.replace(m.stdev, 6)
        #expect(again.rc == 0 && again.id == 6)
    }
}
