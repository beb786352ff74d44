import ArgumentParser
import IOMMUKit
import Testing
@testable import IOMMUCLI

@Suite("iommu iova replay / iommu bench iova")
struct IOVACommandTests {
    @Test func replayCommandParsesItsOptions() throws {
        let command = try IOMMUCommand.parseAsRoot(["iova", "replay", "seq.txt", "--mode", "tree-32-then-48", "--json"])
        let replay = try #require(command as? IOVAReplayCommand)
        #expect(replay.file == "seq.txt" && replay.mode == .tree32Then48 && replay.json && replay.policy == .linuxCompatible)
        #expect(throws: (any Error).self) { try IOMMUCommand.parseAsRoot(["iova", "replay", "x", "--mode", "fast"]) }
    }

    @Test func malformedLinesNameTheLineAndWhatWasExpected() {
        #expect(throws: IOVASequence.ParseError(line: 2, message: "expected `alloc SIZE -> PFN` with decimal SIZE >= 1 and PFN")) {
            try IOVASequence(parsing: "alloc 1 -> 5\nalloc x -> 3\n")
        }
        #expect(throws: IOVASequence.ParseError(line: 3, message: "expected `free PFN SIZE` with decimal PFN and SIZE >= 1")) {
            try IOVASequence(parsing: "# comment\n\nfree 12\n")
        }
        #expect(throws: IOVASequence.ParseError(line: 1, message: "expected `alloc SIZE -> PFN` or `free PFN SIZE`, found `map`")) {
            try IOVASequence(parsing: "map 1 2\n")
        }
    }

    @Test func replayReportsMismatches() throws {
        // Linux gives 0xFFFFC (1048572) for the first 3-page aligned allocation; 7 is wrong.
        let sequence = try IOVASequence(parsing: "alloc 3 -> 1048572\nalloc 1 -> 7\nfree 1048572 3\n")
        let domain = try IOVADomain(startPFN: 1, policy: .linuxCompatible)
        var steps: [IOVASequence.Step] = []
        sequence.replay(on: domain, mode: .tree) { steps.append($0) }
        #expect(steps.map(\.matches) == [true, false, true])
        #expect(steps[1].actualPFN == 0xFFFFB)
    }

    @Test func benchCommandParsesAndKnowsEveryWorkload() throws {
        let command = try IOMMUCommand.parseAsRoot(["bench", "iova", "--scale", "0.01", "--policy", "checking", "--workload", "W3rand48"])
        let bench = try #require(command as? IOVABenchCommand)
        #expect(bench.policy == .checking && bench.scale == 0.01)
        #expect(IOVABenchCommand.workload(named: "W3rand48") == .w3Rand48)
        #expect(IOVABenchCommand.workload(named: "w3-fifo") == .w3Fifo)
        #expect(IOVABenchCommand.workload(named: "W1b") == .w1b)
        #expect(IOVABenchCommand.workload(named: "W9") == nil)
        #expect(throws: (any Error).self) { try IOMMUCommand.parseAsRoot(["bench", "iova", "--workload", "W9"]) }
        #expect(throws: (any Error).self) { try IOMMUCommand.parseAsRoot(["bench", "iova", "--scale", "0"]) }
    }

    @Test(arguments: IOVAWorkload.allCases)
    func everyWorkloadRunsAtATinyScale(workload: IOVAWorkload) throws {
        let result = try runIOVAWorkload(workload, policy: .checking, scale: 0.0005)
        #expect(result.nsPerPair > 0)
        #expect((result.singleThreadNsPerPair != nil) == (workload == .w4))
    }
}
