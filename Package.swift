// swift-tools-version:6.0
import PackageDescription

// Layers (bottom-up; a layer imports only layers below it):
//   CIOMMUSupport (C atomics) -> Platform -> Formats -> Hardware -> Kernel -> IOMMUFD -> Simulation -> iommu-sim
//   Simulation -> Preload (+ the CPreload shim): the LD_PRELOAD library, a dynamic product
//   Simulation -> Fuzzing: the fuzz targets (libFuzzer entry in fuzz/, a package of its own)
// CReference holds plain-C reference implementations used only by the benchmarks.
// Release builds drop the runtime exclusivity checks (swift_beginAccess on every class-property
// access that spans a call or crosses a module; about 15% of a `run`). Debug builds, which
// `swift test` uses, keep them, so the tests still trap on any overlapping access.
let releaseSettings: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "SwiftIOMMU",
    products: [
        .library(name: "Platform", targets: ["Platform"]),
        .library(name: "Formats", targets: ["Formats"]),
        .library(name: "Hardware", targets: ["Hardware"]),
        .library(name: "Kernel", targets: ["Kernel"]),
        .library(name: "IOMMUFD", targets: ["IOMMUFD"]),
        .library(name: "Simulation", targets: ["Simulation"]),
        .executable(name: "iommu-sim", targets: ["iommu-sim"]),
        // LD_PRELOAD this into an unmodified program: it serves /dev/iommu (docs/architecture.md, "The C ABI").
        .library(name: "IOMMUPreload", type: .dynamic, targets: ["Preload"]),
        // The fuzz targets (`fuzz/run.sh TARGET SECONDS` builds them under libFuzzer).
        .library(name: "Fuzzing", targets: ["Fuzzing"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    ],
    targets: [
        .target(name: "CIOMMUSupport", cSettings: [.unsafeFlags(["-mcx16"])]),
        .target(name: "CReference", cSettings: [.unsafeFlags(["-O2"])]),
        .target(name: "Platform", dependencies: ["CIOMMUSupport"], swiftSettings: releaseSettings),
        .target(name: "Formats", dependencies: ["Platform"], swiftSettings: releaseSettings),
        .target(name: "Hardware", dependencies: ["Platform", "Formats"], swiftSettings: releaseSettings),
        .target(name: "Kernel", dependencies: ["Platform", "Formats", "Hardware"], swiftSettings: releaseSettings),
        .target(name: "IOMMUFD", dependencies: ["Platform", "Formats", "Kernel"], swiftSettings: releaseSettings),
        .target(
            name: "Simulation",
            dependencies: ["CIOMMUSupport", "Platform", "Formats", "Hardware", "Kernel", "IOMMUFD", .product(name: "Yams", package: "Yams")],
            resources: [.copy("Scenarios")],
            swiftSettings: releaseSettings
        ),
        .target(name: "CPreload"),
        .target(name: "Preload", dependencies: ["CPreload", "CIOMMUSupport", "Platform", "Formats", "Hardware", "Kernel", "IOMMUFD", "Simulation"],
                swiftSettings: releaseSettings),
        .target(name: "Fuzzing", dependencies: ["Platform", "Formats", "Hardware", "Kernel", "IOMMUFD", "Simulation"],
                swiftSettings: releaseSettings),
        .executableTarget(
            name: "iommu-sim",
            dependencies: [
                "Platform", "Formats", "Hardware", "Kernel", "IOMMUFD", "Simulation", "CReference",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: releaseSettings
        ),
        .testTarget(name: "PlatformTests", dependencies: ["Platform"]),
        .testTarget(name: "FormatsTests", dependencies: ["Platform", "Formats"]),
        .testTarget(name: "HardwareTests", dependencies: ["Platform", "Formats", "Hardware"]),
        .testTarget(name: "KernelTests", dependencies: ["Platform", "Formats", "Hardware", "Kernel", "IOMMUFD", "Simulation"]),
        .testTarget(name: "IOMMUFDTests", dependencies: ["Platform", "Formats", "Hardware", "Kernel", "IOMMUFD", "Simulation"]),
        .testTarget(name: "FuzzingTests", dependencies: ["Fuzzing"]),
        .testTarget(name: "SimulationTests", dependencies: ["Platform", "Formats", "Hardware", "Kernel", "IOMMUFD", "Simulation"]),
        // The CLI's benchmarks and option parsing (`@testable import iommu_sim`).
        .testTarget(name: "IOMMUSimTests", dependencies: ["iommu-sim", "Hardware", "Simulation", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                                        .product(name: "Yams", package: "Yams")]),
    ]
)
