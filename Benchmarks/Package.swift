// swift-tools-version: 6.2
//
// Developer benchmarks (ordo-one/benchmark). Run from this folder:
//   swift package --allow-writing-to-package-directory benchmark
// or one suite:  swift package benchmark --target PageTableBenchmarks
// Users get the same figures from `iommu bench`.

import PackageDescription

let package = Package(
    name: "IOMMUKitBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "IOMMUKit", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "PageTableBenchmarks",
            dependencies: [
                .product(name: "IOMMUKit", package: "IOMMUKit"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/PageTableBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "IOVABenchmarks",
            dependencies: [
                .product(name: "IOMMUKit", package: "IOMMUKit"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/IOVABenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "VirtioBenchmarks",
            dependencies: [
                .product(name: "IOMMUKit", package: "IOMMUKit"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/VirtioBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "HardwareBenchmarks",
            dependencies: [
                .product(name: "IOMMUKit", package: "IOMMUKit"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/HardwareBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
