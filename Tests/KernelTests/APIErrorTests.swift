import Testing
import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD
@testable import Simulation

/// The errno of the `IOMMUError` `body` throws, or nil when it does not throw.
/// (-1 if it throws anything else: every API error must be an `IOMMUError`.)
private func apiErrno(_ body: () throws -> Void) -> Int32? {
    do { try body() } catch let e as IOMMUError { return e.errno } catch { return -1 }
    return nil
}

@Suite("bad requests return typed errors with an errno and change nothing")
struct APIErrorTests {
    @Test("map and unmap on a freed domain fail with ENOENT")
    func mapOnFreed() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic", dev: 1)
        let d = try rig.core.allocDomain(for: dev)
        try rig.mapBuffers(d, iova: 0x1000)
        try rig.core.freeDomain(d)
        #expect(d.isDestroyed)
        let pa = try rig.machine.allocateBuffer()
        #expect(apiErrno { try rig.core.map(d, iova: 0x8000, physical: pa, size: 4096, permissions: .readWrite) } == 2)
        #expect(apiErrno { _ = try rig.core.unmap(d, iova: 0x1000, size: 4096) } == 2)
        #expect(rig.core.iovaToPhys(d, 0x1000) == nil)
        #expect(rig.core.liveDomains[d.id] == nil)
    }

    @Test("attaching or replacing with a freed domain fails with ENOENT")
    func attachFreed() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic", dev: 1, pasids: 16)
        let g = try #require(dev.group)
        let d = try rig.core.allocDomain(for: dev, flags: .pasid)
        try rig.core.freeDomain(d)
        #expect(apiErrno { try rig.core.attach(d, to: g) } == 2)
        #expect(apiErrno { try rig.core.attach(d, to: dev) } == 2)
        #expect(apiErrno { try rig.core.replace(g, with: d) } == 2)
        #expect(apiErrno { try rig.core.attachPASID(d, to: dev, pasid: PASID(truncating: 1)) } == 2)
        #expect(g.domain === g.defaultDomain)
        #expect(dev.attachedDomain === g.defaultDomain)
        #expect(g.pasidDomains.isEmpty)
        #expect(d.attachments == 0)
    }

    @Test("freeing an attached domain is EBUSY; freeing twice is ENOENT")
    func freeErrors() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic", dev: 1)
        let g = try #require(dev.group)
        let d = try rig.core.allocDomain(for: dev)
        try rig.core.attach(d, to: g)
        #expect(apiErrno { try rig.core.freeDomain(d) } == 16)
        #expect(!d.isDestroyed)
        #expect(rig.core.liveDomains[d.id] === d)
        #expect(dev.attachedDomain === d)
        let def = try #require(g.defaultDomain)
        try rig.core.detach(d, from: g)
        #expect(apiErrno { try rig.core.freeDomain(def) } == 16, "a group's default domain is not the user's to free")
        #expect(!def.isDestroyed)
        try rig.core.freeDomain(d)
        #expect(apiErrno { try rig.core.freeDomain(d) } == 2)
        let identity = try #require(rig.driver.identityDomain)
        #expect(apiErrno { try rig.core.freeDomain(identity) } == 22, "static domains are never freed")
        #expect(apiErrno { try rig.core.freeDomain(rig.driver.blockedDomain) } == 22)
    }

    @Test("unmapping a range with nothing mapped at its start is ENOENT and leaves other mappings alone")
    func unmapUnmapped() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic", dev: 1)
        let d = try rig.core.allocDomain(for: dev)
        let pas = try rig.mapBuffers(d, iova: 0x10_0000, pages: 2)
        #expect(apiErrno { _ = try rig.core.unmap(d, iova: 0x20_0000, size: 4096) } == 2)
        #expect(apiErrno { _ = try rig.core.unmap(d, iova: 0x0F_F000, size: 0x3000) } == 2, "the start is a hole")
        #expect(rig.core.iovaToPhys(d, 0x10_0000) == pas[0])
        #expect(rig.core.iovaToPhys(d, 0x10_1000) == pas[1])
        #expect(try rig.core.unmap(d, iova: 0x10_0000, size: 0x2000) == 0x2000)
        #expect(rig.violations.isEmpty)
    }

    @Test("a misaligned or empty map request is EINVAL")
    func mapMisaligned() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic", dev: 1)
        let d = try rig.core.allocDomain(for: dev)
        let pa = try rig.machine.allocateBuffer()
        #expect(apiErrno { try rig.core.map(d, iova: 0x1001, physical: pa, size: 4096, permissions: .readWrite) } == 22)
        #expect(apiErrno { try rig.core.map(d, iova: 0x1000, physical: pa + 8, size: 4096, permissions: .readWrite) } == 22)
        #expect(apiErrno { try rig.core.map(d, iova: 0x1000, physical: pa, size: 100, permissions: .readWrite) } == 22)
        #expect(apiErrno { try rig.core.map(d, iova: 0x1000, physical: pa, size: 0, permissions: .readWrite) } == 22)
        #expect(apiErrno { _ = try rig.core.unmap(d, iova: 0x1800, size: 4096) } == 22)
        #expect(rig.core.iovaToPhys(d, 0x1000) == nil)
    }

    @Test("a map request beyond the domain's aperture is ERANGE")
    func mapBeyondAperture() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic", dev: 1)
        let d = try rig.core.allocDomain(for: dev)
        let pa = try rig.machine.allocateBuffer()
        let end = d.apertureEnd
        #expect(end > 0 && (end &+ 1) & 0xFFF == 0)
        #expect(apiErrno { try rig.core.map(d, iova: end + 1, physical: pa, size: 4096, permissions: .readWrite) } == 34)
        #expect(apiErrno { try rig.core.map(d, iova: end - 0xFFF, physical: pa, size: 0x2000, permissions: .readWrite) } == 34)
        #expect(apiErrno { try rig.core.map(d, iova: 0xFFFF_FFFF_FFFF_F000, physical: pa, size: 0x2000, permissions: .readWrite) } == 34,
                "an IOVA range wrapping around is out of range, not a trap")
        #expect(apiErrno { _ = try rig.core.unmap(d, iova: end + 1, size: 4096) } == 34)
        #expect(apiErrno { try rig.core.map(d, iova: 0x1000, physical: 0xFFFF_FFFF_FFFF_F000, size: 0x2000, permissions: .readWrite) } == 34,
                "a physical range wrapping around is out of range, not a trap")
        // The last page of the aperture is mappable.
        try rig.core.map(d, iova: end - 0xFFF, physical: pa, size: 4096, permissions: .readWrite)
        #expect(rig.core.iovaToPhys(d, end - 0xFFF) == pa)
    }

    @Test("mapping over an existing mapping is EEXIST and the original mapping still translates the same")
    func mapOverExisting() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("nic", dev: 1)
        let g = try #require(dev.group)
        let d = try rig.core.allocDomain(for: dev)
        let original = try rig.mapBuffers(d, iova: 0x2000)[0]
        let other = try rig.machine.allocateBuffer()
        #expect(apiErrno { try rig.core.map(d, iova: 0x2000, physical: other, size: 4096, permissions: .readWrite) } == 17)
        // A range that only overlaps at its end is refused as a whole: its free start is not left mapped.
        #expect(apiErrno { try rig.core.map(d, iova: 0x1000, physical: other, size: 0x2000, permissions: .readWrite) } == 17)
        #expect(rig.core.iovaToPhys(d, 0x2000) == original)
        #expect(rig.core.iovaToPhys(d, 0x1000) == nil)
        try rig.core.attach(d, to: g)
        #expect(rig.dmaWrite(ep, 0x2000, value: 0x66)?.fault == nil)
        #expect(try rig.platform.memory.load8(original) == 0x66)
        #expect(try rig.platform.memory.load8(other) == 0)
        #expect(rig.dmaWrite(ep, 0x1000)?.fault != nil)
    }

    @Test("a refused map over an existing mapping leaves the oracle's model of that mapping intact")
    func oracleKeepsMappingAfterRefusedMap() throws {
        let rig = try KernelRig()
        let (dev, ep) = try rig.add("nic", dev: 1)
        let d = try rig.core.allocDomain(for: dev)
        let original = try rig.mapBuffers(d, iova: 0x2000)[0]
        let other = try rig.machine.allocateBuffer()
        try rig.core.attach(d, to: #require(dev.group))
        #expect(apiErrno { try rig.core.map(d, iova: 0x2000, physical: other, size: 4096, permissions: .readWrite) } == 17)
        #expect(rig.dmaWrite(ep, 0x2000, value: 0x66)?.fault == nil)
        #expect(try rig.platform.memory.load8(original) == 0x66)
        // The caller's error is flagged (it mapped over a live range); nothing else is.
        #expect(rig.violations.map(\.invariant) == ["map-over-live-range"], "\(rig.violations)")
    }

    @Test("a map request without read or write permission is EINVAL")
    func mapNoPermissions() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic", dev: 1)
        let d = try rig.core.allocDomain(for: dev)
        let pa = try rig.machine.allocateBuffer()
        #expect(apiErrno { try rig.core.map(d, iova: 0x1000, physical: pa, size: 4096, permissions: []) } == 22)
        #expect(apiErrno { try rig.core.map(d, iova: 0x1000, physical: pa, size: 4096, permissions: .execute) } == 22)
        #expect(rig.core.iovaToPhys(d, 0x1000) == nil)
    }

    @Test("map and unmap on the identity or blocked domain are EINVAL")
    func mapOnStatic() throws {
        let rig = try KernelRig()
        try rig.add("nic", dev: 1)
        let identity = try #require(rig.driver.identityDomain)
        let blocked = rig.driver.blockedDomain
        let pa = try rig.machine.allocateBuffer()
        for d in [identity, blocked] {
            #expect(apiErrno { try rig.core.map(d, iova: 0x1000, physical: pa, size: 4096, permissions: .readWrite) } == 22)
            #expect(apiErrno { _ = try rig.core.unmap(d, iova: 0x1000, size: 4096) } == 22)
        }
        #expect(rig.core.iovaToPhys(identity, 0x1234_5000) == 0x1234_5000)
        #expect(rig.core.iovaToPhys(blocked, 0x1000) == nil)
    }

    @Test("attaching to a released device is ENODEV")
    func attachReleased() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic", dev: 1, pasids: 16)
        let d = try rig.core.allocDomain(for: dev, flags: .pasid)
        try rig.core.release(dev)
        #expect(dev.isReleased)
        #expect(dev.group == nil)
        #expect(apiErrno { try rig.core.attach(d, to: dev) } == 19)
        #expect(apiErrno { try rig.core.attachPASID(d, to: dev, pasid: PASID(truncating: 1)) } == 19)
        #expect(apiErrno { _ = try rig.core.allocDomain(for: dev) } == 19)
        #expect(apiErrno { _ = try rig.core.allocGlobalPASID(for: dev) } == 19)
        #expect(apiErrno { try rig.core.release(dev) } == 19, "releasing twice")
        #expect(d.attachments == 0)
        #expect(rig.core.devices.isEmpty)
        #expect(rig.core.groups.isEmpty)
        try rig.core.freeDomain(d)
    }

    @Test("attaching to, detaching from or claiming a group whose devices were all released is ENODEV")
    func emptiedGroup() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic", dev: 1)
        let g = try #require(dev.group)
        let d = try rig.core.allocDomain(for: dev)
        try rig.core.release(dev)
        #expect(g.devices.isEmpty)
        #expect(apiErrno { try rig.core.attach(d, to: g) } == 19)
        #expect(apiErrno { try rig.core.replace(g, with: d) } == 19)
        #expect(apiErrno { try rig.core.detach(d, from: g) } == 19)
        #expect(apiErrno { try rig.core.claimDMAOwner(g) } == 19)
        #expect(g.domain == nil)
        #expect(d.attachments == 0)
        try rig.core.freeDomain(d)
    }

    @Test("DMA ownership: claiming twice is EBUSY, releasing with no owner is ENOENT, releasing with a user domain attached is EBUSY")
    func dmaOwnerErrors() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic", dev: 1, pasids: 16)
        let g = try #require(dev.group)
        #expect(apiErrno { try rig.core.releaseDMAOwner(g) } == 2)
        let d = try rig.core.allocDomain(for: dev, flags: .pasid)
        // A group with a PASID attached cannot be claimed.
        try rig.core.attachPASID(d, to: dev, pasid: PASID(truncating: 1))
        #expect(apiErrno { try rig.core.claimDMAOwner(g) } == 16)
        #expect(!g.dmaOwned)
        try rig.core.detachPASID(d, from: dev, pasid: PASID(truncating: 1))
        try rig.core.claimDMAOwner(g)
        #expect(apiErrno { try rig.core.claimDMAOwner(g) } == 16)
        try rig.core.attach(d, to: g)
        #expect(apiErrno { try rig.core.releaseDMAOwner(g) } == 16)
        #expect(g.dmaOwned)
        #expect(g.domain === d)
        try rig.core.detach(d, from: g)
        try rig.core.releaseDMAOwner(g)
        #expect(!g.dmaOwned)
        #expect(g.domain === g.defaultDomain)
        #expect(dev.attachedDomain === g.defaultDomain)
    }

    @Test("probing a requester ID already probed on the same unit is EEXIST and adds nothing")
    func probeTwice() throws {
        let rig = try KernelRig()
        let (first, _) = try rig.add("nic", dev: 1)
        let liveBefore = rig.core.liveDomains.count
        #expect(apiErrno { try rig.add("again", dev: 1) } == 17)
        // A batch with a duplicate inside it fails as a whole.
        let batch = [DeviceDescription(name: "x", requesterID: KernelRig.rid(0, 9)),
                     DeviceDescription(name: "y", requesterID: KernelRig.rid(0, 9))]
        #expect(apiErrno { _ = try rig.core.probe(batch, driver: rig.driver) } == 17)
        #expect(rig.core.devices.count == 1)
        #expect(rig.core.devices.first === first)
        #expect(rig.core.groups.count == 1)
        #expect(rig.core.liveDomains.count == liveBefore)
        #expect(rig.driver.units[0].domainIDs.allocated == 1)
        // The same requester ID behind another unit is another device.
        let (twin, _) = try rig.add("twin", dev: 1, unit: 1)
        #expect(twin.group !== first.group)
    }

    @Test("probing behind a unit index the driver does not have is ENODEV")
    func probeNoUnit() throws {
        let rig = try KernelRig()
        #expect(apiErrno { try rig.add("ghost", dev: 1, unit: 2) } == 19)
        #expect(apiErrno { try rig.add("ghost", dev: 1, unit: -1) } == 19)
        #expect(rig.core.devices.isEmpty)
        #expect(rig.core.groups.isEmpty)
        #expect(rig.core.liveDomains.isEmpty)
    }

    @Test("attaching a domain to one device of a multi-device group is EINVAL: the group must be attached")
    func attachDeviceInSharedGroup() throws {
        let rig = try KernelRig()
        let (a, _) = try rig.add("fn0", dev: 3, fn: 0, group: "g")
        let (b, _) = try rig.add("fn1", dev: 3, fn: 1, group: "g")
        let d = try rig.core.allocDomain(for: a)
        #expect(apiErrno { try rig.core.attach(d, to: a) } == 22)
        #expect(a.attachedDomain === a.group?.defaultDomain)
        #expect(b.attachedDomain === a.group?.defaultDomain)
        #expect(d.attachments == 0)
        let g = try #require(a.group)
        try rig.core.attach(d, to: g)
        #expect(a.attachedDomain === d && b.attachedDomain === d)
    }

    @Test("a paging domain cannot be allocated with the deferred-flush policy flag (EINVAL)")
    func allocWithDeferredFlush() throws {
        let rig = try KernelRig()
        let (dev, _) = try rig.add("nic", dev: 1)
        let live = rig.core.liveDomains.count
        #expect(apiErrno { _ = try rig.core.allocDomain(for: dev, flags: .deferredFlush) } == 22)
        #expect(rig.core.liveDomains.count == live)
    }

    /// One random API call with garbage arguments.
    struct Fuzzer {
        let rig: KernelRig
        var rng: SeededRNG
        var devices: [Device]
        var domains: [IOMMUDomain] = []
        var buffers: [UInt64] = []
        /// (domain, IOVA) of maps that succeeded.
        var mapped: [(IOMMUDomain, UInt64)] = []
        var successes = 0
        /// Successful calls per operation kind.
        var succeeded: [String: Int] = [:]
        var current = ""
        var failures: [Int32: Int] = [:]
        var badErrors: [String] = []

        var core: IOMMUCore { rig.core }

        mutating func pick<T>(_ items: [T]) -> T { items[Int(rng.next(below: UInt64(items.count)))] }

        mutating func device() -> Device { pick(devices) }

        mutating func domain() -> IOMMUDomain {
            // Half the time a live domain (sorted: dictionary order is not reproducible).
            let live = core.liveDomains.values.sorted { $0.id < $1.id }
            if !live.isEmpty, rng.next(below: 2) == 0 { return pick(live) }
            var pool = domains
            pool.append(rig.driver.blockedDomain)
            if let identity = rig.driver.identityDomain { pool.append(identity) }
            pool += core.groups.compactMap(\.defaultDomain)
            return pick(pool)
        }

        /// No device is released during the run, so there is always a group.
        mutating func group() -> Group { pick(core.groups) }

        mutating func iova() -> UInt64 {
            // Mostly a few small pages, so maps and unmaps meet; otherwise garbage.
            switch rng.next(below: 10) {
            case 0: return 0
            case 1...5: return rng.next(below: 16) * 4096
            case 6: return rng.next() & ~0xFFF
            case 7: return rng.next()
            case 8: return rng.next(below: 1 << 32) | 0x800
            default: return (UInt64(1) << 48) - 4096 * rng.next(below: 3)
            }
        }

        mutating func size() -> UInt64 {
            switch rng.next(below: 11) {
            case 0: return 0
            case 1: return rng.next(below: 8192)
            case 2...5: return 4096 * (1 + rng.next(below: 4))
            case 4: return 2 << 20
            case 5: return UInt64.max
            case 6: return 1 << 63
            case 7: return 1 << 48
            default: return rng.next()
            }
        }

        mutating func physical() -> UInt64 {
            switch rng.next(below: 5) {
            case 0, 1: return buffers.isEmpty ? 0x1000 : pick(buffers)
            case 2: return rng.next() & ~0xFFF
            case 3: return rng.next()
            default: return rng.next(below: 1 << 34) & ~0x1F_FFFF
            }
        }

        mutating func pasid() -> PASID {
            switch rng.next(below: 7) {
            case 0: return .noPASID
            case 1...3: return PASID(truncating: UInt32(1 + rng.next(below: 6)))
            case 4: return PASID(truncating: UInt32(1 + rng.next(below: 40)))
            case 3: return PASID(truncating: UInt32(truncatingIfNeeded: rng.next()))
            default: return PASID(truncating: (1 << 20) + UInt32(rng.next(below: 70)))
            }
        }

        mutating func permissions() -> PagePermissions {
            rng.next(below: 2) == 0 ? .readWrite : PagePermissions(rawValue: UInt8(rng.next(below: 16)))
        }

        /// Half the time the domain attached to (`dev`, `p`) if any, else any domain.
        mutating func domain(onPASID p: PASID, of dev: Device) -> IOMMUDomain {
            if rng.next(below: 2) == 0, let d = core.domain(of: dev, pasid: p) { return d }
            return domain()
        }

        mutating func record(_ body: () throws -> Void) {
            do {
                try body()
                successes += 1
                succeeded[current, default: 0] += 1
            } catch let error as IOMMUError {
                failures[error.errno, default: 0] += 1
                if error.errno <= 0 { badErrors.append("\(error)") }
            } catch {
                badErrors.append("not an IOMMUError: \(error)")
            }
        }

        mutating func step() {
            let core = rig.core // a local, so the closures below do not capture (mutating) self
            let op = rng.next(below: 16)
            current = ["alloc", "free", "map", "map", "unmap", "attach", "attach", "detach", "replace", "attachPASID",
                       "replacePASID", "detachPASID", "allocPASID", "freePASID", "owner", "lookup"][Int(op)]
            switch op {
            case 0:
                let dev = device()
                let flags = pick([DomainFlags(), .pasid, .deferredFlush, .nestParent, [.pasid, .nestParent]])
                var made: IOMMUDomain?
                record { made = try core.allocDomain(for: dev, flags: flags) }
                if let made { domains.append(made) }
            case 1:
                let d = domain()
                record { try core.freeDomain(d) }
            case 2, 3:
                let d = domain(), i = iova(), s = size(), p = physical(), perms = permissions()
                // Huge sizes only with IOVAs that make them fail fast: a terabyte-sized map
                // of 4 KiB pages is legal but would only measure the page-table code.
                let iv = s > 1 << 30 && i < 1 << 40 ? i | (1 << 47) : i
                let before = successes
                record { try core.map(d, iova: iv, physical: p, size: s, permissions: perms) }
                if successes > before { mapped.append((d, iv)) }
            case 4:
                // Half the time where an earlier map succeeded (it may be gone since).
                var d = domain(), i = iova()
                if !mapped.isEmpty, rng.next(below: 2) == 0 { (d, i) = pick(mapped) }
                let s = size()
                record { _ = try core.unmap(d, iova: i, size: s) }
            case 5:
                let d = domain(), g = group()
                record { try core.attach(d, to: g) }
            case 6:
                let d = domain(), dev = device()
                record { try core.attach(d, to: dev) }
            case 7:
                let d = domain(), g = group()
                record { try core.detach(d, from: g) }
            case 8:
                let d = domain(), g = group()
                record { try core.replace(g, with: d) }
            case 9:
                let d = domain(), dev = device(), p = pasid()
                record { try core.attachPASID(d, to: dev, pasid: p) }
            case 10:
                let dev = device(), p = pasid(), d = domain()
                record { try core.replacePASID(d, on: dev, pasid: p) }
            case 11:
                let dev = device(), p = pasid()
                let d = domain(onPASID: p, of: dev)
                record { try core.detachPASID(d, from: dev, pasid: p) }
            case 12:
                let dev = device()
                record { _ = try core.allocGlobalPASID(for: dev) }
            case 13:
                let p = pasid()
                record { try core.freeGlobalPASID(p) }
            case 14:
                let g = group()
                if rng.next(below: 2) == 0 { record { try core.claimDMAOwner(g) } } else { record { try core.releaseDMAOwner(g) } }
            default:
                let d = domain(), i = iova()
                _ = core.iovaToPhys(d, i)
            }
        }
    }

    @Test("2000 random API calls with garbage arguments never trap, and every failure carries a positive errno",
          arguments: [UInt64(42), 7, 2024])
    func randomGarbage(seed: UInt64) throws {
        let rig = try KernelRig()
        var devices: [Device] = []
        devices.append(try rig.add("a", dev: 1, unit: 0, pasids: 16).0)
        devices.append(try rig.add("b", dev: 2, fn: 0, unit: 0, group: "g").0)
        devices.append(try rig.add("c", dev: 2, fn: 1, unit: 1, group: "g", pasids: 32).0)
        devices.append(try rig.add("d", dev: 3, unit: 1, untrusted: true).0)
        var f = Fuzzer(rig: rig, rng: SeededRNG(seed: seed), devices: devices)
        for _ in 0..<8 { f.buffers.append(try rig.machine.allocateBuffer()) }
        for _ in 0..<2000 { f.step() }

        #expect(f.badErrors.isEmpty, "\(f.badErrors)")
        #expect(f.successes > 100, "the run must exercise success paths too (\(f.successes))")
        #expect(f.failures.count >= 5, "the run must exercise several kinds of error: \(f.failures)")
        // (DMA-owner changes and PASID replaces need rarer states and may not succeed in a run.)
        for op in ["alloc", "free", "map", "unmap", "attach", "detach", "replace", "attachPASID", "detachPASID",
                   "allocPASID", "freePASID"] {
            #expect(f.succeeded[op, default: 0] > 0, "\(op) never succeeded: the run does not exercise it")
        }
        // Garbage calls map over live ranges (refused with EEXIST, and flagged as the caller's
        // bug); no other invariant may break.
        #expect(rig.violations.filter { $0.invariant != "map-over-live-range" }.isEmpty, "\(rig.violations)")

        // Undo everything: PASIDs, user domains, DMA ownership.
        for g in rig.core.groups {
            for (raw, d) in g.pasidDomains.sorted(by: { $0.key < $1.key }) {
                let owner = try #require(g.devices.first { $0.maxPASIDs > 0 })
                try rig.core.detachPASID(d, from: owner, pasid: PASID(truncating: raw))
            }
            if let d = g.domain, d !== g.defaultDomain, d !== g.blockingDomain {
                try rig.core.detach(d, from: g)
            }
            if g.dmaOwned { try rig.core.releaseDMAOwner(g) }
            // The blocked domain may have been attached explicitly (it is a core domain).
            if let def = g.defaultDomain, g.domain !== def { try rig.core.replace(g, with: def) }
            #expect(g.domain === g.defaultDomain)
            #expect(g.devices.allSatisfy { $0.attachedDomain === g.defaultDomain })
            #expect(g.pasidDomains.isEmpty)
        }
        for raw in UInt32(1)..<64 where rig.core.pasids.isAllocated(PASID(truncating: raw)) {
            try rig.core.freeGlobalPASID(PASID(truncating: raw))
        }
        #expect(rig.core.pasids.allocated == 0)
        // Every live domain that is not a group's default domain is now free to go.
        let defaults = rig.core.groups.compactMap(\.defaultDomain)
        for d in rig.core.liveDomains.values.sorted(by: { $0.id < $1.id }) where !defaults.contains(where: { $0 === d }) {
            #expect(d.attachments == 0, "\(d)")
            #expect(apiErrno { try rig.core.freeDomain(d) } == nil, "\(d) should be freeable")
        }
        #expect(rig.core.liveDomains.values.allSatisfy { d in defaults.contains { $0 === d } })
        for d in defaults where rig.core.liveDomains[d.id] === d {
            #expect(d.attachments == rig.core.devices.filter { $0.attachedDomain === d }.count, "\(d)")
        }

        // Releasing every device, freeing buffers and shutting down leaves nothing behind.
        for dev in rig.core.devices { try rig.core.release(dev) }
        #expect(rig.core.liveDomains.isEmpty)
        #expect(rig.driver.units.allSatisfy { $0.domainIDs.allocated == 0 })
        rig.settle()
        rig.machine.freeBuffers()
        rig.driver.shutdown()
        rig.oracle.checkTeardown(core: rig.core, driver: rig.driver)
        #expect(rig.violations.filter { $0.invariant != "map-over-live-range" }.isEmpty, "\(rig.violations)")
    }
}

@Suite("IOMMUErrorNames: the errno names scenario files may expect are exactly those the errors carry")
struct IOMMUErrorNameTests {
    @Test("errnoNames lists the errnoName of every case, and of every errno the user API returns, once each")
    func errnoNamesMatchTheCases() {
        var all: [IOMMUError] = [.invalidArgument(""), .incompatible(""), .notFound(""), .busy(""), .exists(""), .noMemory(""),
                                 .noSpace(""), .overflow(""), .outOfRange(""), .notSupported(""), .noDevice(""), .timedOut(""), .ioError("")]
        // The iommufd layer's own errnos, as its errors carry them into scenario steps.
        let userCodes: [Int32] = [Errno.EPERM, Errno.E2BIG, Errno.EBADF, Errno.EFAULT, Errno.ENOTTY, Errno.ESPIPE, Errno.EDEADLK,
                                  Errno.EMSGSIZE, Errno.EADDRINUSE]
        all += userCodes.map { Errno($0).iommuError }
        #expect(Set(all.map(\.errnoName)) == Set(IOMMUError.errnoNames))
        #expect(Set(IOMMUError.errnoNames).count == IOMMUError.errnoNames.count)
    }
}
