import Testing
import Platform
import Formats
@testable import Hardware

@Suite("SMMUv3 registers and enable handshake")
struct SMMUv3RegisterTests {
    @Test("ID registers advertise the configured features at the architected offsets")
    func idRegisters() throws {
        let rig = try SMMUv3Rig(enable: false)
        let idr0 = rig.unit.read32(SMMUv3Register.idr0)
        #expect(idr0 & 3 == 3)                          // S1P, S2P
        #expect((idr0 >> 27) & 3 == 1)                  // 2-level stream tables
        #expect(idr0 & (1 << 16) != 0)                  // PRI
        #expect((idr0 >> 24) & 3 == 0)                  // stall and terminate
        let idr1 = rig.unit.read32(SMMUv3Register.idr1)
        #expect(idr1 & 0x3F == 32 && (idr1 >> 6) & 0x1F == 20 && (idr1 >> 21) & 0x1F == 19)
        #expect(rig.unit.read32(SMMUv3Register.idr5) & 7 == 5)   // OAS 48
        #expect(rig.unit.read32(SMMUv3Register.idr5) & (1 << 4) != 0)
        #expect(rig.unit.read32(SMMUv3Register.aidr) == 2)
    }

    @Test("CR0 takes effect only when CR0ACK shows it, after the acknowledgement latency")
    func cr0Handshake() throws {
        let rig = try SMMUv3Rig(enable: false)
        rig.unit.write32(SMMUv3Register.cr0, SMMUv3Bits.cr0CMDQEN | SMMUv3Bits.cr0SMMUEN)
        #expect(rig.unit.read32(SMMUv3Register.cr0) == 0x9)
        #expect(rig.unit.read32(SMMUv3Register.cr0ack) == 0)
        #expect(rig.physical(0x1234) == 0x1234)         // still GBPA bypass
        rig.platform.scheduler.runUntilIdle()
        #expect(rig.unit.read32(SMMUv3Register.cr0ack) == 0x9)
        // Bits outside CR0's fields are RES0.
        try rig.bench.writeCR0(0)
        rig.unit.write32(SMMUv3Register.cr0, 0xFFFF_FFFF)
        #expect(rig.unit.read32(SMMUv3Register.cr0) == SMMUv3Bits.cr0Mask)
    }

    @Test("GBPA changes only through UPDATE, which reads 1 until the new fields apply; ABORT aborts with SMMUEN 0")
    func gbpaUpdate() throws {
        let rig = try SMMUv3Rig(enable: false)
        rig.unit.write32(SMMUv3Register.gbpa, SMMUv3Bits.gbpaAbort)           // no UPDATE: ignored
        #expect(rig.unit.read32(SMMUv3Register.gbpa) == 0)
        rig.unit.write32(SMMUv3Register.gbpa, SMMUv3Bits.gbpaAbort | SMMUv3Bits.gbpaUpdate)
        #expect(rig.unit.read32(SMMUv3Register.gbpa) & SMMUv3Bits.gbpaUpdate != 0)
        #expect(rig.physical(0x5000) == 0x5000)
        try rig.bench.wait { rig.unit.read32(SMMUv3Register.gbpa) & SMMUv3Bits.gbpaUpdate == 0 }
        #expect(rig.unit.read32(SMMUv3Register.gbpa) == SMMUv3Bits.gbpaAbort)
        #expect(rig.translate(0x5000) == .terminated(nil))
        #expect(try rig.events().isEmpty)
    }

    @Test("base registers are ignored while their enable is set; SMMU-owned pointers only writable while off")
    func lockedFields() throws {
        let rig = try SMMUv3Rig()
        let base = rig.unit.read64(SMMUv3Register.strtabBase)
        rig.unit.write64(SMMUv3Register.strtabBase, 0x4000_0000)
        #expect(rig.unit.read64(SMMUv3Register.strtabBase) == base)
        let q = rig.unit.read64(SMMUv3Register.cmdqBase)
        rig.unit.write64(SMMUv3Register.cmdqBase, 0x7000_0000 | 5)
        #expect(rig.unit.read64(SMMUv3Register.cmdqBase) == q)
        rig.unit.write32(SMMUv3Register.cmdqCons, 7)
        #expect(rig.unit.read32(SMMUv3Register.cmdqCons) == 0)
        rig.unit.write32(SMMUv3Register.evtqProd, 3)
        #expect(rig.unit.read32(SMMUv3Register.evtqProd) == 0)
        // With the queue off, CONS can be set (Linux's reset does).
        try rig.bench.writeCR0(SMMUv3Bits.cr0EVTQEN | SMMUv3Bits.cr0SMMUEN)
        rig.unit.write32(SMMUv3Register.cmdqCons, 7)
        #expect(rig.unit.read32(SMMUv3Register.cmdqCons) == 7)
    }

    @Test("IRQ_CTRL is acknowledged through IRQ_CTRLACK; MSI configuration is fixed while enabled")
    func irqControl() throws {
        let rig = try SMMUv3Rig(enable: false)
        rig.unit.write64(SMMUv3Register.evtqIRQCfg0, 0x1234_5678)
        #expect(rig.unit.read64(SMMUv3Register.evtqIRQCfg0) == 0x1234_5678 & SMMUv3Bits.msiAddressMask)
        rig.unit.write32(SMMUv3Register.irqCtrl, SMMUv3Bits.irqEVTQ)
        #expect(rig.unit.read32(SMMUv3Register.irqCtrlAck) == 0)
        rig.platform.scheduler.runUntilIdle()
        #expect(rig.unit.read32(SMMUv3Register.irqCtrlAck) == SMMUv3Bits.irqEVTQ)
        rig.unit.write64(SMMUv3Register.evtqIRQCfg0, 0x8000)
        #expect(rig.unit.read64(SMMUv3Register.evtqIRQCfg0) == 0x1234_5678 & SMMUv3Bits.msiAddressMask)
    }
}
