#!/usr/bin/env bash
# Fuzzing (cargo-fuzz: nightly Rust, libFuzzer, AddressSanitizer) of every target in fuzz/:
# config import, VLESS wire, SOCKS5 wire, Mux.Cool/XUDP frames, and the C ABI call-sequence
# fuzzer. Installs what it needs (the nightly toolchain, cargo-fuzz) when missing.
#
#   bash scripts/fuzz.sh              every target for FUZZ_SECONDS (default 20; the test
#                                     command runs this)
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh [target...]   a long run (docs/reliability.md)
#
# Corpora grow in the cache ($XH_CACHE, default ~/.cache/xhttp-mobile/fuzz-corpus/<target>),
# seeded from fuzz/seeds/. A finding fails the run; libFuzzer leaves the input in
# fuzz/artifacts/<target>/ (reproduce: cargo +nightly fuzz run <target> <that file>).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
CACHE="${XH_CACHE:-$HOME/.cache/xhttp-mobile}"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-20}"
TARGET_DIR="$CACHE/fuzz-target"
export CARGO_TERM_COLOR=never

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
rustup run nightly rustc --version
if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    # --debug: it builds in half the time; it only drives cargo and libFuzzer.
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --force --debug
fi

cd fuzz
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    mapfile -t TARGETS < <(cargo +nightly fuzz list)
fi
# A short run is a check that every target builds and holds for a while, and optimizing
# the build takes longer (about 5 minutes cold on 2 cores) than the short runs themselves:
# it builds without optimizations (overflow checks and ASan stay on). A long run optimizes.
BUILD=(--dev)
if [ "$SECONDS_PER_TARGET" -ge 120 ]; then BUILD=(); fi
# One build for every target: they share the library and its dependencies.
cargo +nightly fuzz build "${BUILD[@]}" --target-dir "$TARGET_DIR"
# libFuzzer runs every input of its corpus before it fuzzes, and -max_total_time does not
# cover that: abi_sequence's corpus (about 500 inputs at 10 per second, each starting and
# stopping the library's runtime) made a "15 s" run take 84 s. A short run (under 2 minutes a target) therefore starts
# from a random sample of the cached corpus (a different one each run, so every input is
# replayed now and then) and copies what it finds back; a long run reads the whole corpus.
# Unoptimized (above), abi_sequence takes about half a second an input (real QUIC each): a short
# run replays 20 cached inputs (42 runs in 20 s measured), not 100.
SAMPLE=20
if [ "$SECONDS_PER_TARGET" -ge 120 ]; then SAMPLE=0; fi
for t in "${TARGETS[@]}"; do
    corpus="$CACHE/fuzz-corpus/$t"
    mkdir -p "$corpus" "artifacts/$t"
    run_corpus="$corpus"
    if [ "$SAMPLE" -gt 0 ] && [ "$(find "$corpus" -type f | wc -l)" -gt "$SAMPLE" ]; then
        run_corpus="$(mktemp -d)"
        find "$corpus" -type f | shuf -n "$SAMPLE" | xargs -r cp -t "$run_corpus"
    fi
    printf '\n=== fuzz %s for %ss\n' "$t" "$SECONDS_PER_TARGET"
    # -timeout: one input taking this long is a finding (a hang); -rss_limit_mb: so is
    # memory that grows without bound. The seeds are read, new inputs go to the cache.
    rc=0
    cargo +nightly fuzz run "${BUILD[@]}" --target-dir "$TARGET_DIR" "$t" "$run_corpus" "seeds/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=60 -rss_limit_mb=4096 \
        -print_final_stats=1 > "$CACHE/fuzz-$t.log" 2>&1 || rc=$?
    grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb)' \
        "$CACHE/fuzz-$t.log" || true
    if [ "$run_corpus" != "$corpus" ]; then
        # Inputs are named by their SHA-1: what is already cached is the same input.
        cp -n -t "$corpus" "$run_corpus"/* 2>/dev/null || true
        rm -rf "$run_corpus"
    fi
    if [ "$rc" -ne 0 ]; then
        echo "fuzz target $t failed (exit $rc); the end of its log:"
        tail -60 "$CACHE/fuzz-$t.log"
        exit 1
    fi
done
