// SMMUv3 translation table walks (IHI 0070 §3.4 address sizes, §3.13 translation table
// update (HTTU: Access flag and dirty state), §3.21 nested translation; VMSAv8-64 4 KiB
// granule, Arm ARM D8). Stage 2 walks use `PageTableWalker` over `ArmStage2Format`, with
// concatenated start-level tables; stage 1 walks resolve each table address through stage 2
// when the STE is nested, so they walk level by level here over `ArmStage1Format`.
import Platform
import Formats

/// A completed walk: the leaf translation, and a permission fault when the access the walk
/// was for is not allowed by it (the translation is still valid and may be cached).
struct SMMUWalk {
    var pageBase: UInt64
    var pageShift: UInt64
    var permissions: PagePermissions
    var dirtyUpgradable: Bool
    var fault: SMMUFault?
    var cacheable: Bool = true
    /// Nested walks: the IPA page and stage 2's rights.
    var ipaBase: UInt64 = 0
    var s2Permissions: PagePermissions = .all

    @inline(__always)
    func output(_ input: UInt64) -> UInt64 { pageBase | (input & ((1 << pageShift) - 1)) }
}

extension SMMUv3Unit {
    /// Walks stage 2 for `ipa` (the input of a stage-2-only stream, or a CD, table or output
    /// IPA of a nested one, as `eventClass` says).
    func stage2Walk(_ ste: STECacheEntry, ipa: UInt64, access: DMAAccess, eventClass: SMMUEventClass) -> Result<SMMUWalk, SMMUFault> {
        func fault(_ e: SMMUEventID, fetch: UInt64 = 0) -> SMMUFault {
            SMMUFault(event: e, s2: true, eventClass: eventClass, ipa: ipa, fetchAddress: fetch, ttRead: eventClass != .input)
        }
        guard UInt64(ste.s2InputBits) >= 64 || ipa >> UInt64(ste.s2InputBits) == 0 else { return .failure(fault(.fTranslation)) }
        let level = Int(ste.s2Level)
        let concat = UInt64(1) << UInt64(ste.s2ConcatLog2)
        let extra = concat > 1 ? (ipa >> (PageTableGeometry.shift(level: level) + 9)) & (concat - 1) : 0
        let root = (ste.s2TTB & ~(concat * 4096 - 1)) &+ extra * 4096
        let mask = PageTableGeometry.addressMask(width: Int(ste.s2OutputBits))
        let w: WalkResult
        do {
            w = try PageTableWalker.walk(ArmStage2Format.self, memory: memory, root: root, levels: level, input: ipa, addressMask: mask)
        } catch {
            switch error {
            case .accessError(_, let a): return .failure(fault(.fWalkEABT, fetch: a))
            case .notPresent: return .failure(fault(.fTranslation))
            case .reserved: return .failure(fault(.fAddrSize))
            }
        }
        countersStorage.pointee.walkMemoryAccesses &+= UInt64(level - w.level + 1)
        if let hook = onTableRead { hook(w.leafEntryAddress & ~0xFFF) }
        guard var raw = try? memory.deviceLoad(w.leafEntryAddress, as: UInt64.self) else {
            return .failure(fault(.fWalkEABT, fetch: w.leafEntryAddress))
        }
        var perms = w.permissions
        if raw & ArmStage2Format.accessedBit == 0 {
            if ste.has(STECacheEntry.s2HA) {
                raw = ((try? memory.deviceFetchOr64(w.leafEntryAddress, ArmStage2Format.accessedBit)) ?? raw) | ArmStage2Format.accessedBit
            } else if !ste.has(STECacheEntry.s2AFFD) {
                return .failure(fault(.fAccess))
            }
        }
        var upgradable = ste.has(STECacheEntry.s2HD) && ArmStage2Format.isWritableClean(raw)
        if upgradable && access.contains(.write) {
            if markDirty(w.leafEntryAddress, raw, ArmStage2Format.dirtied(raw)) {
                perms.insert(.write)
                upgradable = false
            }
        }
        var result = SMMUWalk(pageBase: w.pageBase, pageShift: w.pageShift, permissions: perms, dirtyUpgradable: upgradable)
        if Self.permissionFault(perms, access: access, stage2: true) != nil {
            var f = fault(.fPermission)
            f.ttRead = eventClass != .input && !access.contains(.write)
            result.fault = f
        }
        return .success(result)
    }

    /// Sets the dirty state of a leaf with a single atomic update (it fails if software
    /// changed the entry meanwhile; the access then faults as the old entry says).
    func markDirty(_ address: UInt64, _ old: UInt64, _ new: UInt64) -> Bool {
        guard let r = try? memory.compareExchange64(address, expected: old, desired: new) else { return false }
        return r.exchanged
    }

    /// Walks stage 1 for `input` (top byte already handled) through `cd`; with `nested` every
    /// table address and the output are IPAs translated by stage 2.
    func stage1Walk(_ ste: STECacheEntry, _ cd: CDCacheEntry, input: UInt64, access: DMAAccess, nested: Bool) -> Result<SMMUWalk, SMMUFault> {
        let ttb: UInt64, ia: UInt64
        if cd.t0Bits != 0 && input >> UInt64(cd.t0Bits) == 0 {
            ttb = cd.ttb0; ia = UInt64(cd.t0Bits)
        } else if cd.t1Bits != 0 && (~input) >> UInt64(cd.t1Bits) == 0 {
            ttb = cd.ttb1; ia = UInt64(cd.t1Bits)
        } else {
            return .failure(SMMUFault(event: .fTranslation))
        }
        let c = countersStorage
        let levels = Int((ia - 12 + 8) / 9)
        let topBits = ia - PageTableGeometry.shift(level: levels)
        let mask = PageTableGeometry.addressMask(width: Int(cd.outputBits))
        var table = ttb & ~((UInt64(8) << topBits) - 1)
        var level = levels
        var perms = PagePermissions.all
        while true {
            let bits: UInt64 = level == levels ? topBits : 9
            var entryAddress = table &+ ((input >> PageTableGeometry.shift(level: level)) & ((1 << bits) - 1)) &* 8
            if nested {
                switch stage2Walk(ste, ipa: entryAddress, access: .read, eventClass: .tt) {
                case .success(let w):
                    if let f = w.fault { return .failure(f) }
                    entryAddress = w.output(entryAddress)
                case .failure(let f): return .failure(f)
                }
            }
            c.pointee.walkMemoryAccesses &+= 1
            if let hook = onTableRead { hook(entryAddress & ~0xFFF) }
            guard var raw = try? memory.deviceLoad(entryAddress, as: UInt64.self) else {
                return .failure(SMMUFault(event: .fWalkEABT, eventClass: .tt, fetchAddress: entryAddress))
            }
            let e = ArmStage1Format.decode(raw, level: level, addressMask: mask)
            guard e.present else { return .failure(SMMUFault(event: .fTranslation)) }
            guard !e.reserved else { return .failure(SMMUFault(event: .fAddrSize)) }
            let tablePerms = perms
            perms.formIntersection(e.permissions)
            guard e.leaf else {
                table = e.address
                level -= 1
                continue
            }
            // Access flag (HA sets it; AFFD ignores it; otherwise an Access flag fault).
            if raw & ArmStage1Format.accessedBit == 0 {
                if cd.has(CDCacheEntry.ha) {
                    raw = ((try? memory.deviceFetchOr64(entryAddress, ArmStage1Format.accessedBit)) ?? raw) | ArmStage1Format.accessedBit
                } else if !cd.has(CDCacheEntry.affd) {
                    return .failure(SMMUFault(event: .fAccess))
                }
            }
            // Dirty state: a writable-clean leaf (DBM, AP[2] set) becomes writable-dirty on a
            // write with HD, unless a table level removed write permission.
            let tablesAllowWrite = tablePerms.contains(.write)
            var upgradable = cd.has(CDCacheEntry.hd) && ArmStage1Format.isWritableClean(raw) && tablesAllowWrite
            if upgradable && access.contains(.write) && markDirty(entryAddress, raw, ArmStage1Format.dirtied(raw)) {
                perms.insert(.write)
                upgradable = false
            }
            let shift = PageTableGeometry.shift(level: level)
            var result = SMMUWalk(pageBase: e.address & ~((1 << shift) - 1), pageShift: shift, permissions: perms,
                                  dirtyUpgradable: upgradable)
            if Self.permissionFault(perms, access: access, stage2: false) != nil {
                result.fault = SMMUFault(event: .fPermission)
                if nested { result.cacheable = false }
                return .success(result)
            }
            guard nested else { return .success(result) }
            // Nested: the stage 1 output is an IPA; stage 2 gives the page and its rights.
            let ipa = result.output(input)
            switch stage2Walk(ste, ipa: ipa, access: access, eventClass: .input) {
            case .success(let s2):
                let combined = min(shift, s2.pageShift)
                let pa = s2.output(ipa)
                var out = SMMUWalk(pageBase: pa & ~((1 << combined) - 1), pageShift: combined,
                                   permissions: perms.intersection(s2.permissions),
                                   dirtyUpgradable: upgradable || s2.dirtyUpgradable)
                out.fault = s2.fault
                out.ipaBase = ipa & ~((1 << combined) - 1)
                out.s2Permissions = s2.permissions
                return .success(out)
            case .failure(let f):
                return .failure(f)
            }
        }
    }
}
