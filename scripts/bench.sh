#!/usr/bin/env bash
# Benchmark our client against Xray-core's client (same server, same run). Not part of CI.
# Usage: bash scripts/bench.sh [MiB=256] [mode=stream-up]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XH_CACHE:-$HOME/.cache/xhttp-mobile}/target}"
XRAY_VERSION=v1.260327.0
XRAY_DIR="${XH_CACHE:-$HOME/.cache/xhttp-mobile}/xray/$XRAY_VERSION"
export XRAY_BIN="$XRAY_DIR/main"
if [ ! -x "$XRAY_BIN" ]; then
  mkdir -p "$XRAY_DIR"
  GOBIN="$XRAY_DIR" GOFLAGS=-mod=mod go install "github.com/xtls/xray-core/main@$XRAY_VERSION"
fi
cargo build --release -p xh
cargo build --release --example bench
export XH_BIN="$CARGO_TARGET_DIR/release/xh"
"$XRAY_BIN" version | sed -n 1p
"$CARGO_TARGET_DIR/release/examples/bench" "${1:-256}" "${2:-stream-up}"
