import Benchmark
import IOMMUKit

let benchmarks: @Sendable () -> Void = {
    Benchmark("placeholder") { benchmark in
        blackHole(PageSize.size4K.bytes)
    }
}
