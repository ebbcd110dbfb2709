import Benchmark
import Platform
import Formats
import Hardware
import Kernel

/// One machine with a VT-d unit, the core and the DMA API, a device in a DMA domain.
final class DMARig: @unchecked Sendable {
    let platform: PlatformContext
    let core: IOMMUCore
    let dma: IOMMUDMA
    let device: Device

    init(policy: DMAPolicy, invalidationNs: UInt64) throws {
        platform = try PlatformContext(memorySize: 1 << 30, seed: 1)
        var latency = VTdLatency.uniform(0)
        latency.descriptorNs[Int(InvalidationDescriptor.iotlbType)] = invalidationNs
        let unit = VTdUnit(configuration: VTdConfiguration(latency: latency), platform: platform)
        core = IOMMUCore(platform: platform, policy: policy)
        let driver = try VTdDriver(platform: platform, hardware: [unit])
        core.register(driver)
        dma = IOMMUDMA(core: core, cpus: 1)
        device = try core.probe([DeviceDescription(name: "bench", requesterID: RequesterID(bus: 1, device: 0, function: 0))], driver: driver)[0]
        _ = try dma.cookie(for: device)
        platform.realThreads = true
    }
}

let benchmarks: @Sendable () -> Void = {
    // 1000 operations per sample: the figures are per sample (divide by 1000 for ns/op), and
    // `Malloc (total)` shows that the loops allocate nothing.
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .mallocCountTotal, .throughput],
                                           scalingFactor: .kilo, maxDuration: .seconds(2))

    let iova = IOVADomain(endPFN: (1 << 36) - 1, cpus: 1, clock: { HostClock.now() })
    Benchmark("IOVA alloc+free, magazine hit") { benchmark in
        for _ in benchmark.scaledIterations {
            let pfn = iova.allocate(pages: 1, limitPFN: (1 << 36) - 1, cpu: 0) ?? 0
            iova.free(pfn: pfn, pages: 1, cpu: 0)
            blackHole(pfn)
        }
    }

    for (name, policy, latency) in [("deferred", DMAPolicy.lazy, UInt64(2000)), ("strict, 0 ns invalidation", .strict, 0)] {
        guard let rig = try? DMARig(policy: policy, invalidationNs: latency) else { continue }
        Benchmark("dma map+unmap 4 KiB, \(name)") { benchmark in
            for _ in benchmark.scaledIterations {
                let a = try rig.dma.mapPage(rig.device, physical: 1 << 28, size: 4096, direction: .bidirectional, cpu: 0)
                try rig.dma.unmapPage(rig.device, address: a, size: 4096, cpu: 0)
            }
        }
    }
}
