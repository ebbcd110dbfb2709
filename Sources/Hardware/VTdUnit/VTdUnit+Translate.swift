import Platform
import Formats

/// A context entry as the context cache holds it (tagged by source-id).

struct ContextCacheEntry: Sendable {
    var pasidDirectory: UInt64
    var pasidLimit: UInt32
    var ridPASID: UInt32
    var flags: UInt8
    static let fpd: UInt8 = 1, deviceTLB: UInt8 = 2, pasidEnable: UInt8 = 4, pageRequest: UInt8 = 8, ridPriv: UInt8 = 16
    static let empty = ContextCacheEntry(pasidDirectory: 0, pasidLimit: 0, ridPASID: 0, flags: 0)
}

/// A PASID-table entry as the PASID cache holds it: looked up by (source-id, PASID), tagged
/// with the entry's DID for invalidation (VT-d §6.2.2).

struct PASIDCacheEntry: Sendable {
    var secondStageRoot: UInt64
    var firstStageRoot: UInt64
    var did: UInt16
    var pgtt: UInt8
    var flags: UInt8
    var secondStageLevels: UInt8
    var firstStageLevels: UInt8
    static let fpd: UInt8 = 1, sre: UInt8 = 2, ere: UInt8 = 4, ssade: UInt8 = 8, eafe: UInt8 = 16
    static let empty = PASIDCacheEntry(secondStageRoot: 0, firstStageRoot: 0, did: 0, pgtt: 0, flags: 0, secondStageLevels: 0, firstStageLevels: 0)
}

/// An IOTLB entry: a leaf translation tagged (DID, PASID, page number, size class).

struct IOTLBEntry: Sendable {
    var pageBase: UInt64
    var pageShift: UInt8
    var permissions: UInt8
    /// PGTT of the translation that filled it (decides which invalidations drop it).
    var pgtt: UInt8
    /// The leaf's dirty bit is known set (or A/D is off): a write may hit without a walk.
    var writeReady: Bool
    static let empty = IOTLBEntry(pageBase: 0, pageShift: 12, permissions: 0, pgtt: 0, writeReady: false)
}

extension VTdUnit {
    // IOTLB tag layout: key0 = input address >> page shift;
    // key1 = size class << 52 | PASID-less << 51 | DID << 20 | PASID.
    // Second-stage-only translations depend on DID and address alone, so they are tagged
    // without a PASID and shared by every PASID of the DID; that lets a page-selective IOTLB
    // invalidation (which names only the DID) probe the exact tags instead of scanning.
    static var pasidLessTag: UInt64 { 1 << 51 }

    @inline(__always)
    static func iotlbKey1(did: UInt16, pasid: UInt32, pgtt: UInt8, sizeClass: UInt64) -> UInt64 {
        pgtt == PGTT.secondStage.rawValue
            ? sizeClass << 52 | pasidLessTag | UInt64(did) << 20
            : sizeClass << 52 | UInt64(did) << 20 | UInt64(pasid)
    }

    /// Translates one request from `source` the way the hardware does (VT-d §3.4–3.8):
    /// root → context → PASID directory/table → IOTLB → page walk → rights, recording a fault
    /// (unless FPD is set) when it fails.
    /// - Complexity: on an IOTLB hit three cache probes; on a miss also one walk.
    
    public func translate(source: RequesterID, pasid: PASID?, address: UInt64, access: DMAAccess) -> TranslationResult {
        var fpd = false
        let r = translateNoRecord(source: source, pasid: pasid, address: address, access: access, fpd: &fpd)
        if case .fault(let reason) = r {
            noteFault(reason, source: source, pasid: pasid, address: address, access: access, fpd: fpd)
        }
        return r
    }

    /// Translation without fault recording (what an ATS translation request gets).
    
    public func translateNoRecord(source: RequesterID, pasid: PASID?, address: UInt64, access requested: DMAAccess, fpd: inout Bool) -> TranslationResult {
        let c = countersStorage
        var access = requested
        c.pointee.translations &+= 1
        guard translationEnabled else {
            return .translated(physical: address, pageShift: 12, permissions: .all)
        }
        // Context.
        let sid = UInt64(source.rawValue)
        let ctx: ContextCacheEntry
        if let hit = contextCache.lookup(sid, 0) {
            c.pointee.contextCacheHits &+= 1
            ctx = hit.pointee.payload
        } else {
            c.pointee.contextCacheMisses &+= 1
            switch fetchContext(source) {
            case .success(let e): ctx = e
            case .failure(let f): fpd = f.fpd; return .fault(f.reason)
            }
        }
        fpd = ctx.flags & ContextCacheEntry.fpd != 0
        // PASID selection.
        let effective: UInt32
        if let pasid {
            guard ctx.flags & ContextCacheEntry.pasidEnable != 0 else { return .fault(.smPASIDEnableClear) }
            guard pasid.rawValue < ctx.pasidLimit else { return .fault(.smPASIDTooLarge) }
            effective = pasid.rawValue
        } else {
            guard ctx.ridPASID < ctx.pasidLimit else { return .fault(.smRIDPASIDError) }
            effective = ctx.ridPASID
            // Requests without PASID carry no ER/PMR; RID_PRIV makes them supervisor requests.
            access.remove([.execute, .privileged])
            if ctx.flags & ContextCacheEntry.ridPriv != 0 { access.insert(.privileged) }
        }
        // PASID entry.
        let pkey = sid << 20 | UInt64(effective)
        let pe: PASIDCacheEntry
        if let hit = pasidCache.lookup(pkey, 0) {
            c.pointee.pasidCacheHits &+= 1
            pe = hit.pointee.payload
        } else {
            c.pointee.pasidCacheMisses &+= 1
            switch fetchPASIDEntry(ctx, pasid: effective) {
            case .success(let e): pe = e; pasidCache.insert(pkey, 0, e)
            case .failure(let f): fpd = fpd || f.fpd; return .fault(f.reason)
            }
        }
        fpd = fpd || pe.flags & PASIDCacheEntry.fpd != 0
        if pasid != nil {
            if access.contains(.execute) && pe.flags & PASIDCacheEntry.ere == 0 { return .fault(.smEREClear) }
            if access.contains(.privileged) && pe.flags & PASIDCacheEntry.sre == 0 { return .fault(.smSREClear) }
        }
        if pe.pgtt == PGTT.passThrough.rawValue {
            guard address & ~(addressMask | 0xFFF) == 0 else { return .fault(.smAddressBeyondMax) }
            return .translated(physical: address, pageShift: 12, permissions: .all)
        }
        // IOTLB.
        let key1 = Self.iotlbKey1(did: pe.did, pasid: effective, pgtt: pe.pgtt, sizeClass: 0)
        var entry = iotlb.lookup(address >> 12, key1)
        if entry == nil && superpageEntries != 0 {
            entry = iotlb.lookup(address >> 21, key1 | 1 << 52) ?? iotlb.lookup(address >> 30, key1 | 2 << 52)
        }
        if let e = entry, !(access.contains(.write) && !e.pointee.payload.writeReady) {
            c.pointee.iotlbHits &+= 1
            let p = e.pointee.payload
            if let f = Self.rightsFault(PagePermissions(rawValue: p.permissions), access: access, pgtt: p.pgtt) { return .fault(f) }
            let shift = UInt64(p.pageShift)
            return .translated(physical: p.pageBase | (address & ((1 << shift) - 1)), pageShift: p.pageShift,
                               permissions: PagePermissions(rawValue: p.permissions))
        }
        c.pointee.iotlbMisses &+= 1
        return walkAndFill(pe, pasid: effective, address: address, access: access)
    }

    /// The fault for a request that the rights do not allow, or nil.
    @inline(__always)
    static func rightsFault(_ perms: PagePermissions, access: DMAAccess, pgtt: UInt8) -> VTdFaultReason? {
        if pgtt == PGTT.secondStage.rawValue {
            if (access.contains(.read) && !perms.contains(.read)) || (access.contains(.write) && !perms.contains(.write)) {
                return .smSecondStagePermission
            }
            return nil
        }
        if access.contains(.write) && !perms.contains(.write) { return .smNoWrite }
        if access.contains(.read) && !perms.contains(.read) { return .smNoRead }
        if !access.contains(.privileged) && !perms.contains(.user) { return .smUserSupervisor }
        if access.contains(.execute) && !perms.contains(.execute) { return .smNoExecute }
        return nil
    }


    struct FetchFault: Error {
        var reason: VTdFaultReason
        var fpd: Bool
    }

    /// Reads the root and context entries for `source` and caches the context.

    func fetchContext(_ source: RequesterID) -> Result<ContextCacheEntry, FetchFault> {
        guard activeTTM == 1 else {
            return .failure(FetchFault(reason: activeTTM == 0 ? .rootTableInvalid : .smInvalidRootTableAddress, fpd: false))
        }
        let rootAddress = activeRootTable + UInt64(source.bus) * ScalableRootEntry.size
        guard let lo = try? memory.deviceLoad(rootAddress, as: UInt64.self),
              let hi = try? memory.deviceLoad(rootAddress + 8, as: UInt64.self) else {
            return .failure(FetchFault(reason: .smRootEntryAccessError, fpd: false))
        }
        let root = ScalableRootEntry(lo: lo, hi: hi)
        let half = root.half(for: source.devfn)
        guard half.present else { return .failure(FetchFault(reason: .smRootEntryNotPresent, fpd: false)) }
        guard !root.reservedBitsSet(for: source.devfn, addressMask: addressMask) else {
            return .failure(FetchFault(reason: .smRootEntryReserved, fpd: false))
        }
        let ctxAddress = half.table + UInt64(source.devfn & 0x7F) * ScalableContextEntry.size
        let words: (UInt64, UInt64, UInt64, UInt64)
        do { words = try memory.deviceLoad256(ctxAddress) } catch {
            return .failure(FetchFault(reason: .smContextEntryAccessError, fpd: false))
        }
        let ce = ScalableContextEntry(val0: words.0, val1: words.1, val2: words.2, val3: words.3)
        guard ce.present else { return .failure(FetchFault(reason: .smContextEntryNotPresent, fpd: ce.faultProcessingDisable)) }
        guard !ce.reservedBitsSet(addressMask: addressMask) else {
            return .failure(FetchFault(reason: .smContextEntryReserved, fpd: ce.faultProcessingDisable))
        }
        var flags: UInt8 = 0
        if ce.faultProcessingDisable { flags |= ContextCacheEntry.fpd }
        if ce.deviceTLBEnable { flags |= ContextCacheEntry.deviceTLB }
        if ce.pasidEnable { flags |= ContextCacheEntry.pasidEnable }
        if ce.pageRequestEnable { flags |= ContextCacheEntry.pageRequest }
        if ce.ridPriv { flags |= ContextCacheEntry.ridPriv }
        let entry = ContextCacheEntry(pasidDirectory: ce.pasidDirectory, pasidLimit: ce.pasidLimit, ridPASID: ce.ridPASID, flags: flags)
        contextCache.insert(UInt64(source.rawValue), 0, entry)
        return .success(entry)
    }

    /// Reads the PASID directory and table entry for `pasid` under context `ctx`.

    func fetchPASIDEntry(_ ctx: ContextCacheEntry, pasid: UInt32) -> Result<PASIDCacheEntry, FetchFault> {
        let ctxFPD = ctx.flags & ContextCacheEntry.fpd != 0
        let (dirIndex, tableIndex) = PASIDDirectoryEntry.indices(of: pasid)
        guard let rawDir = try? memory.deviceLoad(ctx.pasidDirectory + dirIndex * 8, as: UInt64.self) else {
            return .failure(FetchFault(reason: .smPASIDDirectoryAccessError, fpd: ctxFPD))
        }
        let dir = PASIDDirectoryEntry(raw: rawDir)
        let dirFPD = ctxFPD || dir.faultProcessingDisable
        guard dir.present else { return .failure(FetchFault(reason: .smPASIDDirectoryNotPresent, fpd: dirFPD)) }
        guard !dir.reservedBitsSet(addressMask: addressMask) else {
            return .failure(FetchFault(reason: .smPASIDDirectoryReserved, fpd: dirFPD))
        }
        // Hardware may fetch the 512-bit entry in 128-bit chunks; we read it whole at one instant.
        let entryAddress = dir.table + tableIndex * PASIDEntry.size
        var e = PASIDEntry()
        for i in 0..<8 {
            guard let w = try? memory.deviceLoad(entryAddress + UInt64(i) * 8, as: UInt64.self) else {
                return .failure(FetchFault(reason: .smPASIDEntryAccessError, fpd: dirFPD))
            }
            e.val[i] = w
        }
        let fpd = dirFPD || e.faultProcessingDisable
        guard e.present else { return .failure(FetchFault(reason: .smPASIDEntryNotPresent, fpd: fpd)) }
        guard !e.reservedBitsSet(addressMask: addressMask) else { return .failure(FetchFault(reason: .smPASIDEntryReserved, fpd: fpd)) }
        let cap = configuration.capability, ecap = configuration.extendedCapability
        guard let pgtt = e.pgtt else { return .failure(FetchFault(reason: .smPASIDEntryInvalid, fpd: fpd)) }
        var ssLevels: UInt8 = 0, fsLevels: UInt8 = 0
        switch pgtt {
        case .firstStage:
            guard ecap.firstStage, let l = e.firstStageLevels, l == 4 || cap.firstStage5Level else {
                return .failure(FetchFault(reason: .smPASIDEntryInvalid, fpd: fpd))
            }
            fsLevels = UInt8(l)
        case .secondStage:
            guard ecap.secondStage, let l = e.secondStageLevels, cap.supportsSecondStage(levels: l) else {
                return .failure(FetchFault(reason: .smPASIDEntryInvalid, fpd: fpd))
            }
            ssLevels = UInt8(l)
        case .nested:
            guard ecap.nested, let l = e.secondStageLevels, cap.supportsSecondStage(levels: l),
                  let f = e.firstStageLevels, f == 4 || cap.firstStage5Level else {
                return .failure(FetchFault(reason: .smPASIDEntryInvalid, fpd: fpd))
            }
            ssLevels = UInt8(l); fsLevels = UInt8(f)
        case .passThrough:
            guard ecap.passThrough else { return .failure(FetchFault(reason: .smPASIDEntryInvalid, fpd: fpd)) }
        }
        var flags: UInt8 = 0
        if e.faultProcessingDisable || dirFPD { flags |= PASIDCacheEntry.fpd }
        if e.supervisorRequests { flags |= PASIDCacheEntry.sre }
        if e.executeRequests { flags |= PASIDCacheEntry.ere }
        if e.secondStageAD { flags |= PASIDCacheEntry.ssade }
        if e.extendedAccessedFlag { flags |= PASIDCacheEntry.eafe }
        return .success(PASIDCacheEntry(secondStageRoot: e.secondStageTable, firstStageRoot: e.firstStageTable,
                                        did: e.did.rawValue, pgtt: pgtt.rawValue, flags: flags,
                                        secondStageLevels: ssLevels, firstStageLevels: fsLevels))
    }

    /// Whether `address` is canonical for a first-stage walk of `levels` levels (48 or 57 bits).
    public static func isCanonical(_ address: UInt64, levels: Int) -> Bool {
        let bits = levels == 5 ? 57 : 48
        let top = Int64(bitPattern: address) >> (bits - 1)
        return top == 0 || top == -1
    }


    static func secondStageReason(_ f: WalkFault) -> VTdFaultReason {
        switch f {
        case .accessError: return .smSecondStageAccessError
        case .notPresent: return .smSecondStagePermission
        case .reserved: return .smSecondStageReserved
        }
    }


    static func firstStageReason(_ f: WalkFault) -> VTdFaultReason {
        switch f {
        case .accessError: return .smFirstStageAccessError
        case .notPresent: return .smFirstStageNotPresent
        case .reserved: return .smFirstStageReserved
        }
    }
}
