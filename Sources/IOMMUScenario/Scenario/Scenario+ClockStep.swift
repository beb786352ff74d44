import IOMMUBase

/// `advance-clock: 10ms` — time passes: IOVA rcache aging (later: flush-queue timeouts).
/// Written as a layer step (`ScenarioLayerStep`): the pattern new layers follow.
struct ClockStep: ScenarioLayerStep {
    var nanoseconds: UInt64

    static var actionKeys: [String] { ["advance-clock"] }

    static func parse(key: String, value: Field, platform: Scenario.Platform) throws(ScenarioInputError) -> ClockStep {
        let t = try value.string()
        let units: [(String, UInt64)] = [("ns", 1), ("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000)]
        guard let unit = units.first(where: { t.hasSuffix($0.0) && Field.parseNumber(String(t.dropLast($0.0.count))) != nil }),
              let n = Field.parseNumber(String(t.dropLast(unit.0.count))), n <= 3600 * 1_000_000_000 / unit.1
        else { throw value.fail("expected a duration like 10ms, 500us, 1s (at most an hour)") }
        return ClockStep(nanoseconds: n * unit.1)
    }

    func perform(on runner: ScenarioRunner, record: inout ScenarioReport.StepRecord) throws(IOMMUError) -> ScenarioRunner.Outcome {
        runner.clockNanoseconds += nanoseconds
        let ns = nanoseconds
        record.action = "advance-clock \(ns / 1_000_000 > 0 ? "\(ns / 1_000_000)ms" : "\(ns)ns") (now \(runner.clockNanoseconds / 1_000_000)ms)"
        for (_, d) in runner.iovaDomains.sorted(by: { $0.key < $1.key }) { d.tick(nanoseconds: Int64(ns)) }
        let fired = runner.dmaLayer.advance(nanoseconds: ns)
        if fired > 0 { record.events.append("flush-queue timer fired in \(fired) domain(s)") }
        return ScenarioRunner.Outcome()
    }
}
