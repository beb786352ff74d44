import IOMMUBase
import Testing
@testable import VFIOType1

/// The benchmark entry points run (small) and report sane numbers.
@Suite("VFIO benchmarks (smoke)")
struct BenchmarkSmokeTests {
    @Test func benchmarksRunSmall() throws {
        let large = try VFIOBenchmarks.mapUnmapLarge(bytes: 8 << 20, iterations: 1)
        #expect(large.count == 3)
        #expect(large.allSatisfy { $0.gibPerSecond > 0 && $0.bytes == 8 << 20 })
        let small = try VFIOBenchmarks.smallMapUnmapPairs(pairs: 200)
        #expect(small.iterations == 200)
        #expect(small.microsecondsPerIteration > 0)
        #expect(!small.description.isEmpty)
    }
}

/// The full benchmark, run only with `IOMMUKIT_VFIO_BENCH=1` (use a release build:
/// `IOMMUKIT_VFIO_BENCH=1 swift test -c release -Xswiftc -enable-testing --filter VFIOBenchmarkReport`).
@Suite("VFIOBenchmarkReport")
struct VFIOBenchmarkReport {
    @Test func fullBenchmarkReport() throws {
        guard let flag = getenv("IOMMUKIT_VFIO_BENCH"), String(cString: flag) == "1" else { return }
        for result in try VFIOBenchmarks.mapUnmapLarge(bytes: 1 << 30, iterations: 3) { print("BENCH", result) }
        print("BENCH", try VFIOBenchmarks.smallMapUnmapPairs(pairs: 10_000))
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
