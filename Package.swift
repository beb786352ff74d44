// swift-tools-version: 6.2
//
// IOMMUKit: a userspace implementation of the Linux IOMMU stack.
// One module per layer; see docs/architecture.md (and DESIGN.md in the project's shared material).

import PackageDescription

/// Settings every IOMMUKit target shares: Swift 6 mode (strict concurrency) and explicit `any`.
let strictSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "IOMMUKit",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "IOMMUKit", targets: ["IOMMUKit"]),
        .executable(name: "iommu", targets: ["iommu"]),
        // For fuzz/ (a separate package): the trace and ops-file parsers.
        .library(name: "IOMMUScenario", targets: ["IOMMUScenario"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // MARK: - Library layers, bottom to top
        .target(name: "IOMMUBase", swiftSettings: strictSettings),
        .target(name: "PhysicalMemory", dependencies: ["IOMMUBase"], swiftSettings: strictSettings),
        .target(name: "IOPageTable", dependencies: ["IOMMUBase", "PhysicalMemory"], swiftSettings: strictSettings),
        .target(name: "IOVAAllocator", dependencies: ["IOMMUBase"], swiftSettings: strictSettings),
        .target(name: "IOMMUCore", dependencies: ["IOMMUBase"], swiftSettings: strictSettings),
        .target(
            name: "IOMMUHardware",
            dependencies: ["IOMMUBase", "PhysicalMemory", "IOPageTable", "IOMMUCore"],
            swiftSettings: strictSettings
        ),
        .target(
            name: "VFIOType1",
            dependencies: ["IOMMUBase", "PhysicalMemory", "IOMMUCore"],
            swiftSettings: strictSettings
        ),
        .target(
            name: "DMAMapping",
            dependencies: ["IOMMUBase", "PhysicalMemory", "IOVAAllocator", "IOMMUCore"],
            swiftSettings: strictSettings
        ),
        .target(
            name: "VirtioIOMMU",
            dependencies: ["IOMMUBase", "PhysicalMemory", "IOPageTable", "IOMMUCore"],
            swiftSettings: strictSettings
        ),
        .target(
            name: "IOMMUKit",
            dependencies: [
                "IOMMUBase", "PhysicalMemory", "IOPageTable", "IOVAAllocator", "IOMMUCore", "IOMMUHardware", "VFIOType1",
                "VirtioIOMMU", "DMAMapping",
            ],
            swiftSettings: strictSettings
        ),

        // MARK: - Scenarios and traces (the first module allowed to import Foundation)
        .target(
            name: "IOMMUScenario",
            dependencies: [
                "IOMMUBase", "PhysicalMemory", "IOPageTable", "IOVAAllocator", "IOMMUCore", "IOMMUHardware", "VFIOType1",
                "VirtioIOMMU", "DMAMapping",
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strictSettings
        ),

        // MARK: - Command-line tool
        .target(
            name: "IOMMUCLI",
            dependencies: [
                "IOMMUKit",
                "IOMMUScenario",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(name: "iommu", dependencies: ["IOMMUCLI"], swiftSettings: strictSettings),

        // MARK: - Tests
        .target(
            name: "IOMMUTestSupport",
            dependencies: ["IOMMUBase", "IOMMUCore"],
            path: "Tests/IOMMUTestSupport",
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "IOMMUBaseTests",
            dependencies: ["IOMMUBase", "IOMMUTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "PhysicalMemoryTests",
            dependencies: ["PhysicalMemory", "IOMMUTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "IOPageTableTests",
            dependencies: ["IOPageTable", "IOMMUTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "IOVAAllocatorTests",
            dependencies: ["IOVAAllocator", "IOMMUTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "IOMMUCoreTests",
            dependencies: ["IOMMUCore", "IOMMUTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "VirtioIOMMUTests",
            dependencies: ["VirtioIOMMU", "IOMMUTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "IOMMUHardwareTests",
            dependencies: ["IOMMUHardware", "IOMMUTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "IOMMUScenarioTests",
            dependencies: ["IOMMUScenario", "IOMMUTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "VFIOType1Tests",
            dependencies: ["VFIOType1", "IOMMUTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "DMAMappingTests",
            dependencies: ["DMAMapping", "PhysicalMemory", "IOVAAllocator", "IOMMUCore", "IOMMUHardware", "IOMMUTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "IOMMUCLITests",
            dependencies: ["IOMMUCLI", "IOMMUTestSupport"],
            swiftSettings: strictSettings
        ),
    ]
)
