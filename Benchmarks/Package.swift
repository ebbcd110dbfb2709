// swift-tools-version:6.1
import PackageDescription

// Regression benchmarks on ordo-one/benchmark (`swift package benchmark` in this folder).
// The user-facing figures with C references come from `iommu-sim bench ...`.
let package = Package(
    name: "SwiftIOMMUBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "SwiftIOMMU", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "IOMMUBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "Platform", package: "SwiftIOMMU"),
                .product(name: "Formats", package: "SwiftIOMMU"),
                .product(name: "Hardware", package: "SwiftIOMMU"),
                .product(name: "Kernel", package: "SwiftIOMMU"),
            ],
            path: "Benchmarks/IOMMUBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
