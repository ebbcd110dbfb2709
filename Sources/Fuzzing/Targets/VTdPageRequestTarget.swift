import Formats
import Hardware
import Kernel

/// Page requests from a misbehaving device on VT-d (VT-d §7.4–7.5, PCIe PRI): any PASID,
/// address, access bits, group index and Last bit, stop markers, requests for groups it never
/// finishes, stop markers at any time (R = W = 0, L = 1), alongside real demand paging of an
/// SVA-bound process, which answers what it can. The page request queue, the driver's handler
/// (`intel_prq_report` and the IOPF queue) and the fault responses must take all of it: no
/// trap, the queue keeps working (a real fault is still served after the input), the other
/// device isolated, nothing leaked.
enum VTdPageRequestTarget {
    final class Rig: HoldsFuzzRig {
        let rig: FuzzRig
        init() throws {
            rig = try FuzzRig(.vtd)
            rig.victimEndpoint.misbehaviour = .all
        }
    }

    static func run(_ input: inout FuzzInput, _ result: inout FuzzResult) {
        RigPool.with(Rig.self, &result) { r, result in
            pageRequests(r.rig, &input, &result)
        }
    }

    static func pageRequests(_ rig: FuzzRig, _ input: inout FuzzInput, _ result: inout FuzzResult) {
        let m = rig.machine, ep = rig.victimEndpoint
        let process: Process, handle: SVAHandle, base: UInt64
        do {
            process = try m.core.createProcess()
            base = try process.mmap(length: 16 * 4096, permissions: [.read, .write])
            handle = try m.core.svaBind(rig.victim, to: process)
        } catch {
            result.fail("SVA bind on the fuzz machine failed: \(error)")
            return
        }
        let sva = handle.pasid
        func pasid() -> PASID? {
            switch input.u8() & 3 {
            case 0: return nil
            case 1: return sva
            case 2: return rig.victimPASID
            default: return PASID(truncating: input.u32())
            }
        }
        func address() -> UInt64 {
            input.bool() ? base + UInt64(input.below(20)) << 12 : rig.victimAddress(&input)
        }
        var ops = 0
        while !input.isEmpty && ops < 48 {
            ops += 1
            switch input.u8() % 4 {
            case 0, 1:
                let bits = input.u8()
                ep.sendRawPageRequest(PageRequestDescriptor(
                    requester: ep.requesterID, pasid: pasid(), read: bits & 1 != 0, write: bits & 2 != 0,
                    execute: bits & 4 != 0, privileged: bits & 8 != 0, lastInGroup: bits & 16 != 0,
                    groupIndex: input.u16(), address: address(), privateData: bits & 32 != 0 ? input.u64() : 0))
                if input.bool() { rig.settle(UInt64(input.u8()) * 50) }
            case 2:
                ep.atsAccess(pasid: input.bool() ? sva : pasid(), address: address(), length: input.below(3 * 4096), write: input.bool()) { _ in }
                rig.settle(UInt64(input.u16()) * 10)
            default:
                rig.settle(UInt64(input.u16()) * 100)
            }
        }
        rig.settle(5_000_000)
        do {
            try m.core.svaUnbind(handle)
            rig.settle(1_000_000)
            try process.exit()
        } catch { result.fail("SVA unbind after the garbage failed: \(error)") }
        // Still serving faults: once the PASID is unbound (its page requests drained, its
        // partial groups dropped), a new process bound to the device gets a page it touches
        // faulted in through the queue, whatever the device sent before.
        ep.resetATS()
        do {
            let next = try m.core.createProcess()
            let va = try next.mmap(length: 4096, permissions: [.read, .write])
            let h = try m.core.svaBind(rig.victim, to: next)
            ep.startPASID(h.pasid)
            var outcome: ATSAccessResult?
            ep.atsAccess(pasid: h.pasid, address: va, length: 64, write: true) { outcome = $0 }
            let deadline = m.scheduler.now + 50_000_000
            while outcome == nil && m.scheduler.runNext(notAfter: deadline) {}
            if outcome?.outcome != .completed {
                result.fail("after the garbage, a page request of a newly bound process was not served: \(String(describing: outcome))")
            }
            try m.core.svaUnbind(h)
            rig.settle(1_000_000)
            try next.exit()
        } catch { result.fail("binding a new process after the garbage failed: \(error)") }
    }
}
