import IOMMUKit
import IOMMUScenario
#if canImport(Glibc)
import Glibc
#endif

/// `FUZZ_DEBUG=1 fuzz/out/FuzzScenario INPUT` prints the parse error or the run's report.
let debug = getenv("FUZZ_DEBUG") != nil

/// Bounds that keep one input fast (milliseconds): a scenario over them is parsed (the parser
/// must still answer) but not run. A map of L bytes costs ~L/4 KiB page-table writes when
/// unaligned, so lengths and sizes stay at or below 64 MiB, page counts at or below 16384, and
/// workloads at or below 64 steps; RAM above 4 GiB is not run either (setup cost).
let maximumLength: UInt64 = 64 << 20
let maximumCount: UInt64 = 16_384
let maximumSteps = 64
let maximumRAM: UInt64 = 4 << 30

/// Fuzzes the scenario parser (`Scenario.parse(bytes:)`, YAML via Yams) and, for an accepted
/// scenario within the bounds above, the runner: the platform is built by `ScenarioRunner`, the
/// workload runs step by step, and after boot and every step `ScenarioRunner.checkConsistency()`
/// must be clean: the core, each SMMU and DART driver, every live domain's page table (vs. the
/// hardware walker), the IOVA domains of `iova-alloc` steps and of the DMA layer's cookies, each
/// cookie's live mappings, the VFIO container and the virtio-iommu device. A rejected input must be a `line: message` error with line ≥ 1 (never a
/// trap). Whatever a step returns (an errno is fine) must leave the model consistent.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzScenario(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let scenario: Scenario
    do throws(ScenarioInputError) {
        scenario = try Scenario.parse(bytes: bytes)
    } catch {
        if error.line < 1 { fatalError("error line \(error.line) < 1: \(error.message)") }
        if error.message.isEmpty { fatalError("empty error message at line \(error.line)") }
        if debug { print("rejected: \(error)") }
        return 0
    }
    guard scenario.steps.count <= maximumSteps, scenario.platform.ramBytes <= maximumRAM,
          scenario.steps.allSatisfy({ !exceedsBounds($0) })
    else {
        if debug { print("accepted but over the run bounds: not run") }
        return 0
    }
    let runner: ScenarioRunner
    do throws(IOMMUError) {
        runner = try ScenarioRunner(scenario: scenario, seed: 1)
    } catch {
        if debug { print("platform refused: \(error)") }
        return 0
    }
    let boot = runner.checkConsistency()
    if !boot.isEmpty { fatalError("inconsistent after boot: \(boot)") }
    // Step by step, so a violation names the step that caused it.
    for index in 1...max(1, scenario.steps.count) where index <= scenario.steps.count {
        runner.run(upTo: index)
        let problems = runner.checkConsistency()
        if !problems.isEmpty {
            fatalError("after step \(index) (line \(scenario.steps[index - 1].line)): \(problems)")
        }
    }
    if debug { for step in runner.report.steps { print("step \(step.index) line \(step.line): \(step.action) -> \(step.result)") } }
    return 0
}

/// Whether a step names a length, size or count over the bounds (found by reflection, so new
/// layer steps are covered without changes here): `length`, `size`, `count`, `bytes` (as a
/// number) and a virtio `first`…`last` range.
func exceedsBounds(_ step: Scenario.Step) -> Bool {
    func number(_ value: Any) -> UInt64? {
        switch value {
        case let v as UInt64: v
        case let v as Int: v < 0 ? UInt64.max : UInt64(v)
        case let v as UInt32: UInt64(v)
        default: nil
        }
    }
    func walk(_ value: Any, depth: Int) -> Bool {
        guard depth < 12 else { return false }
        let mirror = Mirror(reflecting: value)
        var first: UInt64?
        for child in mirror.children {
            if let label = child.label, let n = number(child.value) {
                switch label {
                case "length", "size", "bytes": if n > maximumLength { return true }
                case "count": if n > maximumCount { return true }
                case "first": first = n
                case "last": if let f = first, n >= f, n - f >= maximumLength { return true }
                default: break
                }
            }
            if walk(child.value, depth: depth + 1) { return true }
        }
        return false
    }
    return walk(step, depth: 0)
}
