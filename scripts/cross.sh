#!/usr/bin/env bash
# Compiles the library for the Android targets we ship (arm64-v8a, armeabi-v7a, x86_64) on a
# machine without the NDK, so Android-only code (`cfg(target_os = "android")`) is compiled,
# with `-D warnings`, on every change. Called by scripts/test.sh; runnable alone.
#
# What it runs: `cargo check --lib` of the library (no test server) for each target. Every
# line of Rust that ships for Android is type-checked and linted exactly as it ships (same
# target, same features, same cfgs). ring's C (built by its build script even in a check) is
# compiled by Debian's clang for the Android triple at API level $ANDROID_API; without the
# NDK's sysroot it sees glibc's headers for the same CPU (the `libc6-dev-*-cross` packages)
# behind clang's own. That C output is thrown away: a check never links. What only a real
# NDK build adds: bionic's headers for the C, code generation and linking `libxhttp_mobile.so`
# against bionic (android/build.gradle.kts does that with cargo-ndk).
#
# iOS (`aarch64-apple-ios`) is not checked: cc-rs needs Apple's SDK (`xcrun` or SDKROOT) for
# any C, ring's C includes <TargetConditionals.h> and Apple's libc headers, and our os_log
# shim needs <os/log.h>. Stand-in headers would check a configuration that does not ship.
#
# Idempotent and self-installing: adds the rustup targets, clang and the header packages
# (apt-get, root or sudo) only when missing.
#
# Environment: CARGO_TARGET_DIR (default: as scripts/test.sh), XH_CROSS_TARGETS (a subset
# of the triples below, space-separated).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XH_CACHE:-$HOME/.cache/xhttp-mobile}/target}"
export CARGO_TERM_COLOR=never

# The AAR's minSdk (android/build.gradle.kts): clang's target triple carries it.
ANDROID_API=24

# Rust triple -> "clang triple (without the API level)  glibc header dir  Debian package".
# armv7: Android's armeabi-v7a passes floats in integer registers (softfp), so glibc's
# soft-float (armel) headers are the matching ones; the armhf ones want hard-float stubs.
declare -A CLANG_TRIPLE=(
    [aarch64-linux-android]=aarch64-linux-android
    [armv7-linux-androideabi]=armv7a-linux-androideabi
    [x86_64-linux-android]=x86_64-linux-android
)
declare -A HEADERS=(
    [aarch64-linux-android]=/usr/aarch64-linux-gnu/include
    [armv7-linux-androideabi]=/usr/arm-linux-gnueabi/include
    [x86_64-linux-android]=/usr/x86_64-linux-gnu/include
)
declare -A PACKAGE=(
    [aarch64-linux-android]=libc6-dev-arm64-cross
    [armv7-linux-androideabi]=libc6-dev-armel-cross
    [x86_64-linux-android]=libc6-dev-amd64-cross
)
read -r -a TARGETS <<<"${XH_CROSS_TARGETS:-aarch64-linux-android armv7-linux-androideabi x86_64-linux-android}"

step() { printf '\n=== %s [%s]\n' "$*" "$(date +%T)"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@"
}

step "cross toolchain (rustup targets, clang, glibc headers)"
for t in "${TARGETS[@]}"; do
    [ -n "${CLANG_TRIPLE[$t]:-}" ] || { echo "unknown target $t"; exit 2; }
    rustup target list --installed | grep -qx "$t" || rustup target add "$t"
    dpkg -s "${PACKAGE[$t]}" >/dev/null 2>&1 || apt_install "${PACKAGE[$t]}"
done
command -v clang >/dev/null || apt_install clang
CLANG_INCLUDE="$(clang -print-resource-dir)/include"
# llvm-ar from clang's own LLVM (a dependency of Debian's clang), for ring's C archive.
LLVM_AR="$(dirname "$(readlink -f "$(command -v clang)")")/llvm-ar"
clang --version | sed -n 1p

# Compiler wrappers named like the NDK's (`<triple><api>-clang`): cc-rs then leaves the
# target to the wrapper, as with the NDK (for a plain `clang` it adds a `--target` of its own
# without the API level, and for armv7 without the CPU).
WRAPPERS="$CARGO_TARGET_DIR/cross-cc"
mkdir -p "$WRAPPERS"

# One cargo for every target: the three graphs share the host's build scripts and keep
# both cores busy where one graph alone would wait on a single crate.
ENV=()
TARGET_ARGS=()
for t in "${TARGETS[@]}"; do
    var="${t//-/_}"
    upper="${var^^}"
    cc="$WRAPPERS/${CLANG_TRIPLE[$t]}$ANDROID_API-clang"
    printf '#!/bin/sh\nexec clang --target=%s "$@"\n' "${CLANG_TRIPLE[$t]}$ANDROID_API" >"$cc.tmp"
    chmod +x "$cc.tmp"
    mv "$cc.tmp" "$cc"
    ENV+=("CC_$var=$cc" "AR_$var=$LLVM_AR"
        "CFLAGS_$var=-nostdlibinc -isystem $CLANG_INCLUDE -isystem ${HEADERS[$t]}"
        "CARGO_TARGET_${upper}_RUSTFLAGS=-D warnings")
    TARGET_ARGS+=(--target "$t")
done
step "cargo check --lib ${TARGET_ARGS[*]} (-D warnings)"
env "${ENV[@]}" cargo check -p xhttp-mobile --lib "${TARGET_ARGS[@]}"
