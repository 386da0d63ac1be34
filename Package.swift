// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "rndz",
    products: [
        .library(name: "Rndz", targets: ["Rndz"]),
        .executable(name: "rndz-cli", targets: ["rndz-cli"]),
    ],
    targets: [
        // The C core. Its public header is the top-level include/rndz.h.
        .target(
            name: "CRndz",
            path: ".",
            sources: ["Sources/CRndz"],
            publicHeadersPath: "include",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("pthread")]
        ),
        .target(name: "Rndz", dependencies: ["CRndz"], path: "Sources/Rndz"),
        .executableTarget(name: "rndz-cli", dependencies: ["Rndz"], path: "Sources/rndz-cli"),
        .testTarget(name: "RndzTests", dependencies: ["Rndz", "CRndz"], path: "Tests/RndzTests"),
    ]
)
