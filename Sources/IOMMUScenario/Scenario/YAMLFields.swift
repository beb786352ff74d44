import Yams

/// A scenario file problem: the line it is on and what was expected there.
///
/// Printed by the CLI as `file:line: message` (exit status 2). Never a crash: every malformed
/// input (bad YAML, unknown key, wrong type, missing field, number out of range, binary data)
/// ends here.
public struct ScenarioInputError: Error, Hashable, Sendable, CustomStringConvertible {
    public var line: Int
    public var message: String
    public init(line: Int, _ message: String) {
        self.line = max(1, line)
        self.message = message
    }
    public var description: String { "\(line): \(message)" }
}

/// A YAML node with its line, and typed accessors that throw `ScenarioInputError`.
struct Field {
    let node: Node
    /// Where the value sits (for messages): "platform.iommus[0].smrs".
    let path: String

    var line: Int { node.mark?.line ?? 1 }

    func fail(_ message: String) -> ScenarioInputError { ScenarioInputError(line: line, "\(path): \(message)") }

    var isNull: Bool {
        if case .scalar(let s) = node { return s.tag.rawValue == Tag.Name.null.rawValue || (s.style == .plain && ["", "~", "null", "Null", "NULL"].contains(s.string)) }
        return false
    }

    func string() throws(ScenarioInputError) -> String {
        guard case .scalar(let s) = node else { throw fail("expected a string, found \(kindName)") }
        return s.string
    }

    func bool() throws(ScenarioInputError) -> Bool {
        guard case .scalar(let s) = node else { throw fail("expected true or false, found \(kindName)") }
        switch s.string {
        case "true", "True", "TRUE", "yes", "on": return true
        case "false", "False", "FALSE", "no", "off": return false
        default: throw fail("expected true or false, found '\(s.string)'")
        }
    }

    /// A number: decimal or 0x hex, '_' separators, optional K/M/G/T suffix (powers of 1024).
    func number(in range: ClosedRange<UInt64> = 0...UInt64.max) throws(ScenarioInputError) -> UInt64 {
        guard case .scalar(let s) = node else { throw fail("expected a number, found \(kindName)") }
        guard let value = Field.parseNumber(s.string) else {
            throw fail("expected a number (decimal, 0x hex, or with a K/M/G suffix), found '\(s.string)'")
        }
        guard range.contains(value) else {
            throw fail("\(s.string) is out of range: expected \(Field.show(range.lowerBound))...\(Field.show(range.upperBound))")
        }
        return value
    }

    func int(in range: ClosedRange<Int>) throws(ScenarioInputError) -> Int {
        Int(try number(in: UInt64(range.lowerBound)...UInt64(range.upperBound)))
    }

    static func show(_ v: UInt64) -> String { v >= 0x10000 ? "0x" + String(v, radix: 16) : String(v) }

    static func parseNumber(_ raw: String) -> UInt64? {
        var text = Substring(raw.filter { $0 != "_" })
        guard !text.isEmpty else { return nil }
        var shift: UInt64 = 0
        switch text.last {
        case "K", "k": shift = 10
        case "M", "m": shift = 20
        case "G", "g": shift = 30
        case "T", "t": shift = 40
        default: break
        }
        if shift != 0 {
            text = text.dropLast()
            if text.hasSuffix("i") { text = text.dropLast() }
        }
        let value: UInt64?
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            value = UInt64(text.dropFirst(2), radix: 16)
        } else {
            value = UInt64(text, radix: 10)
        }
        guard let value else { return nil }
        if shift == 0 { return value }
        let (result, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
        return overflow ? nil : result
    }

    func array() throws(ScenarioInputError) -> [Field] {
        guard case .sequence(let seq) = node else { throw fail("expected a list, found \(kindName)") }
        return seq.enumerated().map { Field(node: $0.element, path: "\(path)[\($0.offset)]") }
    }

    func mapping(allowed keys: [String]) throws(ScenarioInputError) -> FieldMap {
        guard case .mapping(let map) = node else { throw fail("expected a mapping (key: value), found \(kindName)") }
        var entries: [(String, Field)] = []
        for (key, value) in map {
            guard case .scalar(let k) = key else {
                throw ScenarioInputError(line: key.mark?.line ?? line, "\(path): keys must be plain words")
            }
            let name = k.string
            guard keys.contains(name) else {
                throw ScenarioInputError(line: key.mark?.line ?? line,
                                         "\(path): unknown key '\(name)'; expected one of: \(keys.joined(separator: ", "))")
            }
            if entries.contains(where: { $0.0 == name }) {
                throw ScenarioInputError(line: key.mark?.line ?? line, "\(path): key '\(name)' appears twice")
            }
            entries.append((name, Field(node: value, path: path.isEmpty ? name : "\(path).\(name)")))
        }
        return FieldMap(owner: self, entries: entries)
    }

    var kindName: String {
        switch node {
        case .scalar(let s): return "'\(s.string)'"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }
}

/// The checked keys of one YAML mapping.
struct FieldMap {
    let owner: Field
    let entries: [(String, Field)]

    subscript(_ key: String) -> Field? { entries.first { $0.0 == key }?.1 }

    func required(_ key: String) throws(ScenarioInputError) -> Field {
        guard let field = self[key] else { throw owner.fail("missing required key '\(key)'") }
        return field
    }

    var keys: [String] { entries.map(\.0) }
}

/// Parses YAML text into a root node, turning every Yams error into a line-numbered message.
func composeYAML(_ text: String) throws(ScenarioInputError) -> Node {
    do {
        guard let node = try Yams.compose(yaml: text) else {
            throw ScenarioInputError(line: 1, "empty file: expected a mapping with 'platform' and 'workload'")
        }
        return node
    } catch let error as ScenarioInputError {
        throw error
    } catch let error as YamlError {
        switch error {
        case let .scanner(_, problem, mark, _), let .parser(_, problem, mark, _), let .composer(_, problem, mark, _):
            throw ScenarioInputError(line: mark.line, "YAML syntax error: \(problem)")
        case let .reader(problem, offset, _, yaml):
            var line = 1
            if let offset {
                for (index, ch) in yaml.utf8.enumerated() where index < offset && ch == UInt8(ascii: "\n") { line += 1 }
            }
            throw ScenarioInputError(line: line, "not readable as YAML text: \(problem)")
        case let .duplicatedKeysInMapping(duplicates, context):
            // Yams marks the mapping; point at the second occurrence of the key instead.
            var line = context.mark.line
            if let key = duplicates.first {
                var seen = 0
                for (index, text) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where index + 1 >= context.mark.line {
                    let trimmed = text.drop { $0 == " " || $0 == "-" || $0 == "{" }
                    if trimmed.hasPrefix(key + ":") || text.contains(" " + key + ":") || text.contains("{" + key + ":") {
                        seen += 1
                        if seen == 2 { line = index + 1; break }
                    }
                }
            }
            throw ScenarioInputError(line: line, "key '\(duplicates.joined(separator: "', '"))' appears twice")
        default:
            throw ScenarioInputError(line: 1, "YAML error: \(error)")
        }
    } catch {
        throw ScenarioInputError(line: 1, "YAML error: \(error)")
    }
}

/// Checks raw bytes are UTF-8 text without NUL or other control characters (binary garbage),
/// returning the text or the line of the first bad byte.
func decodeScenarioText(_ bytes: [UInt8]) throws(ScenarioInputError) -> String {
    var line = 1
    for byte in bytes {
        if byte == UInt8(ascii: "\n") { line += 1; continue }
        if byte < 0x20 && byte != UInt8(ascii: "\t") && byte != UInt8(ascii: "\r") || byte == 0x7F {
            throw ScenarioInputError(line: line, "binary data (byte 0x\(String(byte, radix: 16))): expected YAML text")
        }
    }
    guard let text = String(validating: bytes, as: UTF8.self) else {
        var line = 1
        var index = 0
        // Find the line of the first invalid sequence: decode line by line.
        while index < bytes.count {
            var end = index
            while end < bytes.count && bytes[end] != UInt8(ascii: "\n") { end += 1 }
            if String(validating: bytes[index..<end], as: UTF8.self) == nil { break }
            line += 1
            index = end + 1
        }
        throw ScenarioInputError(line: line, "not UTF-8 text: expected a YAML scenario")
    }
    return text
}
