import Testing
@testable import IOMMUCLI

@Suite("iommu bench dma-map")
struct DMAMapBenchCommandTests {
    @Test func parsesLinuxBenchmarkOptions() throws {
        let command = try IOMMUCommand.parseAsRoot([
            "bench", "dma-map", "--threads", "2", "--seconds", "0.5", "--granule", "4", "--mode", "strict", "--dir", "to-device", "--json",
        ])
        let bench = try #require(command as? DMAMapBenchCommand)
        #expect(bench.threads == 2 && bench.seconds == 0.5 && bench.granule == 4)
        #expect(bench.mode == .strict && bench.dir == .toDevice && bench.json && bench.platform == .smmu)
        #expect(throws: (any Error).self) { try IOMMUCommand.parseAsRoot(["bench", "dma-map", "--mode", "eager"]) }
        #expect(throws: (any Error).self) { try IOMMUCommand.parseAsRoot(["bench", "dma-map", "--threads", "0"]) }
    }

    @Test(arguments: [true, false])
    func measuresPairsOnBothPlatforms(smmu: Bool) throws {
        for lazy in [false, true] {
            let r = try DMAMapBenchCommand.measure(threads: 2, seconds: 0.05, granule: 2, lazy: lazy, direction: .fromDevice, debug: false, smmu: smmu)
            #expect(r.pairs > 0 && r.mapNs > 0 && r.unmapNs > 0)
        }
    }
}
