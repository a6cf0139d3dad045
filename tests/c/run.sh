#!/usr/bin/env bash
# The C side of the test suite (called by scripts/test.sh; runnable alone):
#  1. include/xhttp.h is what cbindgen (pinned) generates now, and compiles in strict C11;
#  2. the C harness (tests/c/harness.c) against the built libxhttp_mobile.so and a running
#     `xh serve`: plain, under AddressSanitizer, ThreadSanitizer and valgrind; its return
#     code checks use the header's own lists (tests/c/documented.awk);
#  3. unloading (tests/c/dlopen.c): dlopen/use/dlclose cycles of the library as apps link
#     it (no default features) keep no fd and no heap (every allocation counted), plain
#     and under valgrind;
#  4. the proxy surface (tests/c/proxy.c: VLESS TCP flows, UDP sessions, SOCKS5) against
#     `xh serve --vless` and the real Xray (XRAY_BIN; scripts/test.sh sets it), plain, under
#     AddressSanitizer and valgrind;
#  5. the TUN surface (tests/c/tun.c: xh_tun_* misuse, and packets in and out of the
#     packet API through `xh serve --vless`), plain, under AddressSanitizer,
#     ThreadSanitizer and valgrind;
#  6. the README's "Use from C" example, compiled and run against the same server.
#
# Environment: CARGO_TARGET_DIR (where cargo builds; default target/),
# XH_VALGRIND_ITERS (iterations per thread of the misuse run under valgrind; default
# 10000 like the other runs: it takes about 2 minutes there).
# XH_RACE_ROUNDS (rounds of the close/free races; default 24, 8 under valgrind).
set -euo pipefail
cd "$(dirname "$0")/../.."

CBINDGEN_VERSION=0.29.4
source tests/support/serve.sh
source tests/support/xray.sh
CFLAGS=(-std=c11 -Wall -Wextra -Werror -pedantic -g -O1 -Iinclude -Itests/c)

step "cbindgen $CBINDGEN_VERSION: include/xhttp.h is fresh"
if [ "$(cbindgen --version 2>/dev/null || true)" != "cbindgen $CBINDGEN_VERSION" ]; then
    # --debug: it builds in half the time, and runs for a second on our sources.
    cargo install cbindgen --version "$CBINDGEN_VERSION" --locked --force --debug
fi
cbindgen --quiet --config cbindgen.toml --output "$WORK/xhttp.h" src/ffi/mod.rs
if ! diff -u include/xhttp.h "$WORK/xhttp.h"; then
    echo "include/xhttp.h differs from a fresh generation; regenerate it with:"
    echo "  cbindgen --config cbindgen.toml --output include/xhttp.h src/ffi/mod.rs"
    exit 1
fi
printf '#include "xhttp.h"\nint main(void) { return xh_version() == 0; }\n' > "$WORK/header.c"
cc "${CFLAGS[@]}" -c "$WORK/header.c" -o "$WORK/header.o"
echo "header fresh; compiles with ${CFLAGS[*]}"

step "tools: cc, valgrind"
if ! command -v valgrind >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq valgrind) >/dev/null
fi
cc --version | sed -n 1p  # sed reads everything: no SIGPIPE under pipefail
valgrind --version

step "build the library and xh (release)"
# The library as apps build it, then xh on top of the same build: xh adds no feature to
# the library or its dependencies (checked below: the second build compiles no library
# code), so the harness tests exactly what apps link and nothing is built twice.
cargo build --release --lib
test -f "$LIB_DIR/libxhttp_mobile.so"
# What the unloading test loads, kept aside in case a later build touches it.
mkdir -p "$WORK/mobile"
cp "$LIB_DIR/libxhttp_mobile.so" "$WORK/mobile/"
cargo build --release -p xh 2>&1 | tee "$WORK/xh-build.log"
if grep -q 'Compiling xhttp-mobile ' "$WORK/xh-build.log"; then
    echo "building xh recompiled the library: xh changes its feature set"; exit 1
fi

start_xh_serve

step "build the harness (plain, ASan, TSan) and the unloading test"
awk -f tests/c/documented.awk include/xhttp.h > "$WORK/documented.h"
CFLAGS+=(-I"$WORK")
SRC=(tests/c/harness.c tests/c/sha256.c)
LINK=(-L"$LIB_DIR" -lxhttp_mobile -lpthread)
cc "${CFLAGS[@]}" "${SRC[@]}" "${LINK[@]}" -o "$WORK/harness"
cc "${CFLAGS[@]}" -fsanitize=address -fno-omit-frame-pointer "${SRC[@]}" "${LINK[@]}" \
    -o "$WORK/harness-asan"
cc "${CFLAGS[@]}" -fsanitize=thread "${SRC[@]}" "${LINK[@]}" -o "$WORK/harness-tsan"
PROXY_SRC=(tests/c/proxy.c tests/c/sha256.c)
cc "${CFLAGS[@]}" "${PROXY_SRC[@]}" "${LINK[@]}" -o "$WORK/proxy"
cc "${CFLAGS[@]}" -fsanitize=address -fno-omit-frame-pointer "${PROXY_SRC[@]}" "${LINK[@]}" \
    -o "$WORK/proxy-asan"
TUN_SRC=(tests/c/tun.c)
cc "${CFLAGS[@]}" "${TUN_SRC[@]}" "${LINK[@]}" -o "$WORK/tun"
cc "${CFLAGS[@]}" -fsanitize=address -fno-omit-frame-pointer "${TUN_SRC[@]}" "${LINK[@]}" \
    -o "$WORK/tun-asan"
cc "${CFLAGS[@]}" -fsanitize=thread "${TUN_SRC[@]}" "${LINK[@]}" -o "$WORK/tun-tsan"
# -rdynamic: the allocator wrappers in dlopen.c must be what the library and libc call.
cc "${CFLAGS[@]}" -rdynamic tests/c/dlopen.c -ldl -lpthread -o "$WORK/dlopen"
export LD_LIBRARY_PATH="$LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

step "C harness: plain"
XH_HARNESS_ITERS=10000 "$WORK/harness"

step "C harness: AddressSanitizer (leak detection on)"
# The library is not instrumented, but every allocation it makes goes through ASan's
# malloc, so overflows into or out of C buffers and leaks at exit are caught.
# tests/c/lsan.supp names the one documented thread-exit leak; any other leak fails.
LSAN_OPTIONS=suppressions=tests/c/lsan.supp:print_suppressions=1 \
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 XH_HARNESS_ITERS=10000 \
    "$WORK/harness-asan"

step "C harness: ThreadSanitizer"
# The library is not instrumented: TSan sees the harness's own accesses and every
# pthread/malloc call, so it checks the C side's use of the ABI (buffers handed to calls
# on other threads, handles shared between threads), not the library's insides.
# ignore_noninstrumented_modules: the library's own synchronisation (Rust atomics) is
# invisible to TSan, so its malloc/free on one thread and free on another would be
# reported as races that are not; its interceptor calls are ignored instead.
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1 XH_HARNESS_ITERS=2000 "$WORK/harness-tsan"

step "C harness: valgrind (memcheck, errors and definite leaks fail the run)"
# 2,000 misuse iterations per thread (the plain and ASan runs do 10,000): under valgrind each
# is ~50x slower, and memory errors show in the first thousand; the other cases run whole.
# Deep stacks: the suppression of the header's one documented thread-exit leak matches on
# the pthread_key destructor frame at the bottom of the stack.
VALGRIND=(valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite
    --show-leak-kinds=definite --fair-sched=yes --num-callers=64
    --suppressions=tests/c/valgrind.supp)
XH_HARNESS_ITERS="${XH_VALGRIND_ITERS:-2000}" XH_RACE_ROUNDS="${XH_RACE_ROUNDS:-8}" \
    "${VALGRIND[@]}" "$WORK/harness"

step "proxy surface (VLESS TCP, UDP, SOCKS5) against xh serve --vless and Xray"
start_xh_serve_vless
start_xray_vless
PROXY_CONFIGS=("$XH_VLESS_CONFIG")
if [ -n "${XH_XRAY_CONFIG:-}" ]; then PROXY_CONFIGS+=("$XH_XRAY_CONFIG"); fi
"$WORK/proxy" "${PROXY_CONFIGS[@]}"
step "proxy surface: AddressSanitizer"
LSAN_OPTIONS=suppressions=tests/c/lsan.supp:print_suppressions=1 \
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 \
    "$WORK/proxy-asan" "${PROXY_CONFIGS[@]}"
step "proxy surface: valgrind"
"${VALGRIND[@]}" "$WORK/proxy" "${PROXY_CONFIGS[@]}"

step "TUN surface (xh_tun_*) against xh serve --vless"
"$WORK/tun" "$XH_VLESS_CONFIG"
step "TUN surface: AddressSanitizer"
LSAN_OPTIONS=suppressions=tests/c/lsan.supp:print_suppressions=1 \
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 "$WORK/tun-asan" "$XH_VLESS_CONFIG"
step "TUN surface: ThreadSanitizer"
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1 \
    "$WORK/tun-tsan" "$XH_VLESS_CONFIG"
step "TUN surface: valgrind"
# A few datagrams per thread: the paths are the same as in the runs above, ~50x slower.
XH_TUN_ROUNDS=4 "${VALGRIND[@]}" "$WORK/tun" "$XH_VLESS_CONFIG"

step "unloading: dlopen/use/dlclose cycles of the mobile build keep no fd or heap"
"$WORK/dlopen" "$WORK/mobile/libxhttp_mobile.so" 40 worker
"$WORK/dlopen" "$WORK/mobile/libxhttp_mobile.so" 40 main
XH_DLOPEN_VALGRIND=1 "${VALGRIND[@]}" "$WORK/dlopen" "$WORK/mobile/libxhttp_mobile.so" 6 worker

step "README 'Use from C' example"
awk '/^## Use from C/ {s=1} s && /^```c$/ {p=1; next} p && /^```$/ {exit} p' README.md \
    > "$WORK/example.c"
test -s "$WORK/example.c"
cc "${CFLAGS[@]}" "$WORK/example.c" "${LINK[@]}" -o "$WORK/example"
"$WORK/example" "$XH_SERVER_CONFIG"
