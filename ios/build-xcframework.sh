#!/usr/bin/env bash
# Builds ios/build/xhttp_mobileFFI.xcframework (the Rust library as static libraries for iOS
# devices and the iOS simulator, with the uniffi FFI header and its module map) and copies
# the Swift bindings into ios/Sources/XhttpMobile/, so ios/Package.swift can be used.
#
# Runs on macOS with Xcode (xcodebuild, lipo, the iOS SDKs) and Rust (rustup). Cannot run
# on Linux: there is no Apple SDK there for ring's C or the os_log shim (see README.md).
#
# Environment: CARGO_TARGET_DIR (default: target/ in the repository),
# IPHONEOS_DEPLOYMENT_TARGET (default 15.0, as Package.swift).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
cd "$root"

export IPHONEOS_DEPLOYMENT_TARGET="${IPHONEOS_DEPLOYMENT_TARGET:-15.0}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
out="$here/build"
framework="$out/xhttp_mobileFFI.xcframework"

device=aarch64-apple-ios
simulators=(aarch64-apple-ios-sim x86_64-apple-ios)

for tool in cargo rustup xcodebuild lipo; do
    command -v "$tool" >/dev/null || { echo "$tool is required (macOS with Xcode and Rust)" >&2; exit 1; }
done
for t in "$device" "${simulators[@]}"; do
    rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done

# Only the static library: the crate also lists cdylib, which iOS apps cannot ship.
build() {
    echo "== cargo: $1"
    cargo rustc -p xhttp-mobile --lib --release \
        --target "$1" --crate-type staticlib
}
build "$device"
for t in "${simulators[@]}"; do build "$t"; done

rm -rf "$out/headers" "$out/simulator" "$framework"
mkdir -p "$out/headers" "$out/simulator"

# The module Swift imports (`import xhttp_mobileFFI` in the generated bindings). Inside an
# XCFramework's headers the module map must be called module.modulemap. The C ABI header
# rides along for C and Objective-C callers.
cp bindings/swift/xhttp_mobileFFI.h "$out/headers/"
cp bindings/swift/xhttp_mobileFFI.modulemap "$out/headers/module.modulemap"
cp include/xhttp.h "$out/headers/"

# One simulator library for both simulator CPUs.
sim_libs=()
for t in "${simulators[@]}"; do sim_libs+=("$target_dir/$t/release/libxhttp_mobile.a"); done
lipo -create "${sim_libs[@]}" -output "$out/simulator/libxhttp_mobile.a"

xcodebuild -create-xcframework \
    -library "$target_dir/$device/release/libxhttp_mobile.a" -headers "$out/headers" \
    -library "$out/simulator/libxhttp_mobile.a" -headers "$out/headers" \
    -output "$framework"

# SwiftPM only compiles sources inside the package directory.
mkdir -p "$here/Sources/XhttpMobile"
cp bindings/swift/xhttp_mobile.swift "$here/Sources/XhttpMobile/"

echo "built $framework"
echo "Swift package: $here/Package.swift (add it to Xcode as a local package)"
