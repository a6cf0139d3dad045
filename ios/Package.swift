// swift-tools-version:5.9
// The Swift package of xhttp-mobile: the uniffi-generated Swift bindings (module XhttpMobile)
// over the Rust library as an XCFramework (module xhttp_mobileFFI). Run ./build-xcframework.sh
// first: it builds build/xhttp_mobileFFI.xcframework and copies the bindings into Sources/.
import PackageDescription

let package = Package(
    name: "XhttpMobile",
    platforms: [.iOS(.v15)],
    products: [
        .library(name: "XhttpMobile", targets: ["XhttpMobile"]),
    ],
    targets: [
        .binaryTarget(
            name: "xhttp_mobileFFI",
            path: "build/xhttp_mobileFFI.xcframework"
        ),
        .target(
            name: "XhttpMobile",
            dependencies: ["xhttp_mobileFFI"],
            path: "Sources/XhttpMobile"
        ),
    ]
)
