# Sourced by tests/c/run.sh and tests/kotlin/run.sh: a scratch directory, a cleanup trap,
# `step`, `start_xh_serve`, which runs the test server from the release build and
# exports its client config line as XH_SERVER_CONFIG, and `start_xh_serve_vless`, the same
# with a VLESS target (XH_VLESS_CONFIG).
# Expects: the caller's cwd is the repository root.

TARGET="${CARGO_TARGET_DIR:-target}"
LIB_DIR="$TARGET/release"
WORK="$(mktemp -d)"
SERVER_PID=""
VLESS_SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    if [ -n "$VLESS_SERVER_PID" ]; then kill "$VLESS_SERVER_PID" 2>/dev/null || true; fi
    if declare -F stop_xray >/dev/null; then stop_xray; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n=== %s [%s]\n' "$*" "$(date +%T)"; }

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

start_xh_serve_vless() {
    step "start xh serve --vless"
    "$LIB_DIR/xh" serve --vless b831381d-6324-4d53-ad4f-8cda48b30811 \
        > "$WORK/vless-server.json" 2> "$WORK/vless-server.log" &
    VLESS_SERVER_PID=$!
    for _ in $(seq 1 100); do
        [ -s "$WORK/vless-server.json" ] && break
        sleep 0.1
    done
    XH_VLESS_CONFIG="$(head -1 "$WORK/vless-server.json")"
    if [ -z "$XH_VLESS_CONFIG" ]; then
        echo "xh serve --vless printed no config"; cat "$WORK/vless-server.log"; exit 1
    fi
    export XH_VLESS_CONFIG
    echo "$XH_VLESS_CONFIG"
}
