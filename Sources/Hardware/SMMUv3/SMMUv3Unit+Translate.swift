// SMMUv3 translation (IHI 0070 chapter 3 "Operation": §3.3 stream table and StreamIDs, §3.4
// address sizes, §3.9 SubstreamIDs, §3.12 faults; chapter 5 STE and CD; §16.2 caching).
// A transaction: SMMUEN (else GBPA) → STE (configuration cache by StreamID, else fetched
// through the linear or 2-level stream table) → Config (abort, bypass, stage 1, stage 2,
// nested) → CD (configuration cache by StreamID + SubstreamID, else fetched through the
// linear or 2-level CD table) → TLB (tagged by world, VMID, ASID and page) → walk
// (SMMUv3Unit+Walk.swift). Every fault gives the architected event (SMMUv3Unit+Events.swift).
import Platform
import Formats

/// An STE as the configuration cache holds it: the fields translation uses, decoded once.
struct STECacheEntry: Sendable {
    var s1ContextPointer: UInt64
    var s2TTB: UInt64
    var vmid: UInt16
    /// Raw STE.Config (0b100 bypass, 0b101 stage 1, 0b110 stage 2, 0b111 nested; below: abort).
    var config: UInt8
    var s1Fmt: UInt8
    var s1CDMax: UInt8
    var s1DSS: UInt8
    /// StreamWorld: 0 NS-EL1, 1 EL2, 2 EL2-E2H.
    var world: UInt8
    var flags: UInt8
    /// Stage 2: start level (1–4, as `PageTableGeometry` counts), log2 of concatenated start
    /// tables, input (64 − S2T0SZ) and output (effective S2PS) sizes.
    var s2Level: UInt8
    var s2ConcatLog2: UInt8
    var s2InputBits: UInt8
    var s2OutputBits: UInt8
    /// Effective STE.EATS (0 when the unit has no ATS): 1 full ATS, 2 split-stage.
    var eats: UInt8 = 0
    static let s1StallDisable: UInt8 = 1, s2AFFD: UInt8 = 2, s2HA: UInt8 = 4, s2HD: UInt8 = 8
    static let s2S: UInt8 = 16, s2R: UInt8 = 32, substreams: UInt8 = 64
    static let empty = STECacheEntry(s1ContextPointer: 0, s2TTB: 0, vmid: 0, config: 0, s1Fmt: 0, s1CDMax: 0, s1DSS: 0,
                                     world: 0, flags: 0, s2Level: 0, s2ConcatLog2: 0, s2InputBits: 0, s2OutputBits: 0)
    @inline(__always) func has(_ f: UInt8) -> Bool { flags & f != 0 }
}

/// A CD as the configuration cache holds it (tagged by StreamID and CD index).
struct CDCacheEntry: Sendable {
    var ttb0: UInt64
    var ttb1: UInt64
    var asid: UInt16
    /// Input sizes of the TTB0 and TTB1 halves (64 − TxSZ), 0 when the half does not walk.
    var t0Bits: UInt8
    var t1Bits: UInt8
    var outputBits: UInt8
    var flags: UInt8
    static let affd: UInt8 = 1, ha: UInt8 = 2, hd: UInt8 = 4, stall: UInt8 = 8, record: UInt8 = 16
    static let tbi0: UInt8 = 32, tbi1: UInt8 = 64
    static let empty = CDCacheEntry(ttb0: 0, ttb1: 0, asid: 0, t0Bits: 0, t1Bits: 0, outputBits: 0, flags: 0)
    @inline(__always) func has(_ f: UInt8) -> Bool { flags & f != 0 }
}

/// A TLB entry: a leaf translation from the input page to the output page.
struct SMMUTLBEntry: Sendable {
    var pageBase: UInt64
    /// Nested entries: the IPA of the page and the rights stage 2 gives (so a permission
    /// fault on a hit is reported at the stage that denies it).
    var ipaBase: UInt64
    var pageShift: UInt8
    var permissions: UInt8
    var s2Permissions: UInt8
    /// Write permission may be gained by a hardware dirty-state update (DBM with HD): a write
    /// that hits without write permission walks again instead of faulting.
    var dirtyUpgradable: Bool
    static let empty = SMMUTLBEntry(pageBase: 0, ipaBase: 0, pageShift: 12, permissions: 0, s2Permissions: 0, dirtyUpgradable: false)
}

/// The translation regime a TLB entry belongs to (part of its tag).
enum TLBWorld {
    static let nsEL1: UInt64 = 0, el2: UInt64 = 1, s2: UInt64 = 2, nested: UInt64 = 3
}

/// A fault on the way, before the stage's record/stall controls apply.
struct SMMUFault: Error {
    var event: SMMUEventID
    /// The fault is at stage 2 (S2 and the STE's S2R/S2S apply), and what faulted.
    var s2: Bool = false
    var eventClass: SMMUEventClass = .input
    var ipa: UInt64 = 0
    var fetchAddress: UInt64 = 0
    var ttRead: Bool = false
    /// A configuration error or fetch abort: always recorded, never stalls.
    var configuration: Bool = false

    static func config(_ e: SMMUEventID, fetch: UInt64 = 0) -> SMMUFault {
        SMMUFault(event: e, fetchAddress: fetch, configuration: true)
    }
}

extension SMMUv3Unit {
    // TLB tag: key0 = input address >> page shift; key1 = size class << 56 | world << 48 |
    // VMID << 16 | ASID.
    @inline(__always)
    static func tlbKey1(world: UInt64, vmid: UInt16, asid: UInt16, sizeClass: UInt64) -> UInt64 {
        sizeClass << 56 | world << 48 | UInt64(vmid) << 16 | UInt64(asid)
    }

    /// Translates one transaction from `streamID` (with `substreamID` when SSV = 1).
    /// - Complexity: on a TLB hit three cache probes, no allocation; on a miss one walk.
    public func translate(streamID sid: UInt32, substreamID ssid: UInt32? = nil, address: UInt64,
                          access: DMAAccess) -> SMMUv3TranslationResult {
        let c = countersStorage
        c.pointee.translations &+= 1
        guard smmuEnabled else {
            // SMMUEN = 0: GBPA decides (IHI 0070 §6.3.14).
            if gbpa & SMMUv3Bits.gbpaAbort != 0 { c.pointee.aborted &+= 1; return .terminated(nil) }
            c.pointee.bypassed &+= 1
            return .translated(physical: address, pageShift: 12, permissions: .all)
        }
        let ste: STECacheEntry
        if let hit = steCache.lookup(UInt64(sid), 0) {
            c.pointee.steCacheHits &+= 1
            if ssid == nil, let r = stage1Hit(hit, sid: sid, address: address, access: access) { return r }
            ste = hit.pointee.payload
        } else {
            c.pointee.steCacheMisses &+= 1
            switch fetchSTE(sid) {
            case .success(let e): ste = e
            case .failure(let f): return terminate(f, sid: sid, ssid: ssid, address: address, access: access, ste: nil, cd: nil)
            }
        }
        switch ste.config {
        case 0b100:
            if ssid != nil {
                return terminate(.config(.cBadSubstreamID), sid: sid, ssid: ssid, address: address, access: access, ste: ste, cd: nil)
            }
            return bypass(address)
        case 0b110:
            if ssid != nil {
                return terminate(.config(.cBadSubstreamID), sid: sid, ssid: ssid, address: address, access: access, ste: ste, cd: nil)
            }
            return stage2Only(ste, sid: sid, address: address, access: access)
        case 0b101, 0b111:
            return stage1(ste, sid: sid, ssid: ssid, address: address, access: access)
        default:
            // Config abort (and the reserved values that behave as abort): no event.
            c.pointee.aborted &+= 1
            return .terminated(nil)
        }
    }

    /// The common case, with no copies and no calls: a stage 1 STE without substreams (so a
    /// transaction without a SubstreamID uses CD 0, IHI 0070 §3.9), its CD cached, and a
    /// 4 KiB TLB entry that allows the access, or no TLB entry at all (then the walk).
    /// Caches are probed first and marked used only once the path is certain, so a nil
    /// return (the general path runs) changed nothing; a result is exactly what `stage1`
    /// returns for the same state.
    @inline(__always)
    func stage1Hit(_ steSlot: UnsafeMutablePointer<TaggedCache<STECacheEntry>.Slot>, sid: UInt32, address: UInt64,
                   access: DMAAccess) -> SMMUv3TranslationResult? {
        let config = steSlot.pointee.payload.config
        let flags = steSlot.pointee.payload.flags
        guard config == 0b101, flags & STECacheEntry.substreams == 0,
              let cdSlot = cdCache.probe(UInt64(sid), 0) else { return nil }
        let world = steSlot.pointee.payload.world == 0 ? TLBWorld.nsEL1 : TLBWorld.el2
        let vmid = world == TLBWorld.el2 ? 0 : steSlot.pointee.payload.vmid
        let input = Self.stripTopByte(address, cdSlot.pointee.payload)
        let key1 = Self.tlbKey1(world: world, vmid: vmid, asid: cdSlot.pointee.payload.asid, sizeClass: 0)
        guard let t = tlb.probe(input >> 12, key1) else {
            // No 4 KiB entry and no superpage entries to probe: the miss `stage1` would reach.
            guard superpageEntries == 0 else { return nil }
            cdCache.touch(cdSlot)
            countersStorage.pointee.cdCacheHits &+= 1
            return stage1Miss(steSlot.pointee.payload, cdSlot.pointee.payload, sid: sid, ssid: nil, address: address, input: input,
                              access: access, nested: false, world: world, vmid: vmid)
        }
        let perms = PagePermissions(rawValue: t.pointee.payload.permissions)
        guard Self.permissionFault(perms, access: access, stage2: false) == nil else { return nil }
        cdCache.touch(cdSlot)
        tlb.touch(t)
        let c = countersStorage
        c.pointee.cdCacheHits &+= 1
        c.pointee.tlbHits &+= 1
        let shift = t.pointee.payload.pageShift
        return .translated(physical: t.pointee.payload.pageBase | (input & ((1 << UInt64(shift)) - 1)), pageShift: shift,
                           permissions: perms)
    }

    @inline(__always)
    func bypass(_ address: UInt64) -> SMMUv3TranslationResult {
        countersStorage.pointee.bypassed &+= 1
        return .translated(physical: address, pageShift: 12, permissions: .all)
    }

    /// Probes the TLB for `input` at 4 KiB, then (when any are cached) 2 MiB and 1 GiB.
    @inline(__always)
    func lookupTLB(_ input: UInt64, key1: UInt64) -> UnsafeMutablePointer<TaggedCache<SMMUTLBEntry>.Slot>? {
        if let e = tlb.lookup(input >> 12, key1) { return e }
        guard superpageEntries != 0 else { return nil }
        return tlb.lookup(input >> 21, key1 | 1 << 56) ?? tlb.lookup(input >> 30, key1 | 2 << 56)
    }

    /// Stage 2 only (STE.Config = 0b110): the input address is an IPA.
    func stage2Only(_ ste: STECacheEntry, sid: UInt32, address: UInt64, access: DMAAccess) -> SMMUv3TranslationResult {
        let c = countersStorage
        let key1 = Self.tlbKey1(world: TLBWorld.s2, vmid: ste.vmid, asid: 0, sizeClass: 0)
        if let e = lookupTLB(address, key1: key1) {
            let p = e.pointee.payload
            let perms = PagePermissions(rawValue: p.permissions)
            if Self.permissionFault(perms, access: access, stage2: true) == nil {
                c.pointee.tlbHits &+= 1
                return .translated(physical: p.pageBase | (address & ((1 << UInt64(p.pageShift)) - 1)),
                                   pageShift: p.pageShift, permissions: perms)
            }
            if !(p.dirtyUpgradable && access.contains(.write)) {
                c.pointee.tlbHits &+= 1
                var f = SMMUFault(event: .fPermission, s2: true, ipa: address)
                f.eventClass = .input
                return terminate(f, sid: sid, ssid: nil, address: address, access: access, ste: ste, cd: nil)
            }
        }
        c.pointee.tlbMisses &+= 1
        c.pointee.walks &+= 1
        switch stage2Walk(ste, ipa: address, access: access, eventClass: .input) {
        case .success(let w):
            insertTLB(address, world: TLBWorld.s2, vmid: ste.vmid, asid: 0, walk: w)
            if let f = w.fault { return terminate(f, sid: sid, ssid: nil, address: address, access: access, ste: ste, cd: nil) }
            return .translated(physical: w.output(address), pageShift: UInt8(w.pageShift), permissions: w.permissions)
        case .failure(let f):
            return terminate(f, sid: sid, ssid: nil, address: address, access: access, ste: ste, cd: nil)
        }
    }

    /// Stage 1 (STE.Config = 0b101) or nested (0b111): CD selection, TLB, walk.
    func stage1(_ ste: STECacheEntry, sid: UInt32, ssid: UInt32?, address: UInt64, access: DMAAccess) -> SMMUv3TranslationResult {
        let c = countersStorage
        // SubstreamID checks (IHI 0070 §3.9, STE.S1DSS).
        let index: UInt32
        if ste.has(STECacheEntry.substreams) {
            if let ssid {
                guard UInt64(ssid) >> UInt64(ste.s1CDMax) == 0,
                      !(ssid == 0 && ste.s1DSS == StreamTableEntry.S1DSS.ssid0.rawValue) else {
                    return terminate(.config(.cBadSubstreamID), sid: sid, ssid: ssid, address: address, access: access, ste: ste, cd: nil)
                }
                index = ssid
            } else {
                switch ste.s1DSS {
                case StreamTableEntry.S1DSS.bypass.rawValue:
                    return ste.config == 0b111 ? stage2Only(ste, sid: sid, address: address, access: access) : bypass(address)
                case StreamTableEntry.S1DSS.ssid0.rawValue:
                    index = 0
                default:
                    return terminate(.config(.fStreamDisabled), sid: sid, ssid: nil, address: address, access: access, ste: ste, cd: nil)
                }
            }
        } else {
            guard ssid == nil else {
                return terminate(.config(.cBadSubstreamID), sid: sid, ssid: ssid, address: address, access: access, ste: ste, cd: nil)
            }
            index = 0
        }
        let cd: CDCacheEntry
        if let hit = cdCache.lookup(UInt64(sid), UInt64(index)) {
            c.pointee.cdCacheHits &+= 1
            cd = hit.pointee.payload
        } else {
            c.pointee.cdCacheMisses &+= 1
            switch fetchCD(ste, sid: sid, index: index) {
            case .success(let e): cd = e
            case .failure(let f): return terminate(f, sid: sid, ssid: ssid, address: address, access: access, ste: ste, cd: nil)
            }
        }
        let nested = ste.config == 0b111
        let world = nested ? TLBWorld.nested : (ste.world == 0 ? TLBWorld.nsEL1 : TLBWorld.el2)
        let vmid = world == TLBWorld.el2 ? 0 : ste.vmid
        let input = Self.stripTopByte(address, cd)
        let key1 = Self.tlbKey1(world: world, vmid: vmid, asid: cd.asid, sizeClass: 0)
        if let e = lookupTLB(input, key1: key1) {
            let p = e.pointee.payload
            let perms = PagePermissions(rawValue: p.permissions)
            if Self.permissionFault(perms, access: access, stage2: false) == nil {
                c.pointee.tlbHits &+= 1
                return .translated(physical: p.pageBase | (input & ((1 << UInt64(p.pageShift)) - 1)),
                                   pageShift: p.pageShift, permissions: perms)
            }
            if !(p.dirtyUpgradable && access.contains(.write)) {
                c.pointee.tlbHits &+= 1
                var f = SMMUFault(event: .fPermission)
                if nested && Self.permissionFault(PagePermissions(rawValue: p.s2Permissions), access: access, stage2: true) != nil {
                    f.s2 = true
                    f.ipa = p.ipaBase | (input & ((1 << UInt64(p.pageShift)) - 1))
                }
                return terminate(f, sid: sid, ssid: ssid, address: address, access: access, ste: ste, cd: cd)
            }
        }
        return stage1Miss(ste, cd, sid: sid, ssid: ssid, address: address, input: input, access: access, nested: nested,
                          world: world, vmid: vmid)
    }

    /// A stage 1 (or nested) TLB miss: walk, fill the TLB, and the result or the fault.
    func stage1Miss(_ ste: STECacheEntry, _ cd: CDCacheEntry, sid: UInt32, ssid: UInt32?, address: UInt64, input: UInt64,
                    access: DMAAccess, nested: Bool, world: UInt64, vmid: UInt16) -> SMMUv3TranslationResult {
        let c = countersStorage
        c.pointee.tlbMisses &+= 1
        c.pointee.walks &+= 1
        switch stage1Walk(ste, cd, input: input, access: access, nested: nested) {
        case .success(let w):
            insertTLB(input, world: world, vmid: vmid, asid: cd.asid, walk: w)
            if let f = w.fault { return terminate(f, sid: sid, ssid: ssid, address: address, access: access, ste: ste, cd: cd) }
            return .translated(physical: w.output(input), pageShift: UInt8(w.pageShift), permissions: w.permissions)
        case .failure(let f):
            return terminate(f, sid: sid, ssid: ssid, address: address, access: access, ste: ste, cd: cd)
        }
    }

    /// With CD.TBIx for the half the address is in, bits 63:56 are ignored: they become
    /// copies of bit 55 (VMSAv8-64 top-byte-ignore).
    @inline(__always)
    static func stripTopByte(_ va: UInt64, _ cd: CDCacheEntry) -> UInt64 {
        let upper = va & (1 << 55) != 0
        guard cd.has(upper ? CDCacheEntry.tbi1 : CDCacheEntry.tbi0) else { return va }
        return upper ? va | 0xFF00_0000_0000_0000 : va & 0x00FF_FFFF_FFFF_FFFF
    }

    /// The fault for an access `perms` does not allow, or nil. Stage 1: write needs write,
    /// an unprivileged access needs AP[1] (`.user`), instruction fetch needs execute.
    /// Stage 2: S2AP read/write and XN.
    @inline(__always)
    static func permissionFault(_ perms: PagePermissions, access: DMAAccess, stage2: Bool) -> SMMUFault? {
        if access.contains(.write) && !perms.contains(.write) { return SMMUFault(event: .fPermission, s2: stage2) }
        if access.contains(.read) && !perms.contains(.read) { return SMMUFault(event: .fPermission, s2: stage2) }
        if access.contains(.execute) && !perms.contains(.execute) { return SMMUFault(event: .fPermission, s2: stage2) }
        if !stage2 && !access.contains(.privileged) && !perms.contains(.user) { return SMMUFault(event: .fPermission) }
        return nil
    }

    func insertTLB(_ input: UInt64, world: UInt64, vmid: UInt16, asid: UInt16, walk w: SMMUWalk) {
        guard w.cacheable else { return }
        let sizeClass = UInt64(w.pageShift == 30 ? 2 : w.pageShift == 21 ? 1 : 0)
        if sizeClass > 0 { superpageEntries &+= 1 }
        tlb.insert(input >> w.pageShift, Self.tlbKey1(world: world, vmid: vmid, asid: asid, sizeClass: sizeClass),
                   SMMUTLBEntry(pageBase: w.pageBase, ipaBase: w.ipaBase, pageShift: UInt8(w.pageShift),
                                permissions: w.permissions.rawValue, s2Permissions: w.s2Permissions.rawValue,
                                dirtyUpgradable: w.dirtyUpgradable))
    }

    // MARK: Configuration fetch (IHI 0070 §3.3, §5.1–§5.4)

    /// Reads the STE for `sid` through the stream table and caches it when it is valid.
    /// Invalid and ILLEGAL STEs are not cached: each use refetches and reports C_BAD_STE.
    func fetchSTE(_ sid: UInt32) -> Result<STECacheEntry, SMMUFault> {
        var table = StreamTableConfig(base: strtabBase, cfg: strtabBaseCfg)
        if !features.twoLevelStreamTable { table.cfg &= ~0x3_0000 }
        let address: UInt64
        switch table.lookup(sid: sid, sidBits: features.sidBits) {
        case .outOfRange:
            return .failure(.config(.cBadStreamID))
        case .ste(let a):
            address = a
        case .l1Descriptor(let l1Address, let index):
            guard let raw = try? memory.deviceLoad(l1Address, as: UInt64.self) else {
                return .failure(.config(.fSTEFetch, fetch: l1Address))
            }
            guard let a = table.steAddress(l1: L1StreamTableDescriptor(raw: raw), index: index) else {
                return .failure(.config(.cBadStreamID))
            }
            address = a
        }
        var ste = StreamTableEntry()
        for i in 0..<8 {
            guard let w = try? memory.deviceLoad(address + UInt64(i) * 8, as: UInt64.self) else {
                return .failure(.config(.fSTEFetch, fetch: address + UInt64(i) * 8))
            }
            ste.data[i] = w
        }
        guard ste.validity(features: features) == nil else { return .failure(.config(.cBadSTE)) }
        var e = STECacheEntry.empty
        e.config = ste.rawConfig
        guard e.config & 0b100 != 0 else {
            steCache.insert(UInt64(sid), 0, e)
            return .success(e)
        }
        if ste.stage1Translates {
            e.s1ContextPointer = ste.s1ContextPointer
            e.s1Fmt = ste.s1Fmt.rawValue
            e.s1CDMax = ste.s1CDMax
            e.s1DSS = ste.s1DSS.rawValue
            if ste.s1StallDisable { e.flags |= STECacheEntry.s1StallDisable }
            if ste.s1CDMax != 0 && features.ssidBits != 0 { e.flags |= STECacheEntry.substreams }
            switch ste.streamWorld(e2h: cr2 & SMMUv3Bits.cr2E2H != 0, features: features) {
            case .nsEL1: e.world = 0
            case .el2: e.world = 1
            case .el2E2H: e.world = 2
            }
        }
        if features.ats { e.eats = ste.eats == .abort ? 0 : ste.eats.rawValue }
        if features.stage2 && ste.rawConfig != StreamTableEntry.Config.bypass.rawValue { e.vmid = ste.s2VMID }
        if ste.stage2Translates {
            // Model limit: 4 KiB stage 2 granule only.
            guard ste.s2Granule == .size4K,
                  let start = StreamTableEntry.s2StartLevel(sl0: ste.s2SL0, granule: .size4K, features: features),
                  let concat = StreamTableEntry.s2ConcatenatedTables(t0sz: ste.s2T0SZ, sl0: ste.s2SL0, granule: .size4K,
                                                                    features: features) else {
                return .failure(.config(.cBadSTE))
            }
            e.s2Level = UInt8(4 - start)
            e.s2ConcatLog2 = UInt8(concat.trailingZeroBitCount)
            e.s2InputBits = 64 - ste.s2T0SZ
            e.s2OutputBits = UInt8(AddressSize.effectiveBits(ste.s2PS, oas: features.outputAddressBits))
            e.s2TTB = ste.s2TTB
            if ste.s2AFFD { e.flags |= STECacheEntry.s2AFFD }
            if ste.s2HA { e.flags |= STECacheEntry.s2HA }
            if ste.s2HD && ste.s2HA { e.flags |= STECacheEntry.s2HD }
            if ste.s2S { e.flags |= STECacheEntry.s2S }
            if ste.s2R { e.flags |= STECacheEntry.s2R }
        }
        steCache.insert(UInt64(sid), 0, e)
        return .success(e)
    }

    /// Reads CD `index` of the CD table `ste` names (through stage 2 when it translates) and
    /// caches it when it is valid.
    func fetchCD(_ ste: STECacheEntry, sid: UInt32, index: UInt32) -> Result<CDCacheEntry, SMMUFault> {
        let layout = CDTableLayout(format: StreamTableEntry.S1Fmt(rawValue: ste.s1Fmt) ?? .linear, s1CDMax: ste.s1CDMax,
                                   pointer: ste.s1ContextPointer, ssidBits: features.ssidBits)
        let nested = ste.config == 0b111
        var address: UInt64
        switch layout.lookup(ssid: layout.substreamsEnabled ? index : nil) {
        case .badSubstream:
            return .failure(.config(.cBadSubstreamID))
        case .cd(let a):
            address = a
        case .l1Descriptor(let l1, let i):
            var l1PA = l1
            if nested {
                switch stage2Walk(ste, ipa: l1, access: .read, eventClass: .cd) {
                case .success(let w): if let f = w.fault { return .failure(f) }; l1PA = w.output(l1)
                case .failure(let f): return .failure(f)
                }
            }
            guard let raw = try? memory.deviceLoad(l1PA, as: UInt64.self) else {
                return .failure(.config(.fCDFetch, fetch: l1PA))
            }
            guard let a = layout.cdAddress(l1: L1ContextDescriptor(raw: raw), index: i) else {
                return .failure(.config(.cBadSubstreamID))
            }
            address = a
        }
        if nested {
            switch stage2Walk(ste, ipa: address, access: .read, eventClass: .cd) {
            case .success(let w): if let f = w.fault { return .failure(f) }; address = w.output(address)
            case .failure(let f): return .failure(f)
            }
        }
        var cd = ContextDescriptor()
        for i in 0..<8 {
            guard let w = try? memory.deviceLoad(address + UInt64(i) * 8, as: UInt64.self) else {
                return .failure(.config(.fCDFetch, fetch: address + UInt64(i) * 8))
            }
            cd.data[i] = w
        }
        let world: StreamTableEntry.StreamWorld = ste.world == 0 ? .nsEL1 : ste.world == 1 ? .el2 : .el2E2H
        let context = CDContext(streamWorld: world, stallDisabled: ste.has(STECacheEntry.s1StallDisable), aarch32Stage2: false)
        guard cd.validity(features: features, context: context) == nil else { return .failure(.config(.cBadCD)) }
        var e = CDCacheEntry.empty
        let el2 = world == .el2
        // Model limit: 4 KiB stage 1 granule only.
        if el2 || !cd.epd0 {
            guard cd.tg0 == .size4K else { return .failure(.config(.cBadCD)) }
            e.t0Bits = 64 - cd.t0sz
            e.ttb0 = cd.ttb0
        }
        if !el2 && !cd.epd1 {
            guard cd.tg1 == .size4K else { return .failure(.config(.cBadCD)) }
            e.t1Bits = 64 - cd.t1sz
            e.ttb1 = cd.ttb1
        }
        e.asid = cd.asid
        e.outputBits = UInt8(AddressSize.effectiveBits(cd.ips, oas: features.outputAddressBits))
        if cd.affd { e.flags |= CDCacheEntry.affd }
        let httu = cd.effectiveHTTU
        if httu.accessFlag { e.flags |= CDCacheEntry.ha }
        if httu.dirty { e.flags |= CDCacheEntry.hd }
        if cd.stall { e.flags |= CDCacheEntry.stall }
        if cd.record { e.flags |= CDCacheEntry.record }
        if cd.tbi0 { e.flags |= CDCacheEntry.tbi0 }
        if cd.tbi1 { e.flags |= CDCacheEntry.tbi1 }
        cdCache.insert(UInt64(sid), UInt64(index), e)
        return .success(e)
    }
}
