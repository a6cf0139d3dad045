# Sourced by tests/c/run.sh and tests/kotlin/run.sh: a scratch directory, a cleanup trap,
# `step`, and `start_xh_serve`, which runs the test server from the release build and
# exports its client config line as XH_SERVER_CONFIG.
# Expects: the caller's cwd is the repository root.

TARGET="${CARGO_TARGET_DIR:-target}"
LIB_DIR="$TARGET/release"
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n=== %s\n' "$*"; }

start_xh_serve() {
    step "start xh serve"
    "$LIB_DIR/xh" serve > "$WORK/server.json" 2> "$WORK/server.log" &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        [ -s "$WORK/server.json" ] && break
        sleep 0.1
    done
    XH_SERVER_CONFIG="$(head -1 "$WORK/server.json")"
    if [ -z "$XH_SERVER_CONFIG" ]; then
        echo "xh serve printed no config"; cat "$WORK/server.log"; exit 1
    fi
    export XH_SERVER_CONFIG
    echo "$XH_SERVER_CONFIG"
}
