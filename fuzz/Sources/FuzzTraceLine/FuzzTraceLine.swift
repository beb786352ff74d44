import IOMMUScenario

/// Fuzzes `TraceLineParser` on one line of bytes: it must never trap; the byte and String entry
/// points must agree; an accepted event must survive render → parse unchanged where rendering
/// is defined (`TraceEvent+Rendering`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTraceLine(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let fromBytes: Result<TraceRecord, TraceParseError>
    do throws(TraceParseError) { fromBytes = .success(try TraceLineParser.parse(bytes)) } catch { fromBytes = .failure(error) }
    // The String entry point sees the same line when the bytes are valid UTF-8 without NUL/newline.
    if !bytes.contains(0), !bytes.contains(10), let text = String(validating: bytes, as: UTF8.self) {
        let fromString: Result<TraceRecord, TraceParseError>
        do throws(TraceParseError) { fromString = .success(try TraceLineParser.parse(text)) } catch { fromString = .failure(error) }
        switch (fromBytes, fromString) {
        case (.success(let a), .success(let b)):
            if a != b { fatalError("byte and String parsers disagree: \(a) vs \(b)") }
        case (.failure, .failure): break
        default: fatalError("byte and String parsers disagree on acceptance: \(fromBytes) vs \(fromString)")
        }
    }
    // A typed event body renders back to the kernel's text, which parses to the same body.
    if case .success(.event(let event)) = fromBytes {
        if case .other = event.body { return 0 }
        let line = event.renderedLine
        do throws(TraceParseError) {
            guard case .event(let again) = try TraceLineParser.parse(line), again.body == event.body else {
                fatalError("render/parse round trip changed the event: \(event) -> \(line)")
            }
        } catch {
            fatalError("the rendered line of an accepted event does not parse: \(line): \(error)")
        }
    }
    return 0
}
