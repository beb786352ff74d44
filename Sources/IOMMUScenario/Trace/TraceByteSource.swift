import Foundation

/// Where a trace's bytes come from: a file, standard input, memory, or an `xz` decompressor.
///
/// Called once per chunk (not per line), so the existential costs nothing measurable.
protocol TraceByteSource: AnyObject {
    /// Reads up to `buffer.count` bytes; 0 at the end.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(SourceError) -> Int
    /// Called at the end of the data: reports a decompressor failure (truncated or corrupt data).
    func finish() throws(SourceError)
}

/// A source failure, placed at a line by the reader.
struct SourceError: Error {
    var message: String
}

/// The xz container's magic bytes: FD 37 7A 58 5A 00.
let xzMagic: [UInt8] = [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]
/// gzip's magic bytes.
let gzipMagic: [UInt8] = [0x1F, 0x8B]

// MARK: - File descriptors

/// Reads a file descriptor with `read(2)`, after handing out an already-read `prefix`.
final class FileDescriptorSource: TraceByteSource {
    let fd: Int32
    let closesOnDeinit: Bool
    var prefix: [UInt8]

    init(fd: Int32, closesOnDeinit: Bool, prefix: [UInt8] = []) {
        self.fd = fd
        self.closesOnDeinit = closesOnDeinit
        self.prefix = prefix
    }

    deinit { if closesOnDeinit { _ = close(fd) } }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(SourceError) -> Int {
        if !prefix.isEmpty {
            let count = min(prefix.count, buffer.count)
            prefix.withUnsafeBytes { bytes in buffer.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: count) }
            prefix.removeFirst(count)
            return count
        }
        while true {
            let count = systemRead(fd, buffer.baseAddress, buffer.count)
            if count >= 0 { return count }
            if errno == EINTR { continue }
            throw SourceError(message: "cannot read: " + String(cString: strerror(errno)))
        }
    }

    func finish() throws(SourceError) {}
}

/// Bytes in memory (tests).
final class MemorySource: TraceByteSource {
    let bytes: [UInt8]
    var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(SourceError) -> Int {
        let count = min(bytes.count - offset, buffer.count)
        if count > 0 {
            bytes.withUnsafeBytes { all in
                buffer.baseAddress!.copyMemory(from: all.baseAddress! + offset, byteCount: count)
            }
        }
        offset += count
        return count
    }

    func finish() throws(SourceError) {}
}

// MARK: - xz

/// Decompresses with the `xz` program (`xz -dc`), reading its standard output through a pipe.
///
/// A subprocess rather than linking liblzma: the package then builds on any machine with a Swift
/// toolchain (no `lzma.h`/pkg-config needed), decompression runs on another core in parallel
/// with parsing, and a machine without `xz` gets a clear error only when it reads `.xz` input.
final class XZProcessSource: TraceByteSource {
    let process: Process
    let output: Pipe
    let errors: Pipe
    let outputFD: Int32

    /// Starts `xz -dc -- path`, or `xz -dc` fed from `inputFD` (standard input) after `prefix`.
    init(path: String?, inputFD: Int32 = 0, prefix: [UInt8] = []) throws(SourceError) {
        guard let xz = XZProcessSource.findXZ() else {
            throw SourceError(
                message: "cannot decompress .xz input: the 'xz' program was not found on PATH "
                    + "(install xz-utils, or decompress the file first)")
        }
        process = Process()
        process.executableURL = URL(fileURLWithPath: xz)
        output = Pipe()
        errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        var feeder: Pipe?
        if let path {
            process.arguments = ["-dc", "--", path]
            process.standardInput = FileHandle.nullDevice
        } else {
            process.arguments = ["-dc"]
            let input = Pipe()
            process.standardInput = input
            feeder = input
        }
        outputFD = output.fileHandleForReading.fileDescriptor
        #if os(Linux)
        // A 1 MiB pipe (default 64 KiB) lets xz run ahead of the parser with fewer switches.
        _ = fcntl(outputFD, 1031 /* F_SETPIPE_SZ */, Int32(1 << 20))
        #endif
        do {
            try process.run()
        } catch {
            throw SourceError(message: "cannot start \(xz): \(error.localizedDescription)")
        }
        if let feeder {
            // Standard input was already partly read (to sniff the magic bytes): a thread writes
            // that prefix, then copies the rest of standard input, into xz's input pipe.
            // A write to the pipe after xz exited must fail with EPIPE, not kill the process.
            _ = signal(SIGPIPE, SIG_IGN)
            let writeFD = feeder.fileHandleForWriting.fileDescriptor
            let writer = dup(writeFD)
            try? feeder.fileHandleForWriting.close()
            let thread = Thread {
                XZProcessSource.feed(from: inputFD, prefix: prefix, to: writer)
                _ = close(writer)
            }
            thread.start()
        }
    }

    /// Copies `prefix` and then everything from `source` to `destination`.
    private static func feed(from source: Int32, prefix: [UInt8], to destination: Int32) {
        func writeAll(_ pointer: UnsafeRawPointer, _ count: Int) -> Bool {
            var done = 0
            while done < count {
                let written = systemWrite(destination, pointer + done, count - done)
                if written < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                done += written
            }
            return true
        }
        let ok = prefix.withUnsafeBytes { bytes in bytes.isEmpty || writeAll(bytes.baseAddress!, bytes.count) }
        guard ok else { return }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let count = systemRead(source, buffer, 1 << 16)
            if count < 0, errno == EINTR { continue }
            if count <= 0 || !writeAll(buffer, count) { return }
        }
    }

    static func findXZ() -> String? {
        var directories: [String] = []
        if let path = getenv("PATH") {
            directories = String(cString: path).split(separator: ":").map(String.init)
        }
        directories += ["/usr/bin", "/bin", "/usr/local/bin", "/opt/homebrew/bin"]
        for directory in directories where !directory.isEmpty {
            let candidate = directory + "/xz"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    deinit {
        if process.isRunning { process.terminate() }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(SourceError) -> Int {
        while true {
            let count = systemRead(outputFD, buffer.baseAddress, buffer.count)
            if count >= 0 { return count }
            if errno == EINTR { continue }
            throw SourceError(message: "cannot read from xz: " + String(cString: strerror(errno)))
        }
    }

    func finish() throws(SourceError) {
        process.waitUntilExit()
        guard process.terminationStatus != 0 else { return }
        let data = (try? errors.fileHandleForReading.readToEnd()) ?? nil
        var text = data.map { String(decoding: $0, as: UTF8.self) } ?? ""
        if let newline = text.firstIndex(of: "\n") { text = String(text[..<newline]) }
        // "xz: path: Unexpected end of input" → "Unexpected end of input".
        if let range = text.range(of: ": ", options: .backwards) { text = String(text[range.upperBound...]) }
        if text.isEmpty { text = "exit status \(process.terminationStatus)" }
        throw SourceError(message: "corrupt or truncated xz data (xz: \(text))")
    }
}

#if canImport(Glibc)
import Glibc
private let systemRead = Glibc.read
private let systemWrite = Glibc.write
#elseif canImport(Darwin)
import Darwin
private let systemRead = Darwin.read
private let systemWrite = Darwin.write
#endif
