import IOMMUBase
import IOMMUScenario
import Testing

/// Real lines from `vtd-strict-smp1.trace` (and, for events absent from it, lines in the kernel's
/// exact print format), one or more per event kind.
let realLines: [String] = [
    "            init-1       [000] .....     3.099678: add_device_to_group: IOMMU: groupID=0 device=0000:00:00.0",
    "            init-1       [000] .....    19.190896: remove_device_from_group: IOMMU: groupID=2 device=0000:00:04.0",
    "            init-1       [000] .....     3.137672: attach_device_to_domain: IOMMU: device=0000:00:00.0",
    "            init-1       [000] .....     3.216197: map: IOMMU: iova=0x0000000000000000 - 0x0000000001000000 paddr=0x0000000000000000 size=16777216",
    "          insmod-139     [000] .....     7.796476: map: IOMMU: iova=0x00000000ffffe000 - 0x0000000100000000 paddr=0x00000000177c2000 size=8192",
    "          insmod-139     [000] d.h1.     7.838582: unmap: IOMMU: iova=0x00000000ffffa000 - 0x00000000ffffb000 size=4096 unmapped_size=4096",
    "          insmod-139     [000] d..1.     7.835938: dma_map_page: 0000:00:03.0 dir=TO_DEVICE dma_addr=ffffd0f8 size=16 phys_addr=6c800f8 attrs=",
    "          insmod-139     [000] d.h1.     7.839488: dma_unmap_page: 0000:00:03.0 dir=TO_DEVICE dma_addr=ffffa3c0 size=48 attrs=",
    "              dd-220     [000] .....    11.573240: dma_map_sg: 0000:00:04.0 dir=FROM_DEVICE nents=2/2 ents=1/1 dma_addrs={0xfffdc000} sizes={0x2000} phys_addrs={0x705d000,0x70d8000} attrs=NO_WARN",
    "              dd-220     [000] d.h1.    11.573990: dma_unmap_sg: 0000:00:04.0 dir=FROM_DEVICE phys_addrs={0x705d000,0x70d8000} attrs=",
    "          insmod-139     [000] .....     7.797115: dma_alloc: 0000:00:03.0 dir=BIDIRECTIONAL dma_addr=ffffe000 size=6726 virt_addr=00000000fd088213 flags=GFP_KERNEL|__GFP_NOWARN|__GFP_ZERO attrs=NO_WARN",
    "        ifconfig-314     [000] .....    18.657193: dma_free: 0000:00:06.0 dir=BIDIRECTIONAL dma_addr=fffff000 size=4096 virt_addr=0000000038998cc2 attrs=",
    "            init-1       [000] .....    19.125780: dma_free: 0000:00:04.0 dir=BIDIRECTIONAL dma_addr=0 size=0 virt_addr=0000000000000000 attrs=",
    "            init-1       [000] .....     7.634636: tracing_mark_write: PHASE init-start",
    "    kworker/u4:0-12      [000] .....     7.244069: add_device_to_group: IOMMU: groupID=0 device=0000:00:03.0",
    // Not in the sample trace; built from the kernel's print formats.
    "            init-1       [000] .....     3.137672: detach_device_from_domain: IOMMU: device=0000:00:03.0",
    "          <idle>-0       [001] d.h1.     5.000001: io_page_fault: IOMMU:arm-smmu 0000:00:03.0 iova=0x00000000fffff000 flags=0x0002",
    "              dd-220     [000] .....    11.573240: dma_map_sg: 0000:00:04.0 dir=TO_DEVICE nents=128/130 ents=1/1 [TRUNCATED] dma_addrs={0xfffdc000} sizes={0x82000} phys_addrs={0x1000} attrs=SKIP_CPU_SYNC|NO_WARN",
    "              dd-220     [000] .....    11.573240: dma_unmap_sg: 0000:00:04.0 dir=NONE phys_addrs={} attrs=",
    "              dd-220     [000] .....    11.573240: sched_switch: prev_comm=dd prev_pid=220 prev_prio=120 prev_state=S ==> next_comm=swapper/0 next_pid=0 next_prio=120",
]

@Suite struct TraceLineParserTests {
    func event(_ line: String) throws -> TraceEvent {
        let record = try TraceLineParser.parse(line)
        guard case .event(let event) = record else {
            Issue.record("not an event: \(line)")
            throw TraceParseError(column: 0, message: "not an event")
        }
        return event
    }

    /// The text after `NAME: ` on a line.
    func body(of line: String) -> String {
        let afterTimestamp = line.split(separator: ": ", maxSplits: 2, omittingEmptySubsequences: false)
        return String(afterTimestamp[2])
    }

    @Test(arguments: realLines)
    func everyEventKindRendersBackToItsBody(line: String) throws {
        let event = try event(line)
        #expect(event.body.renderedBody == body(of: line))
        #expect(event.renderedLine == line)
    }

    @Test func everyTypedKindIsCoveredByTheRoundTripLines() throws {
        let kinds = Set(try realLines.map { try event($0).kind })
        #expect(kinds == Set(TraceEventKind.allCases))
    }

    @Test func headerColumnsAreDecoded() throws {
        let event = try event("    kworker/u4:0-12      [003] dNh2.    17.000042: map: IOMMU: iova=0x0000000000001000 - 0x0000000000002000 paddr=0x0000000000005000 size=4096")
        #expect(event.task == "kworker/u4:0")
        #expect(event.pid == 12)
        #expect(event.cpu == 3)
        #expect(event.flags.description == "dNh2.")
        #expect(event.flags.contextCharacter == UInt8(ascii: "h"))
        #expect(!event.flags.isProcessContext)
        #expect(event.timestamp.seconds == 17 && event.timestamp.fraction == 42)
        #expect(event.body == .map(MapEvent(iova: IOVA(0x1000), paddr: PhysAddr(0x5000), length: 4096)))
    }

    @Test func taskNamesWithSpacesDashesAndBracketsParse() throws {
        let event = try event(" my task-x [1]-4242    [000] .....     1.000000: tracing_mark_write: PHASE x")
        #expect(event.task == "my task-x [1]")
        #expect(event.pid == 4242)
        #expect(event.body == .tracingMarkWrite(text: "PHASE x"))
    }

    @Test func scatterGatherListsAndTruncationAreDecoded() throws {
        let event = try event(realLines[17])
        guard case .dmaMapSG(let sg) = event.body else {
            Issue.record("expected dma_map_sg")
            return
        }
        #expect(sg.truncated)
        #expect(sg.printedEntryCount == 128 && sg.entryCount == 130)
        #expect(sg.dmaAddresses == [0xfffdc000] && sg.segmentLengths == [0x82000] && sg.physAddresses == [0x1000])
        #expect(sg.attrs == "SKIP_CPU_SYNC|NO_WARN")
    }

    @Test func unknownEventsAreKeptWithTheirName() throws {
        let event = try event(realLines.last!)
        #expect(event.kind == .other)
        #expect(event.body.name == "sched_switch")
    }

    @Test func headerCommentsLostEventsAndBlankLines() throws {
        #expect(try TraceLineParser.parse("# tracer: nop") == .comment(" tracer: nop"))
        #expect(try TraceLineParser.parse("CPU:1 [LOST 4096 EVENTS]") == .lostEvents(cpu: 1, count: 4096))
        #expect(try TraceLineParser.parse("   ") == .blank)
    }

    static let malformed: [(line: String, expected: String)] = [
        ("            init-1       [000] .....     3.216197: map: IOMMU: iova=0x0000000000000000 - 0x00000000010", "16 lower-case hex digits"),
        ("            init-1       [000] .....     3.216197: map: IOMMU: iova=0x0000000000000000 - 0x0000000001000000 paddr=0x0000000000000000 size=16x", "end of line"),
        ("            init-1       [000] .....     3.216197: map: IOMMU: iova=0x0000000000000000 - 0x0000000002000000 paddr=0x0000000000000000 size=16777216", "iova + size"),
        ("            init-1       [000] .....     3.216197: map: IOMMU: address=0x1000", "'IOMMU: iova=0x'"),
        ("          insmod-139     [000] d..1.     7.835938: dma_map_page: 0000:00:03.0 dir=SIDEWAYS dma_addr=ffffd0f8", "a direction"),
        ("          insmod-139     [000] d..1.     7.835938: dma_map_page: 0000:00:03.0 dir=TO_DEVICE dma_addr=FFFFD0F8 size=16", "a hex dma_addr"),
        ("          insmod-139     [000] d..1.     7.835938: dma_unmap_page: 0000:00:03.0 dir=TO_DEVICE dma_addr=ffffd0f8 size=99999999999999999999999 attrs=", "fits in 64 bits"),
        ("              dd-220     [000] .....    11.573240: dma_map_sg: 0000:00:04.0 dir=FROM_DEVICE nents=2/2 ents=1/1 dma_addrs={0xfffdc000 sizes={0x2000}", "',' or '}'"),
        ("            init-1       [000] .....     3.099678: add_device_to_group: IOMMU: groupID=zero device=0000:00:00.0", "a decimal groupID"),
        ("            init-1       [000] .....  ", "TIMESTAMP"),
        ("            init-1       [000]", "'] '"),
        ("            init-1       [000] ", "FLAGS"),
        ("just some text", "an event line"),
    ]

    @Test(arguments: malformed)
    func malformedLinesSayWhatWasExpected(line: String, expected: String) {
        #expect {
            try TraceLineParser.parse(line)
        } throws: { error in
            guard let error = error as? TraceParseError else { return false }
            return error.message.contains(expected)
                && (error.message.hasPrefix("expected") || error.message.contains(": expected"))
        }
    }
}

/// Regressions found by fuzz/FuzzTraceLine (inputs also in fuzz/corpus/FuzzTraceLine).
@Suite("Trace line parser fuzz regressions")
struct TraceLineParserFuzzRegressionTests {
    @Test func nonASCIIFlagsAreRejectedNotMisrendered() throws {
        // fuzz: "d..\u{CF}\u{D1}\u{DF}\u{DF}" parsed, but rendered back as different UTF-8 bytes.
        var bytes = Array("          insmod-139     [000] d..".utf8)
        bytes += [0xCF, 0xD1, 0xDF, 0xDF]
        bytes += Array("     7.835938: dma_map_page: 0000:00:03.0 dir=TO_DEVICE dma_addr=ffffd0f8 size=16 phys_addr=6c800f8 attrs=".utf8)
        let result: Result<TraceRecord, TraceParseError> = bytes.withUnsafeBufferPointer { line in
            do throws(TraceParseError) { return .success(try TraceLineParser.parse(line)) } catch { return .failure(error) }
        }
        guard case .failure(let error) = result else {
            Issue.record("non-ASCII flags were accepted: \(result)")
            return
        }
        #expect(error.message.contains("FLAGS"))
        // Printable ASCII flags still round-trip.
        let line = "          insmod-139     [000] d.h1.     7.838582: unmap: IOMMU: iova=0x00000000ffffa000 - 0x00000000ffffb000 size=4096 unmapped_size=4096"
        guard case .event(let event) = try TraceLineParser.parse(line) else { Issue.record("not an event"); return }
        #expect(event.renderedLine == line)
    }
}
