// swift-tools-version: 6.2
//
// libFuzzer targets for IOMMUKit (docs/reliability.md). Kept out of the main package: every
// target here is built with `-sanitize=fuzzer`, whose runtime supplies `main`. Build and run
// with ./build.sh and ./run.sh TARGET SECONDS (or ./ci.sh), never with a plain `swift build`.

import PackageDescription

let settings: [SwiftSetting] = [.swiftLanguageMode(.v6), .unsafeFlags(["-parse-as-library"])]

let package = Package(
    name: "IOMMUKitFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "IOMMUKit", path: ".."),
    ],
    targets: [
        .target(name: "FuzzSupport", swiftSettings: settings),
        .executableTarget(
            name: "FuzzVFIOIoctl",
            dependencies: ["FuzzSupport", .product(name: "IOMMUKit", package: "IOMMUKit")],
            swiftSettings: settings
        ),
        .executableTarget(
            name: "FuzzTraceLine",
            dependencies: ["FuzzSupport", .product(name: "IOMMUScenario", package: "IOMMUKit")],
            swiftSettings: settings
        ),
        .executableTarget(
            name: "FuzzPageTableOps",
            dependencies: [
                "FuzzSupport",
                .product(name: "IOMMUKit", package: "IOMMUKit"),
                .product(name: "IOMMUScenario", package: "IOMMUKit"),
            ],
            swiftSettings: settings
        ),
        .executableTarget(
            name: "FuzzScenario",
            dependencies: [
                "FuzzSupport",
                .product(name: "IOMMUKit", package: "IOMMUKit"),
                .product(name: "IOMMUScenario", package: "IOMMUKit"),
            ],
            swiftSettings: settings
        ),
        .executableTarget(
            name: "FuzzVirtioRequest",
            dependencies: ["FuzzSupport", .product(name: "IOMMUKit", package: "IOMMUKit")],
            swiftSettings: settings
        ),
    ]
)
