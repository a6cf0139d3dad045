#!/usr/bin/env bash
# The Kotlin/Swift side of the test suite (called by scripts/test.sh; runnable alone):
#  1. bindings/ is what uniffi-bindgen (the crate's own, same uniffi version) generates from
#     the built library now, for Kotlin and Swift (Swift cannot be compiled here, so its
#     check is freshness only);
#  2. the generated Kotlin compiled with tests/kotlin/src by Maven (Kotlin compiler and JNA
#     from Maven Central) and run on the JVM against the built library and `xh serve`;
#  3. the VLESS surface (connectTcp, XhUdp, XhSocksServer) against `xh serve --vless` and
#     the real Xray-core;
#  4. the TUN data plane (XhTun) driven by the test's own TCP/IP stack, against the same two
#     servers; a panic message anywhere in its output fails the step (a sink that throws
#     must not panic the library).
#
# Environment: CARGO_TARGET_DIR (where cargo builds; default target/); XRAY_BIN (Xray-core
# for step 3; without it the Xray cases are skipped, loudly).
set -euo pipefail
cd "$(dirname "$0")/../.."

source tests/support/serve.sh
source tests/support/xray.sh

step "build the library, xh and uniffi-bindgen"
cargo build --release --lib
cargo build --release -p xh
cargo build -p uniffi-bindgen --profile bindgen  # Cargo.toml says why a profile of its own
BINDGEN="$TARGET/bindgen/uniffi-bindgen"

step "bindings/ is fresh (Kotlin and Swift)"
for lang in kotlin swift; do
    "$BINDGEN" generate --library "$LIB_DIR/libxhttp_mobile.so" --language "$lang" \
        --out-dir "$WORK/$lang" --no-format >/dev/null
    if ! diff -ru "bindings/$lang" "$WORK/$lang"; then
        echo "bindings/$lang differs from a fresh generation; regenerate with:"
        echo "  cargo build --release --lib && cargo run -p uniffi-bindgen -- \\"
        echo "    generate --library \$CARGO_TARGET_DIR/release/libxhttp_mobile.so --language $lang --out-dir bindings/$lang --no-format"
        exit 1
    fi
done
echo "bindings fresh"

step "Kotlin: compile the bindings and the test (Maven)"
command -v mvn >/dev/null || { echo "Maven (mvn) is required"; exit 1; }
(cd tests/kotlin && mvn -q -B package -DskipTests dependency:build-classpath \
    -Dmdep.outputFile=target/cp.txt)

start_xh_serve

step "Kotlin: the bindings against the library on the JVM"
java -Djna.library.path="$LIB_DIR" \
    -cp "tests/kotlin/target/classes:$(cat tests/kotlin/target/cp.txt)" \
    BindingsTestKt "$XH_SERVER_CONFIG" 2>&1 | tee "$WORK/bindings-test.log"
# A throwing protector or sink must be an error, not a panic caught at the boundary.
if grep -q "panicked" "$WORK/bindings-test.log"; then
    echo "the library panicked during the bindings test (see above)"
    exit 1
fi

start_xh_serve_vless
start_xray_vless

step "Kotlin: VLESS flows, UDP sessions and SOCKS servers (xh serve --vless, Xray)"
java -Djna.library.path="$LIB_DIR" \
    -cp "tests/kotlin/target/classes:$(cat tests/kotlin/target/cp.txt)" \
    ProxyTestKt

step "Kotlin: the TUN data plane, packets from a test stack (xh serve --vless, Xray)"
java -Djna.library.path="$LIB_DIR" \
    -cp "tests/kotlin/target/classes:$(cat tests/kotlin/target/cp.txt)" \
    TunTest 2>&1 | tee "$WORK/tun-test.log"
if grep -q "panicked" "$WORK/tun-test.log"; then
    echo "the library panicked during the TUN test (see above)"
    exit 1
fi
