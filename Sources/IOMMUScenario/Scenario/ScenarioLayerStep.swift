import IOMMUBase

/// A workload step a layer adds in its own file, without touching the parser or the runner.
///
/// To add steps for a layer (DMAMapping's `dma-map-page`, virtio-iommu requests, …): write one
/// file with a type conforming to this protocol (its action keys, how to parse one step, how to
/// run it against the runner's platform) and add the type to `Scenario.layerSteps`. Keys are
/// checked, messages carry lines, and inline `expect:` works as for built-in steps.
protocol ScenarioLayerStep: Sendable {
    /// The action keys this type handles ("advance-clock").
    static var actionKeys: [String] { get }
    /// Parses the value of `key`; throw `value.fail(…)` for anything unexpected.
    static func parse(key: String, value: Field, platform: Scenario.Platform) throws(ScenarioInputError) -> Self
    /// Runs the step; set `record.action` to the narrated form, add `record.events`.
    func perform(on runner: ScenarioRunner, record: inout ScenarioReport.StepRecord) throws(IOMMUError) -> ScenarioRunner.Outcome
}

extension Scenario {
    /// Every layer step type. One line per layer.
    static let layerSteps: [any ScenarioLayerStep.Type] = [
        ClockStep.self,
        VirtioStep.self,
        DMAStep.self,
    ]

    static var layerActionKeys: [String] { layerSteps.flatMap { $0.actionKeys } }

    /// Every layer expectation type. One line per layer.
    static let layerExpectations: [any ScenarioLayerExpectation.Type] = [
        VirtioExpectation.self,
    ]

    static var layerExpectationKeys: [String] { layerExpectations.flatMap { $0.expectationKeys } }
}

/// An `expect:` key a layer adds in its own file (checked after the step ran).
protocol ScenarioLayerExpectation: Sendable {
    /// The expectation keys this type handles ("virtio-status").
    static var expectationKeys: [String] { get }
    static func parse(key: String, value: Field, platform: Scenario.Platform) throws(ScenarioInputError) -> Self
    /// Whether it held, what was expected (narrated), and what happened instead.
    func check(on runner: ScenarioRunner) -> (held: Bool, what: String, actual: String)
}
