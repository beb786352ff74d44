import IOMMUBase
import Testing
@testable import VFIOType1

/// The benchmark entry points run (small) and report sane numbers.
@Suite("VFIO benchmarks (smoke)")
struct BenchmarkSmokeTests {
    @Test func benchmarksRunSmall() throws {
        let large = try VFIOBenchmarks.mapUnmapLarge(bytes: 8 << 20, iterations: 1)
        #expect(large.count == 2)
        #expect(large.allSatisfy { $0.gibPerSecond > 0 && $0.bytes == 8 << 20 })
        let small = try VFIOBenchmarks.smallMapUnmapPairs(pairs: 200)
        #expect(small.iterations == 200)
        #expect(small.microsecondsPerIteration > 0)
        #expect(!small.description.isEmpty)
    }
}
