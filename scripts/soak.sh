#!/usr/bin/env bash
# The soak (issue 8; not part of the test command): SOAK_SECS (default 600) of churn in every
# mode at once through the lossy relay, sampling RSS, fds, threads and what the server holds
# every 10 s (tests/soak.rs says what it does and asserts). Release build. Prints the table;
# docs/reliability.md records the latest run.
#   bash scripts/soak.sh            # 10 minutes
#   SOAK_SECS=120 bash scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XH_CACHE:-$HOME/.cache/xhttp-mobile}/target}"
# Per-thread malloc arenas would keep freed memory per thread and hide (or fake) growth.
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
cargo test --release --test soak -- --ignored --nocapture --test-threads=1
