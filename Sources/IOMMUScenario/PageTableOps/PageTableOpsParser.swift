import IOMMUBase

/// One line of an `iommu pgtable` ops file.
public struct PageTableOp: Equatable, Sendable {
    public enum Kind: String, Sendable { case map, unmap }
    public var kind: Kind
    public var iova: UInt64
    public var paddr: UInt64
    public var length: UInt64
    public var prot: IOMMUProt
    /// 1-based line number in the file.
    public var line: Int

    public init(kind: Kind, iova: UInt64, paddr: UInt64, length: UInt64, prot: IOMMUProt, line: Int) {
        self.kind = kind
        self.iova = iova
        self.paddr = paddr
        self.length = length
        self.prot = prot
        self.line = line
    }
}

/// A malformed ops-file line: the file name given to the parser, the 1-based line, and what was
/// expected there.
public struct PageTableOpsParseError: Error, Hashable, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var message: String

    public init(file: String, line: Int, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    public var description: String { "\(file):\(line): \(message)" }
}

/// Parses `iommu pgtable` ops files (pure: no I/O, never traps on any text): `map IOVA PADDR SIZE PROT` / `unmap IOVA SIZE`, `#` comments, blank lines.
public enum PageTableOpsParser {
    public static let grammar = "'map IOVA PADDR SIZE PROT' or 'unmap IOVA SIZE'"

    /// Parses the whole file first, so a bad line changes nothing.
    public static func parse(_ text: String, file: String) throws(PageTableOpsParseError) -> [PageTableOp] {
        var ops: [PageTableOp] = []
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            var line = Substring(rawLine)
            if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            guard let first = words.first else { continue }
            func fail(_ message: String) -> PageTableOpsParseError { PageTableOpsParseError(file: file, line: lineNumber, message: message) }
            func number(_ word: Substring, _ what: String) throws(PageTableOpsParseError) -> UInt64 {
                guard let value = parseNumber(word) else {
                    throw fail("expected \(what) as a number (hex with 0x, or decimal), got '\(word)'")
                }
                return value
            }
            switch first {
            case "map":
                guard words.count == 5 else {
                    throw fail("expected 'map IOVA PADDR SIZE PROT' (4 operands), got \(words.count - 1) operand\(words.count == 2 ? "" : "s")")
                }
                let iova = try number(words[1], "IOVA")
                let paddr = try number(words[2], "PADDR")
                let length = try number(words[3], "SIZE")
                guard let prot = IOMMUProt(letters: words[4]) else {
                    throw fail("expected PROT as letters from r w c n m p (read write cache noexec mmio priv), got '\(words[4])'")
                }
                ops.append(PageTableOp(kind: .map, iova: iova, paddr: paddr, length: length, prot: prot, line: lineNumber))
            case "unmap":
                guard words.count == 3 else {
                    throw fail("expected 'unmap IOVA SIZE' (2 operands), got \(words.count - 1) operand\(words.count == 2 ? "" : "s")")
                }
                let iova = try number(words[1], "IOVA")
                let length = try number(words[2], "SIZE")
                ops.append(PageTableOp(kind: .unmap, iova: iova, paddr: 0, length: length, prot: [], line: lineNumber))
            default:
                throw fail("expected \(grammar), got '\(first)'")
            }
        }
        return ops
    }

    /// "0x1F000", "4096", with optional `_` separators.
    public static func parseNumber(_ word: Substring) -> UInt64? {
        let cleaned = word.filter { $0 != "_" }
        if cleaned.hasPrefix("0x") || cleaned.hasPrefix("0X") {
            let digits = cleaned.dropFirst(2)
            return digits.isEmpty ? nil : UInt64(digits, radix: 16)
        }
        return cleaned.isEmpty ? nil : UInt64(cleaned, radix: 10)
    }
}

