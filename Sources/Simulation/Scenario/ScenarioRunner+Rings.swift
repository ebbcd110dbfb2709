import Platform
import Formats
import Hardware
import Kernel

// DMA-API rings: buffers a device driver maps with the DMA API, hands to the device and
// recycles (Linux dma_map_page / dma_map_sg and their unmaps).
extension ScenarioRunner {
    /// The frames buffer `k` maps: its own, or the ring's shared ones (taken once).
    private func ringFrames(_ r: RingState) throws(IOMMUError) -> [UInt64] {
        if r.spec.shared, !r.sharedFrames.isEmpty { return r.sharedFrames }
        let pages = r.spec.pages
        var frames: [UInt64] = []
        if r.spec.contiguous {
            // One physically contiguous run aligned to its size (so an aligned IOVA can take
            // superpages), cut from a run twice as long.
            let align = UInt64(1) << UInt64(64 - (UInt64(pages) - 1).leadingZeroBitCount)
            let base = try m.allocateContiguousBuffer(pages: pages, alignment: min(align, 512) * 4096)
            frames = (0..<pages).map { base + UInt64($0) * 4096 }
        } else {
            for _ in 0..<pages { frames.append(try m.allocateBuffer()) }
        }
        if r.spec.shared { r.sharedFrames = frames }
        return frames
    }

    /// Maps buffer `k` on `cpu` and posts it.
    func ringMap(_ r: RingState, _ k: Int, cpu: Int) throws(IOMMUError) {
        let dev = devices[r.spec.device]
        let frames = try ringFrames(r)
        let address: UInt64
        let began = m.scheduler.now
        defer { if let rec = recorder { rec.mapped(ns: m.scheduler.now &- began) } }
        if r.spec.pages == 1 {
            address = try m.dma.mapPage(dev, physical: frames[0] + r.spec.offset, size: r.spec.size, direction: r.spec.direction, cpu: cpu)
        } else if r.spec.contiguous {
            address = try m.dma.mapPage(dev, physical: frames[0], size: r.spec.length, direction: r.spec.direction, cpu: cpu)
        } else {
            let sg = try m.dma.mapSG(dev, frames.map { ScatterSegment(physical: $0, length: 4096) }, direction: r.spec.direction, cpu: cpu)
            r.scatter[k] = sg
            address = sg.iova
        }
        r.buffers.addresses[k] = address
        r.buffers.live[k] = true
        r.cpus[k] = cpu
    }

    /// Unmaps buffer `k` (mapped at `address` on `cpu`).
    func ringUnmap(_ r: RingState, _ k: Int, address: UInt64, cpu: Int) throws(IOMMUError) {
        let dev = devices[r.spec.device]
        let began = m.scheduler.now
        defer { if let rec = recorder { rec.unmapReturned(ns: m.scheduler.now &- began, now: m.scheduler.now) } }
        if let sg = r.scatter[k] {
            try m.dma.unmapSG(dev, sg, cpu: cpu)
            r.scatter[k] = nil
        } else {
            try m.dma.unmapPage(dev, address: address, size: r.spec.pages == 1 ? r.spec.size : r.spec.length, cpu: cpu)
        }
    }

    func mapRing(_ r: RingState, label: String, line: Int) {
        let dev = devices[r.spec.device]
        let cpus = scenario.machine.cpus
        for i in 0..<r.buffers.count {
            step("\(label): dma_map \(i)", line: line) { () throws(IOMMUError) in try ringMap(r, i, cpu: i % cpus) }
        }
        note("\(label): \(dev.name) mapped \(r.buffers.count) buffers of \(r.spec.pages) page(s) with the DMA API")
    }

    /// Unmaps a random ring buffer through the DMA API (deferred under the lazy policy) and
    /// maps a fresh one from the other CPU.
    func recycleOnce(_ r: RingState) {
        let dev = devices[r.spec.device]
        let k = Int(m.scheduler.random(below: UInt64(r.buffers.count)))
        guard r.buffers.live[k] else { return }
        r.buffers.live[k] = false
        let old = r.buffers.addresses[k], cpu = r.cpus[k]
        guard step("\(dev.name) dma_unmap", line: 0, { () throws(IOMMUError) in
            do throws(IOMMUError) { try ringUnmap(r, k, address: old, cpu: cpu) } catch {
                // The DMA layer decides whether a failed unmap kept the mapping (teardown then
                // unmaps it) or retired it (a strict unmap whose invalidation failed).
                if (try? m.dma.isMapped(dev, address: old)) == true { r.buffers.live[k] = true }
                throw error
            }
        }) else { return }
        let next = (cpu + 1) % scenario.machine.cpus
        let mapped = step("\(dev.name) dma_map", line: 0) { () throws(IOMMUError) in try ringMap(r, k, cpu: next) }
        if mapped, let rec = recorder {
            rec.cycled(bytes: r.spec.length)
            rec.maybeSample(m)
        }
    }
}
