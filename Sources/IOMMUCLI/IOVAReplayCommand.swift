import ArgumentParser
import IOMMUKit

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension IOVASequence.Mode: ExpressibleByArgument {}

/// `iommu iova replay FILE`: replays a recorded request sequence and compares every returned pfn
/// with the one Linux returned.
struct IOVAReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Replay an IOVA request sequence and compare the pfns with Linux's.",
        discussion: """
            FILE has one operation per line (decimal numbers; blank lines and # comments ignored):
              alloc SIZE -> PFN    SIZE pages; PFN = the pfn_lo Linux returned (0 = failed)
              free PFN SIZE        free the allocation starting at PFN (SIZE as requested)
            The domain is fresh: granule 4 KiB, start pfn 1, one CPU (CPU 0), no depot trimming.

            Modes:
              tree              alloc(SIZE, limit 0xFFFFF, size-aligned); free(PFN)
              tree-32-then-48   as tree, retrying with limit 0xFFFFFFFFF on failure (w3, exhaust32)
              dma               fastAlloc(SIZE, 0xFFFFF, no flush) while the 32-bit-first flag is
                                set (cleared on the first failure), else fastAlloc(SIZE,
                                0xFFFFFFFFF, flush); fastFree(PFN, SIZE) (rcache)

            Output: one line per operation in the input format with IOMMUKit's pfn (a mismatch is
            followed by `  # MISMATCH expected PFN`), then a summary line. Exit status 1 if any pfn
            differs, 2 for a malformed file (`file:line: expected ...`).

            --json prints one object instead:
              {"file": F, "mode": M, "policy": P, "operations": N, "allocations": A, "frees": R,
               "mismatches": K, "ns_per_operation": T,
               "mismatch_lines": [{"line": L, "size": S, "expected": E, "actual": X}, ...],
               "warnings": ["...", ...]}
            """
    )

    @Argument(help: "The sequence file.")
    var file: String

    @Option(help: "How requests are made: tree, tree-32-then-48 or dma.")
    var mode: IOVASequence.Mode

    @Option(help: "Allocator policy: linux-compatible (default) or checking.")
    var policy: IOVADomain.Policy = .linuxCompatible

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    func run() throws {
        guard let text = readWholeFile(file) else {
            exitForBadInput(InputError(file: file, line: 0, message: "cannot read the file"))
        }
        let sequence: IOVASequence
        do {
            sequence = try IOVASequence(parsing: text)
        } catch {
            exitForBadInput(InputError(file: file, line: error.line, message: error.message))
        }
        let sink = RecordingWarningSink()
        let domain = try IOVADomain(granule: .size4K, startPFN: 1, cpuCount: 1, policy: policy, warningSink: sink)
        var steps: [IOVASequence.Step] = []
        steps.reserveCapacity(sequence.operations.count)
        let t0 = nowNanoseconds()
        sequence.replay(on: domain, mode: mode) { steps.append($0) }
        let elapsed = nowNanoseconds() - t0
        let mismatches = steps.filter { !$0.matches }
        let allocations = steps.filter { if case .alloc = $0.operation { true } else { false } }.count
        let nsPerOp = steps.isEmpty ? 0 : Double(elapsed) / Double(steps.count)
        let warnings = sink.warnings.map(\.description)
        if json {
            let lines: [JSON] = mismatches.map { step in
                guard case let .alloc(size, expected) = step.operation else { return .null }
                return .object([("line", .int(Int64(step.line))), ("size", .uint(size)),
                                ("expected", .uint(expected)), ("actual", .uint(step.actualPFN))])
            }
            print(JSON.object([
                ("file", .string(file)), ("mode", .string(mode.rawValue)), ("policy", .string(policy.rawValue)),
                ("operations", .int(Int64(steps.count))), ("allocations", .int(Int64(allocations))),
                ("frees", .int(Int64(steps.count - allocations))), ("mismatches", .int(Int64(mismatches.count))),
                ("ns_per_operation", .double(rounded(nsPerOp))), ("mismatch_lines", .array(lines)),
                ("warnings", .array(warnings.map { .string($0) })),
            ]).rendered(pretty: true))
        } else {
            var out = ""
            for step in steps {
                switch step.operation {
                case let .alloc(size, expected):
                    out += "alloc \(size) -> \(step.actualPFN)"
                    if !step.matches { out += "  # MISMATCH expected \(expected)" }
                case let .free(pfn, size):
                    out += "free \(pfn) \(size)"
                }
                out += "\n"
                if out.utf8.count > 1 << 16 { print(out, terminator: ""); out = "" }
            }
            print(out, terminator: "")
            for warning in warnings { print("warning: " + warning) }
            print("summary: \(steps.count) operations (\(allocations) allocations), \(mismatches.count) mismatches, \(format(nsPerOp)) ns per operation")
        }
        if !mismatches.isEmpty { throw checkFailedExit }
    }
}

/// The whole file as UTF-8 text, or nil if it cannot be read.
func readWholeFile(_ path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = fread(&buffer, 1, buffer.count, file)
        if n <= 0 { break }
        bytes += buffer[0..<n]
    }
    if ferror(file) != 0 { return nil }
    return String(decoding: bytes, as: UTF8.self)
}
