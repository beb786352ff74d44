/// A forward reader over one line's bytes, with the few scanners the kernel's print formats need.
///
/// Every scanner accepts exactly what the kernel prints (lower-case hex, no leading zeros where
/// `%llx`/`%zu` print none), so that what parses renders back identically.
struct ByteCursor {
    let bytes: UnsafeBufferPointer<UInt8>
    var index: Int
    var end: Int

    init(_ bytes: UnsafeBufferPointer<UInt8>, at index: Int) {
        self.bytes = bytes
        self.index = index
        self.end = bytes.count
    }

    @inline(__always) var atEnd: Bool { index >= end }
    @inline(__always) var peek: UInt8 { bytes[index] }

    // MARK: - Errors

    /// What is at the cursor, quoted and shortened, for an error message.
    var snippet: String {
        if atEnd { return "end of line" }
        let stop = min(end, index + 24)
        var text = "'"
        for byte in bytes[index..<stop] {
            if byte >= 0x20 && byte < 0x7f {
                text.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                text += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
            }
        }
        return text + (stop < end ? "…'" : "'")
    }

    func error(_ expected: String) -> TraceParseError {
        TraceParseError(column: index + 1, message: "expected \(expected), found \(snippet)")
    }

    // MARK: - Literals

    /// Consumes `literal` if it is next.
    @inline(__always)
    mutating func skip(_ literal: StaticString) -> Bool {
        let count = literal.utf8CodeUnitCount
        guard end - index >= count else { return false }
        let start = literal.utf8Start
        for offset in 0..<count where bytes[index + offset] != start[offset] { return false }
        index += count
        return true
    }

    @inline(__always)
    mutating func expect(_ literal: StaticString) throws(TraceParseError) {
        guard skip(literal) else {
            throw error("'" + literal.description + "'")
        }
    }

    mutating func expectEnd() throws(TraceParseError) {
        guard atEnd else { throw error("end of line") }
    }

    // MARK: - Numbers

    /// `%u`/`%zu`/`%d`: decimal digits, no leading zeros unless `allowLeadingZeros` (for the
    /// zero-padded `[CPU]` and timestamp columns).
    @inline(__always)
    mutating func decimal(what: String, allowLeadingZeros: Bool = false) throws(TraceParseError) -> UInt64 {
        let start = index
        var value: UInt64 = 0
        while index < end {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit < 10 else { break }
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(UInt64(digit))
            guard !overflow1, !overflow2 else {
                index = start
                throw error(what + " that fits in 64 bits")
            }
            value = sum
            index += 1
        }
        guard index > start else { throw error(what) }
        if !allowLeadingZeros, index - start > 1, bytes[start] == UInt8(ascii: "0") {
            index = start
            throw error(what + " without leading zeros")
        }
        return value
    }

    mutating func int32(what: String) throws(TraceParseError) -> Int32 {
        let start = index
        let value = try decimal(what: what)
        guard value <= UInt64(Int32.max) else {
            index = start
            throw error(what + " that fits in 32 bits")
        }
        return Int32(value)
    }

    @inline(__always)
    static func hexDigit(_ byte: UInt8) -> UInt64? {
        if byte &- UInt8(ascii: "0") < 10 { return UInt64(byte &- UInt8(ascii: "0")) }
        if byte &- UInt8(ascii: "a") < 6 { return UInt64(byte &- UInt8(ascii: "a") &+ 10) }
        return nil
    }

    /// `%016llx`: exactly 16 lower-case hex digits.
    @inline(__always)
    mutating func hex16() throws(TraceParseError) -> UInt64 {
        guard end - index >= 16 else { throw error("16 lower-case hex digits") }
        var value: UInt64 = 0
        for offset in 0..<16 {
            guard let digit = ByteCursor.hexDigit(bytes[index + offset]) else {
                throw error("16 lower-case hex digits")
            }
            value = value << 4 | digit
        }
        if index + 16 < end, ByteCursor.hexDigit(bytes[index + 16]) != nil {
            throw error("exactly 16 hex digits")
        }
        index += 16
        return value
    }

    /// `%llx` (or `%0Nx` with `minimumDigits`): 1–16 lower-case hex digits, zero-padded only up
    /// to `minimumDigits`.
    @inline(__always)
    mutating func hex(what: String, minimumDigits: Int = 1) throws(TraceParseError) -> UInt64 {
        let start = index
        var value: UInt64 = 0
        while index < end, let digit = ByteCursor.hexDigit(bytes[index]) {
            guard index - start < 16 else {
                index = start
                throw error(what + " of at most 16 digits")
            }
            value = value << 4 | digit
            index += 1
        }
        let count = index - start
        guard count >= minimumDigits else {
            index = start
            throw error(what)
        }
        if count > minimumDigits, bytes[start] == UInt8(ascii: "0") {
            index = start
            throw error(what + " without leading zeros")
        }
        return value
    }

    /// `__print_array`: `{0x1,0x2}` or `{}`.
    mutating func array() throws(TraceParseError) -> [UInt64] {
        try expect("{")
        var values: [UInt64] = []
        if skip("}") { return values }
        while true {
            try expect("0x")
            values.append(try hex(what: "a hex array element"))
            if skip("}") { return values }
            guard skip(",") else { throw error("',' or '}' in the array") }
        }
    }

    // MARK: - Words and text

    /// Characters up to the next space (or the end), non-empty.
    mutating func word(what: String) throws(TraceParseError) -> String {
        let start = index
        while index < end, bytes[index] != UInt8(ascii: " ") { index += 1 }
        guard index > start else { throw error(what) }
        return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
    }

    /// A word that must end the line.
    mutating func restWord(what: String) throws(TraceParseError) -> String {
        let word = try word(what: what)
        try expectEnd()
        return word
    }

    /// The device name that starts a `dma` event body: everything before ` dir=`.
    mutating func device() throws(TraceParseError) -> String {
        let start = index
        var scan = index
        while scan + 5 <= end {
            if bytes[scan] == UInt8(ascii: " "), bytes[scan + 1] == UInt8(ascii: "d"), bytes[scan + 2] == UInt8(ascii: "i"),
                bytes[scan + 3] == UInt8(ascii: "r"), bytes[scan + 4] == UInt8(ascii: "=")
            {
                guard scan > start else { break }
                index = scan
                return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<scan]), as: UTF8.self)
            }
            scan += 1
        }
        throw error("a device name followed by ' dir='")
    }

    /// ` dir=BIDIRECTIONAL|TO_DEVICE|FROM_DEVICE|NONE`.
    mutating func direction() throws(TraceParseError) -> DMADirection {
        try expect(" dir=")
        if skip("TO_DEVICE") { return .toDevice }
        if skip("FROM_DEVICE") { return .fromDevice }
        if skip("BIDIRECTIONAL") { return .bidirectional }
        if skip("NONE") { return .none }
        throw error("a direction (BIDIRECTIONAL, TO_DEVICE, FROM_DEVICE or NONE)")
    }

    /// The rest of the line, as text.
    mutating func restString() -> String {
        defer { index = end }
        if index >= end { return "" }
        return String(decoding: UnsafeBufferPointer(rebasing: bytes[index..<end]), as: UTF8.self)
    }
}
