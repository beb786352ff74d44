import ArgumentParser
import IOMMUKit
import IOMMUScenario

/// `iommu pgtable`: build a page table from an ops file and show (or check) every bit.
struct PageTableCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pgtable",
        abstract: "Apply map/unmap operations to an IO page table and print its raw descriptors.",
        discussion: """
            Builds an empty table of the chosen format in a simulated machine (RAM at 0x80000000; \
            table pages come from there), applies the operations of the ops file in order, and \
            prints each operation's result, then every live table with its non-zero entries.

            OPS FILE FORMAT (one operation per line; '#' starts a comment; blank lines are ignored):

              map IOVA PADDR SIZE PROT
              unmap IOVA SIZE

            Numbers are hex with 0x or decimal ('_' separators allowed). SIZE may span many \
            pages: it is split into page and block sizes the way Linux's iommu_map/iommu_unmap \
            split a range (iommu_pgsize), and a failed map is rolled back. PROT is letters from \
            r w c n m p = read, write, cache, noexec, mmio, priv (e.g. rw, rwc, rn).

            Example:
              # a 4 KiB page, then a 2 MiB block, then a partial unmap that splits the block
              map   0x1000      0x40001000  0x1000    rw
              map   0x200000    0x40200000  0x200000  rwc
              unmap 0x201000    0x1000

            RESULTS: "ok" or the errno Linux returns (EEXIST mapping over a mapping, EINVAL \
            unaligned or no read/write permission, ERANGE address beyond ias/oas, ENOMEM). For \
            map, bytes = bytes mapped (0 after a failure and rollback); for unmap, bytes = bytes \
            unmapped, and the result is ENOENT when the unmap stopped at an unmapped address.

            JSON (--json), keys in this order:
              {"format":…, "granule":BYTES, "ias":N, "oas":N, "startLevel":N, "root":"0x…",
               "ops":[{"op":"map"|"unmap", "iova":"0x…", "size":N, "result":"ok"|"EEXIST"|…, "bytes":N}],
               "tables":[{"address":"0x…", "level":N, "entries":[[INDEX,"0xDESCRIPTOR"], …]}]}
            "tables" lists every live table (depth first from the root) and its non-zero entries.

            Exit status: 0 when the file was processed (whatever the results), 2 for a bad ops \
            line (reported as file:line: expected …), an unreadable file, or a format/granule/ias/oas \
            combination that cannot be built. Kernel-style warnings go to standard error.
            """
    )

    @Option(help: "Table format: arm-lpae-s1, arm-lpae-s2, apple-dart or apple-dart2.")
    var format: String

    @Option(help: "Translation granule: 4k, 16k or 64k (default 4k for LPAE; DART uses 16k).")
    var granule: String?

    @Option(help: "Input (IOVA) address bits (default 48 for LPAE, 36 for DART).")
    var ias: String?

    @Option(help: "Output (physical) address bits (default 48 for LPAE, 36 for DART, 42 for DART2).")
    var oas: String?

    @Option(help: "The ops file (see the format above).")
    var ops: String

    @Flag(help: "Print JSON instead of the human report.")
    var json = false

    func run() throws {
        let outcome = execute()
        if !outcome.standardOutput.isEmpty { print(outcome.standardOutput, terminator: "") }
        if !outcome.standardError.isEmpty {
            var stderr = StandardError()
            print(outcome.standardError, terminator: "", to: &stderr)
        }
        if outcome.status != 0 { throw ExitCode(outcome.status) }
    }

    /// What a run prints and its exit status; tests call this in-process.
    struct Outcome {
        var standardOutput = ""
        var standardError = ""
        var status: Int32 = 0
    }

    func execute() -> Outcome {
        switch readTextFile(ops) {
        case .failure(let error):
            return Outcome(standardError: "error: cannot read ops file '\(ops)': \(error.message)\n", status: 2)
        case .success(let text):
            return execute(opsText: text, fileName: ops)
        }
    }

    func execute(opsText: String, fileName: String) -> Outcome {
        func bad(_ message: String) -> Outcome { Outcome(standardError: "error: \(message)\n", status: 2) }
        guard let kind = PageTableFormatKind(rawValue: format) else {
            return bad("unknown --format '\(format)'; expected arm-lpae-s1, arm-lpae-s2, apple-dart or apple-dart2")
        }
        let isDART = kind == .appleDART || kind == .appleDART2
        let granuleText = (granule ?? (isDART ? "16k" : "4k")).lowercased()
        let granuleShift: Int
        switch granuleText {
        case "4k", "4096": granuleShift = 12
        case "16k", "16384": granuleShift = 14
        case "64k", "65536": granuleShift = 16
        default: return bad("unknown --granule '\(granule ?? "")'; expected 4k, 16k or 64k")
        }
        if isDART && granuleShift != 14 { return bad("\(kind) tables use 16k pages; --granule \(granuleText) is not possible") }
        func bits(_ text: String?, _ name: String, _ fallback: Int) -> Int? {
            guard let text else { return fallback }
            return Int(text)
        }
        guard let ias = bits(ias, "ias", isDART ? 36 : 48), let oas = bits(oas, "oas", kind == .appleDART2 ? 42 : (isDART ? 36 : 48)) else {
            return bad("--ias and --oas take a number of address bits, e.g. --ias 48")
        }
        let maxBits = granuleShift == 16 ? 52 : 48
        if !isDART {
            if ias > maxBits || ias <= granuleShift {
                return bad("--ias \(ias) is not possible with a \(granuleText) granule: expected \(granuleShift + 1)...\(maxBits)")
            }
            if ![32, 36, 40, 42, 44, 48, 52].contains(oas) || oas > maxBits {
                return bad("--oas \(oas) is not possible with a \(granuleText) granule: expected one of 32, 36, 40, 42, 44, 48\(maxBits == 52 ? ", 52" : "")")
            }
        } else {
            if oas != 36 && oas != 42 { return bad("--oas \(oas) is not possible for \(kind): expected 36 or 42") }
            if ias > oas || ias <= 14 || ias > 38 {
                return bad("--ias \(ias) is not possible for \(kind) with --oas \(oas): expected 15...\(min(oas, 38)) (two levels and at most 4 TTBRs)")
            }
        }
        let parsed: [PageTableOp]
        do {
            parsed = try PageTableOpsParser.parse(opsText, file: fileName)
        } catch {
            return Outcome(standardError: error.description + "\n", status: 2)
        }
        let memory: PhysicalMemory
        do {
            memory = try PhysicalMemory(addressBits: 56)
        } catch {
            return bad("cannot create the simulated machine: \(error)")
        }
        let frames = FrameAllocator(memory: memory)
        let warnings = RecordingWarningSink()
        let table: AnyIOPageTable
        do {
            table = try AnyIOPageTable(kind: kind, granule: PageSize(shift: granuleShift),
                                       configuration: PageTableConfiguration(ias: ias, oas: oas),
                                       frames: frames, warnings: warnings)
        } catch {
            return bad("a \(kind) table with granule \(granuleText), ias \(ias), oas \(oas) cannot be built (\(error))")
        }
        var results: [OpResult] = []
        var warningText = ""
        for op in parsed {
            results.append(apply(op, to: table))
            for warning in warnings.drain() {
                warningText += "\(fileName):\(op.line): warning: \(warning)\n"
            }
        }
        let tables = table.liveTables()
        let text = json ? renderJSON(table, results: results, tables: tables, granuleShift: granuleShift)
                        : renderHuman(table, results: results, tables: tables, granuleShift: granuleShift)
        return Outcome(standardOutput: text, standardError: warningText, status: 0)
    }

    struct OpResult {
        var op: PageTableOp
        var result: String
        var bytes: UInt64
    }

    func apply(_ op: PageTableOp, to table: borrowing AnyIOPageTable) -> OpResult {
        switch op.kind {
        case .map:
            do {
                try table.map(iova: IOVA(op.iova), paddr: PhysAddr(op.paddr), length: op.length, prot: op.prot)
                return OpResult(op: op, result: "ok", bytes: op.length)
            } catch {
                return OpResult(op: op, result: error.code.name, bytes: 0)
            }
        case .unmap:
            let minimum = table.geometry.pageSizes.smallest?.mask ?? 0
            if (op.iova | op.length) & minimum != 0 { return OpResult(op: op, result: "EINVAL", bytes: 0) }
            let bytes = table.unmap(iova: IOVA(op.iova), length: op.length)
            return OpResult(op: op, result: bytes >= op.length ? "ok" : "ENOENT", bytes: bytes)
        }
    }

    func renderJSON(_ table: borrowing AnyIOPageTable, results: [OpResult], tables: [PageTableSnapshot], granuleShift: Int) -> String {
        let geometry = table.geometry
        let value = JSON.object([
            ("format", .string(table.kind.rawValue)),
            ("granule", .uint(UInt64(1) << UInt64(granuleShift))),
            ("ias", .int(Int64(geometry.ias))),
            ("oas", .int(Int64(geometry.oas))),
            ("startLevel", .int(Int64(geometry.startLevel))),
            ("root", .hex(table.roots[0].rawValue)),
            ("ops", .array(results.map { r in
                .object([
                    ("op", .string(r.op.kind.rawValue)),
                    ("iova", .hex(r.op.iova)),
                    ("size", .uint(r.op.length)),
                    ("result", .string(r.result)),
                    ("bytes", .uint(r.bytes)),
                ])
            })),
            ("tables", .array(tables.map { t in
                .object([
                    ("address", .hex(t.address.rawValue)),
                    ("level", .int(Int64(t.level))),
                    ("entries", .array(t.entries.map { .array([.int(Int64($0.index)), .hex($0.descriptor)]) })),
                ])
            })),
        ])
        return value.rendered() + "\n"
    }

    func renderHuman(_ table: borrowing AnyIOPageTable, results: [OpResult], tables: [PageTableSnapshot], granuleShift: Int) -> String {
        let g = table.geometry
        let kind = table.kind
        var out = "\(kind) page table: granule \(formatByteSize(1 << UInt64(granuleShift))), ias \(g.ias), oas \(g.oas), "
        out += "start level \(g.startLevel), \(g.rootCount == 1 ? "pgd" : "\(g.rootCount) pgds of") \(1 << g.pgdBits) entries"
        out += ", page sizes \(g.pageSizes)\n"
        switch table.registers {
        case .stage1(let r):
            out += "TTBR \(DescriptorText.hex(r.ttbr))  TCR \(DescriptorText.hex(r.tcr))  MAIR \(DescriptorText.hex(r.mair))\n"
        case .stage2(let r):
            out += "VTTBR \(DescriptorText.hex(r.vttbr))  VTCR \(DescriptorText.hex(r.vtcr))\n"
        case .dart(let r):
            out += "TTBR " + r.ttbrs.map { DescriptorText.hex(UInt64($0)) }.joined(separator: " ") + "  TCR \(DescriptorText.hex(UInt64(r.tcr)))\n"
        }
        out += "\nops:\n"
        if results.isEmpty { out += "  (none)\n" }
        for r in results {
            let op = r.op
            var line = "  line \(op.line): \(op.kind.rawValue) iova \(DescriptorText.hex(op.iova))"
            if op.kind == .map { line += " -> pa \(DescriptorText.hex(op.paddr))" }
            line += " size \(DescriptorText.hex(op.length))"
            if op.kind == .map { line += " \(op.prot)" }
            line += ": \(r.result), \(DescriptorText.hex(r.bytes)) bytes \(op.kind == .map ? "mapped" : "unmapped")"
            out += line + "\n"
        }
        out += "\ntables (\(tables.count) live):\n"
        for t in tables {
            let total = g.entryCount(level: t.level)
            out += "  L\(t.level) table at \(DescriptorText.hex(t.address.rawValue)) (\(t.entries.count) of \(total) entries in use)\n"
            func line(_ entry: PageTableSnapshot.Entry) -> String {
                let index = String(entry.index)
                let padded = String(repeating: " ", count: max(0, 4 - index.count)) + index
                return "    [\(padded)] \(DescriptorText.hex16(entry.descriptor))  "
                    + DescriptorText.describe(entry.descriptor, level: t.level, kind: kind, granuleShift: granuleShift, lastLevel: g.lastLevel)
                    + "\n"
            }
            // Runs of 4+ consecutive leaves whose descriptors advance by exactly one block are
            // shown as first, a count, and last (the JSON output always lists every entry).
            let stride = UInt64(1) << UInt64(g.levelShift(t.level))
            var i = 0
            while i < t.entries.count {
                var j = i
                while j + 1 < t.entries.count, t.entries[j + 1].index == t.entries[j].index + 1,
                      t.entries[j + 1].descriptor &- t.entries[j].descriptor == stride,
                      !DescriptorText.describe(t.entries[j].descriptor, level: t.level, kind: kind, granuleShift: granuleShift, lastLevel: g.lastLevel).hasPrefix("table") {
                    j += 1
                }
                if j - i >= 3 {
                    out += line(t.entries[i])
                    out += "           … \(j - i - 1) more entries like these, each one \(formatByteSize(stride)) further …\n"
                    out += line(t.entries[j])
                } else {
                    for k in i...j { out += line(t.entries[k]) }
                }
                i = j + 1
            }
        }
        return out
    }
}
