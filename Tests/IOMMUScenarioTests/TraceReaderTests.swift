import Foundation
import IOMMUBase
import IOMMUScenario
import IOMMUTestSupport
import Testing

@Suite struct TraceReaderTests {
    func readAll(_ reader: TraceReader) throws(TraceInputError) -> Int {
        var events = 0
        while try reader.nextEvent() != nil { events += 1 }
        return events
    }

    func error(reading bytes: [UInt8], name: String = "bad.trace") -> TraceInputError? {
        let reader = TraceReader(bytes: bytes, name: name)
        do throws(TraceInputError) {
            _ = try readAll(reader)
            return nil
        } catch {
            return error
        }
    }

    @Test func sampleTraceStreamsEveryLineAndEachRendersBackExactly() throws {
        let reader = try TraceReader(path: TraceTestFiles.sampleTracePath)
        #expect(reader.isCompressed)
        var events = 0
        var mismatches: [String] = []
        while let record = try reader.nextRecord() {
            guard case .event(let event) = record else { continue }
            events += 1
            if event.renderedLine != reader.lastLineText, mismatches.count < 5 {
                mismatches.append("\(reader.lineNumber): \(reader.lastLineText)")
            }
        }
        #expect(events == 88_793)
        #expect(reader.lineNumber == 88_805)
        #expect(mismatches.isEmpty)
        #expect(reader.header.tracer == "nop")
        #expect(reader.header.entriesInBuffer == 88_793 && reader.header.entriesWritten == 88_793)
        #expect(reader.header.cpuCount == 1)
    }

    @Test func xzIsRecognisedByMagicBytesWithoutTheExtension() throws {
        let bytes = try Array(Data(contentsOf: URL(fileURLWithPath: TraceTestFiles.sampleTracePath)))
        let path = try TraceTestFiles.temporaryFile("renamed.trace", bytes)
        let reader = try TraceReader(path: path)
        #expect(reader.isCompressed)
        var events = 0
        while try reader.nextEvent() != nil { events += 1 }
        #expect(events == 88_793)
    }

    @Test func truncatedXZIsBadInputWithALine() throws {
        let bytes = try Array(Data(contentsOf: URL(fileURLWithPath: TraceTestFiles.sampleTracePath)))
        let path = try TraceTestFiles.temporaryFile("cut.trace.xz", Array(bytes.prefix(bytes.count / 2)))
        let reader = try TraceReader(path: path)
        #expect(throws: TraceInputError.self) { _ = try readAll(reader) }
        do throws(TraceInputError) {
            _ = try readAll(try TraceReader(path: path))
        } catch {
            #expect(error.file == path)
            #expect(error.line > 1)
            #expect(error.message.contains("xz") || error.message.contains("expected"))
        }
    }

    @Test func missingFileIsBadInputAtLineZero() {
        do throws(TraceInputError) {
            _ = try TraceReader(path: "/nonexistent/nothing.trace")
            Issue.record("opened a missing file")
        } catch {
            #expect(error.description == "/nonexistent/nothing.trace:0: cannot open: No such file or directory")
        }
    }

    @Test func emptyInputIsBadInput() {
        let error = error(reading: [])
        #expect(error?.line == 1)
        #expect(error?.message.hasPrefix("empty input") == true)
    }

    @Test func binaryGarbageIsBadInput() {
        var generator = SplitMix64(seed: 7)
        let garbage = (0..<4096).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        let error = error(reading: garbage)
        #expect(error?.line == 1)
        #expect(error?.message.hasPrefix("binary data") == true)
    }

    @Test func malformedLineIsReportedWithItsLineNumber() {
        var trace = TraceBuilder()
        trace.add(TraceBuilder.map(0x1000, 0x5000, 4096))
        trace.add("map: IOMMU: iova=0x0000000000001000 - 0x0000000000002000 paddr=0x0000000000005000 size=40x6")
        let error = error(reading: Array(trace.text.utf8))
        #expect(error?.line == trace.lastLine)
        #expect(error?.message == "map: expected end of line, found 'x6'")
        #expect(error?.description.hasPrefix("bad.trace:\(trace.lastLine): map: expected") == true)
    }

    @Test func truncatedLastLineIsBadInput() {
        var trace = TraceBuilder()
        trace.add(TraceBuilder.map(0x1000, 0x5000, 4096))
        var text = trace.text
        text += "              dd-220     [000] .....    11.5732"
        let error = error(reading: Array(text.utf8))
        #expect(error?.line == trace.lastLine + 1)
        #expect(error?.message.contains("expected") == true)
    }

    @Test func longLinesAcrossChunkBoundariesAreWhole() throws {
        // Lines spanning the 64 KiB in-memory buffer, and one longer than it.
        var trace = TraceBuilder()
        for index in 0..<3000 { trace.add("tracing_mark_write: PHASE \(index) " + String(repeating: "x", count: index % 97)) }
        trace.add("tracing_mark_write: " + String(repeating: "y", count: 200_000))
        let reader = TraceReader(bytes: Array(trace.text.utf8), name: "long.trace")
        var index = 0
        while let event = try reader.nextEvent() {
            if index < 3000 {
                #expect(event.body == .tracingMarkWrite(text: "PHASE \(index) " + String(repeating: "x", count: index % 97)))
            } else {
                #expect(event.body.renderedBody.count == 200_000)
            }
            index += 1
        }
        #expect(index == 3001)
    }

    @Test func crlfLineEndingsAreAccepted() throws {
        var trace = TraceBuilder()
        trace.add(TraceBuilder.attach("0000:00:03.0"))
        let reader = TraceReader(bytes: Array(trace.text.replacingOccurrences(of: "\n", with: "\r\n").utf8), name: "crlf.trace")
        #expect(try readAll(reader) == 1)
    }
}
