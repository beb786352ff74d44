import Foundation
import IOMMUCLI
import IOMMUTestSupport
import IOMMUScenario
import Testing

private let sampleTrace = TestSupport.fixturesDirectory() + "/traces/vtd-strict-smp1.trace.xz"

/// Writes `text` to a fresh temporary file; returns its path.
private func temporaryTrace(_ name: String, _ bytes: [UInt8]) throws -> String {
    let directory = FileManager.default.temporaryDirectory
        .appendingPathComponent("iommukit-replay-tests-\(getpid())-\(UInt64.random(in: 0...UInt64.max))")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let url = directory.appendingPathComponent(name)
    try Data(bytes).write(to: url)
    return url.path
}

private let header = "# tracer: nop\n#\n"
private let goodLine = "            init-1       [000] .....     3.099678: add_device_to_group: IOMMU: groupID=0 device=0000:00:00.0\n"

@Suite struct ReplayCommandTests {
    @Test func sampleTraceJSONHasExactCountsAndNoViolations() throws {
        let result = ReplayCommandRunner.run([sampleTrace, "--json"])
        #expect(result.exitCode == 0)
        #expect(result.stderr == "")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(Set(object.keys) == ["events", "violations"])
        let events = try #require(object["events"] as? [String: Int])
        #expect(events.values.reduce(0, +) == 88_793)
        #expect(events["map"] == 30_528 && events["unmap"] == 19_304 && events["io_page_fault"] == 0)
        #expect(events["dma_map_page"] == 18_503 && events["dma_unmap_page"] == 18_262)
        #expect(events["tracing_mark_write"] == 76)
        #expect((object["violations"] as? [Any])?.isEmpty == true)
        // Exactly one object, on one line.
        #expect(result.stdout.hasPrefix("{\"events\":{\"add_device_to_group\":10,"))
        #expect(result.stdout.filter { $0 == "\n" }.count == 1)
    }

    @Test func dmaFlagReplaysTheDMACallsThroughTheDMALayer() throws {
        let result = ReplayCommandRunner.run([sampleTrace, "--json", "--dma"])
        #expect(result.exitCode == 0)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(Set(object.keys) == ["events", "violations", "dma"])
        let dma = try #require(object["dma"] as? [String: Int])
        #expect(Set(dma.keys) == ["calls", "iovaMatches"])
        #expect(dma["calls"] == 18_503 + 1_025 + 28)
        // 32-bit-first, top-down placement in a fresh strict domain: most calls get the kernel's IOVA.
        #expect(dma["iovaMatches"] == 18_671)
        #expect(result.stdout.hasSuffix(",\"dma\":{\"calls\":19556,\"iovaMatches\":18671}}\n"))
        let replay = try DMAReplay()
        let reader = try TraceReader(path: sampleTrace)
        while let record = try reader.nextRecord() { if case .event(let e) = record { replay.observe(e) } }
        #expect(replay.failures == 0)
        #expect(replay.byCall["dma_map_page"]! == (18_503, 17_929))
        #expect(replay.byCall["dma_map_sg"]! == (1_025, 720))
        #expect(replay.byCall["dma_alloc"]! == (28, 22))
        #expect(replay.calls == 19_556 && replay.iovaMatches == 18_671)
        let human = ReplayCommandRunner.run([sampleTrace, "--dma"])
        #expect(human.stdout.hasSuffix("DMA layer: 19556 calls replayed (dma_map_page, dma_map_sg, dma_alloc), 18671 at the kernel's IOVA\n"))
    }

    @Test func sampleTraceSummaryNamesGroupsDomainsAndNoViolations() {
        let result = ReplayCommandRunner.run([sampleTrace])
        #expect(result.exitCode == 0)
        #expect(result.stdout.contains("88,793 events"))
        #expect(result.stdout.contains("group 2#2"))
        #expect(result.stdout.contains("g6:d1"))
        #expect(result.stdout.hasSuffix("Violations: none\n"))
    }

    @Test func sampleTraceSummaryMatchesTheGoldenFile() throws {
        let result = ReplayCommandRunner.run([sampleTrace])
        let golden = try TestSupport.fixture("golden/replay-vtd-strict-smp1.txt")
        // The first line names the file by its (machine-specific) path.
        let lines = result.stdout.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false)
        #expect(lines.first?.hasPrefix("Trace ") == true)
        #expect(lines.first?.hasSuffix("vtd-strict-smp1.trace.xz (xz): 88,805 lines, 88,793 events, 1 CPU, tracer nop") == true)
        #expect(String(lines.last ?? "") == golden)
    }

    @Test func violationsExitWithStatusOneAndListLines() throws {
        let text = header
            + "              dd-220     [000] .....    11.564840: map: IOMMU: iova=0x00000000fffdf000 - 0x00000000fffe0000 paddr=0x00000000070d6000 size=4096\n"
        let path = try temporaryTrace("orphan.trace", Array(text.utf8))
        let result = ReplayCommandRunner.run([path, "--json"])
        #expect(result.exitCode == 1)
        #expect(result.stdout.hasPrefix("{\"events\":{"))
        #expect(result.stdout.contains("\"violations\":[{\"line\":3,\"what\":\"map iova=0xfffdf000 size=4096 is not followed by"))
        let human = ReplayCommandRunner.run([path])
        #expect(human.exitCode == 1)
        #expect(human.stdout.contains("Violations (1)\n  line 3: map iova=0xfffdf000"))
    }

    static let badInputs: [(name: String, bytes: [UInt8], line: Int, message: String)] = [
        ("truncated.trace", Array((header + goodLine + "            init-1       [000] .....     3.0996").utf8), 4, "expected"),
        ("badnumber.trace", Array((header + goodLine.replacingOccurrences(of: "groupID=0", with: "groupID=0x1")).utf8), 3,
            "add_device_to_group: expected ' device=', found 'x1 device"),
        ("format.trace", Array((header + "            init-1       [000] .....     3.216197: map: IOMMU: iova=0x1000 size=4096\n").utf8), 3,
            "map: expected 16 lower-case hex digits"),
        ("garbage.trace", [0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00] + Array(repeating: 0, count: 100), 1, "binary data"),
        ("empty.trace", [], 1, "empty input"),
    ]

    @Test(arguments: badInputs)
    func badInputExitsWithStatusTwoAndFileLineMessage(name: String, bytes: [UInt8], line: Int, message: String) throws {
        let path = try temporaryTrace(name, bytes)
        for arguments in [[path], [path, "--json"]] {
            let result = ReplayCommandRunner.run(arguments)
            #expect(result.exitCode == 2)
            #expect(result.stdout == "")
            #expect(result.stderr.hasPrefix("\(path):\(line): "))
            #expect(result.stderr.contains(message))
            #expect(result.stderr.filter { $0 == "\n" }.count == 1)
        }
    }

    @Test func missingFileExitsWithStatusTwo() {
        let result = ReplayCommandRunner.run(["/nonexistent/trace.txt"])
        #expect(result.exitCode == 2)
        #expect(result.stderr == "/nonexistent/trace.txt:0: cannot open: No such file or directory\n")
    }

    @Test func helpDescribesTheCommand() {
        let result = ReplayCommandRunner.run(["--help"])
        #expect(result.exitCode == 0)
        #expect(result.stderr.contains("Exit status: 0 when no invariant is violated"))
        #expect(result.stderr.contains("--json"))
    }
}

/// End-to-end runs of the built binary (skipped when it has not been built).
@Suite struct ReplayBinaryTests {
    static var binary: String? {
        // …/Tests/Fixtures → …/.build/debug/iommu
        var parts = TestSupport.fixturesDirectory().split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(2)
        let path = parts.joined(separator: "/") + "/.build/debug/iommu"
        return FileManager.default.isExecutableFile(atPath: path) ? path : nil
    }

    func run(_ arguments: [String], stdin: String? = nil) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ReplayBinaryTests.binary!)
        process.arguments = arguments
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        if let stdin {
            let input = Pipe()
            process.standardInput = input
            try process.run()
            try input.fileHandleForWriting.write(contentsOf: Data(stdin.utf8))
            try input.fileHandleForWriting.close()
        } else {
            try process.run()
        }
        let out = output.fileHandleForReading.readDataToEndOfFile()
        let err = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }

    @Test(.enabled(if: binary != nil))
    func compressedSampleFromStandardInput() throws {
        // `iommu replay - --json < sample.trace.xz`, through a shell so stdin is the file.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "exec \"$0\" replay - --json < \"$1\"", ReplayBinaryTests.binary!, sampleTrace]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        #expect(String(decoding: data, as: UTF8.self).hasSuffix("\"violations\":[]}\n"))
    }

    @Test(.enabled(if: binary != nil))
    func malformedStandardInputExitsTwo() throws {
        let result = try run(["replay"], stdin: "# tracer: nop\nnot a trace line\n")
        #expect(result.status == 2)
        #expect(result.stderr.hasPrefix("<stdin>:2: expected an event line"))
        #expect(!result.stderr.contains("Stack"))
    }
}
