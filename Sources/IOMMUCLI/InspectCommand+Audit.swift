import IOMMUKit
import IOMMUScenario

// MARK: - `--check` (consistency checkers) and `--reach DEVICE` (isolation audit)

extension InspectCommand {
    /// The `--check` / `--reach` output; exit status 1 when `--check` found a violation.
    func audit(_ runner: ScenarioRunner) -> PageTableCommand.Outcome {
        let checks = check ? runner.consistencyChecks() : nil
        let reach = reachDevice.flatMap { runner.reach(device: $0) }
        let failed = checks.map { $0.contains { !$0.violations.isEmpty } } ?? false
        let status: Int32 = failed ? 1 : 0
        if json {
            var members: [(String, JSON)] = []
            if let checks { members.append(("check", Self.json(checks, step: runner.stepsRun))) }
            if let reach { members.append(("reach", Self.json(reach))) }
            let value = members.count == 1 ? members[0].1 : .object(members)
            return .init(standardOutput: value.rendered(pretty: true) + "\n", status: status)
        }
        var out = ""
        let total = runner.scenario.steps.count
        if let checks { out += Self.text(checks, header: "\(runner.scenario.name): consistency after step \(runner.stepsRun) of \(total)") }
        if let reach {
            if !out.isEmpty { out += "\n" }
            out += Self.text(reach, header: "\(runner.scenario.name): what \(reach.device) can reach after step \(reach.step) of \(total)")
        }
        return .init(standardOutput: out, status: status)
    }

    static func text(_ checks: [ScenarioConsistencyCheck], header: String) -> String {
        var out = header + "\n"
        let width = checks.map(\.checker.count).max() ?? 0
        for c in checks {
            let pad = String(repeating: " ", count: width - c.checker.count)
            out += "  \(c.checker)\(pad)  " + (c.violations.isEmpty ? "ok\n" : "\(c.violations.count) violation(s)\n")
            for v in c.violations { out += "    - \(v)\n" }
        }
        let n = checks.reduce(0) { $0 + $1.violations.count }
        out += n == 0 ? "all \(checks.count) checkers: consistent\n" : "\(n) violation(s) in \(checks.filter { !$0.violations.isEmpty }.count) of \(checks.count) checkers\n"
        return out
    }

    static func json(_ checks: [ScenarioConsistencyCheck], step: Int) -> JSON {
        .object([
            ("step", .int(Int64(step))),
            ("consistent", .bool(checks.allSatisfy { $0.violations.isEmpty })),
            ("checkers", .array(checks.map { c in
                .object([("checker", .string(c.checker)), ("ok", .bool(c.violations.isEmpty)),
                         ("violations", .array(c.violations.map { .object([("component", .string($0.component)), ("message", .string($0.message))]) }))])
            })),
        ])
    }

    static func sizeText(_ n: UInt64?) -> String { n.map { $0 == 0 ? "0" : formatByteSize($0) } ?? "2^64 bytes" }

    static func text(_ r: DeviceReach, header: String) -> String {
        var out = header + "\n\nRoutes:\n"
        for route in r.routes { out += "  \(route)\n" }
        out += "\nReachable physical ranges:\(r.entries.isEmpty ? " none" : "")\n"
        let width = DeviceReach.Reason.allCases.map(\.rawValue.count).max()!
        for e in r.entries {
            let range = "\(hex(e.first))..\(hex(e.last))"
            let reason = e.reason.rawValue + String(repeating: " ", count: width - e.reason.rawValue.count)
            var line = "  \(range)  \(sizeText(e.length))  \(reason)"
            if let iova = e.iova { line += "  iova \(hex(iova))" }
            if let prot = e.prot { line += " \(prot)" }
            if let domain = e.domain { line += "  \(domain)" }
            while line.last == " " { line.removeLast() }
            out += line + "\n"
            if let owner = e.owner { out += "      \(e.reason == .granuleRounding ? "beyond" : "buffer"): \(owner)\n" }
            out += "      \(e.detail)\n"
        }
        out += "\nTotals: mapped \(sizeText(r.bytes(.mapping))), beyond the buffers \(sizeText(r.bytes(.granuleRounding))), "
            + "through stale TLB entries \(sizeText(r.bytes(.staleTLB))), bypass \(r.entries.contains { $0.reason == .bypass } ? sizeText(r.bytes(.bypass)) : "none")\n"
        return out
    }

    static func json(_ r: DeviceReach) -> JSON {
        func opt(_ v: UInt64?) -> JSON { v.map(JSON.uint) ?? .null }
        return .object([
            ("device", .string(r.device)),
            ("step", .int(Int64(r.step))),
            ("routes", .array(r.routes.map(JSON.string))),
            ("entries", .array(r.entries.map { e in
                .object([
                    ("first", .hex(e.first)), ("last", .hex(e.last)), ("size", opt(e.length)), ("reason", .string(e.reason.rawValue)),
                    ("iova", e.iova.map(JSON.hex) ?? .null), ("domain", e.domain.map(JSON.string) ?? .null),
                    ("granule", opt(e.granule)), ("prot", e.prot.map(JSON.string) ?? .null),
                    ("owner", e.owner.map(JSON.string) ?? .null), ("via", .string(e.via)), ("detail", .string(e.detail)),
                ])
            })),
            ("totals", .object(DeviceReach.Reason.allCases.map { ($0.rawValue, opt(r.bytes($0))) })),
            ("beyond_buffer_bytes", .uint(r.beyondBufferBytes)),
        ])
    }
}
