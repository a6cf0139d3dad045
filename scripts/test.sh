#!/usr/bin/env bash
# The whole test suite. Installs what the tests need (Rust components and crates) and runs
# formatting, lint, unit and integration tests, the library alone (no server or CLI code)
# and its check for the Android targets (scripts/cross.sh),
# `xh demo`, the C ABI checks (tests/c/run.sh: header freshness, the C harness plain,
# under ASan and under valgrind, the proxy surface against the test server and the real
# Xray, the README's C example), the uniffi bindings (tests/kotlin/run.sh: freshness,
# and the generated Kotlin run on the JVM, also against Xray), and a short run of every
# fuzz target (scripts/fuzz.sh). Builds are
# cached outside the repo so repeated runs are fast.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XH_CACHE:-$HOME/.cache/xhttp-mobile}/target}"
export CARGO_TERM_COLOR=never
step() { printf '\n=== %s [%s]\n' "$*" "$(date +%T)"; }

step "toolchain"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo --version

# Xray-core for the interop tests and the C and Kotlin runs against a real VLESS server:
# from the Go module proxy, pinned, cached outside the repo.
# The proxy serves Xray's Go-compatible tags (v1.YYMMDD.N); v1.260327.0 is release v26.3.27,
# the newest it serves (the v26.7.28 commit pseudo-version is refused).
# When missing it builds in the background while cargo compiles (about 2 minutes cold, much
# of it downloads), in a process group of its own so that a failed run stops it too.
XRAY_VERSION=v1.260327.0
XRAY_DIR="${XH_CACHE:-$HOME/.cache/xhttp-mobile}/xray/$XRAY_VERSION"
export XRAY_BIN="$XRAY_DIR/main"
xray_pid=""
if [ ! -x "$XRAY_BIN" ]; then
  mkdir -p "$XRAY_DIR"
  GOBIN="$XRAY_DIR" GOFLAGS=-mod=mod setsid go install "github.com/xtls/xray-core/main@$XRAY_VERSION" \
    >"$XRAY_DIR/build.log" 2>&1 &
  xray_pid=$!
  trap 'kill -- -"$xray_pid" 2>/dev/null || true' EXIT
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (workspace, all targets, -D warnings)"
# uniffi-bindgen (three lines) is left out here and in `cargo test`: building it brings
# uniffi's whole CLI, and feature unification would give the library that CLI too.
cargo clippy --workspace --exclude uniffi-bindgen --all-targets --features xhttp-mobile/interop -- -D warnings

step "the library alone: no server code, no CLI dependencies"
# What an app links: the root package with its default (empty) feature set. Its dependency
# tree must not reach the test server, rcgen (certificates) or tokio's signal handling.
cargo tree -p xhttp-mobile -e normal,build -f '{p} {f}' > "$CARGO_TARGET_DIR/lib-tree.txt"
if grep -E '^(.* )?(xhttp-testserver|rcgen) |^.*tokio v[^ ]+ .*signal' "$CARGO_TARGET_DIR/lib-tree.txt"; then
  echo "the library's dependency tree reaches server or CLI code (above)"; exit 1
fi
# It builds alone: checked below for the Android targets, and built (release, as apps link
# it) by tests/c/run.sh before anything else is.

# Android targets, -D warnings (installs rustup targets, clang, glibc headers when missing).
bash scripts/cross.sh

step "Xray-core $XRAY_VERSION"
if [ -n "$xray_pid" ]; then
  if ! wait "$xray_pid"; then
    cat "$XRAY_DIR/build.log"; echo "building Xray-core failed (above)"; exit 1
  fi
  trap - EXIT
fi
# Not `| head -1`: with pipefail, head closing the pipe early kills the producer (SIGPIPE, exit 141).
"$XRAY_BIN" version | sed -n 1p

step "C ABI: header freshness, C harness (plain, ASan, valgrind), proxy surface against xh serve and Xray, README C example"
bash tests/c/run.sh

step "uniffi bindings: freshness (Kotlin, Swift), the Kotlin test on the JVM"
bash tests/kotlin/run.sh

step "tools for the TUN test (tests/tun.rs): ip, unshare, nsenter, curl"
# It runs as root inside network namespaces it creates; without these it prints SKIPPED.
if ! command -v ip >/dev/null || ! command -v nsenter >/dev/null || ! command -v curl >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq iproute2 util-linux curl) >/dev/null
fi
ip -V

step "cargo test (workspace), with the interop tests against Xray-core"
# tests/hostile.rs builds its Go server (tools/hostile, quic-go from the Go module proxy)
# with `go build`, cached in $XH_CACHE/hostile/<hash of its sources>/.
# The `interop` feature adds tests/interop.rs (one test at a time; it also runs the xh this
# build puts beside the tests) and the TUN test against Xray to the same build, with the
# features clippy checked, so nothing is compiled twice.
cargo test --workspace --exclude uniffi-bindgen --features xhttp-mobile/interop -- --test-threads=2

step "fuzz: a short run of every target (cargo-fuzz, nightly, AddressSanitizer)"
# Installs the nightly toolchain and cargo-fuzz when missing; long runs: FUZZ_SECONDS=600.
FUZZ_SECONDS="${FUZZ_SECONDS:-15}" bash scripts/fuzz.sh

step "xh demo"
cargo run --release -p xh -- demo
