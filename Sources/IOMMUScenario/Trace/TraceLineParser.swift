import IOMMUBase

/// One line of an ftrace text file, decoded.
public enum TraceRecord: Hashable, Sendable {
    /// An event line.
    case event(TraceEvent)
    /// A `#` header or comment line, without its `#` (e.g. ` tracer: nop`).
    case comment(String)
    /// `CPU:N [LOST M EVENTS]`: the ring buffer overwrote events on that CPU.
    case lostEvents(cpu: UInt32, count: UInt64)
    /// An empty (or all-blank) line.
    case blank
}

/// Why a line could not be parsed: the 1-based column and what was expected there.
public struct TraceParseError: Error, Hashable, Sendable, CustomStringConvertible {
    public var column: Int
    public var message: String
    /// Set once the CPU column is known to be right, so no other `[` is tried as the CPU column.
    var isFinal = false
    public init(column: Int, message: String) {
        self.column = column
        self.message = message
    }
    public var description: String { message }
}

/// Decodes one line of ftrace text, working on bytes (no Foundation, no `String` scanning).
///
/// Event lines are `TASK-PID [CPU] FLAGS TIMESTAMP: EVENT: BODY`; the task name may contain spaces
/// and dashes, so the line is anchored on the ` [CPU] ` column and the task/PID split at the last
/// dash before it. Bodies of known events are decoded strictly (exactly the kernel's format), so
/// that a typed event renders back to the same text; anything else is `.other`.
public enum TraceLineParser {
    /// Parses one line (without its newline).
    public static func parse(_ line: UnsafeBufferPointer<UInt8>) throws(TraceParseError) -> TraceRecord {
        var start = 0
        while start < line.count, line[start] == UInt8(ascii: " ") || line[start] == UInt8(ascii: "\t") { start += 1 }
        if start == line.count { return .blank }
        if line[start] == UInt8(ascii: "#") {
            return .comment(String(decoding: UnsafeBufferPointer(rebasing: line[(start + 1)...]), as: UTF8.self))
        }
        if let lost = try parseLost(line, from: start) { return lost }
        return .event(try parseEvent(line))
    }

    /// Parses one line given as text (tests, small inputs).
    public static func parse(_ line: String) throws(TraceParseError) -> TraceRecord {
        var text = line
        let result: Result<TraceRecord, TraceParseError> = text.withUTF8 { bytes in
            do throws(TraceParseError) { return .success(try parse(bytes)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    // MARK: - Lines other than events

    /// `CPU:%d [LOST %lu EVENTS]`.
    static func parseLost(_ line: UnsafeBufferPointer<UInt8>, from start: Int) throws(TraceParseError) -> TraceRecord? {
        var cursor = ByteCursor(line, at: start)
        guard cursor.skip("CPU:") else { return nil }
        let cpu = try cursor.decimal(what: "a CPU number after 'CPU:'")
        try cursor.expect(" [LOST ")
        let count = try cursor.decimal(what: "the lost-event count")
        try cursor.expect(" EVENTS]")
        try cursor.expectEnd()
        return .lostEvents(cpu: UInt32(truncatingIfNeeded: cpu), count: count)
    }

    // MARK: - Event lines

    static func parseEvent(_ line: UnsafeBufferPointer<UInt8>) throws(TraceParseError) -> TraceEvent {
        // Try every " [digits] " as the CPU column, left to right; a task name containing such a
        // pattern is skipped because the rest of the header must also parse after it.
        var firstError: TraceParseError?
        var index = 1
        while index < line.count {
            if line[index] == UInt8(ascii: "["), line[index - 1] == UInt8(ascii: " ") {
                do throws(TraceParseError) {
                    return try parseEvent(line, cpuBracket: index)
                } catch {
                    if error.isFinal { throw error }
                    if firstError == nil { firstError = error }
                }
            }
            index += 1
        }
        throw firstError
            ?? TraceParseError(
                column: 1,
                message: "expected an event line 'TASK-PID [CPU] FLAGS TIMESTAMP: EVENT: BODY', found "
                    + ByteCursor(line, at: 0).snippet)
    }

    static func parseEvent(_ line: UnsafeBufferPointer<UInt8>, cpuBracket: Int) throws(TraceParseError) -> TraceEvent {
        // TASK-PID, right before " [".
        var end = cpuBracket - 1
        while end > 0, line[end - 1] == UInt8(ascii: " ") { end -= 1 }
        // Optional "(TGID)" column (the record-tgid option).
        if end > 0, line[end - 1] == UInt8(ascii: ")") {
            var open = end - 1
            while open > 0, line[open] != UInt8(ascii: "(") { open -= 1 }
            if line[open] == UInt8(ascii: "(") {
                end = open
                while end > 0, line[end - 1] == UInt8(ascii: " ") { end -= 1 }
            }
        }
        var dash = end - 1
        while dash >= 0, line[dash] != UInt8(ascii: "-") { dash -= 1 }
        guard dash >= 0, dash + 1 < end else {
            throw TraceParseError(column: 1, message: "expected 'TASK-PID' before the '[CPU]' column")
        }
        var pidCursor = ByteCursor(line, at: dash + 1)
        pidCursor.end = end
        let pid = try pidCursor.decimal(what: "a PID after the last '-' of 'TASK-PID'")
        guard pidCursor.atEnd, pid <= UInt64(Int32.max) else {
            throw TraceParseError(column: dash + 2, message: "expected a PID after the last '-' of 'TASK-PID'")
        }
        var taskStart = 0
        while taskStart < dash, line[taskStart] == UInt8(ascii: " ") { taskStart += 1 }
        let task = String(decoding: UnsafeBufferPointer(rebasing: line[taskStart..<dash]), as: UTF8.self)

        // [CPU] FLAGS TIMESTAMP:
        var cursor = ByteCursor(line, at: cpuBracket + 1)
        let cpu = try cursor.decimal(what: "a CPU number in '[CPU]'", allowLeadingZeros: true)
        try cursor.expect("] ")
        let flagsStart = cursor.index
        var packed: UInt64 = 0
        while !cursor.atEnd, cursor.peek != UInt8(ascii: " ") {
            guard cursor.index - flagsStart < 8 else { break }
            // The kernel prints flags as printable ASCII; anything else could not render back.
            guard cursor.peek > 0x20 && cursor.peek < 0x7F else {
                throw cursor.error("the FLAGS column (like 'd.h1.', printable ASCII) followed by a space")
            }
            packed |= UInt64(cursor.peek) << UInt64(8 * (cursor.index - flagsStart))
            cursor.index += 1
        }
        let flagsCount = cursor.index - flagsStart
        guard flagsCount > 0, !cursor.atEnd, cursor.peek == UInt8(ascii: " ") else {
            throw cursor.error("the FLAGS column (like 'd.h1.') followed by a space")
        }
        while !cursor.atEnd, cursor.peek == UInt8(ascii: " ") { cursor.index += 1 }
        let seconds = try cursor.decimal(what: "a TIMESTAMP like '3.099678'", allowLeadingZeros: true)
        try cursor.expect(".")
        let fractionStart = cursor.index
        let fraction = try cursor.decimal(what: "the fraction of the TIMESTAMP", allowLeadingZeros: true)
        let fractionDigits = cursor.index - fractionStart
        guard fractionDigits <= 9 else { throw cursor.error("at most 9 digits after the TIMESTAMP's point") }
        try cursor.expect(": ")

        // EVENT:
        let nameStart = cursor.index
        while !cursor.atEnd, isNameByte(cursor.peek) { cursor.index += 1 }
        guard cursor.index > nameStart, !cursor.atEnd, cursor.peek == UInt8(ascii: ":") else {
            throw cursor.error("an EVENT name followed by ':'")
        }
        let name = UnsafeBufferPointer(rebasing: line[nameStart..<cursor.index])
        cursor.index += 1
        if !cursor.atEnd {
            guard cursor.peek == UInt8(ascii: " ") else { throw cursor.error("a space after the EVENT name's ':'") }
            cursor.index += 1
        }
        let timestamp = TraceTimestamp(
            seconds: seconds, fraction: UInt32(truncatingIfNeeded: fraction), fractionDigits: UInt8(fractionDigits))
        let body: TraceEventBody
        do throws(TraceParseError) {
            body = try parseBody(name: name, cursor: &cursor)
        } catch {
            // Marks body errors as final (the CPU column was right; the body is wrong).
            let eventName = String(decoding: name, as: UTF8.self)
            var located = TraceParseError(column: error.column, message: "\(eventName): \(error.message)")
            located.isFinal = true
            throw located
        }
        return TraceEvent(
            task: task, pid: Int32(pid), cpu: UInt32(truncatingIfNeeded: cpu),
            flags: TraceFlags(packed: packed, count: UInt8(flagsCount)), timestamp: timestamp, body: body)
    }

    @inline(__always)
    static func isNameByte(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
            || byte == UInt8(ascii: "_") || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
    }

    // MARK: - Bodies

    static func parseBody(name: UnsafeBufferPointer<UInt8>, cursor: inout ByteCursor) throws(TraceParseError) -> TraceEventBody {
        switch kind(named: name) {
        case .map:
            try cursor.expect("IOMMU: iova=0x")
            let iova = try cursor.hex16()
            try cursor.expect(" - 0x")
            let endColumn = cursor.index
            let end = try cursor.hex16()
            try cursor.expect(" paddr=0x")
            let paddr = try cursor.hex16()
            try cursor.expect(" size=")
            let length = try cursor.decimal(what: "a decimal size")
            try cursor.expectEnd()
            guard end == iova &+ length else {
                throw TraceParseError(column: endColumn + 1, message: "expected the end address to be iova + size")
            }
            return .map(MapEvent(iova: IOVA(iova), paddr: PhysAddr(paddr), length: length))
        case .unmap:
            try cursor.expect("IOMMU: iova=0x")
            let iova = try cursor.hex16()
            try cursor.expect(" - 0x")
            let endColumn = cursor.index
            let end = try cursor.hex16()
            try cursor.expect(" size=")
            let length = try cursor.decimal(what: "a decimal size")
            try cursor.expect(" unmapped_size=")
            let unmapped = try cursor.decimal(what: "a decimal unmapped_size")
            try cursor.expectEnd()
            guard end == iova &+ length else {
                throw TraceParseError(column: endColumn + 1, message: "expected the end address to be iova + size")
            }
            return .unmap(UnmapEvent(iova: IOVA(iova), length: length, unmappedLength: unmapped))
        case .dmaMapPage:
            let device = try cursor.device()
            let direction = try cursor.direction()
            try cursor.expect(" dma_addr=")
            let dma = try cursor.hex(what: "a hex dma_addr")
            try cursor.expect(" size=")
            let length = try cursor.decimal(what: "a decimal size")
            try cursor.expect(" phys_addr=")
            let phys = try cursor.hex(what: "a hex phys_addr")
            try cursor.expect(" attrs=")
            let attrs = cursor.restString()
            return .dmaMapPage(DMAMapPageEvent(
                device: device, direction: direction, dmaAddress: IOVA(dma), length: length,
                physAddress: PhysAddr(phys), attrs: attrs))
        case .dmaUnmapPage:
            let device = try cursor.device()
            let direction = try cursor.direction()
            try cursor.expect(" dma_addr=")
            let dma = try cursor.hex(what: "a hex dma_addr")
            try cursor.expect(" size=")
            let length = try cursor.decimal(what: "a decimal size")
            try cursor.expect(" attrs=")
            let attrs = cursor.restString()
            return .dmaUnmapPage(DMAUnmapPageEvent(
                device: device, direction: direction, dmaAddress: IOVA(dma), length: length, attrs: attrs))
        case .dmaMapSG:
            let device = try cursor.device()
            let direction = try cursor.direction()
            try cursor.expect(" nents=")
            let printedEntries = try cursor.int32(what: "a decimal nents count")
            try cursor.expect("/")
            let entries = try cursor.int32(what: "a decimal nents total")
            try cursor.expect(" ents=")
            let printedSegments = try cursor.int32(what: "a decimal ents count")
            try cursor.expect("/")
            let segments = try cursor.int32(what: "a decimal ents total")
            let truncated = cursor.skip(" [TRUNCATED]")
            try cursor.expect(" dma_addrs=")
            let dmaAddresses = try cursor.array()
            try cursor.expect(" sizes=")
            let lengths = try cursor.array()
            try cursor.expect(" phys_addrs=")
            let physAddresses = try cursor.array()
            try cursor.expect(" attrs=")
            let attrs = cursor.restString()
            return .dmaMapSG(DMAMapSGEvent(
                device: device, direction: direction, printedEntryCount: printedEntries, entryCount: entries,
                printedSegmentCount: printedSegments, segmentCount: segments, truncated: truncated,
                dmaAddresses: dmaAddresses, segmentLengths: lengths, physAddresses: physAddresses, attrs: attrs))
        case .dmaUnmapSG:
            let device = try cursor.device()
            let direction = try cursor.direction()
            try cursor.expect(" phys_addrs=")
            let physAddresses = try cursor.array()
            try cursor.expect(" attrs=")
            let attrs = cursor.restString()
            return .dmaUnmapSG(DMAUnmapSGEvent(device: device, direction: direction, physAddresses: physAddresses, attrs: attrs))
        case .dmaAlloc:
            let device = try cursor.device()
            let direction = try cursor.direction()
            try cursor.expect(" dma_addr=")
            let dma = try cursor.hex(what: "a hex dma_addr")
            try cursor.expect(" size=")
            let length = try cursor.decimal(what: "a decimal size")
            try cursor.expect(" virt_addr=")
            let virt = try cursor.word(what: "a virt_addr pointer")
            try cursor.expect(" flags=")
            let flags = try cursor.word(what: "GFP flags (or 'none')")
            try cursor.expect(" attrs=")
            let attrs = cursor.restString()
            return .dmaAlloc(DMAAllocEvent(
                device: device, direction: direction, dmaAddress: IOVA(dma), length: length, virtAddress: virt,
                gfpFlags: flags, attrs: attrs))
        case .dmaFree:
            let device = try cursor.device()
            let direction = try cursor.direction()
            try cursor.expect(" dma_addr=")
            let dma = try cursor.hex(what: "a hex dma_addr")
            try cursor.expect(" size=")
            let length = try cursor.decimal(what: "a decimal size")
            try cursor.expect(" virt_addr=")
            let virt = try cursor.word(what: "a virt_addr pointer")
            try cursor.expect(" attrs=")
            let attrs = cursor.restString()
            return .dmaFree(DMAFreeEvent(
                device: device, direction: direction, dmaAddress: IOVA(dma), length: length, virtAddress: virt,
                attrs: attrs))
        case .addDeviceToGroup, .removeDeviceFromGroup:
            try cursor.expect("IOMMU: groupID=")
            let negative = cursor.skip("-")
            let magnitude = try cursor.int32(what: "a decimal groupID")
            try cursor.expect(" device=")
            let device = try cursor.restWord(what: "a device name")
            let event = GroupEvent(groupID: negative ? -magnitude : magnitude, device: device)
            return kind(named: name) == .addDeviceToGroup ? .addDeviceToGroup(event) : .removeDeviceFromGroup(event)
        case .attachDeviceToDomain, .detachDeviceFromDomain:
            try cursor.expect("IOMMU: device=")
            let device = try cursor.restWord(what: "a device name")
            let event = DeviceEvent(device: device)
            return kind(named: name) == .attachDeviceToDomain ? .attachDeviceToDomain(event) : .detachDeviceFromDomain(event)
        case .ioPageFault:
            try cursor.expect("IOMMU:")
            let driver = try cursor.word(what: "a driver name")
            try cursor.expect(" ")
            let device = try cursor.word(what: "a device name")
            try cursor.expect(" iova=0x")
            let iova = try cursor.hex16()
            try cursor.expect(" flags=0x")
            let flags = try cursor.hex(what: "hex flags", minimumDigits: 4)
            try cursor.expectEnd()
            guard flags <= UInt64(UInt32.max) else { throw cursor.error("flags that fit in 32 bits") }
            return .ioPageFault(IOPageFaultEvent(driver: driver, device: device, iova: IOVA(iova), flags: UInt32(flags)))
        case .tracingMarkWrite:
            return .tracingMarkWrite(text: cursor.restString())
        case .other:
            return .other(name: String(decoding: name, as: UTF8.self), body: cursor.restString())
        }
    }

    /// The kind for an event name (`.other` when unknown).
    static func kind(named name: UnsafeBufferPointer<UInt8>) -> TraceEventKind {
        @inline(__always) func equals(_ literal: StaticString) -> Bool {
            literal.utf8CodeUnitCount == name.count
                && memcmp(literal.utf8Start, name.baseAddress!, name.count) == 0
        }
        switch name.count {
        case 3: return equals("map") ? .map : .other
        case 5: return equals("unmap") ? .unmap : .other
        case 8: return equals("dma_free") ? .dmaFree : .other
        case 9: return equals("dma_alloc") ? .dmaAlloc : .other
        case 10: return equals("dma_map_sg") ? .dmaMapSG : .other
        case 12:
            if equals("dma_map_page") { return .dmaMapPage }
            if equals("dma_unmap_sg") { return .dmaUnmapSG }
            return .other
        case 13: return equals("io_page_fault") ? .ioPageFault : .other
        case 14: return equals("dma_unmap_page") ? .dmaUnmapPage : .other
        case 18: return equals("tracing_mark_write") ? .tracingMarkWrite : .other
        case 19: return equals("add_device_to_group") ? .addDeviceToGroup : .other
        case 23: return equals("attach_device_to_domain") ? .attachDeviceToDomain : .other
        case 24: return equals("remove_device_from_group") ? .removeDeviceFromGroup : .other
        case 25: return equals("detach_device_from_domain") ? .detachDeviceFromDomain : .other
        default: return .other
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
