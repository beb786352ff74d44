import IOMMUBase

/// A recorded sequence of IOVA requests and the pfns Linux returned, in the text format of the
/// shared `iova-sequences` files:
///
///     alloc SIZE -> PFN     (SIZE pages; PFN = pfn_lo Linux returned; 0 = the allocation failed)
///     free PFN SIZE         (frees the live allocation starting at PFN; SIZE as requested)
///
/// Decimal numbers, one operation per line; blank lines and lines starting with `#` are ignored.
public struct IOVASequence: Sendable, Equatable {
    public enum Operation: Sendable, Equatable {
        case alloc(size: UInt64, expectedPFN: UInt64)
        case free(pfn: UInt64, size: UInt64)
    }

    /// One parsed operation and its 1-based line number.
    public var operations: [(line: Int, operation: Operation)]

    public static func == (a: Self, b: Self) -> Bool {
        a.operations.count == b.operations.count
            && zip(a.operations, b.operations).allSatisfy { $0.line == $1.line && $0.operation == $1.operation }
    }

    /// A line that does not parse: its 1-based number and what was expected.
    public struct ParseError: Error, Sendable, Equatable {
        public var line: Int
        public var message: String
        public init(line: Int, message: String) {
            self.line = line
            self.message = message
        }
    }

    /// Parses the text of a sequence file.
    public init(parsing text: String) throws(ParseError) {
        operations = []
        var lineNumber = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let line = raw.trimmingSuffix(while: { $0 == "\r" || $0 == " " || $0 == "\t" })
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if words.isEmpty || words[0].hasPrefix("#") { continue }
            switch words[0] {
            case "alloc":
                guard words.count == 4, words[2] == "->", let size = UInt64(words[1]), size > 0,
                      let pfn = UInt64(words[3]) else {
                    throw ParseError(line: lineNumber, message: "expected `alloc SIZE -> PFN` with decimal SIZE >= 1 and PFN")
                }
                operations.append((lineNumber, .alloc(size: size, expectedPFN: pfn)))
            case "free":
                guard words.count == 3, let pfn = UInt64(words[1]), let size = UInt64(words[2]), size > 0 else {
                    throw ParseError(line: lineNumber, message: "expected `free PFN SIZE` with decimal PFN and SIZE >= 1")
                }
                operations.append((lineNumber, .free(pfn: pfn, size: size)))
            default:
                throw ParseError(line: lineNumber, message: "expected `alloc SIZE -> PFN` or `free PFN SIZE`, found `\(words[0])`")
            }
        }
    }

    /// How each request is made, matching how the files were recorded.
    public enum Mode: String, Sendable, CaseIterable {
        /// `alloc(size, limitPFN: 0xFFFFF, sizeAligned: true)` only; frees with `free(pfn)`.
        case tree
        /// The same, and on failure again with limit `0xFFFFFFFFF` (w3.txt, exhaust32.txt).
        case tree32Then48 = "tree-32-then-48"
        /// The DMA path on CPU 0 (rcache.txt): `fastAlloc(size, 0xFFFFF, flushCaches: false)`
        /// while the device's 32-bit-first flag is set (it clears on the first failure), then
        /// `fastAlloc(size, 0xFFFFFFFFF, flushCaches: true)`; frees with `fastFree(pfn, size)`.
        case dma
    }

    /// Linux's limits for a 4 KiB granule: below 4 GiB, and the 48-bit-DMA-mask-style limit the
    /// recordings used.
    public static var limit32: UInt64 { 0xFFFFF }
    public static var limit48: UInt64 { 0xF_FFFF_FFFF }

    /// Result of one replayed operation.
    public struct Step: Sendable, Equatable {
        public var line: Int
        public var operation: Operation
        /// The pfn IOMMUKit returned (allocs; 0 = failed).
        public var actualPFN: UInt64
        public var matches: Bool
    }

    /// Replays the sequence on `domain` (which should be fresh: granule 4 KiB, start pfn 1),
    /// calling `step` after each operation.
    public func replay(on domain: IOVADomain, mode: Mode, step: (Step) -> Void) {
        var use32 = true
        for (line, op) in operations {
            switch op {
            case let .alloc(size, expected):
                var pfn: UInt64 = 0
                switch mode {
                case .tree, .tree32Then48:
                    if let r = try? domain.alloc(size: size, limitPFN: Self.limit32, sizeAligned: true) {
                        pfn = r.first.rawValue
                    } else if mode == .tree32Then48,
                              let r = try? domain.alloc(size: size, limitPFN: Self.limit48, sizeAligned: true) {
                        pfn = r.first.rawValue
                    }
                case .dma:
                    if use32 {
                        if let p = try? domain.fastAlloc(size: size, limitPFN: Self.limit32, flushCaches: false, cpu: 0) {
                            pfn = p.rawValue
                        } else {
                            use32 = false
                        }
                    }
                    if pfn == 0, let p = try? domain.fastAlloc(size: size, limitPFN: Self.limit48, flushCaches: true, cpu: 0) {
                        pfn = p.rawValue
                    }
                }
                step(Step(line: line, operation: op, actualPFN: pfn, matches: pfn == expected))
            case let .free(pfn, size):
                switch mode {
                case .tree, .tree32Then48: domain.free(PFN(pfn))
                case .dma: domain.fastFree(pfn: PFN(pfn), size: size, cpu: 0)
                }
                step(Step(line: line, operation: op, actualPFN: 0, matches: true))
            }
        }
    }
}

extension Substring {
    fileprivate func trimmingSuffix(while predicate: (Character) -> Bool) -> Substring {
        var end = endIndex
        while end > startIndex, predicate(self[index(before: end)]) { end = index(before: end) }
        return self[startIndex..<end]
    }
}
