import Yams

// What a scenario may ask of its machine, checked at load.
extension ScenarioParser {
    /// The frames the buffer sets (count × pages, a set `like` another shares its frames) and
    /// DMA rings (their buffers' pages, once if shared) take must fit the machine's memory: a scenario that
    /// cannot have its buffers is refused at the set or ring that goes past it, not left to
    /// fail with ENOMEM part-way through a run.
    func checkMemory(buffers: [YAMLField], workloads: [YAMLField]) throws(ScenarioError) {
        let memory = s.machine.memoryMiB << 20
        var frames: UInt64 = 0
        func add(_ n: UInt64, at f: YAMLField, _ what: String) throws(ScenarioError) {
            frames += n
            guard frames * 4096 > memory else { return }
            let mib = (frames * 4096 + (1 << 20) - 1) >> 20
            throw f.error("\(what): the buffer sets and DMA rings up to here need \(frames) frames of 4 KiB (\(mib) MiB), more than the machine's memory (machine.memory-mib: \(s.machine.memoryMiB))")
        }
        for (i, set) in s.buffers.enumerated() where set.like == nil && i < buffers.count {
            try add(UInt64(set.count) * UInt64(set.pages), at: buffers[i], "buffer set \(set.name) (\(set.count) × \(set.pages) page(s))")
        }
        for (i, w) in s.workloads.enumerated() where i < workloads.count {
            if case .dmaRing(let r) = w.kind { try add(r.frames, at: workloads[i], "DMA ring \(w.name) (\(r.count) buffers of \(r.pages) page(s))") }
        }
    }
}
