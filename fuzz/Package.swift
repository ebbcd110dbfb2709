// swift-tools-version:6.0
import PackageDescription

// The libFuzzer driver of the fuzz targets in ../Sources/Fuzzing. Built only by
// `fuzz/run.sh`, with `--sanitize=fuzzer --sanitize=address` (libFuzzer supplies `main`, so
// this package is not part of the root build).
let package = Package(
    name: "SwiftIOMMUFuzz",
    dependencies: [.package(name: "SwiftIOMMU", path: "..")],
    targets: [
        .executableTarget(name: "iommu-fuzz", dependencies: [.product(name: "Fuzzing", package: "SwiftIOMMU")],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
    ]
)
