import Platform
import Formats
import Hardware
import Kernel

/// The isolation oracle (design §5): an intent model of what each (unit, RID, PASID) may
/// reach, built from what software announced, and a check of every DMA access the hardware
/// performed against it.
///
/// - Each domain has a shadow of its mappings: a range being mapped may or may not be
///   visible yet; a range being unmapped stays permitted (stale) until its unmap, including
///   the invalidation and wait, returns (strict); after that, using it is a violation.
/// - A (RID, PASID) in transition from A to B may reach A ∪ B; after it, B alone; blocked
///   or unattached, nothing. A fault during a transition the driver calls hitless, at an
///   address A and B map alike, is a violation.
/// - A fault outside any transition at an address the domain maps (settled, with the right
///   permission) is a violation: the mapping should have been visible.
/// - DIDs: never 0 or 1, never handed out twice, never handed out or released while the
///   unit still caches entries tagged with them; the reserved ones stay reserved.
/// - Deferred unmaps (flush queue): the range stays permitted until a flush that began
///   after the unmap has completed; mapping any of it again before that is a violation (the
///   hole deferred mode must not open), and so is freeing a table page the unmap unlinked
///   (strict or deferred) before its invalidation completed.
/// - After teardown: no frame, DID, PASID or domain left.
public final class Oracle: DMAAccessChecker, KernelObserver, @unchecked Sendable {
    enum Ref: Equatable { case identity, paging(Int), nested(Int) }

    struct Window {
        var current: Ref?
        var previous: Ref?
        var inTransition = false
        var alikeFaults: [String] = []
    }

    let platform: PlatformContext
    let units: [VTdUnit]
    let smmuUnits: [SMMUv3Unit]
    @exclusivity(unchecked) var shadows: [Int: ShadowMap] = [:]
    @exclusivity(unchecked) var graveyards: [Int: ShadowMap] = [:]
    /// Ranges whose unmap could not invalidate: the hardware may use them for ever.
    @exclusivity(unchecked) var abandoned: [Int: ShadowMap] = [:]
    /// Deferred unmaps waiting for a flush, and those a running flush covers: both still
    /// permitted (stale), and their IOVAs must not be mapped again yet.
    @exclusivity(unchecked) var deferred: [Int: ShadowMap] = [:]
    @exclusivity(unchecked) var covering: [Int: ShadowMap] = [:]
    /// Unlinked table pages that must not be freed yet (frame → domain), and per domain
    /// those of strict unmaps in progress, of deferred unmaps, and of the running flush.
    var pendingTables: [UInt64: Int] = [:]
    var strictTables: [Int: [UInt64]] = [:]
    var deferredTables: [Int: [UInt64]] = [:]
    var coveringTables: [Int: [UInt64]] = [:]
    /// Every page-table page of a domain's tables that may still be reachable by a walk as of
    /// the last completed invalidation (frame → the allocator's owner tag of its table): from
    /// its allocation until an unmap's gather hands it over (then `pendingTables` follows it)
    /// or its domain is freed.
    var liveTables: [UInt64: UInt32] = [:]
    /// Table pages of domains software freed and has not allocated as a table again.
    var freedTables: Set<UInt64> = []
    /// Which domain each owner tag belongs to (for reports).
    var tableOwners: [UInt32: Int] = [:]
    @exclusivity(unchecked) var windows: [UInt64: Window] = [:]
    /// Nested domains: their guest tables and what the guest is changing (Oracle+Nested.swift).
    var nested = NestedState()
    /// When each (unit, RID, PASID) was last detached (its PASID torn down and drained).
    var pasidTornDownAt: [UInt64: UInt64] = [:]
    /// Untrusted devices by (unit, requester ID): their unmaps are never deferred.
    var untrustedDevices: Set<UInt64> = []
    /// The machine's default-domain policy: deferred unmaps exist only under `lazy`.
    public var policy: DMAPolicy = .lazy
    /// Records exposure windows, flushes and IOVA use for `compare` and the HTML pages (nil:
    /// not recording; one nil check per map, unmap and flush, none per DMA).
    public var recorder: RunRecorder?
    private var liveDIDs: [Set<UInt16>]
    /// SMMUv3 ASIDs and VMIDs handed out (Oracle+SMMUv3.swift).
    var liveTLBTags: Set<TLBTagKey> = []
    public var reservedCheck: (() -> Bool)?
    /// The driver whose units the oracle watches (events of other drivers are ignored: their
    /// unit indices mean other hardware). Nil: all.
    public var trackedDriver: ObjectIdentifier?

    func tracks(_ driver: any IOMMUDriver) -> Bool { trackedDriver == nil || trackedDriver == ObjectIdentifier(driver) }

    @exclusivity(unchecked) public internal(set) var checks: UInt64 = 0
    /// Domains with dirty tracking on (Oracle+Dirty.swift).
    var dirty: [Int: DirtyState] = [:]
    public private(set) var faultsSeen: UInt64 = 0
    public private(set) var violationCount = 0
    public private(set) var violations: [Violation] = []
    public let violationLimit = 100
    /// Faults that were expected (device blocked, address unmapped, transition not hitless).
    public private(set) var expectedFaults: UInt64 = 0

    /// A cache of recently permitted translations, valid while nothing the oracle tracks has
    /// changed (`generation`): most DMA hits a settled mapping it just checked, and needs no
    /// hash lookup then.
    struct FastEntry {
        var key: UInt64 = .max
        var start: UInt64 = 0
        var end: UInt64 = 0
        var physical: UInt64 = 0
        var permissions: PagePermissions = []
        var generation: UInt64 = 0
        /// The paging domain whose mapping this is (0 for identity), and its generation then.
        var domain: Int = 0
        var domainGeneration: UInt64 = 0
    }
    /// 2^10 slots: a run's hot (device, page) pairs rarely collide.
    static let fastSlotBits: UInt64 = 10
    static let fastSlots = 1 << fastSlotBits
    /// Raw storage (no reference counting on the DMA path); freed in deinit.
    private let fast: UnsafeMutablePointer<FastEntry> = {
        let p = UnsafeMutablePointer<FastEntry>.allocate(capacity: Oracle.fastSlots)
        p.initialize(repeating: FastEntry(), count: Oracle.fastSlots)
        return p
    }()
    /// Bumped by every event that can take a permission away from any device (transitions,
    /// domain frees); maps only add permissions and leave the cache valid.
    @exclusivity(unchecked) var generation: UInt64 = 1
    /// Per paging domain (by id; slot 0, identity, never changes): bumped by the events that
    /// take permissions away inside one domain (unmaps, flush completions), so churn in one
    /// domain leaves the cached translations of the others valid.
    @exclusivity(unchecked) private var domainGenerations: UnsafeMutablePointer<UInt64> = {
        let p = UnsafeMutablePointer<UInt64>.allocate(capacity: 64)
        p.initialize(repeating: 0, count: 64)
        return p
    }()
    @exclusivity(unchecked) private var domainGenerationSlots = 64

    /// Makes room for domain `id` in `domainGenerations` (ids are small and dense).
    private func ensureDomainGeneration(_ id: Int) {
        guard id >= domainGenerationSlots else { return }
        var n = domainGenerationSlots
        while n <= id { n <<= 1 }
        let p = UnsafeMutablePointer<UInt64>.allocate(capacity: n)
        p.moveInitialize(from: domainGenerations, count: domainGenerationSlots)
        (p + domainGenerationSlots).initialize(repeating: 0, count: n - domainGenerationSlots)
        domainGenerations.deallocate()
        domainGenerations = p
        domainGenerationSlots = n
    }

    private func domainChanged(_ id: Int) {
        if id >= 0, id < domainGenerationSlots { domainGenerations[id] &+= 1 }
    }

    @inline(__always)
    static func fastSlot(_ key: UInt64, _ iova: UInt64) -> Int {
        Int(truncatingIfNeeded: ((key &* 0x9E37_79B9_7F4A_7C15) ^ ((iova >> 12) &* 0xC2B2_AE3D_27D4_EB4F)) >> (64 - fastSlotBits))
    }

    deinit {
        fast.deallocate()
        domainGenerations.deallocate()
    }

    public init(platform: PlatformContext, units: [VTdUnit], smmuUnits: [SMMUv3Unit] = []) {
        self.platform = platform
        self.units = units
        self.smmuUnits = smmuUnits
        liveDIDs = [Set<UInt16>](repeating: [], count: units.count)
        super.init()
        // The oracle outlives its units' use of it (one machine owns both).
        for (i, u) in units.enumerated() { u.attachChecker(self, index: i) }
        for (i, u) in smmuUnits.enumerated() { u.attachChecker(self, index: i) }
    }

    func violate(_ invariant: String, _ detail: String) {
        violationCount += 1
        if violations.count < violationLimit {
            violations.append(Violation(invariant: invariant, detail: detail, event: platform.scheduler.eventsRun,
                                        time: platform.scheduler.now))
        }
    }

    static func key(unit: Int, rid: RequesterID, pasid: UInt32) -> UInt64 {
        UInt64(unit) << 40 | UInt64(rid.rawValue) << 20 | UInt64(pasid)
    }

    /// A device's key, (unit, requester ID), alone or from a window's key.
    static func deviceKey(unit: Int, rid: UInt16) -> UInt64 { UInt64(unit) << 16 | UInt64(rid) }
    static func deviceKey(ofWindow key: UInt64) -> UInt64 { (key >> 40) << 16 | (key >> 20 & 0xFFFF) }

    func ref(_ d: IOMMUDomain?) -> Ref? {
        guard let d else { return nil }
        switch d.type {
        case .blocked: return nil
        case .identity: return .identity
        case .nested: noteNested(d); return .nested(d.id)
        default: return .paging(d.id)
        }
    }

    /// The settled regions the oracle holds for `domain` (what software finished mapping).
    func shadow(of domain: IOMMUDomain) -> [ShadowMap.Region] {
        (shadows[domain.id]?.regions ?? []).filter { $0.state == .settled }
    }

    static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    // MARK: DMA checks

    /// Where `region` sends `iova` for `access`, or nil if its permissions refuse it.
    static func target(_ region: ShadowMap.Region?, iova: UInt64, access: DMAAccess) -> UInt64? {
        guard let region else { return nil }
        let needed: PagePermissions = access.contains(.write) ? .write : .read
        guard region.permissions.contains(needed) else { return nil }
        return region.physical &+ (iova - region.start)
    }

    /// Does `r` permit a device access of `access` at `iova` landing on `physical`? Mapped
    /// ranges in any state count, and so do ranges whose unmap could not invalidate.
    func permits(_ r: Ref, iova: UInt64, physical: UInt64, access: DMAAccess) -> Bool {
        switch r {
        case .identity: return physical == iova
        case .paging(let id):
            return Self.target(shadows[id]?.lookup(iova), iova: iova, access: access) == physical
                || Self.target(abandoned[id]?.lookup(iova), iova: iova, access: access) == physical
                || Self.target(deferred[id]?.lookup(iova), iova: iova, access: access) == physical
                || Self.target(covering[id]?.lookup(iova), iova: iova, access: access) == physical
        case .nested(let id): return permitsNested(id, iova: iova, physical: physical, access: access)
        }
    }

    /// Where `r` maps `iova` when the mapping is settled and allows `access`.
    func settledTarget(_ r: Ref, iova: UInt64, access: DMAAccess) -> UInt64? {
        switch r {
        case .identity: return iova
        case .paging(let id):
            guard let region = shadows[id]?.lookup(iova), region.state == .settled else { return nil }
            return Self.target(region, iova: iova, access: access)
        case .nested(let id): return nestedSettledTarget(id, iova: iova, access: access)
        }
    }

    public override func check(unit: Int, _ a: DMAAccessRecord) {
        checks &+= 1
        let key = Self.key(unit: unit, rid: a.source, pasid: a.pasid?.rawValue ?? 0)
        if !dirty.isEmpty, let pa = a.physical, a.access.contains(.write) {
            switch windows[key]?.current {
            case .paging(let id)?: noteDirtyWrite(domain: id, address: a.address, length: a.length)
            case .nested(let id)?: noteNestedDirtyWrite(id, address: a.address, physical: pa, length: a.length)
            default: break
            }
        }
        let needed: PagePermissions = a.access.contains(.write) ? .write : .read
        let slot = Self.fastSlot(key, a.address)
        if let pa = a.physical {
            let f = fast[slot]
            if f.generation == generation, f.key == key, a.address >= f.start, a.address < f.end,
               f.physical &+ (a.address &- f.start) == pa, f.permissions.contains(needed),
               f.domainGeneration == domainGenerations[f.domain] { return }
        }
        let w = windows[key]
        var who: String { "\(a.source)\(a.pasid.map { " \($0)" } ?? "") on unit \(unit)" }
        if let pa = a.physical {
            if let c = w?.current, permits(c, iova: a.address, physical: pa, access: a.access) {
                // Cache what settled mapping (or identity) permitted it, while nothing changes.
                if w?.previous == nil {
                    switch c {
                    case .identity:
                        fast[slot] = FastEntry(key: key, start: 0, end: .max, physical: 0, permissions: [.read, .write], generation: generation)
                    case .paging(let id):
                        if let r = shadows[id]?.lookup(a.address), r.state == .settled, Self.target(r, iova: a.address, access: a.access) == pa {
                            ensureDomainGeneration(id)
                            fast[slot] = FastEntry(key: key, start: r.start, end: r.end, physical: r.physical,
                                                   permissions: r.permissions, generation: generation,
                                                   domain: id, domainGeneration: domainGenerations[id])
                        }
                    case .nested:
                        break // Guest tables change behind the oracle's back: checked every time.
                    }
                }
                return
            }
            if let p = w?.previous, permits(p, iova: a.address, physical: pa, access: a.access) { return }
            guard let c = w?.current ?? w?.previous else {
                violate("unpermitted-access", "\(who) reached \(Self.hex(pa)) at IOVA \(Self.hex(a.address)) with no domain attached")
                return
            }
            if case .paging(let id) = c, let old = graveyards[id]?.lookup(a.address),
               old.physical &+ (a.address - old.start) == pa {
                violate("stale-translation", "\(who) reached \(Self.hex(pa)) through IOVA \(Self.hex(a.address)) of domain \(id) after its unmap returned")
                return
            }
            if case .nested(let id) = c {
                if guestTableOverwritten(id, by: who) { return }
                violate(nestedStale(id, iova: a.address, physical: pa) ? "stale-translation" : "nested-composition",
                        "\(who) reached \(Self.hex(pa)) through IOVA \(Self.hex(a.address)) of nested domain \(id), which its guest table composed with its parent's does not give\(nestedStale(id, iova: a.address, physical: pa) ? " (the translation before a guest or host unmap that has returned)" : "")")
                return
            }
            violate("unpermitted-access", "\(who) reached \(Self.hex(pa)) at IOVA \(Self.hex(a.address)) (\(a.access.contains(.write) ? "write" : "read")), which its domain does not map there")
            return
        }
        guard let reason = a.refusal else { return }
        faultsSeen &+= 1
        guard var w, let current = w.current else { expectedFaults &+= 1; return }
        if w.inTransition {
            if let previous = w.previous, let t1 = settledTarget(previous, iova: a.address, access: a.access),
               settledTarget(current, iova: a.address, access: a.access) == t1 {
                w.alikeFaults.append("\(who) faulted (\(reason)) at IOVA \(Self.hex(a.address)), mapped alike in both domains")
                windows[key] = w
            } else {
                expectedFaults &+= 1
            }
            return
        }
        if settledTarget(current, iova: a.address, access: a.access) != nil {
            if case .nested(let id) = current, guestTableOverwritten(id, by: who) { expectedFaults &+= 1; return }
            violate("unexpected-fault", "\(who) faulted (\(reason)) at IOVA \(Self.hex(a.address)), which its domain maps")
        } else {
            expectedFaults &+= 1
        }
    }

    // MARK: KernelObserver

    public func mapBegan(_ domain: IOMMUDomain, iova: UInt64, physical: UInt64, size: UInt64, permissions: PagePermissions) {
        checks &+= 1
        let tag = domain.tableOwnerTag
        if tag != 0, tableOwners[tag] == nil { tableOwners[tag] = domain.id }
        if let r = deferred[domain.id]?.firstOverlap(iova, iova + size) ?? covering[domain.id]?.firstOverlap(iova, iova + size) {
            violate("iova-reused-before-flush", "\(domain) maps IOVA \(Self.hex(max(iova, r.start))) again before the flush covering its deferred unmap completed")
        } else if let r = shadows[domain.id]?.firstOverlap(iova, iova + size) {
            // The page table would refuse it (EEXIST), but the bug is the caller's: it was
            // handed an IOVA whose translation is live (Linux WARNs: "PTE already set").
            violate("map-over-live-range", "\(domain) maps IOVA \(Self.hex(max(iova, r.start))) while a mapping of it is still live (\(r.state))")
        }
        shadows[domain.id, default: ShadowMap()].insertIntoHoles(iova, iova + size, physical: physical, permissions: domain.grantedPermissions(permissions), state: .mapping)
    }

    public func mapEnded(_ domain: IOMMUDomain, iova: UInt64, size: UInt64, mapped: Bool) {
        releaseStrictTables(domain.id)
        if mapped, let r = recorder { r.mapped(bytes: size) }
        if mapped {
            shadows[domain.id]?.setState(iova, iova + size, to: .settled, from: .mapping)
            graveyards[domain.id]?.remove(iova, iova + size)
        } else {
            shadows[domain.id]?.remove(iova, iova + size, inState: .mapping)
        }
    }

    public func unmapBegan(_ domain: IOMMUDomain, iova: UInt64, size: UInt64) {
        domainChanged(domain.id)
        if let r = recorder { r.unmapBegan(domain: domain.id, now: platform.scheduler.now) }
        shadows[domain.id]?.setState(iova, iova + size, to: .unmapping, from: .settled)
    }

    public func unmapEnded(_ domain: IOMMUDomain, iova: UInt64, requested: UInt64, unmapped: UInt64) {
        domainChanged(domain.id)
        releaseStrictTables(domain.id)
        retire(domain.id, iova: iova, requested: requested, unmapped: unmapped, into: &graveyards)
        if !dirty.isEmpty { dirtyRangeUnmapped(domain: domain.id, iova: iova, size: unmapped) }
        checkDeviceTLBs(domain, iova: iova, size: unmapped)
        if let r = recorder { r.unmapEnded(domain: domain.id, bytes: unmapped, now: platform.scheduler.now) }
    }

    public func unmapFailed(_ domain: IOMMUDomain, iova: UInt64, requested: UInt64, unmapped: UInt64) {
        domainChanged(domain.id)
        // Tables of a failed unmap stay pending: the core keeps them with the domain.
        strictTables[domain.id] = nil
        retire(domain.id, iova: iova, requested: requested, unmapped: unmapped, into: &abandoned)
    }

    public func unmapDeferred(_ domain: IOMMUDomain, iova: UInt64, requested: UInt64, unmapped: UInt64, tables: [UInt64]) {
        domainChanged(domain.id)
        checkDeferral(domain, iova: iova)
        retire(domain.id, iova: iova, requested: requested, unmapped: unmapped, into: &deferred)
        if !dirty.isEmpty { dirtyRangeUnmapped(domain: domain.id, iova: iova, size: unmapped) }
        if let r = recorder { r.unmapDeferred(domain: domain.id, bytes: unmapped, now: platform.scheduler.now) }
        for t in tables { pendingTables[t] = domain.id; liveTables[t] = nil }
        deferredTables[domain.id, default: []] += tables
    }

    public func deferredFlushBegan(_ domain: IOMMUDomain) {
        let id = domain.id
        if let r = recorder { r.flushBegan(domain: id, now: platform.scheduler.now) }
        if let d = deferred.removeValue(forKey: id) { covering[id, default: ShadowMap()].merge(d) }
        if let t = deferredTables.removeValue(forKey: id) { coveringTables[id, default: []] += t }
    }

    public func deferredFlushEnded(_ domain: IOMMUDomain, completed: Bool) {
        domainChanged(domain.id)
        let id = domain.id
        let c = covering.removeValue(forKey: id)
        let t = coveringTables.removeValue(forKey: id) ?? []
        if let r = recorder { r.flushEnded(domain: id, completed: completed, now: platform.scheduler.now) }
        if completed {
            if let c { graveyards[id, default: ShadowMap()].merge(c) }
            for f in t { pendingTables[f] = nil }
        } else {
            if let c { deferred[id, default: ShadowMap()].merge(c) }
            deferredTables[id, default: []] += t
        }
    }

    /// Moves the unmapped part of an unmap from the domain's shadow into `store` (the
    /// graveyard after a completed flush, the abandoned set after a failed one) and settles
    /// the part of the request that was not unmapped.
    private func retire(_ id: Int, iova: UInt64, requested: UInt64, unmapped: UInt64, into store: inout [Int: ShadowMap]) {
        guard var s = shadows[id] else { return }
        var moved = store[id] ?? ShadowMap()
        var a = iova
        while a < iova + unmapped, let r = s.lookup(a) {
            let end = min(r.end, iova + unmapped)
            moved.insert(a, end, physical: r.physical + (a - r.start), permissions: r.permissions, state: .settled)
            a = end
        }
        s.remove(iova, iova + unmapped)
        s.setState(iova + unmapped, iova + requested, to: .settled, from: .unmapping)
        shadows[id] = s
        store[id] = moved
    }

    public func transitionBegan(_ device: Device, pasid: PASID?, from: IOMMUDomain?, to: IOMMUDomain?) {
        generation &+= 1
        guard tracks(device.driver) else { return }
        if device.untrusted { untrustedDevices.insert(Self.deviceKey(unit: device.unit, rid: device.requesterID.rawValue)) }
        let key = Self.key(unit: device.unit, rid: device.requesterID, pasid: pasid?.rawValue ?? 0)
        var w = windows[key] ?? Window()
        w.previous = ref(from)
        w.current = ref(to)
        w.inTransition = true
        w.alikeFaults = []
        windows[key] = w
    }

    public func transitionEnded(_ device: Device, pasid: PASID?, current: IOMMUDomain?, path: UpdatePath) {
        generation &+= 1
        guard tracks(device.driver) else { return }
        let key = Self.key(unit: device.unit, rid: device.requesterID, pasid: pasid?.rawValue ?? 0)
        let faults = windows[key]?.alikeFaults ?? []
        if path.isHitless && path != .removed {
            for f in faults { violate("replace-not-hitless", "\(f) during a \(path.rawValue) update") }
        } else {
            expectedFaults &+= UInt64(faults.count)
        }
        let w = Window(current: ref(current))
        if w.current == nil { windows[key] = nil } else { windows[key] = w }
        if pasid != nil, current == nil { pasidTornDownAt[key] = platform.scheduler.now }
    }

    /// Freeing a domain with mappings is allowed (the tables go with it): forget them.
    public func domainFreed(_ domain: IOMMUDomain) {
        generation &+= 1
        let id = domain.id
        if let r = recorder { r.domainFreed(id, now: platform.scheduler.now) }
        nested.forget(id)
        shadows[id] = nil
        graveyards[id] = nil
        dirty[id] = nil
        abandoned[id] = nil
        deferred[id] = nil
        covering[id] = nil
        strictTables[id] = nil
        deferredTables[id] = nil
        coveringTables[id] = nil
        // The domain was detached everywhere with a full invalidation: its pages may go.
        pendingTables = pendingTables.filter { $0.value != id }
        let tag = domain.tableOwnerTag
        if tag != 0 {
            liveTables = liveTables.filter { $0.value != tag }
            tableOwners[tag] = nil
        }
    }

    public func domainIDAllocated(driver: any IOMMUDriver, unit: Int, did: DomainID) {
        guard tracks(driver), unit < units.count else { return }
        checks &+= 1
        if did.rawValue < 2 { violate("did-reserved", "unit \(unit) handed out reserved \(did)") }
        if !liveDIDs[unit].insert(did.rawValue).inserted { violate("did-double-allocation", "unit \(unit) handed out \(did) twice") }
        let cached = units[unit].cachedEntries(taggedWith: did)
        if cached.iotlb + cached.pasidCache > 0 {
            violate("did-reuse-while-cached", "unit \(unit) reused \(did) while \(cached.iotlb) IOTLB and \(cached.pasidCache) PASID-cache entries tagged with it remain")
        }
        if let reservedCheck, !reservedCheck() { violate("did-reserved", "a reserved DID fell out of use") }
    }

    public func domainIDReleased(driver: any IOMMUDriver, unit: Int, did: DomainID) {
        guard tracks(driver), unit < units.count else { return }
        checks &+= 1
        liveDIDs[unit].remove(did.rawValue)
        let cached = units[unit].cachedEntries(taggedWith: did)
        if cached.iotlb + cached.pasidCache > 0 {
            violate("did-released-while-cached", "unit \(unit) released \(did) while \(cached.iotlb) IOTLB and \(cached.pasidCache) PASID-cache entries tagged with it remain")
        }
    }

    // MARK: Devices: device TLBs and page requests

    /// Endpoints with ATS by (unit, requester ID), for device-TLB and page-request checks
    /// (without ATS a device has neither a device TLB nor page requests).
    private var endpoints: [UInt64: PCIeEndpoint] = [:]

    /// Watches an endpoint: protocol anomalies it sees are violations, and its device TLB is
    /// checked after every unmap of a domain it is attached to.
    public func watch(_ e: PCIeEndpoint, unit: Int) {
        if e.atsConfiguration.enabled { endpoints[Self.deviceKey(unit: unit, rid: e.requesterID.rawValue)] = e }
        // The hook lives in the endpoint: capturing the endpoint itself would keep it (and through
        // it the unit, the platform and the machine's memory) alive forever.
        let name = e.name
        e.onAnomaly = { [unowned self] a in
            switch a {
            case .unexpectedResponse(let p, let g):
                violate("page-response-unexpected", "\(name) got a response for group \(g)\(p.map { " of \($0)" } ?? "") it had no request outstanding for")
            case .responseCrossedPASIDReuse(let p, let g):
                violate("page-response-crossed-pasid", "a response for group \(g) sent under an earlier use of \(p) reached \(name) after the PASID was started again")
            case .requestFaultedAfterStop(let p, let issued, let stopped):
                violate("fault-after-stop", "\(name) reported \(p) stopped at \(stopped) ns, but a translation request it issued at \(issued) ns faulted after that (the stop must wait for outstanding translation requests)")
            }
        }
    }

    /// No device-TLB entry may outlive the unmap that should have invalidated it: after the
    /// unmap (and its invalidations) completed, no device attached to the domain may cache
    /// any page of the range.
    private func checkDeviceTLBs(_ domain: IOMMUDomain, iova: UInt64, size: UInt64) {
        guard size > 0, !endpoints.isEmpty else { return }
        let me = Ref.paging(domain.id)
        for (key, w) in windows where w.current == me || w.previous == me {
            let pasid = UInt32(key & 0xFFFFF)
            guard let e = endpoints[Self.deviceKey(ofWindow: key)] else { continue }
            let stale = e.deviceTLBEntries(pasid: pasid == 0 ? nil : PASID(truncating: pasid), start: iova, end: iova + size - 1)
            if let first = stale.first {
                violate("stale-device-tlb", "\(e.name)\(pasid == 0 ? "" : " PASID \(pasid)") still caches \(Self.hex(first.address)) → \(Self.hex(first.physical)) after the unmap of \(Self.hex(iova))+\(Self.hex(size)) in domain \(domain.id) completed")
            }
        }
    }

    /// A stop marker is never a fault: drivers drop it before the core sees it. A stop
    /// marker stops a PASID and carries it (PCIe Stop Marker: L = 1, R = W = 0 with a PASID
    /// TLP prefix; SMMUv3 PRIQEntry.isStopMarker needs SSV): the same bits without a PASID
    /// are an ordinary (if useless) request an SMMUv3 driver reports like any other.
    public func pageFaultReported(_ device: Device, _ fault: PageFault) {
        checks &+= 1
        if fault.isLast && fault.requestPASID != nil && fault.permissions.isDisjoint(with: [.read, .write]) {
            violate("stop-marker-reported", "\(device) stop marker (group \(fault.groupIndex)) was reported to the core as a fault")
        }
    }

    /// A group handed to a handler is one (PASID, PRG index) of one use of the PASID: every
    /// request has the last one's PASID, and none was reported before that PASID's last
    /// teardown (a partial the drain should have dropped, merged into the next owner's group).
    public func pageFaultGroupBuilt(_ group: IOPFGroup) {
        checks &+= 1
        let d = group.device
        let key = Self.key(unit: d.unit, rid: d.requesterID, pasid: group.pasid?.rawValue ?? 0)
        let tornDown = pasidTornDownAt[key]
        for f in group.faults {
            if f.requestPASID != group.pasid {
                violate("page-request-group-mixed", "\(group) took in a request of \(f.requestPASID.map { "\($0)" } ?? "no PASID") with the same PRG index")
                return
            }
            if let t = tornDown, f.reportedAt < t {
                violate("stale-partial-in-group", "\(group) took in a request reported at \(f.reportedAt) ns, before the PASID was torn down at \(t) ns: it belongs to its previous owner")
                return
            }
        }
    }

    /// Every page request group a device sent was answered once: none is outstanding after
    /// teardown.
    public func checkPageRequestsAnswered() {
        // A device that reuses group indices loses track of its own groups (the unit and the
        // kernel see one group per index): its unanswered groups are its own doing.
        for e in endpoints.values.sorted(by: { $0.name < $1.name })
        where e.priState.outstandingGroups > 0 && !e.misbehaviour.contains(.reuseGroupIndices) {
            violate("page-request-unanswered", "\(e.name) still waits for \(e.priState.outstandingGroups) page request group response(s)")
        }
    }

    // MARK: Teardown

    /// Checks nothing is left once everything was torn down and the driver shut down.
    public func checkTeardown(core: IOMMUCore, driver: VTdDriver?) {
        checks &+= 1
        checkPageRequestsAnswered()
        let frames = platform.frames
        if frames.inUse > 0 {
            let parts = FrameAllocator.Purpose.allCases.compactMap { p in frames.inUse(p) > 0 ? "\(p): \(frames.inUse(p))" : nil }
            violate("frame-leak", "\(frames.inUse) frame(s) still allocated after teardown (\(parts.joined(separator: ", ")))")
        }
        for u in driver?.units ?? [] {
            // Quarantined DIDs stay marked in use for ever; they are reported on their own.
            let live = u.domainIDs.allocated - u.domainIDs.quarantined.count
            if live > 0 { violate("did-leak", "\(u.unit.configuration.name) still has \(live) DID(s) allocated") }
            if !u.domainIDs.quarantined.isEmpty {
                violate("did-quarantined", "\(u.unit.configuration.name) quarantined \(u.domainIDs.quarantined.count) DID(s) after failed invalidations")
            }
            if !u.domainIDs.reservedIntact { violate("did-reserved", "\(u.unit.configuration.name) lost a reserved DID") }
        }
        if core.pasids.allocated > 0 { violate("pasid-leak", "\(core.pasids.allocated) PASID(s) still allocated") }
        if !core.liveDomains.isEmpty { violate("domain-leak", "\(core.liveDomains.count) domain(s) not freed") }
    }
}
