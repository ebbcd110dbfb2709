import Testing
import Platform
import Formats
import Hardware
import Kernel
@testable import Simulation

/// Explore runs 10^4..10^6 seeds in one process: a run must give back everything its machine
/// held (the memory mapping above all) the moment its runner goes.
@Suite("MachineRelease: a finished run releases its machine, memory mapping, units and endpoints")
struct MachineReleaseTests {
    /// Weak references to what one run built; all must be nil once the runner is gone.
    struct Watched {
        weak var machine: Machine?
        weak var memory: PhysicalMemory?
        weak var scheduler: Scheduler?
        weak var oracle: Oracle?
        weak var core: IOMMUCore?
        var units: [Weak<VTdUnit>] = []
        var endpoints: [Weak<PCIeEndpoint>] = []
        var alive: [String] {
            var a: [String] = []
            if machine != nil { a.append("machine") }
            if memory != nil { a.append("memory") }
            if scheduler != nil { a.append("scheduler") }
            if oracle != nil { a.append("oracle") }
            if core != nil { a.append("core") }
            if units.contains(where: { $0.value != nil }) { a.append("unit") }
            if endpoints.contains(where: { $0.value != nil }) { a.append("endpoint") }
            return a
        }
    }
    struct Weak<T: AnyObject> { weak var value: T? }

    static func runAndWatch(_ s: Scenario, seed: UInt64) throws -> Watched {
        var w = Watched()
        let r = try ScenarioRunner(scenario: s, options: .init(seed: seed))
        w.machine = r.m; w.memory = r.m.platform.memory; w.scheduler = r.m.scheduler
        w.oracle = r.m.oracle; w.core = r.m.core
        w.units = r.m.units.map { Weak(value: $0) }
        _ = try r.run()
        w.endpoints = r.m.endpoints.map { Weak(value: $0) }
        #expect(!w.endpoints.isEmpty)
        return w
    }

    @Test("every built-in scenario's run releases its whole machine", arguments: BuiltinScenarios.names)
    func builtinReleases(name: String) throws {
        let w = try Self.runAndWatch(try BuiltinScenarios.load(name), seed: 3)
        #expect(w.alive.isEmpty, "still alive after the run: \(w.alive)")
    }

    @Test("a machine dropped with its devices still probed (no teardown ran) is released whole")
    func probedMachineReleases() throws {
        let s = try BuiltinScenarios.load("sva-faults")
        var w = Watched()
        weak var driver: VTdDriver?
        weak var device: Device?
        do {
            let m = try Machine(seed: 1, unitConfigurations: s.units.map(\.configuration))
            w.machine = m; w.memory = m.platform.memory; w.scheduler = m.scheduler; w.oracle = m.oracle; w.core = m.core
            w.units = m.units.map { Weak(value: $0) }
            driver = m.vtdDriver
            w.endpoints = try m.addDevices(s.devices.map(\.description), ats: s.devices.map(\.ats), pri: s.devices.map(\.pri)).map { Weak(value: $0.1) }
            device = m.core.devices.first
            #expect(!w.endpoints.isEmpty && device != nil)
        }
        #expect(w.alive.isEmpty, "still alive: \(w.alive)")
        #expect(driver == nil && device == nil)
    }

    @Test("a run stopped by a failing step releases its machine")
    func abortedRunReleases() throws {
        let yaml = smallScenario.replacingOccurrences(of: "  - {at: 20000, do: detach, domain: U, device: vf0}",
                                                      with: "  - {at: 20000, do: detach, domain: U, device: vf0}\n  - {at: 25000, do: detach, domain: U, device: vf0}")
        let s = try ScenarioLoader.load(yaml: yaml, file: "x.yaml")
        weak var memory: PhysicalMemory?
        weak var unit: VTdUnit?
        do {
            let r = try ScenarioRunner(scenario: s, options: .init(seed: 1))
            memory = r.m.platform.memory; unit = r.m.units.first
            #expect(throws: ScenarioRunner.StepFailed.self) { try r.run() }
        }
        #expect(memory == nil && unit == nil)
    }

    /// Found by CI: DMAAPITests' real threads detached two of the oracle's hooks but not the
    /// allocator's, so both threads wrote the oracle's table set at once (SIGSEGV).
    @Test("detachOracle leaves no hook calling the oracle: maps, unmaps and table frees after it change nothing it holds")
    func detachOracleRemovesEveryHook() throws {
        let m = try Machine(seed: 1, unitConfigurations: [.vtd(VTdConfiguration(name: "dmar0"))])
        let device = try m.addDevices([DeviceDescription(name: "nic", requesterID: RequesterID(bus: 0, device: 1, function: 0))])[0].0
        m.detachOracle()
        let checks = m.oracle.checks, tables = m.oracle.liveTables.count
        let d = try m.core.allocDomain(for: device)
        // 1 GiB apart: each map needs table pages of its own, which the unmaps then free.
        for i in 0..<UInt64(4) { try m.core.map(d, iova: i << 30, physical: 1 << 20, size: 4096, permissions: PagePermissions.readWrite) }
        for i in 0..<UInt64(4) { _ = try m.core.unmap(d, iova: i << 30, size: 4096) }
        try m.core.freeDomain(d)
        #expect(m.oracle.checks == checks && m.oracle.liveTables.count == tables && m.oracle.freedTables.isEmpty)
        #expect(m.platform.frames.freeObserver == nil && m.platform.frames.ownedAllocationObserver == nil)
        #expect(m.core.observer == nil && m.units.allSatisfy { $0.onTableRead == nil })
    }
}
