import Foundation
import Platform
import Formats

/// Renders a trace buffer as Chrome trace-event JSON (opens in Perfetto and
/// chrome://tracing). Virtual time is the time axis (µs with ns precision). Processes group
/// the tracks: devices (DMA requests and faults), IOMMU units (invalidation queue, fault
/// records, counters) and software (steps as spans).
public enum ChromeTrace {
    static let devicesPID = 1, unitsPID = 2, softwarePID = 3

    public static func render(_ t: TraceBuffer, scenario: String, seed: UInt64, unitNames: Set<String>, softwareTracks: Set<String> = ["software"]) -> Data {
        var out = "{\"displayTimeUnit\":\"ns\",\"otherData\":{\"scenario\":\(quote(scenario)),\"seed\":\(seed),\"droppedEvents\":\(t.dropped)},\"traceEvents\":[\n"
        var first = true
        func emit(_ s: String) {
            if !first { out += ",\n" }
            first = false
            out += s
        }
        func pid(_ track: UInt32) -> Int {
            let name = Int(track) < t.trackNames.count ? t.trackNames[Int(track)] : ""
            if softwareTracks.contains(name) { return softwarePID }
            if unitNames.contains(name) { return unitsPID }
            return devicesPID
        }
        emit("{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":\(devicesPID),\"args\":{\"name\":\"devices\"}}")
        emit("{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":\(unitsPID),\"args\":{\"name\":\"IOMMU units\"}}")
        emit("{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":\(softwarePID),\"args\":{\"name\":\"software\"}}")
        for (i, name) in t.trackNames.enumerated() {
            emit("{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":\(pid(UInt32(i))),\"tid\":\(i),\"args\":{\"name\":\(quote(name))}}")
        }
        func label(_ id: UInt64) -> String { Int(id) < t.labels.count ? t.labels[Int(id)] : "label \(id)" }
        for e in t.events {
            let p = pid(e.track)
            let head = "\"pid\":\(p),\"tid\":\(e.track)"
            switch e.kind {
            case .dmaRead, .dmaWrite:
                emit("{\"name\":\"\(e.kind == .dmaRead ? "DMA read" : "DMA write")\",\"cat\":\"dma\",\"ph\":\"i\",\"s\":\"t\",\"ts\":\(us(e.time)),\(head),\"args\":{\"address\":\"\(hex(e.a))\",\"bytes\":\(e.b),\"requested\":\(e.c)}}")
            case .dmaFault:
                emit("{\"name\":\"DMA fault\",\"cat\":\"fault\",\"ph\":\"i\",\"s\":\"t\",\"ts\":\(us(e.time)),\(head),\"args\":{\"iova\":\"\(hex(e.a))\",\"reason\":\(e.b)\(e.c == .max ? "" : ",\"pasid\":\(e.c)")}}")
            case .faultRecorded, .faultDropped:
                emit("{\"name\":\"\(e.kind == .faultRecorded ? "fault recorded" : "fault lost (overflow)")\",\"cat\":\"fault\",\"ph\":\"i\",\"s\":\"t\",\"ts\":\(us(e.time)),\(head),\"args\":{\"reason\":\(e.a),\"address\":\"\(hex(e.b))\",\"source\":\(e.c)}}")
            case .descriptorCompleted, .descriptorDropped:
                let name = descriptorName(UInt8(truncatingIfNeeded: e.a))
                emit("{\"name\":\"\(e.kind == .descriptorCompleted ? "" : "dropped ")\(name)\",\"cat\":\"invalidation\",\"ph\":\"i\",\"s\":\"t\",\"ts\":\(us(e.time)),\(head),\"args\":{\"qw0\":\"\(hex(e.b))\",\"index\":\(e.c)}}")
            case .invalidationQueueError:
                emit("{\"name\":\"invalidation queue error\",\"cat\":\"invalidation\",\"ph\":\"i\",\"s\":\"t\",\"ts\":\(us(e.time)),\(head),\"args\":{\"code\":\(e.a),\"head\":\(e.b)}}")
            case .registerWrite:
                emit("{\"name\":\"register write\",\"cat\":\"register\",\"ph\":\"i\",\"s\":\"t\",\"ts\":\(us(e.time)),\(head),\"args\":{\"offset\":\"\(hex(e.a))\",\"value\":\"\(hex(e.b))\"}}")
            case .interrupt:
                emit("{\"name\":\"interrupt\",\"cat\":\"interrupt\",\"ph\":\"i\",\"s\":\"t\",\"ts\":\(us(e.time)),\(head),\"args\":{\"kind\":\(e.a)}}")
            case .yieldPoint:
                emit("{\"name\":\"yield\",\"cat\":\"software\",\"ph\":\"i\",\"s\":\"t\",\"ts\":\(us(e.time)),\(head),\"args\":{\"site\":\(e.a)}}")
            case .span:
                let dur = e.c >= e.b ? e.c - e.b : 0
                emit("{\"name\":\(quote(label(e.a))),\"cat\":\"software\",\"ph\":\"X\",\"ts\":\(us(e.b)),\"dur\":\(us(dur)),\(head)}")
            case .counter:
                let owner = Int(e.track) < t.trackNames.count ? t.trackNames[Int(e.track)] : "track \(e.track)"
                emit("{\"name\":\(quote("\(owner) \(label(e.a))")),\"cat\":\"counter\",\"ph\":\"C\",\"ts\":\(us(e.time)),\"pid\":\(p),\"tid\":\(e.track),\"args\":{\"value\":\(Double(e.b) / 1000)}}")
            case .pageRequest:
                let stop = e.b & (1 << 10) != 0
                emit("{\"name\":\"\(stop ? "stop marker" : "page request")\",\"cat\":\"iopf\",\"ph\":\"i\",\"s\":\"t\",\"ts\":\(us(e.time)),\(head),\"args\":{\"address\":\"\(hex(e.a))\",\"group\":\(e.b & 0x1FF),\"last\":\(e.b & (1 << 9) != 0)\(e.c == .max ? "" : ",\"pasid\":\(e.c)")}}")
            case .pageResponse:
                emit("{\"name\":\"page response\",\"cat\":\"iopf\",\"ph\":\"i\",\"s\":\"t\",\"ts\":\(us(e.time)),\(head),\"args\":{\"group\":\(e.a),\"code\":\(e.b)\(e.c == .max ? "" : ",\"pasid\":\(e.c)")}}")
            case .commandCompleted:
                let op = SMMUCommandOpcode(rawValue: UInt8(truncatingIfNeeded: e.a)).map { "CMD \($0)" } ?? "command \(hex(e.a))"
                emit("{\"name\":\"\(op)\",\"cat\":\"invalidation\",\"ph\":\"i\",\"s\":\"t\",\"ts\":\(us(e.time)),\(head),\"args\":{\"cons\":\(e.b)}}")
            case .custom:
                emit("{\"name\":\"event\",\"ph\":\"i\",\"s\":\"t\",\"ts\":\(us(e.time)),\(head),\"args\":{\"a\":\(e.a),\"b\":\(e.b),\"c\":\(e.c)}}")
            }
        }
        out += "\n]}\n"
        return Data(out.utf8)
    }

    static func us(_ ns: UInt64) -> String {
        let whole = ns / 1000, frac = ns % 1000
        if frac == 0 { return String(whole) }
        var f = String(frac)
        while f.count < 3 { f = "0" + f }
        while f.hasSuffix("0") { f.removeLast() }
        return "\(whole).\(f)"
    }

    static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    static func descriptorName(_ type: UInt8) -> String {
        switch type {
        case InvalidationDescriptor.contextCacheType: return "context-cache inv"
        case InvalidationDescriptor.iotlbType: return "IOTLB inv"
        case InvalidationDescriptor.deviceTLBType: return "device-TLB inv"
        case InvalidationDescriptor.pasidIOTLBType: return "PASID-IOTLB inv"
        case InvalidationDescriptor.pasidCacheType: return "PASID-cache inv"
        case InvalidationDescriptor.pasidDeviceTLBType: return "PASID device-TLB inv"
        case InvalidationDescriptor.waitType: return "wait"
        default: return "descriptor \(type)"
        }
    }

    static func quote(_ s: String) -> String { JSONText.quote(s) }
}
