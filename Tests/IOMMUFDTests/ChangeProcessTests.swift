import Testing
import Formats
import Hardware
import Kernel
import IOMMUFD

/// IOMMU_IOAS_CHANGE_PROCESS (drivers/iommu/iommufd/ioas.c): the pin charges of MAP_FILE
/// mappings move to the process now using the context (here: the ledger the context holds
/// now); all or nothing.
@Suite struct ChangeProcessTests {
    /// A context whose IOAS maps 8 pinned pages of a memfd through a domain, charged to the
    /// first ledger.
    struct Setup {
        let rig: IOMMUFDRig
        let file: SimulatedMemFD
        let ioas: UInt32
        let old: PinLedger
    }

    static func setup() throws -> Setup {
        let rig = try IOMMUFDRig()
        let file = rig.memfd(64 << 10)
        let ioas = try rig.ioasAlloc()
        _ = try rig.attachedDevice(to: ioas)
        try #require(rig.mapFile(ioas, start: 0, length: 8 * 4096, iova: 0x10_0000).rc == 0)
        try #require(rig.ctx.ledger.userPages == 8)
        return Setup(rig: rig, file: file, ioas: ioas, old: rig.ctx.ledger)
    }

    func changeProcess(_ rig: IOMMUFDRig, reserved: UInt32 = 0) -> Int32 {
        rig.run(.ioasChangeProcess) { $0.set32(4, reserved) }.rc
    }

    @Test func aContextWithoutMappingsSucceedsAndANonZeroReservedIsEOPNOTSUPP() throws {
        let rig = try IOMMUFDRig()
        #expect(changeProcess(rig) == 0)
        _ = try rig.ioasAlloc()
        #expect(changeProcess(rig) == 0)
        #expect(changeProcess(rig, reserved: 1) == -Errno.EOPNOTSUPP)
        #expect(rig.run(.ioasChangeProcess, size: 4).rc == -Errno.EINVAL) // below the 8-byte minimum
    }

    @Test func anyMappingNotMadeWithMapFileInAnyIOASIsEINVALAndNothingMoves() throws {
        let s = try Self.setup()
        let other = try s.rig.ioasAlloc()
        // A user-VA mapping in another IOAS, not even pinned, is enough.
        #expect(s.rig.map(other, va: 0x4000_0000, length: 4096).rc == 0)
        s.rig.ctx.ledger = PinLedger()
        #expect(changeProcess(s.rig) == -Errno.EINVAL)
        #expect(s.old.userPages == 8 && s.rig.ctx.ledger.chargedPages == 0)
        // The pages are still the old ledger's: unmapping uncharges it, not the new one.
        #expect(s.rig.unmap(s.ioas, iova: 0, length: .max).rc == 0)
        #expect(s.old.chargedPages == 0 && s.rig.ctx.ledger.chargedPages == 0)
        #expect(s.file.pinnedPages == 0)
    }

    @Test func theChargesOfFileMappingsMoveToTheCurrentLedgerCountingPagesSharedByCopyOnce() throws {
        let s = try Self.setup()
        // A COPY shares the file's page set (and is a file mapping too).
        let b = try s.rig.ioasAlloc()
        #expect(s.rig.copy(from: s.ioas, 0x10_0000, to: b, 0x20_0000, length: 8 * 4096).rc == 0)
        #expect(s.old.userPages == 8)
        let new = PinLedger()
        s.rig.ctx.ledger = new
        #expect(changeProcess(s.rig) == 0)
        #expect(new.userPages == 8 && s.old.chargedPages == 0)
        #expect(s.file.pinnedPages == 8) // the pinned pages themselves do not move
        // A second call has nothing left to move.
        #expect(changeProcess(s.rig) == 0)
        #expect(new.userPages == 8 && s.old.chargedPages == 0)
        // Unpinning now uncharges the new ledger.
        #expect(s.rig.unmap(s.ioas, iova: 0, length: .max).rc == 0)
        #expect(new.chargedPages == 0 && s.old.chargedPages == 0 && s.file.pinnedPages == 0)
    }

    @Test func aCurrentLedgerWhoseLimitCannotTakeThePinsIsENOMEMAndNothingMoves() throws {
        let s = try Self.setup()
        let small = PinLedger(limitPages: 4)
        s.rig.ctx.ledger = small
        #expect(changeProcess(s.rig) == -Errno.ENOMEM)
        #expect(small.chargedPages == 0 && s.old.userPages == 8)
        // Nothing was half moved: a ledger with room takes all of it.
        let roomy = PinLedger(limitPages: 8)
        s.rig.ctx.ledger = roomy
        #expect(changeProcess(s.rig) == 0)
        #expect(roomy.userPages == 8 && s.old.chargedPages == 0 && small.chargedPages == 0)
    }
}
