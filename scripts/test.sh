#!/usr/bin/env bash
# The whole test suite. Installs what the tests need (Rust components and crates) and runs
# formatting, lint, unit and integration tests, the mobile (no test server) build,
# `xh demo`, and the C ABI checks (tests/c/run.sh: header freshness, the C harness plain,
# under ASan and under valgrind, the README's C example). Builds are cached outside the
# repo so repeated runs are fast.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XH_CACHE:-$HOME/.cache/xhttp-mobile}/target}"
export CARGO_TERM_COLOR=never
step() { printf '\n=== %s\n' "$*"; }

step "toolchain"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --all-targets -- -D warnings

step "mobile build (no test server)"
cargo build --lib --no-default-features

step "C ABI: header freshness, C harness (plain, ASan, valgrind), README C example"
bash tests/c/run.sh

step "cargo test"
cargo test -- --test-threads=2

step "xh demo"
cargo run --release --bin xh -- demo
