#!/usr/bin/env bash
# The TUN benchmark (examples/bench_tun.rs): `xh tun` against `xh socks`, tun2proxy + `xh
# socks` and tun2proxy + Xray-core's client, same server, same run, inside network
# namespaces it creates. Needs root. Not part of CI.
# Usage: bash scripts/bench-tun.sh [MiB=256] [mode=stream-one] [flows=1000] [paths=1234]
# Env: BENCH_XMUX (both clients' xmux JSON), BENCH_TUN_OPTIONS (fields added to xh tun's).
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
  echo "SKIPPED bench-tun: $*"
  exit 0
}
# Checked before building anything: without these there is nothing to measure.
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces, TUN devices)"
[ -e /dev/net/tun ] || skip "/dev/net/tun is missing"
for tool in unshare nsenter ip; do
  command -v "$tool" >/dev/null || skip "\`$tool\` is not installed"
done
if ! why=$(unshare -n -- ip tuntap add dev probe0 mode tun 2>&1); then
  skip "cannot create a network namespace with a TUN device: $why"
fi

CACHE="${XH_CACHE:-$HOME/.cache/xhttp-mobile}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
XRAY_VERSION=v1.260327.0
XRAY_DIR="$CACHE/xray/$XRAY_VERSION"
export XRAY_BIN="$XRAY_DIR/main"
if [ ! -x "$XRAY_BIN" ]; then
  mkdir -p "$XRAY_DIR"
  GOBIN="$XRAY_DIR" GOFLAGS=-mod=mod go install "github.com/xtls/xray-core/main@$XRAY_VERSION"
fi
# tun2proxy from crates.io, pinned; built in a temporary directory (not our target dir).
TUN2PROXY_VERSION=0.8.7
TUN2PROXY_DIR="$CACHE/tun2proxy"
export TUN2PROXY_BIN="$TUN2PROXY_DIR/bin/tun2proxy-bin"
if [ ! -x "$TUN2PROXY_BIN" ] || ! "$TUN2PROXY_BIN" --version | grep -q "$TUN2PROXY_VERSION"; then
  env -u CARGO_TARGET_DIR cargo install tun2proxy --locked --version "$TUN2PROXY_VERSION" \
    --root "$TUN2PROXY_DIR" --bin tun2proxy-bin
fi
cargo build --release -p xh
cargo build --release --example bench_tun
export XH_BIN="$CARGO_TARGET_DIR/release/xh"
"$XRAY_BIN" version | sed -n 1p
"$TUN2PROXY_BIN" --version
# The machine is shared: the load says how much the absolute numbers are to be trusted.
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
"$CARGO_TARGET_DIR/release/examples/bench_tun" "${1:-256}" "${2:-stream-one}" "${3:-1000}" "${4:-1234}"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
