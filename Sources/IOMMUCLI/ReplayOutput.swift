import IOMMUScenario

/// How `iommu replay` prints a `ReplayReport`: a human summary, or one JSON object.
enum ReplayOutput {
    /// Human summary: at most this many violations are listed (all of them are in `--json`).
    static let listedViolations = 200

    /// The `--json` object: `{"events": {...}, "violations": [...]}`, then `sections` in order.
    ///
    /// `sections` is where other flags add their members (e.g. a future `--dma` adds
    /// `("dma", .object([("calls", …), ("iovaMatches", …)]))`), so the first two keys stay put.
    static func json(_ report: ReplayReport, sections: [(String, JSON)] = []) -> JSON {
        let events = JSON.object(report.eventCounts.map { ($0.name, JSON.int(Int64($0.count))) })
        var violations = report.violations.map { violation in
            JSON.object([("line", .int(Int64(violation.line))), ("what", .string(violation.what))])
        }
        if report.unlistedViolationCount > 0, let last = report.violations.last {
            violations.append(.object([
                ("line", .int(Int64(last.line))),
                ("what", .string("\(report.unlistedViolationCount) more violations after this line are not listed")),
            ]))
        }
        return .object([("events", events), ("violations", .array(violations))] + sections)
    }

    /// The human summary.
    static func summary(_ report: ReplayReport, name: String, compressed: Bool) -> String {
        var out = ""
        out += "Trace \(name)\(compressed ? " (xz)" : ""): \(grouped(report.lineCount)) lines, \(grouped(report.totalEvents)) event\(report.totalEvents == 1 ? "" : "s")"
        if let cpus = report.header.cpuCount { out += ", \(cpus) CPU\(cpus == 1 ? "" : "s")" }
        if let tracer = report.header.tracer { out += ", tracer \(tracer)" }
        out += "\n"
        if report.lostEvents > 0 {
            out += "  warning: the ring buffer lost \(grouped(report.lostEvents)) events; violations near the gaps may be artefacts\n"
        } else if report.header.entriesWritten != nil {
            out += "  the ring buffer lost no events\n"
        }

        out += "\nEvents\n"
        let width = report.eventCounts.map(\.name.count).max() ?? 0
        for (eventName, count) in report.eventCounts {
            out += "  " + padRight(eventName, width) + "  " + padLeft(grouped(count), 10) + "\n"
        }
        out += "  " + padRight("total", width) + "  " + padLeft(grouped(report.totalEvents), 10) + "\n"

        out += "\nGroups (\(report.groups.count))\n"
        for group in report.groups {
            var line = "  " + padRight(group.id.description, 11) + padRight(group.devices.joined(separator: " "), 41) + " "
            line += group.domains.map(\.description).joined(separator: " ")
            if group.released { line += "  (freed)" }
            out += line + "\n"
        }

        out += "\nDomains (\(report.domains.count))\n"
        out += "  " + padRight("domain", 8) + padRight("kind", 12) + padLeft("maps", 9) + padLeft("direct", 8)
            + padLeft("unmaps", 9) + padLeft("DMA calls", 11) + padLeft("live maps", 11) + padLeft("live bytes", 12)
            + "  devices\n"
        for domain in report.domains {
            var line = "  " + padRight(domain.id.description, 7) + " " + padRight(domain.kind.rawValue, 12)
            line += padLeft(grouped(domain.mapCount), 9) + padLeft(grouped(domain.directMapCount), 8)
            line += padLeft(grouped(domain.unmapCount), 9) + padLeft(grouped(domain.dmaCallCount), 11)
            line += padLeft(grouped(domain.liveMappingCount), 11) + padLeft(grouped(domain.liveBytes), 12)
            line += "  " + domain.devices.joined(separator: " ")
            if domain.released { line += " (released)" }
            out += line + "\n"
        }
        if report.untranslatedDMACalls > 0 || report.failedDMAMaps > 0 {
            out += "  DMA calls with no map/unmap (pass-through or no IOMMU): \(grouped(report.untranslatedDMACalls))"
            out += "; failed dma_map_page: \(grouped(report.failedDMAMaps))\n"
        }

        if report.reuseRaceUnmaps > 0 {
            out += "  unmaps applied early because their IOVA was re-mapped before their dma_unmap_page: \(grouped(report.reuseRaceUnmaps))\n"
        }

        let total = report.violationCount
        if total == 0 {
            out += "\nViolations: none\n"
        } else {
            out += "\nViolations (\(grouped(total)))\n"
            for violation in report.violations.prefix(listedViolations) {
                out += "  line \(violation.line): \(violation.what)\n"
            }
            if total > listedViolations {
                out += "  … and \(grouped(total - listedViolations)) more (all are listed with --json)\n"
            }
        }
        return out
    }

    /// `88793` → `88,793`.
    static func grouped<T: BinaryInteger>(_ value: T) -> String {
        let digits = String(value)
        var out = ""
        for (index, character) in digits.enumerated() {
            if index > 0, (digits.count - index) % 3 == 0, character != "-" { out.append(",") }
            out.append(character)
        }
        return out
    }

    static func padLeft(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
    }

    static func padRight(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }
}
