/// What `ScenarioRunner` observed: one record per step, then the final state.
public struct ScenarioReport: Sendable {
    public struct StepRecord: Sendable {
        public var index: Int
        public var line: Int
        /// The action as written ("map nic0 0x100000 +0x2000 rw").
        public var action: String
        /// "ok", "EINVAL", "0x2000 bytes", …
        public var result: String
        public var note: String?
        /// Trace events, driver/IOMMU narration lines.
        public var events: [String] = []
        /// Kernel-style diagnostics (IOMMUWarning) raised by the step.
        public var warnings: [String] = []
        /// IOMMU faults raised by the step.
        public var faults: [String] = []
        /// Expectations that held ("expect EINVAL: held").
        public var checks: [String] = []
        /// Expectations that failed, with what happened instead.
        public var failures: [String] = []
    }

    public var name: String
    public var description: String
    public var seed: UInt64
    public var boot: [String] = []
    public var steps: [StepRecord] = []
    public var finalState: [String] = []

    public var failedExpectations: Int { steps.reduce(0) { $0 + $1.failures.count } }
    public var heldExpectations: Int { steps.reduce(0) { $0 + $1.checks.count } }
    public var passed: Bool { failedExpectations == 0 }

    /// The narrated text report.
    public var text: String {
        var out = "Scenario: \(name)\n"
        for line in description.split(separator: "\n") {
            out += "  \(line)\n"
        }
        out += "\nBoot:\n"
        for line in boot { out += "  \(line)\n" }
        out += "\nWorkload:\n"
        for step in steps {
            out += "  [\(step.index)] line \(step.line): \(step.action) -> \(step.result)\n"
            if let note = step.note { out += "      # \(note)\n" }
            for e in step.events { out += "      \(e)\n" }
            for w in step.warnings { out += "      warning: \(w)\n" }
            for f in step.faults { out += "      fault: \(f)\n" }
            for c in step.checks { out += "      ✓ \(c)\n" }
            for f in step.failures { out += "      ✗ \(f)\n" }
        }
        out += "\nFinal state:\n"
        for line in finalState { out += "  \(line)\n" }
        out += "\n" + (passed ? "PASS" : "FAIL") + ": \(heldExpectations) expectation(s) held, \(failedExpectations) failed.\n"
        return out
    }
}
