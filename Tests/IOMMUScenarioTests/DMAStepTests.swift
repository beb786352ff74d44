import Testing
@testable import IOMMUScenario

@Suite("Scenario DMA-API steps")
struct DMAStepTests {
    static let platform = """
        platform:
          iommus: [{name: smmu0, kind: smmu}]
          devices:
            - {name: nic0, pci: {address: "0000:01:00.0"}, iommu: smmu0, stream-ids: [0x100], dma-mask: 32, driver: e1000e}
        """

    func run(_ workload: String) throws -> ScenarioRunner {
        let runner = try ScenarioRunner(scenario: try Scenario.parse(Self.platform + "\nworkload:\n" + workload))
        runner.run()
        return runner
    }

    @Test func scatterListCoherentSyncAndMappingError() throws {
        let runner = try run("""
              - dma-map-sg: {device: nic0, direction: from-device, entries: [{length: 4K}, {length: 4K}], as: sg}
                expect: {iova: 0xffffe000, no-warnings: true}
              - dma-sync-for-cpu: {device: nic0, address: $sg, length: 4K, direction: from-device}
                expect: {no-warnings: true}
              - dma-sync-for-device: {device: nic0, address: 0x1000, length: 4K, direction: from-device}
                expect: {warning: dmaSyncNotMapped}
              - dma-alloc-coherent: {device: nic0, size: 12K, as: ring}
                expect: {no-warnings: true, dma: {device: nic0, live-mappings: 2}}
              - dma-mapping-error: {device: nic0, address: $ring}
                expect: {dma: {device: nic0, mapping-error: false}}
              - dma-mapping-error: {device: nic0, address: 0xffffffffffffffff}
                expect: {dma: {device: nic0, mapping-error: true}}
              - dma-free-coherent: {device: nic0, buffer: ring}
                expect: {no-warnings: true}
              - dma-unmap-sg: {device: nic0, sg: sg, direction: from-device}
                expect: {no-warnings: true, dma: {device: nic0, live-mappings: 0, stale-windows: {count: 2, max: 0}}}
            """)
        #expect(runner.report.passed, "\(runner.report.text)")
        #expect(runner.inspect().dmaMappings.isEmpty)
        #expect(runner.inspect().flushQueues.first?.hasPrefix("domain#1 strict: queued 0") == true)
    }

    @Test func aFailedExpectationIsReported() throws {
        let runner = try run("""
              - dma-map-page: {device: nic0, length: 4K, direction: to-device, as: a}
                expect: {dma: {device: nic0, live-mappings: 3}}
            """)
        #expect(!runner.report.passed)
        #expect(runner.report.text.contains("expect nic0 3 live DMA mapping(s): got 1"))
    }

    @Test func unknownKeysAreRejectedWithTheLine() {
        #expect(throws: ScenarioInputError.self) {
            _ = try Scenario.parse(Self.platform + "\nworkload:\n  - dma-map-page: {device: nic0, length: 4K, colour: red}\n")
        }
    }
}
