import Platform
import Formats

/// A guest-physical address translated by the second stage inside a nested walk.
struct Stage2Translation {
    var hpa: UInt64
    var permissions: PagePermissions
    var pageShift: UInt64
    /// Physical address and value (as read) of the second-stage leaf entry.
    var leafEntry: UInt64
    var leafRaw: UInt64
}

extension VTdUnit {
    /// The extended-accessed bit of first-stage entries, set with A when EAFE is 1 (VT-d §3.6.2).
    static var extendedAccessedBit: UInt64 { 1 << 10 }

    /// Nested translation (VT-d §3.8) on an IOTLB miss: a first-stage walk whose every table
    /// pointer and final output are guest-physical addresses translated by the second stage.
    ///
    /// Accessed/dirty (VT-d §3.6.2, §3.7.2, x86 rules): A (and EA with EAFE) is set in every
    /// first-stage entry used, D in the leaf for a write once the rights allow it. Those
    /// updates are writes to the guest table page, so the second stage must allow writing it
    /// (else fault 0x77); with SSADE they also set the second-stage D of that page. With SSADE
    /// every second-stage translation sets A in its second-stage leaf, and the output's leaf
    /// gets D on a write. Entries cached by the paging-structure caches already had A set,
    /// so a walk that starts below one skips them, as x86 does.
    ///
    /// Every fault is a `VTdFaultReason`: table contents are guest-controlled, so no value
    /// read here may trap (arithmetic wraps; addresses are masked to 52 bits by decode).
    func nestedWalkAndFill(_ pe: PASIDCacheEntry, pasid: UInt32, address: UInt64, access: DMAAccess) -> TranslationResult {
        let levels = Int(pe.firstStageLevels)
        guard Self.isCanonical(address, levels: levels) else { return .fault(.smNonCanonicalAddress) }
        let c = countersStorage
        let key1 = PagingStructureCache.key1(.nested, did: pe.did, pasid: pasid)
        let ssade = pe.flags & PASIDCacheEntry.ssade != 0
        let accessedBits = FirstStageFormat.accessedBit | (pe.flags & PASIDCacheEntry.eafe != 0 ? Self.extendedAccessedBit : 0)
        let fsMaxLeaf = configuration.capability.firstStage1GPages ? 3 : 2
        // The first-stage table being read: host-physical address, whether the second stage
        // lets hardware write it, and the second-stage leaf mapping it (0: unknown).
        var table: UInt64 = 0
        var tableWritable = false
        var tableStage2Leaf: UInt64 = 0
        var level = levels
        var perms = PagePermissions.all
        var started = false
        if psc.enabled {
            if let hit = psc.deepest(address, key1: key1, levels: levels) {
                c.pointee.pagingStructureCacheHits &+= 1
                table = hit.entry.table
                tableWritable = hit.entry.flags & PSCEntry.tableWritable != 0
                tableStage2Leaf = hit.entry.tableStage2Leaf
                level = hit.level &- 1
                perms = PagePermissions(rawValue: hit.entry.permissions)
                started = true
            } else {
                c.pointee.pagingStructureCacheMisses &+= 1
            }
        }
        if !started {
            let s2: Stage2Translation
            do { s2 = try nestedStage2(pe, gpa: pe.firstStageRoot) } catch { return .fault(error.reason) }
            guard s2.permissions.contains(.read) else { return .fault(.smNestedFirstStagePML4ReadError) }
            table = s2.hpa
            tableWritable = s2.permissions.contains(.write)
            tableStage2Leaf = s2.leafEntry
        }
        while true {
            let entryAddress = table &+ PageTableGeometry.index(address, level: level) &* 8
            if let hook = onTableRead { hook(table) }
            c.pointee.walkMemoryAccesses &+= 1
            let raw: UInt64
            do { raw = try memory.deviceLoad(entryAddress, as: UInt64.self) } catch {
                return .fault(level == levels ? .smFirstStagePML4AccessError : .smFirstStageAccessError)
            }
            let e = FirstStageFormat.decode(raw, level: level, addressMask: addressMask)
            guard e.present else { return .fault(.smFirstStageNotPresent) }
            guard !e.reserved, !(e.leaf && level > fsMaxLeaf) else { return .fault(.smFirstStageReserved) }
            perms.formIntersection(e.permissions)
            if e.leaf {
                return nestedLeaf(pe, pasid: pasid, address: address, access: access, level: level, entry: e, raw: raw,
                                  entryAddress: entryAddress, perms: perms, tableWritable: tableWritable,
                                  tableStage2Leaf: tableStage2Leaf, accessedBits: accessedBits, ssade: ssade)
            }
            if raw & accessedBits != accessedBits {
                guard setFirstStageBits(accessedBits & ~raw, at: entryAddress, writable: tableWritable,
                                        stage2Leaf: tableStage2Leaf, ssade: ssade) else {
                    return .fault(.smNestedFirstStageWriteError)
                }
            }
            let s2: Stage2Translation
            do { s2 = try nestedStage2(pe, gpa: e.address) } catch { return .fault(error.reason) }
            guard s2.permissions.contains(.read) else { return .fault(.smNestedFirstStageReadError) }
            if psc.enabled {
                psc.insert(level: level, address: address, key1: key1,
                           PSCEntry(table: s2.hpa, tableStage2Leaf: s2.leafEntry, permissions: perms.rawValue,
                                    flags: s2.permissions.contains(.write) ? PSCEntry.tableWritable : 0))
            }
            table = s2.hpa
            tableWritable = s2.permissions.contains(.write)
            tableStage2Leaf = s2.leafEntry
            level &-= 1
        }
    }

    /// The end of a nested walk: the leaf's output through the second stage, rights, A/D,
    /// and the IOTLB fill.
    private func nestedLeaf(_ pe: PASIDCacheEntry, pasid: UInt32, address: UInt64, access: DMAAccess, level: Int,
                            entry e: DecodedPTE, raw: UInt64, entryAddress: UInt64, perms fsPerms: PagePermissions,
                            tableWritable: Bool, tableStage2Leaf: UInt64, accessedBits: UInt64, ssade: Bool) -> TranslationResult {
        let shift = PageTableGeometry.shift(level: level)
        let span: UInt64 = 1 << shift
        let gpa = (e.address & ~(span &- 1)) | (address & (span &- 1))
        let s2: Stage2Translation
        do { s2 = try nestedStage2(pe, gpa: gpa) } catch { return .fault(error.reason) }
        var perms = fsPerms
        perms.formIntersection(s2.permissions.union(.user).union(.execute))
        // The combined page is the smaller of the two stages' pages.
        let outShift = min(shift, s2.pageShift)
        let walk = WalkResult(pageBase: s2.hpa & ~((1 << outShift) &- 1), pageShift: outShift, permissions: perms,
                              level: Int((outShift &- 12) / 9) &+ 1, leafEntryAddress: entryAddress)
        if let f = Self.rightsFault(perms, access: access, pgtt: pe.pgtt) {
            insertIOTLB(pe, pasid: pasid, address: address, walk: walk, writeReady: false)
            return .fault(f)
        }
        let write = access.contains(.write)
        let fsBits = accessedBits | (write ? FirstStageFormat.dirtyBit : 0)
        if raw & fsBits != fsBits {
            guard setFirstStageBits(fsBits & ~raw, at: entryAddress, writable: tableWritable,
                                    stage2Leaf: tableStage2Leaf, ssade: ssade) else {
                return .fault(.smNestedFirstStageWriteError)
            }
        }
        var writeReady = write || raw & FirstStageFormat.dirtyBit != 0
        if ssade {
            // The output page's second-stage D on a write (A was set when it was translated).
            if write && s2.leafRaw & SecondStageFormat.dirtyBit == 0 {
                _ = try? memory.deviceFetchOr64(s2.leafEntry, SecondStageFormat.accessedBit | SecondStageFormat.dirtyBit)
            }
            writeReady = writeReady && (write || s2.leafRaw & SecondStageFormat.dirtyBit != 0)
        }
        insertIOTLB(pe, pasid: pasid, address: address, walk: walk, writeReady: writeReady)
        return .translated(physical: walk.output(for: address), pageShift: UInt8(outShift), permissions: perms)
    }

    /// Sets `bits` in the first-stage entry at host-physical `entryAddress`: a write to the
    /// guest table page, so false when the second stage does not allow writing it. With
    /// SSADE the page's second-stage leaf gets A and D.
    private func setFirstStageBits(_ bits: UInt64, at entryAddress: UInt64, writable: Bool, stage2Leaf: UInt64, ssade: Bool) -> Bool {
        guard writable else { return false }
        _ = try? memory.deviceFetchOr64(entryAddress, bits)
        if ssade && stage2Leaf != 0 {
            _ = try? memory.deviceFetchOr64(stage2Leaf, SecondStageFormat.accessedBit | SecondStageFormat.dirtyBit)
        }
        return true
    }

    /// Translates guest-physical `gpa` through the second stage of a nested entry, using and
    /// filling the second-stage paging-structure caches (tagged by DID). With SSADE sets A in
    /// the second-stage leaf. A GPA beyond the second stage's input width is fault 0x74.
    func nestedStage2(_ pe: PASIDCacheEntry, gpa: UInt64) throws(FetchFault) -> Stage2Translation {
        let levels = Int(pe.secondStageLevels)
        guard gpa >> PageTableGeometry.shift(level: levels &+ 1) == 0 else {
            throw FetchFault(reason: .smNestedFirstStageBeyondMGAW, fpd: false)
        }
        let w: StageWalk
        do {
            w = try cachedWalk(SecondStageFormat.self, key1: PagingStructureCache.key1(.secondStage, did: pe.did, pasid: 0),
                               root: pe.secondStageRoot, levels: levels, input: gpa, maxLeafLevel: secondStageMaxLeaf)
        } catch { throw FetchFault(reason: Self.secondStageReason(error), fpd: false) }
        if pe.flags & PASIDCacheEntry.ssade != 0 && w.leafRaw & SecondStageFormat.accessedBit == 0 {
            _ = try? memory.deviceFetchOr64(w.result.leafEntryAddress, SecondStageFormat.accessedBit)
        }
        return Stage2Translation(hpa: w.result.output(for: gpa), permissions: w.result.permissions, pageShift: w.result.pageShift,
                                 leafEntry: w.result.leafEntryAddress, leafRaw: w.leafRaw)
    }
}
