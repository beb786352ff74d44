import IOMMUBase
import IOMMUCore
import IOMMUScenario
import Testing

/// The core emits `IOMMUTraceEvent`s; the replay parses ftrace lines into `TraceEventBody`. One
/// type, one renderer: every event the core can emit, printed as ftrace prints it, parses back to
/// the same event, and the parsed body renders through the core's text.
@Suite("Core trace events through the trace parser")
struct CoreTraceEventTests {
    static let events: [IOMMUTraceEvent] = [
        .addDeviceToGroup(groupID: 7, device: "0000:00:03.0"),
        .removeDeviceFromGroup(groupID: 0, device: "nvme0"),
        .attachDeviceToDomain(device: "0000:00:03.0"),
        .detachDeviceFromDomain(device: "fd100000.dart-dev"),
        .map(iova: 0xFFFF_F000, paddr: 0x1_2345_6000, size: 0x1000),
        .map(iova: .max - 0xFFF, paddr: 0, size: 0x2000),   // the printed end wraps, as in C
        .unmap(iova: 0xFFFF_E000, size: 0x2000, unmappedSize: 0x1000),
        .ioPageFault(driver: "arm-smmu", device: "0000:00:03.0", iova: 0xDEAD_0000, flags: 1),
        .ioPageFault(driver: "apple-dart", device: "isp", iova: 0, flags: -1),
    ]

    @Test(arguments: events)
    func emittedLineParsesBackToTheSameEvent(_ emitted: IOMMUTraceEvent) throws {
        let line = "          <idle>-0       [001] d.h1.  1234.567890: " + emitted.ftraceText
        guard case .event(let parsed) = try TraceLineParser.parse(line) else {
            Issue.record("not an event: \(line)")
            return
        }
        #expect(parsed.body == TraceEventBody(emitted))
        #expect(parsed.body.iommuEvent == emitted)
        #expect(parsed.body.renderedBody == emitted.text)
        #expect(parsed.renderedLine == line)
    }

    @Test func eventsOfOtherSystemsHaveNoCoreValue() {
        #expect(TraceEventBody.tracingMarkWrite(text: "PHASE 1").iommuEvent == nil)
        #expect(TraceEventBody.other(name: "sched_switch", body: "x").iommuEvent == nil)
    }
}
