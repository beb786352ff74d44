import IOMMUBase
import IOVAAllocator
import Testing

/// The fixtures recorded from Linux's allocator, located relative to this file.
func fixtureText(_ name: String) throws -> String {
    let here = #filePath
    let dir = here.split(separator: "/").dropLast(2).joined(separator: "/")
    return try readTextFile("/" + dir + "/Fixtures/iova-sequences/" + name)
}

@Suite("Replays of Linux's recorded sequences")
struct ReplayTests {
    static let cases: [(String, IOVASequence.Mode)] = [
        ("w3.txt", .tree32Then48), ("exhaust32.txt", .tree32Then48), ("rcache.txt", .dma),
    ]

    @Test(arguments: ["w3.txt", "exhaust32.txt", "rcache.txt"], IOVADomain.Policy.allCases)
    func replayHasZeroMismatches(file: String, policy: IOVADomain.Policy) throws {
        let mode = Self.cases.first { $0.0 == file }!.1
        let sequence = try IOVASequence(parsing: try fixtureText(file))
        #expect(sequence.operations.count == 10_000)
        let sink = RecordingWarningSink()
        let domain = try IOVADomain(granule: .size4K, startPFN: 1, policy: policy, warningSink: sink)
        var mismatches: [String] = []
        sequence.replay(on: domain, mode: mode) { step in
            if !step.matches, mismatches.count < 5 { mismatches.append("line \(step.line): \(step.operation) got \(step.actualPFN)") }
        }
        #expect(mismatches == [])
        #expect(sink.totalCount == 0, "first warnings: \(sink.warnings.prefix(3))")
        #expect(domain.checkInvariants() == nil)
    }
}
