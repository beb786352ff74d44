import IOMMUBase
import PhysicalMemory
import Testing
import VFIOType1
@testable import IOMMUScenario

/// Found by FuzzScenario (an out-of-memory after ~300k inputs): a runner whose scenario opened
/// VFIO files never closed them, so the VFIO registry and its container kept each other — and
/// the whole platform, physical memory included — alive after the runner was gone.
@Suite("ScenarioRunner lifetime")
struct ScenarioRunnerLifetimeTests {
    static let vfioScenario = """
        platform:
          iommus: [{name: smmu0, kind: smmu}]
          devices:
            - {name: gpu0, pci: {address: "03:00.0"}, iommu: smmu0, stream-ids: [0x300], driver: vfio-pci}
        workload:
          - vfio-open-group: gpu0
          - vfio-set-container: gpu0
          - vfio-set-iommu: type1v2
          - vfio-map: {iova: 0x100000, length: 0x10000}
          - vfio-register-driver: {name: mdev0, on-unmap: unpin}
          - vfio-pin: {driver: mdev0, iova: 0x101000, count: 1}
        """

    @Test func droppingARunnerWithOpenVFIOFilesFreesThePlatform() throws {
        weak var memory: PhysicalMemory?
        weak var container: VFIOContainer?
        weak var vfio: VFIO?
        do {
            let runner = try ScenarioRunner(scenario: try Scenario.parse(Self.vfioScenario))
            runner.run()
            #expect(runner.report.steps.allSatisfy { $0.result.hasPrefix("ok") })
            #expect(runner.container?.mappings.count == 1)
            memory = runner.memory
            container = runner.container
            vfio = runner.vfio
            #expect(memory != nil && container != nil && vfio != nil)
        }
        #expect(container == nil)
        #expect(vfio == nil)
        #expect(memory == nil)
    }
}
