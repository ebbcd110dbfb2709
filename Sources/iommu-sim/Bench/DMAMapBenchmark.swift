import Platform
import Formats
import Hardware
import Kernel
import Synchronization

/// `iommu-sim bench dma-map`: the DMA API's map and unmap cost with real threads, each on
/// its own CPU slot, over the whole stack (IOVA allocator, VT-d page table, strict
/// invalidation through the unit's queue, or the flush queue), like Linux's
/// dma_map_benchmark (kernel/dma/map_benchmark.c).
///
/// Each thread repeats: map `batch` buffers of `granule` pages, wait `dmaTransNs`, unmap
/// them. Map and unmap time per operation is the batch's time divided by the batch size
/// (a clock read per operation would cost as much as a deferred pair), so percentiles are
/// over batches; `--batch 1` times every operation alone, as the kernel benchmark does.
/// Modelled hardware latency (`invalidationLatencyNs` for an IOTLB invalidation with its
/// wait) is spent as real time in the waiting thread, under the unit's queue lock.
struct DMAMapBenchmark {
    enum Mode: String, CaseIterable { case strict, lazy, singleQueue = "single-queue" }

    struct Options {
        var threads = 1
        var seconds = 1.0
        var granule: UInt64 = 1
        var direction: DMADirection = .bidirectional
        var dmaTransNs: UInt64 = 0
        var mode: Mode = .lazy
        var invalidationLatencyNs: UInt64 = 2000
        var batch = 16
        /// The unit under the DMA API: VT-d (VTdUnit + VTdDriver) or SMMUv3 (SMMUv3Unit +
        /// ArmSMMUv3Driver, stage 1 DMA domains, range invalidation).
        var arch: BenchArch = .vtd
    }

    struct Result {
        var options: Options
        var map: Samples
        var unmap: Samples
        var pairs: Int
        var elapsedNs: UInt64
        var stats: DMAStatistics
        var iotlbDescriptors: UInt64
        var pairsPerSecond: Double { elapsedNs == 0 ? 0 : Double(pairs) * 1e9 / Double(elapsedNs) }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    let options: Options

    func run() throws -> Result {
        let o = options
        let platform: PlatformContext
        do { platform = try PlatformContext(memorySize: 1 << 30, seed: 1) } catch { throw Failure(description: "memory: \(error)") }
        let core = IOMMUCore(platform: platform, policy: o.mode == .strict ? .strict : .lazy)
        let hardware: BenchHardware
        do { hardware = try BenchHardware(o, platform: platform, core: core) } catch { throw Failure(description: "driver: \(error)") }
        let device: Device
        let cookie: DMACookie
        let dma = IOMMUDMA(core: core, cpus: o.threads)
        do {
            device = try core.probe([DeviceDescription(name: "bench", requesterID: RequesterID(bus: 1, device: 0, function: 0))],
                                    driver: hardware.driver)[0]
            guard let c = try dma.cookie(for: device) else { throw Failure(description: "no DMA domain") }
            cookie = c
        } catch { throw Failure(description: "setup: \(error)") }
        platform.realThreads = true

        let size = o.granule << 12
        let buffer: UInt64 = 1 << 28
        let batch = o.batch
        let started = Atomic<Int>(0)
        let go = Atomic<Bool>(false)
        let results = Mutex<[(Samples, Samples, Int, String?)]>([])
        let durationNs = UInt64(o.seconds * 1e9)
        let descriptorsBefore = hardware.tlbInvalidations
        let samplesPerThread = 1 << 20
        let allStarted = runOnThreads(o.threads + 1) { index in
            if index == o.threads {
                // The starter: release the workers together.
                while started.load(ordering: .acquiring) < o.threads {}
                go.store(true, ordering: .releasing)
                return
            }
            let cpu = index
            var map = Samples(capacity: samplesPerThread), unmap = Samples(capacity: samplesPerThread)
            var addresses = [UInt64](repeating: 0, count: batch)
            var pairs = 0
            var failure: String?
            started.add(1, ordering: .releasing)
            while !go.load(ordering: .acquiring) {}
            let end = HostClock.now() &+ durationNs
            loop: while HostClock.now() < end {
                let t0 = HostClock.now()
                for i in 0..<batch {
                    do { addresses[i] = try dma.mapPage(device, physical: buffer + UInt64(i) << 12, size: size, direction: o.direction, cpu: cpu) } catch {
                        failure = "map: \(error)"; break loop
                    }
                }
                let t1 = HostClock.now()
                if o.dmaTransNs > 0 { HostClock.spin(o.dmaTransNs) }
                let t2 = HostClock.now()
                for i in 0..<batch {
                    do { try dma.unmapPage(device, address: addresses[i], size: size, cpu: cpu) } catch {
                        failure = "unmap: \(error)"; break loop
                    }
                }
                let t3 = HostClock.now()
                map.add(Double(HostClock.elapsed(t0, t1)) / Double(batch), weight: batch)
                unmap.add(Double(HostClock.elapsed(t2, t3)) / Double(batch), weight: batch)
                pairs += batch
            }
            results.withLock { $0.append((map, unmap, pairs, failure)) }
        }
        guard allStarted else { throw Failure(description: "could not start \(o.threads + 1) threads (pthread_create failed)") }
        let all = results.withLock { $0 }
        if let f = all.compactMap(\.3).first { throw Failure(description: f) }
        var map = Samples(capacity: 0), unmap = Samples(capacity: 0)
        map.values.reserveCapacity(all.reduce(0) { $0 + $1.0.values.count })
        unmap.values.reserveCapacity(map.values.capacity)
        var pairs = 0
        for r in all { map.merge(r.0); unmap.merge(r.1); pairs += r.2 }
        let stats = cookie.statistics
        let descriptors = hardware.tlbInvalidations - descriptorsBefore
        // Tear down (the flush queue stops acting, so a pending real timer finds nothing to
        // do); the platform stays in real-thread mode for any timer still in flight.
        try? core.release(device)
        hardware.shutdown()
        return Result(options: o, map: map, unmap: unmap, pairs: pairs, elapsedNs: durationNs, stats: stats,
                      iotlbDescriptors: descriptors)
    }
}

/// The unit and driver under `bench dma-map`, by architecture.
///
/// The invalidation latency knob means the same on both: one TLB invalidation plus its
/// wait. VT-d: each IOTLB or PASID-based IOTLB descriptor costs it, the wait descriptor
/// nothing. SMMUv3: each TLBI_* command costs it (`SMMUv3Latency.tlbiNs`), CMD_SYNC and every
/// other command nothing, so a strict unmap's TLBI_NH_VA (one range command with RIL,
/// IHI 0070 §4.4.2) + CMD_SYNC (§4.7.3) and a flush queue's TLBI_NH_ASID + CMD_SYNC cost one
/// latency, as VT-d's descriptor + wait does.
struct BenchHardware {
    let driver: any IOMMUDriver
    private let vtdUnit: VTdUnit?
    private let smmuUnit: SMMUv3Unit?
    private let shutdownDriver: () -> Void

    init(_ o: DMAMapBenchmark.Options, platform: PlatformContext, core: IOMMUCore) throws {
        switch o.arch {
        case .vtd:
            // One IOTLB invalidation (page- or domain-selective) plus its wait costs the
            // requested latency; other descriptors are not on this path.
            var latency = VTdLatency.uniform(0)
            for t in [InvalidationDescriptor.iotlbType, InvalidationDescriptor.pasidIOTLBType] {
                latency.descriptorNs[Int(t)] = o.invalidationLatencyNs
            }
            let unit = VTdUnit(configuration: VTdConfiguration(name: "dmar0", latency: latency), platform: platform)
            let d = try VTdDriver(platform: platform, hardware: [unit])
            d.shadowOnFlush = o.mode == .singleQueue
            core.register(d)
            driver = d; vtdUnit = unit; smmuUnit = nil
            shutdownDriver = { d.shutdown() }
        case .smmuv3:
            var latency = SMMUv3Latency.uniform(0)
            latency.tlbiNs = o.invalidationLatencyNs
            let unit = SMMUv3Unit(configuration: SMMUv3Configuration(name: "smmu0", latency: latency), platform: platform)
            let d = try ArmSMMUv3Driver(platform: platform, hardware: [unit])
            d.shadowOnFlush = o.mode == .singleQueue
            core.register(d)
            driver = d; vtdUnit = nil; smmuUnit = unit
            shutdownDriver = { d.shutdown() }
        }
    }

    /// TLB invalidations the unit has completed: IOTLB descriptors of either kind (type 2
    /// for second-stage domains, PASID-based for first stage), or TLBI_* commands.
    var tlbInvalidations: UInt64 {
        if let u = vtdUnit {
            return u.counters.descriptorsByType[Int(InvalidationDescriptor.iotlbType)]
                + u.counters.descriptorsByType[Int(InvalidationDescriptor.pasidIOTLBType)]
        }
        if let u = smmuUnit {
            return u.counters.commandsByOpcode[0x10...0x30].reduce(0, +)
        }
        return 0
    }

    func shutdown() { shutdownDriver() }
}
