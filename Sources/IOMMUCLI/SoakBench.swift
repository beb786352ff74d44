import ArgumentParser
import IOMMUScenario

/// `iommu bench --soak DURATION`: the soak (`SoakRunner`) from the command line.
enum SoakBench {
    /// "30s", "5m", "1h", "250ms" → nanoseconds; nil for anything else, zero, or over a week.
    static func parseDuration(_ text: String) -> UInt64? {
        let units: [(String, UInt64)] = [("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            let number = text.dropLast(suffix.count)
            guard !number.isEmpty, number.allSatisfy(\.isASCII), let n = UInt64(number), n > 0,
                  n <= 7 * 24 * 3_600_000_000_000 / scale
            else { return nil }
            return n * scale
        }
        return nil
    }

    static let durationHelp = "expected a duration like 30s, 5m or 1h (ms, s, m, h; at most a week)"

    /// Runs the soak and prints its report; returns the exit status (0, or 1 on a violation).
    static func run(durationNanoseconds: UInt64, seed: UInt64, json: Bool, stdout: inout some TextOutputStream) -> Int32 {
        let report = SoakRunner.run(SoakConfiguration(durationNanoseconds: durationNanoseconds, seed: seed))
        if json {
            print(self.json(report).rendered(pretty: true), to: &stdout)
        } else {
            stdout.write(text(report))
        }
        return report.exitStatus
    }

    static func json(_ r: SoakReport) -> JSON {
        .object([
            ("seed", .uint(r.seed)), ("threads", .int(Int64(r.threads))),
            ("requested_ns", .uint(r.requestedNanoseconds)), ("elapsed_ns", .uint(r.elapsedNanoseconds)),
            ("operations", .object(SoakOperation.allCases.map { ($0.rawValue, .int(Int64(r.operations[$0] ?? 0))) })),
            ("total_operations", .int(Int64(r.totalOperations))),
            ("checker_runs", .int(Int64(r.checkerRuns))), ("checkers", .array(r.checkers.map(JSON.string))),
            ("violation_count", .int(Int64(r.violationCount))), ("violations", .array(r.violations.map(JSON.string))),
            ("warnings", .object(r.warnings.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) })),
            ("expected_faults", .int(Int64(r.expectedFaults))), ("stale_tlb_reads", .int(Int64(r.staleTLBReads))),
            ("flush_queue_timers_fired", .int(Int64(r.flushQueueTimersFired))), ("notifier_unpins", .int(Int64(r.notifierUnpins))),
        ])
    }

    static func text(_ r: SoakReport) -> String {
        var out = "iommu bench --soak: seed \(r.seed), \(r.threads) thread(s), \(format(Double(r.elapsedNanoseconds) / 1e9, 1)) s, "
            + "\(r.totalOperations) operations, \(r.checkerRuns) checkpoint(s), \(r.violationCount) violation(s)\n"
        out += "operations:\n"
        for op in SoakOperation.allCases { out += "  " + pad(op.rawValue, 24) + pad(String(r.operations[op] ?? 0), 12, right: true) + "\n" }
        out += "checkers at every checkpoint (quiesced) and at the end:\n"
        for c in r.checkers { out += "  \(c)\n" }
        out += "leak checks at teardown: DMA mappings, bounce slots, pins, locked pages, live domains, physical frames\n"
        out += "device faults (expected: after unmap/detach) \(r.expectedFaults), stale IOTLB reads racing an unmap \(r.staleTLBReads), "
            + "flush-queue timers fired \(r.flushQueueTimersFired), pages unpinned by the VFIO notifier \(r.notifierUnpins)\n"
        out += "warnings: " + (r.warnings.isEmpty ? "none" : r.warnings.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")) + "\n"
        if r.violationCount == 0 {
            out += "violations: none\n"
        } else {
            out += "violations (\(r.violationCount)\(r.violationCount > r.violations.count ? ", first \(r.violations.count) shown" : "")):\n"
            for v in r.violations { out += "  \(v)\n" }
        }
        return out
    }
}
