import Testing
import Platform
import Kernel
@testable import Simulation

/// A user-owned device with two domains mapping alike; the DID of the first attach is made to
/// run out (line 16), then the group is replaced between the domains and a PASID attached.
private let expectScenario = """
name: expect
units: [{name: dmar0}]
devices:
  - {name: nic0, rid: "00:02.0", unit: dmar0}
  - {name: vf0, rid: "00:03.0", unit: dmar0, pasids: 16}
buffers:
  - {name: ua, domain: A, iova: 0x100000, count: 2}
  - {name: ub, domain: B, like: ua}
actions:
  - {at: 0, do: claim-owner, device: vf0}
  - {at: 0, do: alloc-domain, name: A, device: vf0, pasid: true}
  - {at: 0, do: alloc-domain, name: B, device: vf0, pasid: true}
  - {at: 0, do: map, buffers: ua}
  - {at: 0, do: map, buffers: ub}
  - {at: 1000, do: inject, point: kernel.did-alloc, nth: 1}
  - {at: 2000, do: attach, domain: A, device: vf0, expect-error: ENOSPC}
  - {at: 3000, do: attach, domain: A, device: vf0}
  - {at: 4000, do: replace, domain: B, device: vf0, expect-path: compareExchange128}
  - {at: 5000, do: replace, domain: A, device: vf0}
  - {at: 6000, do: alloc-pasid, name: p1, device: vf0}
  - {at: 6000, do: attach-pasid, pasid: p1, device: vf0, domain: A, expect-path: fresh}
  - {at: 7000, do: replace-pasid, pasid: p1, device: vf0, domain: B, expect-path: [singleWord, compareExchange128]}
end-ns: 10000
machine: {paging-stage: second}
"""

private func edited(_ original: String, _ replacement: String) throws -> Scenario {
    let yaml = expectScenario.replacingOccurrences(of: original, with: replacement)
    #expect(yaml != expectScenario, "the edit applies")
    return try ScenarioLoader.load(yaml: yaml, file: "expect.yaml")
}

private func loadError(_ original: String, _ replacement: String) -> ScenarioError? {
    let yaml = expectScenario.replacingOccurrences(of: original, with: replacement)
    do { _ = try ScenarioLoader.load(yaml: yaml, file: "expect.yaml"); return nil } catch { return error }
}

@Suite("StepExpectations: an action may be expected to fail with an errno, or to update an entry by a given path")
struct StepExpectationTests {
    @Test("a step that fails with the expected errno is recorded as expected; the plain run goes on, tears down and meets its expectations")
    func expectedErrorLetsTheRunGoOn() throws {
        let o = try runScenario(try ScenarioLoader.load(yaml: expectScenario, file: "expect.yaml"))
        let failed = o.steps.filter { $0.error != nil }
        #expect(failed.count == 1 && failed[0].expected && failed[0].line == 16, "\(o.steps)")
        #expect(failed[0].error?.hasPrefix("ENOSPC") == true)
        #expect(failed[0].notRolledBack.isEmpty)
        #expect(o.expectationFailures.isEmpty, "\(o.expectationFailures)")
        #expect(o.result.log.contains { $0.text.contains("replace-pasid p1 of vf0 to B") }, "later actions ran")
        #expect(o.result.log.contains { $0.text.hasPrefix("teardown complete") })
        #expect(o.result.violationCount == 0 && o.result.framesLeft == 0)
    }

    @Test("a list of errnos accepts any of them")
    func errnoList() throws {
        let s = try edited("expect-error: ENOSPC}", "expect-error: [ENOMEM, ENOSPC]}")
        #expect(s.actions.first { !$0.expectedErrors.isEmpty }?.expectedErrors == ["ENOMEM", "ENOSPC"])
        #expect(try runScenario(s).expectationFailures.isEmpty)
    }

    @Test("an action expected to fail that succeeds is an unmet expectation at its file and line")
    func expectedErrorThatDoesNotHappen() throws {
        let yaml = expectScenario.replacingOccurrences(of: "  - {at: 1000, do: inject, point: kernel.did-alloc, nth: 1}\n", with: "")
            .replacingOccurrences(of: "  - {at: 3000, do: attach, domain: A, device: vf0}\n", with: "")
        #expect(yaml.components(separatedBy: "\n").count == expectScenario.components(separatedBy: "\n").count - 2)
        let o = try runScenario(try ScenarioLoader.load(yaml: yaml, file: "expect.yaml"))
        #expect(o.expectationFailures.contains("expect.yaml:15: 'attach A to vf0's group' was expected to fail with ENOSPC but succeeded"),
                "\(o.expectationFailures)")
    }

    @Test("a step failing with another errno than expected still stops a plain run, saying what was expected")
    func unexpectedErrorStopsTheRun() throws {
        let s = try edited("expect-error: ENOSPC}", "expect-error: ENOMEM}")
        let e = try #require(throws: ScenarioRunner.StepFailed.self) { try runScenario(s) }
        #expect(e.record.line == 16 && !e.record.expected)
        #expect(e.description.contains("ENOSPC: domain ID on dmar0 (injected) (expected ENOMEM)"), "\(e)")
    }

    @Test("in a tolerant run a step failing otherwise than expected is an unmet expectation")
    func unexpectedErrorInTolerantRun() throws {
        let s = try edited("expect-error: ENOSPC}", "expect-error: EBUSY}")
        let o = try runScenario(s) { $0.tolerant = true }
        #expect(o.expectationFailures.contains { $0.hasPrefix("expect.yaml:16:") && $0.contains("failed with another error") },
                "\(o.expectationFailures)")
    }

    @Test("a path other than the expected one, or no entry change at all, is an unmet expectation at the action's line")
    func unexpectedPath() throws {
        let wrong = try runScenario(try edited("expect-path: compareExchange128}", "expect-path: singleWord}"))
        #expect(wrong.expectationFailures == ["expect.yaml:18: 'replace B to vf0's group' took the compareExchange128 path (expected singleWord)"],
                "\(wrong.expectationFailures)")
        let none = try runScenario(try edited("  - {at: 5000, do: replace, domain: A, device: vf0}",
                                              "  - {at: 5000, do: replace, domain: B, device: vf0, expect-path: teardownSetup}"))
        #expect(none.expectationFailures == ["expect.yaml:19: 'replace B to vf0's group' changed no translation entry (expected the teardownSetup path)"],
                "\(none.expectationFailures)")
    }

    @Test("expect-error and expect-path are refused where they cannot hold, and take only known names",
          arguments: [("{at: 1000, do: inject, point: kernel.did-alloc, nth: 1}", "{at: 1000, do: inject, point: kernel.did-alloc, nth: 1, expect-error: EIO}", "runs no kernel step"),
                      ("expect-error: ENOSPC}", "expect-error: ENOSPACE}", "expected one of EINVAL"),
                      ("expect-error: ENOSPC}", "expect-error: []}", "expected an errno name"),
                      ("{at: 0, do: map, buffers: ua}", "{at: 0, do: map, buffers: ua, expect-path: fresh}", "changes no translation entry"),
                      ("expect-path: compareExchange128}", "expect-path: hitless}", "expected one of fresh, singleWord, compareExchange128, staged, teardownSetup"),
                      ("expect-error: ENOSPC}", "expect-error: ENOSPC, expect-path: fresh}", "expected to fail")])
    func refusedWhereTheyCannotHold(original: String, replacement: String, message: String) throws {
        let e = try #require(loadError(original, replacement))
        #expect(e.message.contains(message), "\(e)")
        #expect(e.line > 0)
    }

    @Test("a fault sweep's counting run counts an expected failure as clean")
    func sweepCountsExpectedFailureAsClean() throws {
        let s = try ScenarioLoader.load(yaml: expectScenario.replacingOccurrences(of: "  - {at: 1000, do: inject, point: kernel.did-alloc, nth: 1}\n", with: "")
            .replacingOccurrences(of: "do: attach, domain: A, device: vf0, expect-error: ENOSPC}", with: "do: detach, domain: A, device: vf0, expect-error: ENOENT}"),
                                        file: "expect.yaml")
        let r = try FaultSweep(scenario: s).run(jobs: 2)
        #expect(!r.failures.contains { $0.n == 0 }, "\(r.failures.filter { $0.n == 0 })")
    }
}
