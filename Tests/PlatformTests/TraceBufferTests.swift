import Testing
@testable import Platform

@Suite("TraceBuffer")
struct TraceBufferTests {
    @Test("a disabled buffer records nothing and does not evaluate the event")
    func disabledRecordsNothing() {
        let t = TraceBuffer()
        #expect(!t.enabled)
        var evaluated = false
        func make() -> TraceEvent { evaluated = true; return TraceEvent(time: 1, kind: .custom, track: 0) }
        t.record(make())
        #expect(t.events.isEmpty)
        #expect(t.dropped == 0)
        #expect(!evaluated)
    }

    @Test("an enabled buffer records events in order with their fields")
    func enabledRecords() {
        let t = TraceBuffer(enabled: true)
        let dev = t.track(named: "dev0")
        t.record(TraceEvent(time: 5, kind: .dmaRead, track: dev, a: 0x1000, b: 0x2000, c: 64))
        t.record(TraceEvent(time: 7, kind: .dmaFault, track: dev, a: 0x3000, b: 0x71))
        #expect(t.events.count == 2)
        #expect(t.events[0] == TraceEvent(time: 5, kind: .dmaRead, track: dev, a: 0x1000, b: 0x2000, c: 64))
        #expect(t.events[1].kind == .dmaFault)
        #expect(t.events[1].c == 0)
    }

    @Test("toggling enabled starts and stops recording")
    func toggle() {
        let t = TraceBuffer()
        t.record(TraceEvent(time: 1, kind: .custom, track: 0))
        t.enabled = true
        t.record(TraceEvent(time: 2, kind: .custom, track: 0))
        t.enabled = false
        t.record(TraceEvent(time: 3, kind: .custom, track: 0))
        #expect(t.events.map(\.time) == [2])
    }

    @Test("events past capacity are counted as dropped and not stored")
    func capacityOverflow() {
        let t = TraceBuffer(enabled: true, capacity: 3)
        for i in 0..<10 { t.record(TraceEvent(time: UInt64(i), kind: .custom, track: 0)) }
        #expect(t.events.count == 3)
        #expect(t.events.map(\.time) == [0, 1, 2])
        #expect(t.dropped == 7)
        t.clear()
        #expect(t.events.isEmpty)
        #expect(t.dropped == 0)
        t.record(TraceEvent(time: 99, kind: .custom, track: 0))
        #expect(t.events.map(\.time) == [99])
    }

    @Test("track(named:) is idempotent and gives distinct ids to distinct names")
    func trackIdempotent() {
        let t = TraceBuffer()
        let a = t.track(named: "iommu0")
        let b = t.track(named: "dev 00:01.0")
        #expect(a != b)
        #expect(t.track(named: "iommu0") == a)
        #expect(t.track(named: "dev 00:01.0") == b)
        #expect(t.trackNames == ["iommu0", "dev 00:01.0"])
        #expect(t.trackNames[Int(a)] == "iommu0")
    }
}
