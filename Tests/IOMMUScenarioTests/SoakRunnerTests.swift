import Testing
@testable import IOMMUScenario

@Suite("Soak (iommu bench --soak)")
struct SoakRunnerTests {
    @Test func shortSoakRunsEveryOperationWithNoViolation() {
        var configuration = SoakConfiguration(durationNanoseconds: 300_000_000, seed: 7)
        configuration.operationsPerCheck = 400
        let report = SoakRunner.run(configuration)
        #expect(report.violations == [], "\(report.violations.prefix(10))")
        #expect(report.violationCount == 0)
        #expect(report.exitStatus == 0)
        #expect(report.warnings.isEmpty, "\(report.warnings)")
        for op in SoakOperation.allCases {
            #expect((report.operations[op] ?? 0) > 0, "no \(op.rawValue) operation ran")
        }
        // Every checkpoint and the final one ran every checker.
        #expect(report.checkerRuns >= 2)
        #expect(report.checkers.count == SoakPlatform.checkerNames.count)
        // The racing unmaps were each followed by a read that faulted (counted by the handlers).
        #expect(report.expectedFaults >= report.operations[.racingUnmap]! + report.operations[.coreDetach]!)
        #expect(report.elapsedNanoseconds >= 300_000_000)
    }

    @Test func sameSeedSameSingleThreadedWork() {
        // One thread, no time left after the first 64 steps: the run is a function of the seed.
        func run(_ seed: UInt64) -> [SoakOperation: Int] {
            var c = SoakConfiguration(durationNanoseconds: 0, seed: seed)
            c.threads = 1
            c.operationsPerCheck = 300
            let report = SoakRunner.run(c)
            #expect(report.violationCount == 0, "\(report.violations.prefix(5))")
            return report.operations
        }
        let a = run(3)
        #expect(a.values.reduce(0, +) >= 32)
        #expect(run(3) == a)
        #expect(run(4) != a)
    }

    @Test func injectedCorruptionIsReportedWithExitStatusOne() {
        var configuration = SoakConfiguration(durationNanoseconds: 50_000_000, seed: 1)
        configuration.operationsPerCheck = 200
        configuration.injectCorruption = true
        let report = SoakRunner.run(configuration)
        #expect(report.exitStatus == 1)
        #expect(report.violationCount > 0)
        // The VFIO checker names the page the container's domain no longer translates.
        #expect(report.violations.contains { $0.hasPrefix("checkpoint 1: ") && $0.contains("0x200000000") }, "\(report.violations.prefix(5))")
    }
}
