import IOMMUKit

/// One line of an `iommu pgtable` ops file.
struct PageTableOp: Equatable {
    enum Kind: String { case map, unmap }
    var kind: Kind
    var iova: UInt64
    var paddr: UInt64
    var length: UInt64
    var prot: IOMMUProt
    /// 1-based line number in the file.
    var line: Int
}

/// Parses ops files: `map IOVA PADDR SIZE PROT` / `unmap IOVA SIZE`, `#` comments, blank lines.
enum PageTableOpsParser {
    static let grammar = "'map IOVA PADDR SIZE PROT' or 'unmap IOVA SIZE'"

    /// Parses the whole file first, so a bad line changes nothing.
    static func parse(_ text: String, file: String) throws(InputError) -> [PageTableOp] {
        var ops: [PageTableOp] = []
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            var line = Substring(rawLine)
            if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            guard let first = words.first else { continue }
            func fail(_ message: String) -> InputError { InputError(file: file, line: lineNumber, message: message) }
            func number(_ word: Substring, _ what: String) throws(InputError) -> UInt64 {
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
    static func parseNumber(_ word: Substring) -> UInt64? {
        let cleaned = word.filter { $0 != "_" }
        if cleaned.hasPrefix("0x") || cleaned.hasPrefix("0X") {
            let digits = cleaned.dropFirst(2)
            return digits.isEmpty ? nil : UInt64(digits, radix: 16)
        }
        return cleaned.isEmpty ? nil : UInt64(cleaned, radix: 10)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads a whole file as UTF-8 without Foundation; on failure, the C error text.
func readTextFile(_ path: String) -> Result<String, FileReadError> {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return .failure(FileReadError(message: String(cString: strerror(errno)))) }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65_536)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 { return .failure(FileReadError(message: String(cString: strerror(errno)))) }
        if count == 0 { break }
        bytes.append(contentsOf: buffer[0..<count])
    }
    guard let text = String(validating: bytes, as: UTF8.self) else {
        return .failure(FileReadError(message: "not UTF-8 text"))
    }
    return .success(text)
}

struct FileReadError: Error {
    var message: String
}
