import Platform
import Formats
import Hardware
import Kernel
import IOMMUFD

/// A scenario as a scenario file describes it (checked, names resolved to indices): the
/// machine, its IOMMU units and devices, buffer sets, workloads, timed actions and what the
/// run must show. `ScenarioLoader` builds it from YAML; `ScenarioRunner` runs it.
public struct Scenario: Sendable {
    /// Where a value came from in the file, for messages.
    public struct Source: Sendable, CustomStringConvertible {
        public var file: String
        public var line: Int
        public var description: String { "\(file):\(line)" }
    }

    public struct Machine: Sendable {
        public var memoryMiB: UInt64 = 256
        public var cpus = 2
        public var policy: DMAPolicy = .strict
        /// Under the lazy policy, one large flush queue per domain instead of per-CPU ones
        /// (the driver says invalidations are expensive: Linux `shadow_on_flush`, whose
        /// domains get `IOVA_SINGLE_FQ_SIZE` 32768 entries and a 1 s timeout instead of
        /// `IOVA_DEFAULT_FQ_SIZE` 256 per CPU and 10 ms; drivers/iommu/dma-iommu.c).
        /// Scenario files: `flush-queue: single` (default `per-cpu`).
        public var singleFlushQueue = false
        /// The stage of DMA and unmanaged paging domains (`paging-stage`): nil follows Linux
        /// (first stage where the unit has FLTS).
        public var pagingStage: VTdPagingStage?
        /// Table levels of new paging domains (`paging-levels`: 4 or 5).
        public var pagingLevels = 4
        public var yield: YieldPolicy = .never
        /// Virtual time the idle phase before teardown lasts (lets flush-queue timers fire).
        public var settleNs: UInt64 = 10_500_000
        /// A run's budget: it stops with `BudgetExceeded` after this many events or this much
        /// host time. The defaults are far above what the built-in scenarios take (at most
        /// about 60,000 events and a tenth of a second) and stop a runaway within minutes.
        public var maxEvents: UInt64 = Self.defaultMaxEvents
        public var maxWallSeconds: Double = Self.defaultMaxWallSeconds
        /// Lines of `max-events` and `max-wall-s` in the file (0: the default applies).
        public var maxEventsLine = 0
        public var maxWallLine = 0
        public static let defaultMaxEvents: UInt64 = 50_000_000
        public static let defaultMaxWallSeconds: Double = 300
    }

    public struct Unit: Sendable {
        public var name: String
        /// A VT-d unit or an SMMUv3 (`type: smmuv3`); a scenario's units are all of one kind.
        public var configuration: UnitConfiguration
        /// Device stall per page-table memory access on an IOTLB miss.
        public var walkAccessNs: UInt64
    }

    public struct DeviceSpec: Sendable {
        public var description: DeviceDescription
        public var unitName: String
        /// Largest write TLP (PCIe Max_Payload_Size) and read request (Max_Read_Request_Size):
        /// each TLP is translated on its own.
        public var maxPayload: Int
        public var maxReadRequest: Int
        /// Device TLB and PRI settings (used when the description has ATS / PRI).
        public var ats = ATSConfiguration()
        public var pri = PRIConfiguration()
        /// Protocol breaches the device commits (a guest-controlled device).
        public var misbehaviour: Misbehaviour = []
        /// The streaming DMA mask its driver sets (`dma_set_mask`), in bits; 64: none set.
        public var dmaMaskBits = 64
    }

    /// A named set of equal buffers in one domain: `count` buffers of `pages` pages, the
    /// first at `iova`, then every `stride` bytes. `like` shares another set's frames.
    public struct BufferSet: Sendable {
        public var name: String
        /// A device name (its default domain) or a user domain name.
        public var domain: String
        public var iova: UInt64
        public var count: Int
        public var pages: Int
        public var stride: UInt64
        public var permissions: PagePermissions
        public var like: Int?
        public var source: Source
    }

    public enum Direction: String, Sendable { case read, write, both }

    public enum Workload: Sendable {
        /// A device reading and writing the live buffers of some sets.
        case dma(DMAStream)
        /// Every `periodNs`, unmap a random buffer of a set and map it to fresh frames.
        case churn(Churn)
        /// A receive ring through the DMA API: buffers mapped with dma_map_page, written by
        /// the device, recycled (unmap + map on another CPU) every `recycleNs`.
        case dmaRing(DMARing)
        /// A device accessing memory through ATS (device TLB, translation requests, PRI on a
        /// miss): the pages of a process region through an SVA bind, or an IOVA window.
        case ats(ATSStream)
        /// User space serving a fault queue: reads whole groups, maps the pages it agrees to
        /// into the domain the device is attached to, answers SUCCESS (INVALID outside).
        case faultHandler(FaultHandler)
    }

    public struct ATSStream: Sendable {
        public var device: Int
        /// An SVA bind (its PASID) and a region of its process, or nil: RID-only accesses
        /// to the IOVA window.
        public var bind: String?
        public var region: String?
        public var iova: UInt64
        public var windowPages: Int
        public var pagesPerAccess: Int
        public var intervalNs: UInt64
        /// Accesses in flight at most (each waits for its faults).
        public var outstanding: Int
        public var direction: Direction
    }

    public struct FaultHandler: Sendable {
        public var queue: String
        /// For an iommufd fault object: the VMM maps faulting guest pages with IOAS_MAP into
        /// `ioas` from `region` (guest RAM at `iova`), reading and answering through the file.
        public var ioas: String? = nil
        public var region: String? = nil
        /// IOVA window the handler maps on demand; a fault outside it is answered INVALID.
        public var iova: UInt64
        public var windowPages: Int
        /// Think time between a wake-up and the answer.
        public var latencyNs: UInt64
        /// Records one read takes at most.
        public var batch: Int
    }

    public struct DMAStream: Sendable {
        public var device: Int
        public var pasid: String?
        public var buffers: [Int]
        public var intervalNs: UInt64
        public var burst: Int
        public var direction: Direction
        public var minBytes: Int
        public var maxBytes: Int
        /// Walk the buffers in order (a ring) instead of picking at random.
        public var sequential: Bool
        /// Instead of buffer sets: every page of [iova, iova + pages × 4 KiB), always live
        /// (guest RAM a VMM maps through iommufd).
        public var windowIOVA: UInt64 = 0
        public var windowPages = 0
    }

    public struct Churn: Sendable {
        public var buffers: Int
        public var periodNs: UInt64
    }

    public struct DMARing: Sendable {
        public var device: Int
        public var count: Int
        public var size: UInt64
        public var offset: UInt64
        public var direction: DMADirection
        public var recycleNs: UInt64
        public var intervalNs: UInt64
        /// Pages per buffer: more than one makes each buffer a scatter list of one-page
        /// segments (`dma_map_sg`), or with `contiguous` one physically contiguous run
        /// mapped with `dma_map_page` (superpages where the IOVA and the run align).
        public var pages: Int = 1
        public var contiguous = false
        /// Every buffer maps the same frames (IOVA-space pressure without the memory).
        public var shared = false
        /// Bytes the device may use in a buffer.
        public var length: UInt64 { pages == 1 ? size : UInt64(pages) * 4096 }
        /// Frames the ring takes at most when mapped (recycling takes more, freed at teardown).
        public var frames: UInt64 { shared ? UInt64(pages) * (contiguous ? 2 : 1) : UInt64(count) * UInt64(pages) * (contiguous ? 2 : 1) }
    }

    public struct WorkloadSpec: Sendable {
        public var name: String
        public var kind: Workload
        public var start: UInt64
        public var stop: UInt64?
        /// The file says the workload may legitimately do nothing (`may-idle: true`); otherwise
        /// a started workload that did nothing fails the run's expectations.
        public var mayIdle = false
        public var source: Source
    }

    public enum Action: Sendable {
        case allocDomain(name: String, device: Int, flags: DomainFlags, faultQueue: String?)
        case freeDomain(String)
        case map(buffers: Int)
        case unmap(buffers: Int)
        case claimOwner(device: Int)
        case releaseOwner(device: Int)
        case attach(domain: String, device: Int)
        case replace(domain: String, device: Int)
        case detach(domain: String, device: Int)
        case allocPASID(name: String, device: Int)
        case freePASID(String)
        case attachPASID(pasid: String, device: Int, domain: String)
        case replacePASID(pasid: String, device: Int, domain: String)
        case detachPASID(pasid: String, device: Int, domain: String)
        /// The device is reset: its group passes through the blocked domain for `ns`
        /// (Linux pci_dev_reset_iommu_prepare/done).
        case reset(device: Int, ns: UInt64)
        /// Hot removal (Linux `iommu_release_device`): the device's workloads stop, the core
        /// releases it (blocked domain, the driver frees its state) with whatever is in flight.
        case removeDevice(Int)
        /// One-off DMA from a device (`count` requests, `stride` apart).
        case dma(device: Int, address: UInt64, length: Int, count: Int, stride: UInt64, write: Bool, pasid: String?)
        /// `pairs` map+unmap pairs through the DMA API on one CPU.
        case dmaBurst(device: Int, pairs: Int, cpu: Int)
        case start(workload: Int)
        case stop(workload: Int)
        case retarget(workload: Int, buffers: [Int])
        /// Sets the fault injector (`nil` mode: off).
        case inject(FaultInjector.Mode)
        /// Makes a unit mistreat invalidation descriptors of one type (nil: behave again).
        case descriptorFault(unit: Int, type: UInt8, fault: DescriptorFault?)
        /// SVA: a process, a mapping in it, its removal, the process's exit.
        case createProcess(String)
        case mmap(process: String, region: String, pages: Int, permissions: PagePermissions)
        case munmap(region: String)
        case exitProcess(String)
        /// Binds a device to a process (the device driver then programs the PASID into the
        /// device: it starts using it).
        case svaBind(name: String, device: Int, process: String)
        /// The device driver stops the device's use of the PASID (with a stop marker, or by
        /// waiting for its outstanding page requests), then unbinds.
        case svaUnbind(bind: String, stopMarker: Bool)
        /// An iommufd fault object; domains allocated with it deliver faults there.
        case allocFaultQueue(String)
        case closeFaultQueue(String)
        /// The VMM role through iommufd (Scenario+IOMMUFD.swift).
        case iommufd(IOMMUFDAction)
    }

    public struct TimedAction: Sendable {
        public var at: UInt64
        public var action: Action
        public var source: Source
        /// What the step is, in words (for logs, traces and failures).
        public var label: String
        /// Errno names the action must fail with (`expect-error`): such a failure is recorded
        /// and the run goes on; succeeding is an unmet expectation. Empty: it must succeed.
        public var expectedErrors: [String] = []
        /// Update paths every entry change of the action must take (`expect-path`; attach,
        /// replace, detach, attach-pasid, replace-pasid). Empty: not checked.
        public var expectedPaths: [UpdatePath] = []
    }

    public struct FaultExpectation: Sendable {
        public var device: Int
        public var atLeast: Int
        public var atMost: Int?
    }

    /// A bound on one of the run's IO page-fault counters (`RunResult.pageFaultCounters`).
    public struct CounterExpectation: Sendable {
        public var name: String
        public var atLeast: UInt64
        public var atMost: UInt64?
    }

    /// A bound on a counter of one device, IOMMU unit or fault queue
    /// (`RunResult.deviceCounterNames`, `unitCounterNames`, `queueCounterNames`).
    public struct ScopedCounterExpectation: Sendable {
        public enum Scope: String, Sendable { case device, unit, queue = "fault queue" }
        public var scope: Scope
        public var owner: String
        public var name: String
        public var atLeast: UInt64
        public var atMost: UInt64?
    }

    /// The DID a named domain (a user domain, or a device's default domain) got first on a unit.
    public struct DomainIDExpectation: Sendable {
        public var domain: String
        public var unit: Int
        public var did: UInt16
    }

    /// The PASID value an alloc-pasid or sva-bind name got.
    public struct PASIDExpectation: Sendable {
        public var name: String
        public var value: UInt32
    }

    public struct Expectations: Sendable {
        public var violations: Int? = 0
        public var framesLeft: Int? = 0
        public var faults: [FaultExpectation] = []
        public var minTranslations: UInt64?
        public var counters: [CounterExpectation] = []
        public var scopedCounters: [ScopedCounterExpectation] = []
        public var domainIDs: [DomainIDExpectation] = []
        public var pasids: [PASIDExpectation] = []
    }

    public var name: String
    public var description: String
    public var file: String
    public var machine = Machine()
    public var units: [Unit] = []
    /// The units are SMMUv3s.
    public var isArm: Bool {
        if case .smmuv3? = units.first?.configuration { return true }
        return false
    }
    public var devices: [DeviceSpec] = []
    public var buffers: [BufferSet] = []
    public var workloads: [WorkloadSpec] = []
    /// Sorted by time (stable: file order within an instant).
    public var actions: [TimedAction] = []
    public var expect = Expectations()
    /// Virtual time at which the timed phase ends (traffic stops, teardown begins).
    public var endNs: UInt64 = 0
}
