// IOVA allocator benchmarks (package-benchmark). The same workloads as `iommu bench iova`
// (perf-baseline.md W1, W2, W3 rand), per policy, with malloc counts: the magazine hot path
// must not allocate.
//
//   cd Benchmarks && swift package --disable-sandbox benchmark --target IOVABenchmarks

import Benchmark
import IOMMUKit

private let limit32: UInt64 = 0xFFFFF
private let limit48: UInt64 = 0xF_FFFF_FFFF

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        scalingFactor: .kilo,
        maxDuration: .seconds(2)
    )

    for policy in IOVADomain.Policy.allCases {
        // W1: fastAlloc + fastFree of one page, 32-bit limit (magazine hot path).
        Benchmark("W1 fastAlloc+fastFree 1 page (\(policy.rawValue))") { benchmark in
            let domain = try IOVADomain(startPFN: 1, cpuCount: 2, policy: policy)
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                let pfn = try domain.fastAlloc(size: 1, limitPFN: limit32, flushCaches: false, cpu: 0)
                domain.fastFree(pfn: pfn, size: 1, cpu: 0)
                blackHole(pfn)
            }
        }

        // W2: random sizes 1...64 (33+ go to the tree every time).
        Benchmark("W2 fastAlloc+fastFree 1...64 pages (\(policy.rawValue))") { benchmark in
            let domain = try IOVADomain(startPFN: 1, cpuCount: 2, policy: policy)
            var rng = SplitMix64(seed: 1)
            var sizes = [UInt64](repeating: 0, count: 4096)
            for i in 0..<sizes.count { sizes[i] = 1 + rng.next() % 64 }
            var i = 0
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                let size = sizes[i & 4095]
                i &+= 1
                let pfn = try domain.fastAlloc(size: size, limitPFN: limit32, flushCaches: false, cpu: 0)
                domain.fastFree(pfn: pfn, size: size, cpu: 0)
                blackHole(pfn)
            }
        }

        // W3 rand: 100,000 live size-aligned tree allocations, free a random one + allocate.
        Benchmark("W3 rand tree churn, 100k live (\(policy.rawValue))",
                  configuration: .init(metrics: [.wallClock, .mallocCountTotal], scalingFactor: .kilo, maxDuration: .seconds(4))) { benchmark in
            let domain = try IOVADomain(startPFN: 1, cpuCount: 2, policy: policy)
            var rng = SplitMix64(seed: 1)
            let live = 100_000
            var pfns = [UInt64](repeating: 0, count: live)
            var use32 = true
            func allocate(_ size: UInt64) -> UInt64 {
                if use32, let r = try? domain.alloc(size: size, limitPFN: limit32, sizeAligned: true) { return r.first.rawValue }
                use32 = false
                return (try? domain.alloc(size: size, limitPFN: limit48, sizeAligned: true))?.first.rawValue ?? 0
            }
            for i in 0..<live { pfns[i] = allocate(1 + rng.next() % 16) }
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                let i = Int(rng.next() % UInt64(live))
                domain.free(PFN(pfns[i]))
                pfns[i] = allocate(1 + rng.next() % 16)
                blackHole(pfns[i])
            }
        }
    }
}
