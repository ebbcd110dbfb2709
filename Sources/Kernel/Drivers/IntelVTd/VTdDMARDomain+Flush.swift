import Platform
import Formats
import Hardware

/// Cache invalidation of a domain's range (Linux drivers/iommu/intel/cache.c
/// `cache_tag_flush_range`): one pass over the tags, descriptors batched per unit on the
/// stack and each batch waited for.
extension VTdDMARDomain {
    /// Page-selective address and mask covering [start, end] (Linux
    /// `calculate_psi_aligned_address`): the smallest naturally aligned power-of-two block
    /// of pages holding both ends.
    static func psiRange(start: UInt64, end: UInt64) -> (address: UInt64, mask: UInt8) {
        let first = start >> 12, last = end >> 12
        // The lowest shift at which both page numbers agree: one past the highest differing bit.
        let differing = first ^ last
        let mask = UInt8(min(52, differing == 0 ? 0 : 64 - differing.leadingZeroBitCount))
        return ((first >> UInt64(mask)) << UInt64(mask + 12), mask)
    }

    /// Whether `u` can invalidate [start, end] page-selectively with `mask` (not the whole
    /// space, PSI supported, mask within MAMV); else domain- or PASID-selective.
    @inline(__always)
    static func pageSelective(_ u: IntelIOMMU, start: UInt64, end: UInt64, mask: UInt8) -> Bool {
        !(start == 0 && end == .max) && u.capability.pageSelectiveInvalidation && mask <= u.capability.maximumAddressMask
    }

    /// The descriptor that drops this domain's translations of the range from the IOTLB for
    /// `tag` (Linux `cache_tag_flush_iotlb`): PASID-based for a first-stage domain's own
    /// tags (its entries are tagged by DID and PASID), the type-2 IOTLB descriptor by DID
    /// otherwise (second-stage and nested translations; a nest parent's nesting tags name the
    /// child's DID). Page-selective when the unit allows, else domain- or PASID-selective.
    /// The PASID-based descriptor falls back to PASID-selective beyond MAMV too: the unit
    /// rejects a larger mask.
    @inline(__always)
    func iotlbInvalidation(_ tag: CacheTag, psi: Bool, address: UInt64, mask: UInt8, hint: Bool) -> InvalidationDescriptor {
        if taggedByPASID && tag.kind == .iotlb {
            let p = PASID(truncating: tag.pasid)
            return psi ? .pasidIOTLB(tag.did, p, .page(address: address, addressMask: mask, invalidationHint: hint))
                       : .pasidIOTLB(tag.did, p, .pasid)
        }
        return .iotlb(psi ? .page(tag.did, address: address, addressMask: mask, invalidationHint: hint) : .domain(tag.did))
    }

    /// Whether an earlier tag of the batch already produced the same IOTLB descriptor
    /// (DID-tagged entries need one descriptor per DID, whatever the PASIDs).
    @inline(__always)
    private func coveredEarlier(_ k: Int, from i: Int) -> Bool {
        let t = tags[k]
        if taggedByPASID && t.kind == .iotlb { return false }
        for j in i..<k {
            let o = tags[j]
            if (o.kind == .iotlb || o.kind == .nestingIOTLB) && !(taggedByPASID && o.kind == .iotlb) && o.did == t.did { return true }
        }
        return false
    }

    /// Invalidates [start, end] wherever the tags say it may be cached. `hint` (IH) tells the
    /// unit only leaves changed, so it may keep its paging-structure caches: set only when no
    /// table page was freed. Device TLBs of nested translations are flushed whole (their
    /// entries cannot be matched to a change of the parent).
    func flushRange(start: UInt64, end: UInt64, hint: Bool) throws(IOMMUError) {
        let (address, mask) = Self.psiRange(start: start, end: end)
        if tags.count == 1, case let t = tags[0], t.kind == .iotlb {
            // The common case, one device behind one unit without a device TLB: one
            // descriptor, built in place.
            let failure = driver.unitRefs[t.unit]._withUnsafeGuaranteedRef { u -> IOMMUError? in
                var d = iotlbInvalidation(t, psi: Self.pageSelective(u, start: start, end: end, mask: mask),
                                          address: address, mask: mask, hint: hint)
                return withUnsafePointer(to: &d) { p -> IOMMUError? in
                    do throws(IOMMUError) { try u.queue.submitAndWait(UnsafeBufferPointer(start: p, count: 1)) } catch { return error }
                    return nil
                }
            }
            if let failure { throw failure }
            return
        }
        let skipNesting = driver.core?.injectedBugs.contains(.parentFlushSkipsNested) == true
        var i = 0
        var firstError: IOMMUError?
        while i < tags.count {
            let unitIndex = tags[i].unit
            var last = i
            while last < tags.count && tags[last].unit == unitIndex { last += 1 }
            // The unit without reference counting (the driver keeps it alive), and its
            // descriptors built on the stack (no allocation per flush).
            let result = driver.unitRefs[unitIndex]._withUnsafeGuaranteedRef { u in
                withUnsafeTemporaryAllocation(of: InvalidationDescriptor.self, capacity: last - i) { batch -> IOMMUError? in
                    let whole = start == 0 && end == .max
                    let psi = Self.pageSelective(u, start: start, end: end, mask: mask)
                    guard let base = batch.baseAddress else { return nil }
                    var n = 0
                    for k in i..<last {
                        let t = tags[k]
                        switch t.kind {
                        case .iotlb, .nestingIOTLB:
                            if coveredEarlier(k, from: i) || (skipNesting && t.kind == .nestingIOTLB) { continue }
                            (base + n).initialize(to: iotlbInvalidation(t, psi: psi, address: address, mask: mask, hint: hint))
                        case .deviceTLB:
                            if u.bugs.contains(.skipDeviceTLBInvalidation) { continue }
                            (base + n).initialize(to: u.deviceTLBInvalidation(t.device, pasid: t.pasid, address: whole ? 0 : address, mask: whole ? 52 : mask))
                        case .nestingDeviceTLB:
                            if u.bugs.contains(.skipDeviceTLBInvalidation) || skipNesting { continue }
                            (base + n).initialize(to: u.deviceTLBInvalidation(t.device, pasid: t.pasid, address: 0, mask: 52))
                        }
                        n += 1
                    }
                    defer { base.deinitialize(count: n) }
                    do throws(IOMMUError) { try u.queue.submitAndWait(UnsafeBufferPointer(rebasing: batch[0..<n])) } catch { return error }
                    return nil
                }
            }
            if let result, firstError == nil { firstError = result }
            i = last
        }
        if let firstError { throw firstError }
    }
}
