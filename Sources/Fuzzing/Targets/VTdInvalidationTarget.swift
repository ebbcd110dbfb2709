import Formats
import Hardware
import Kernel

/// Invalidation descriptors with garbage fields and types submitted to a VT-d unit's queue
/// (VT-d §6.5.2) under live traffic: the unit executes them or stops with IQE/ITE, the driver
/// recovers as `qi_check_fault` does, and afterwards the queue still completes a wait, the
/// other device's translations are intact, and nothing leaked.
enum VTdInvalidationTarget {
    final class Rig: HoldsFuzzRig {
        let rig: FuzzRig
        /// A frame where a garbage wait descriptor's status write may land.
        let scratch: UInt64
        init() throws {
            rig = try FuzzRig(.vtd)
            scratch = try rig.machine.allocateBuffer()
            rig.takeBaseline()
        }
    }

    static func run(_ input: inout FuzzInput, _ result: inout FuzzResult) {
        RigPool.with(Rig.self, &result) { r, result in
            descriptors(r, &input, &result)
        }
    }

    /// One garbage descriptor: mostly a known type with garbage fields.
    static func descriptor(_ r: Rig, _ input: inout FuzzInput) -> RawDescriptor {
        var q0 = input.word(), q1 = input.word()
        let q2 = input.bool() ? input.word() : 0, q3 = input.bool() ? input.word() : 0
        if input.u8() & 7 != 0 {
            q0 = (q0 & ~0xE0F) | UInt64(1 + input.below(9))
        }
        let type = UInt8(q0 & 0xF) | UInt8((q0 >> 9) & 7) << 4
        if type == InvalidationDescriptor.waitType {
            // A status write lands in the scratch frame (a garbage address writes anywhere).
            q1 = r.scratch + (q1 & 0xFFC)
        }
        if type == InvalidationDescriptor.pageGroupResponseType || type == InvalidationDescriptor.deviceTLBType
            || type == InvalidationDescriptor.pasidDeviceTLBType {
            // Device-TLB invalidations may reach the victim (more invalidation is harmless);
            // page group responses go to a function with no device behind it: one crafted for
            // a live device's PASID is a software bug the oracle rightly reports
            // (`page-response-crossed-pasid`), not garbage the unit must survive.
            let rid = UInt16(truncatingIfNeeded: q0 >> 16)
            if rid == r.rig.bystanderEndpoint.requesterID.rawValue
                || (type == InvalidationDescriptor.pageGroupResponseType && rid == r.rig.victimEndpoint.requesterID.rawValue) {
                let to: UInt16 = type == InvalidationDescriptor.pageGroupResponseType ? 0x3000 : r.rig.victimEndpoint.requesterID.rawValue
                q0 = (q0 & ~0xFFFF_0000) | UInt64(to) << 16
            }
        }
        return RawDescriptor(q0, q1, q2, q3)
    }

    static func descriptors(_ r: Rig, _ input: inout FuzzInput, _ result: inout FuzzResult) {
        guard let driver = r.rig.machine.vtdDriver else { return }
        var ops = 0
        while !input.isEmpty && ops < 32 {
            ops += 1
            switch input.u8() % 4 {
            case 0, 1:
                let batch = (0..<(1 + input.below(4))).map { _ in descriptor(r, &input) }
                // EIO (a refused descriptor) and ETIMEDOUT are the driver's answers to garbage.
                _ = try? driver.submitRawInvalidations(batch, unit: 0)
            case 2: r.rig.victimAccess(&input)
            default: r.rig.settle(UInt64(input.u16()) * 100)
            }
        }
        // The queue still works: a well-formed wait completes.
        do { try driver.submitRawInvalidations([InvalidationDescriptor.wait(InvalidationWait(statusWrite: false, fence: true)).encode()], unit: 0) } catch {
            result.fail("after the garbage, the invalidation queue no longer completes a wait: \(error)")
        }
    }
}
