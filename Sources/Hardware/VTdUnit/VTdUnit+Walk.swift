import Platform
import Formats

/// A successful walk of one stage, with the raw leaf entry (for A/D decisions).
struct StageWalk {
    var result: WalkResult
    var leafRaw: UInt64
}

extension VTdUnit {
    /// IOTLB miss: walks the tables the PASID entry names, checks rights, fills the IOTLB.
    func walkAndFill(_ pe: PASIDCacheEntry, pasid: UInt32, address: UInt64, access: DMAAccess) -> TranslationResult {
        let c = countersStorage
        c.pointee.walks &+= 1
        let cap = configuration.capability
        let walk: WalkResult
        var adEnabled = false
        switch pe.pgtt {
        case PGTT.secondStage.rawValue:
            let levels = Int(pe.secondStageLevels)
            guard address >> PageTableGeometry.shift(level: levels + 1) == 0 else { return .fault(.smAddressBeyondMax) }
            do {
                walk = try cachedWalk(SecondStageFormat.self, key1: PagingStructureCache.key1(.secondStage, did: pe.did, pasid: 0),
                                      root: pe.secondStageRoot, levels: levels, input: address,
                                      maxLeafLevel: secondStageMaxLeaf).result
            } catch { return .fault(Self.secondStageReason(error)) }
            adEnabled = pe.flags & PASIDCacheEntry.ssade != 0
        case PGTT.firstStage.rawValue:
            let levels = Int(pe.firstStageLevels)
            guard Self.isCanonical(address, levels: levels) else { return .fault(.smNonCanonicalAddress) }
            do {
                walk = try cachedWalk(FirstStageFormat.self, key1: PagingStructureCache.key1(.firstStage, did: pe.did, pasid: pasid),
                                      root: pe.firstStageRoot, levels: levels, input: address,
                                      maxLeafLevel: cap.firstStage1GPages ? 3 : 2).result
            } catch { return .fault(Self.firstStageReason(error)) }
            adEnabled = true
        case PGTT.nested.rawValue:
            return nestedWalkAndFill(pe, pasid: pasid, address: address, access: access)
        default:
            return .fault(.smPASIDEntryInvalid)
        }
        if let f = Self.rightsFault(walk.permissions, access: access, pgtt: pe.pgtt) {
            insertIOTLB(pe, pasid: pasid, address: address, walk: walk, writeReady: !adEnabled)
            return .fault(f)
        }
        var writeReady = !adEnabled
        if adEnabled {
            // Hardware sets A (and D on a write) atomically in the leaf (VT-d §3.6.2, §3.7.2).
            let aBit = pe.pgtt == PGTT.secondStage.rawValue ? SecondStageFormat.accessedBit : FirstStageFormat.accessedBit
            let dBit = pe.pgtt == PGTT.secondStage.rawValue ? SecondStageFormat.dirtyBit : FirstStageFormat.dirtyBit
            let bits = aBit | (access.contains(.write) ? dBit : 0)
            if let old = try? memory.deviceFetchOr64(walk.leafEntryAddress, bits) {
                writeReady = access.contains(.write) || old & dBit != 0
            }
        }
        insertIOTLB(pe, pasid: pasid, address: address, walk: walk, writeReady: writeReady)
        return .translated(physical: walk.output(for: address), pageShift: UInt8(walk.pageShift), permissions: walk.permissions)
    }

    /// The largest second-stage leaf level the capability allows (1: 4 KiB only).
    var secondStageMaxLeaf: Int {
        let sllps = configuration.capability.secondStageLargePages
        return sllps & 2 != 0 ? 3 : sllps & 1 != 0 ? 2 : 1
    }

    func insertIOTLB(_ pe: PASIDCacheEntry, pasid: UInt32, address: UInt64, walk: WalkResult, writeReady: Bool) {
        let sizeClass = UInt64(walk.level - 1)
        if sizeClass > 0 { superpageEntries &+= 1 }
        if pe.pgtt == PGTT.nested.rawValue { nestedEntries &+= 1 }
        iotlb.insert(address >> walk.pageShift, Self.iotlbKey1(did: pe.did, pasid: pasid, pgtt: pe.pgtt, sizeClass: sizeClass),
                     IOTLBEntry(pageBase: walk.pageBase, pageShift: UInt8(walk.pageShift), permissions: walk.permissions.rawValue,
                                pgtt: pe.pgtt, writeReady: writeReady))
    }

    /// Walks `levels` levels of `F` from `root` for `input` (as `PageTableWalker.walk`), but
    /// starting below the deepest paging-structure-cache entry tagged `key1` that covers
    /// `input`, and caching every non-leaf entry it reads (VT-d §6.2.4, §6.2.5). A cached
    /// entry is used as it is: the table page it names is read even if software freed it.
    /// Each table page read is reported to `onTableRead`.
    /// - Complexity: up to `levels - 1` cache probes and `levels` dependent loads; no allocation.
    @inline(__always)
    func cachedWalk<F: PageTableFormat>(_ format: F.Type, key1: UInt64, root: UInt64, levels: Int, input: UInt64,
                                        maxLeafLevel: Int) throws(WalkFault) -> StageWalk {
        let c = countersStorage
        var table = root
        var level = levels
        var perms = PagePermissions.all
        let cached = psc.enabled
        if cached {
            if let hit = psc.deepest(input, key1: key1, levels: levels) {
                c.pointee.pagingStructureCacheHits &+= 1
                table = hit.entry.table
                level = hit.level &- 1
                perms = PagePermissions(rawValue: hit.entry.permissions)
            } else {
                c.pointee.pagingStructureCacheMisses &+= 1
            }
        }
        while true {
            let entryAddress = table &+ PageTableGeometry.index(input, level: level) &* 8
            if let hook = onTableRead { hook(table) }
            c.pointee.walkMemoryAccesses &+= 1
            let raw: UInt64
            do { raw = try memory.deviceLoad(entryAddress, as: UInt64.self) } catch {
                throw .accessError(level: level, address: entryAddress)
            }
            let e = F.decode(raw, level: level, addressMask: addressMask)
            guard e.present else { throw .notPresent(level: level) }
            guard !e.reserved, !(e.leaf && level > maxLeafLevel) else { throw .reserved(level: level) }
            perms.formIntersection(e.permissions)
            if e.leaf {
                let shift = PageTableGeometry.shift(level: level)
                return StageWalk(result: WalkResult(pageBase: e.address & ~((1 << shift) - 1), pageShift: shift,
                                                    permissions: perms, level: level, leafEntryAddress: entryAddress),
                                 leafRaw: raw)
            }
            if cached {
                psc.insert(level: level, address: input, key1: key1,
                           PSCEntry(table: e.address, tableStage2Leaf: 0, permissions: perms.rawValue, flags: 0))
            }
            table = e.address
            level &-= 1
        }
    }
}
