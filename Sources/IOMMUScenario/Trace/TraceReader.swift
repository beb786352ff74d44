/// What the ftrace header says about the trace (all optional: a file may have no header).
public struct TraceHeader: Hashable, Sendable {
    /// `# tracer: nop`.
    public var tracer: String?
    /// `# entries-in-buffer/entries-written: 88793/88793   #P:1`.
    public var entriesInBuffer: UInt64?
    public var entriesWritten: UInt64?
    /// `#P:N`: the number of CPUs.
    public var cpuCount: Int?

    public init() {}

    /// Events the ring buffer overwrote before the trace was read (written - in buffer).
    public var overwrittenEvents: UInt64 {
        guard let written = entriesWritten, let kept = entriesInBuffer, written > kept else { return 0 }
        return written - kept
    }

    /// Reads what it recognises from one `#` comment line (text after the `#`).
    mutating func absorb(comment: String) {
        let text = comment.drop(while: { $0 == " " })
        if text.hasPrefix("tracer: ") {
            tracer = String(text.dropFirst("tracer: ".count))
        } else if text.hasPrefix("entries-in-buffer/entries-written: ") {
            let rest = text.dropFirst("entries-in-buffer/entries-written: ".count)
            let fields = rest.split(separator: " ", omittingEmptySubsequences: true)
            if let counts = fields.first {
                let parts = counts.split(separator: "/")
                if parts.count == 2 {
                    entriesInBuffer = UInt64(parts[0])
                    entriesWritten = UInt64(parts[1])
                }
            }
            if let cpus = fields.first(where: { $0.hasPrefix("#P:") }) { cpuCount = Int(cpus.dropFirst(3)) }
        }
    }
}

/// Streams an ftrace text file line by line, in chunks (never the whole file in memory), and
/// decodes each line.
///
/// Input may be a plain file, standard input (`nil` or `"-"`), or xz-compressed (by the `.xz`
/// extension or by the magic bytes, also on standard input). Every failure is a
/// `TraceInputError` naming the file and line.
public final class TraceReader {
    /// The name errors use: the path, or `<stdin>`.
    public let displayName: String
    /// The 1-based number of the last line returned (0 before the first).
    public private(set) var lineNumber = 0
    /// What the `#` header said, filled in as the header lines go by.
    public private(set) var header = TraceHeader()
    /// Decompressed bytes consumed so far.
    public private(set) var bytesRead: UInt64 = 0
    /// True when the input was xz-compressed.
    public let isCompressed: Bool

    private let source: any TraceByteSource
    private var buffer: UnsafeMutableRawBufferPointer
    /// Unconsumed bytes are `buffer[start..<end]`.
    private var start = 0
    private var end = 0
    private var atEOF = false
    private var sawAnyByte = false
    /// Where the last returned line is in `buffer` (valid until the next read).
    private var lastLineStart = 0
    private var lastLineCount = 0

    /// The longest line accepted; a longer one is reported as bad input.
    public static let maximumLineLength = 16 << 20

    /// Opens `path` (`nil` or `"-"` for standard input).
    public init(path: String?) throws(TraceInputError) {
        let isStdin = path == nil || path == "-"
        let name = isStdin ? "<stdin>" : path!
        displayName = name
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        let fd: Int32
        if isStdin {
            fd = 0
        } else {
            fd = open(path!, O_RDONLY)
            guard fd >= 0 else {
                let reason = String(cString: strerror(errno))
                buffer.deallocate()
                throw TraceInputError(file: name, line: 0, message: "cannot open: \(reason)")
            }
        }
        // Sniff the first bytes for a compression magic.
        var prefix: [UInt8] = []
        while prefix.count < 6 {
            var chunk = [UInt8](repeating: 0, count: 6 - prefix.count)
            let count = chunk.withUnsafeMutableBytes { bytes in systemRead(fd, bytes.baseAddress, bytes.count) }
            if count < 0 {
                if errno == EINTR { continue }
                let reason = String(cString: strerror(errno))
                if !isStdin { _ = close(fd) }
                buffer.deallocate()
                throw TraceInputError(file: name, line: 0, message: "cannot read: \(reason)")
            }
            if count == 0 { break }
            prefix += chunk[0..<count]
        }
        let looksXZ = prefix.starts(with: xzMagic) || (!isStdin && name.hasSuffix(".xz"))
        if prefix.starts(with: gzipMagic) {
            if !isStdin { _ = close(fd) }
            buffer.deallocate()
            throw TraceInputError(
                file: name, line: 1, message: "gzip-compressed input is not supported (decompress it, or compress with xz)")
        }
        do throws(SourceError) {
            if looksXZ {
                if isStdin {
                    source = try XZProcessSource(path: nil, inputFD: 0, prefix: prefix)
                } else {
                    _ = close(fd)
                    source = try XZProcessSource(path: path!)
                }
                isCompressed = true
            } else {
                source = FileDescriptorSource(fd: fd, closesOnDeinit: !isStdin, prefix: prefix)
                isCompressed = false
            }
        } catch {
            buffer.deallocate()
            throw TraceInputError(file: name, line: 0, message: error.message)
        }
    }

    /// Reads from bytes in memory (tests); `name` is what errors call the file.
    public init(bytes: [UInt8], name: String) {
        displayName = name
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)
        source = MemorySource(bytes)
        isCompressed = false
    }

    deinit { buffer.deallocate() }

    // MARK: - Records

    /// The next decoded line, or `nil` at the end of the input.
    ///
    /// Header comments update `header` and are returned as `.comment`.
    public func nextRecord() throws(TraceInputError) -> TraceRecord? {
        guard let line = try nextLine() else {
            if !sawAnyByte {
                throw TraceInputError(
                    file: displayName, line: 1,
                    message: "empty input: expected ftrace text output ('# tracer: …' header and event lines)")
            }
            return nil
        }
        do throws(TraceParseError) {
            let record = try TraceLineParser.parse(line)
            if case .comment(let text) = record { header.absorb(comment: text) }
            return record
        } catch {
            if TraceReader.looksBinary(line) {
                throw TraceInputError(
                    file: displayName, line: lineNumber,
                    message: "binary data, not ftrace text output (expected 'TASK-PID [CPU] FLAGS TIMESTAMP: EVENT: BODY')")
            }
            throw TraceInputError(file: displayName, line: lineNumber, message: error.message)
        }
    }

    /// The next event, skipping header comments, blank lines and lost-event notes.
    public func nextEvent() throws(TraceInputError) -> TraceEvent? {
        while let record = try nextRecord() {
            if case .event(let event) = record { return event }
        }
        return nil
    }

    /// The text of the line last returned by `nextRecord()`/`nextEvent()` (for reports and
    /// round-trip tests; not needed on the hot path).
    public var lastLineText: String {
        String(decoding: UnsafeRawBufferPointer(rebasing: buffer[lastLineStart..<(lastLineStart + lastLineCount)]), as: UTF8.self)
    }

    static func looksBinary(_ line: UnsafeBufferPointer<UInt8>) -> Bool {
        for byte in line where (byte < 0x20 && byte != UInt8(ascii: "\t")) || byte == 0x7f { return true }
        return String(validating: line, as: UTF8.self) == nil
    }

    // MARK: - Lines

    /// The next line without its `\n` (and `\r`), valid until the next call; `nil` at the end.
    func nextLine() throws(TraceInputError) -> UnsafeBufferPointer<UInt8>? {
        var scanFrom = start
        while true {
            if scanFrom < end,
                let found = memchr(buffer.baseAddress! + scanFrom, Int32(UInt8(ascii: "\n")), end - scanFrom)
            {
                let newline = buffer.baseAddress!.distance(to: found)
                return takeLine(upTo: newline, consumed: newline + 1)
            }
            if atEOF {
                guard end > start else { return nil }
                return takeLine(upTo: end, consumed: end)
            }
            // No newline in what is buffered: read more (fill() may move the data to the front
            // of the buffer, so remember how much of it was already scanned).
            let scanned = end - start
            try fill()
            scanFrom = start + scanned
        }
    }

    private func takeLine(upTo stop: Int, consumed: Int) -> UnsafeBufferPointer<UInt8> {
        var last = stop
        if last > start, buffer[last - 1] == UInt8(ascii: "\r") { last -= 1 }
        lastLineStart = start
        lastLineCount = last - start
        let bytes = UnsafeBufferPointer(
            start: buffer.baseAddress!.assumingMemoryBound(to: UInt8.self) + start, count: last - start)
        start = consumed
        lineNumber += 1
        return bytes
    }

    /// Reads another chunk, moving the partial line to the front (or growing the buffer for a
    /// very long line).
    private func fill() throws(TraceInputError) {
        let pending = end - start
        if start > 0 {
            if pending > 0 { buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: pending) }
            start = 0
            end = pending
        }
        if end == buffer.count {
            guard buffer.count < TraceReader.maximumLineLength else {
                throw TraceInputError(
                    file: displayName, line: lineNumber + 1,
                    message: "line longer than \(TraceReader.maximumLineLength >> 20) MiB (not ftrace text output?)")
            }
            let larger = UnsafeMutableRawBufferPointer.allocate(byteCount: buffer.count * 2, alignment: 16)
            larger.baseAddress!.copyMemory(from: buffer.baseAddress!, byteCount: end)
            buffer.deallocate()
            buffer = larger
        }
        do throws(SourceError) {
            let count = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[end...]))
            if count == 0 {
                atEOF = true
                try source.finish()
            } else {
                sawAnyByte = true
                end += count
                bytesRead += UInt64(count)
            }
        } catch {
            throw TraceInputError(file: displayName, line: lineNumber + 1, message: error.message)
        }
    }
}

#if canImport(Glibc)
import Glibc
private let systemRead = Glibc.read
#elseif canImport(Darwin)
import Darwin
private let systemRead = Darwin.read
#endif
