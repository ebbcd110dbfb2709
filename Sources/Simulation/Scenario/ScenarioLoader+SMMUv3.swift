import Platform
import Formats
import Hardware

extension ScenarioParser {
    /// A unit with `type: smmuv3`: an Arm SMMUv3 (IHI 0070) under the Linux SMMUv3 driver.
    /// Its ID registers come from the options (defaults: every feature Linux uses, 20-bit
    /// SubstreamIDs); its latencies use the same names as a VT-d unit's where they mean the
    /// same thing (`invalidation-ns`: a TLBI, `cache-invalidation-ns`: a CFGI, `wait-ns`: a
    /// CMD_SYNC, `device-tlb-invalidation-ns`: an endpoint applying ATC_INV).
    mutating func smmuUnit(_ m: YAMLMapping, name: String) throws(ScenarioError) {
        var features = SMMUv3Features()
        if let v = m.optional("ssid-bits") { features.ssidBits = try v.int(in: 0...20) }
        if let v = m.optional("stage1") { features.stage1 = try v.bool() }
        if let v = m.optional("stage2") { features.stage2 = try v.bool() }
        if !features.stage1 && !features.stage2 {
            throw (m.optional("stage1") ?? m.optional("stage2") ?? m.field).error("an SMMUv3 needs stage 1 or stage 2")
        }
        if let v = m.optional("ats") { features.ats = try v.bool() }
        if let v = m.optional("pri") { features.pri = try v.bool() }
        if let v = m.optional("range-invalidation") { features.rangeInvalidation = try v.bool() }
        if let v = m.optional("two-level-stream-table") { features.twoLevelStreamTable = try v.bool() }
        if let v = m.optional("two-level-cd-table") { features.twoLevelCDTable = try v.bool() }
        if let v = m.optional("stall-model") {
            switch try v.oneOf(["stall-or-terminate", "terminate", "stall-forced"]) {
            case "terminate": features.stallModel = .terminateOnly
            case "stall-forced": features.stallModel = .stallForced
            default: features.stallModel = .stallOrTerminate
            }
        }
        var config = SMMUv3Configuration(name: name, features: features)
        if let v = m.optional("tlb-entries") { config.tlbEntries = try v.int(in: 4...65536) }
        if let v = m.optional("tlb-ways") { config.tlbWays = try v.int(in: 1...64) }
        if let v = m.optional("ste-cache-entries") { config.steCacheEntries = try v.int(in: 1...65536) }
        if let v = m.optional("cd-cache-entries") { config.cdCacheEntries = try v.int(in: 1...65536) }
        if let v = m.optional("stall-max") { config.stallMax = try v.int(in: 1...65536) }
        if let v = m.optional("event-queue-log2") { config.eventQueueMaxLog2 = try v.int(in: 1...19) }
        if let v = m.optional("pri-queue-log2") { config.priQueueMaxLog2 = try v.int(in: 1...19) }
        guard config.tlbEntries % config.tlbWays == 0 else {
            throw m.field.error("tlb-entries (\(config.tlbEntries)) must be a multiple of tlb-ways (\(config.tlbWays))")
        }
        guard config.steCacheEntries % config.steCacheWays == 0, config.cdCacheEntries % config.cdCacheWays == 0 else {
            throw m.field.error("ste-cache-entries and cd-cache-entries must be multiples of 4 (the caches' ways)")
        }
        var walkAccessNs: UInt64 = 0
        if let v = m.optional("latency") {
            let l = try v.mapping()
            var lat = config.latency
            if let x = l.optional("invalidation-ns") { lat.tlbiNs = try x.unsigned(in: 0...1_000_000_000) }
            if let x = l.optional("cache-invalidation-ns") { lat.cfgiNs = try x.unsigned(in: 0...1_000_000_000) }
            if let x = l.optional("wait-ns") { lat.syncNs = try x.unsigned(in: 0...1_000_000_000) }
            if let x = l.optional("interrupt-ns") { lat.interruptNs = try x.unsigned(in: 0...1_000_000_000) }
            if let x = l.optional("walk-access-ns") { walkAccessNs = try x.unsigned(in: 0...1_000_000) }
            if let ns = try Self.linkNs(l) { lat.linkNs = ns }
            if let x = l.optional("device-tlb-invalidation-ns") { lat.atcInvalidationNs = try x.unsigned(in: 0...1_000_000_000) }
            if let x = l.optional("atc-invalidation-timeout-ns") {
                lat.atcInvalidationTimeoutNs = try x.unsigned(in: 1...10_000_000_000)
            }
            try l.finish()
            config.latency = lat
        }
        try m.finish()
        unitIndex[name] = s.units.count
        s.units.append(.init(name: name, configuration: .smmuv3(config), walkAccessNs: walkAccessNs))
    }
}
