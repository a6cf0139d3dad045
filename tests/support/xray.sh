# Sourced after tests/support/serve.sh by tests/c/run.sh and tests/kotlin/run.sh:
# `start_xray_vless` runs the real Xray-core (XRAY_BIN, built and pinned by
# scripts/test.sh) as a VLESS server over XHTTP/H3 on loopback, with a fresh self-signed
# certificate trusted by pin, and exports a client config for it as XH_XRAY_CONFIG (the
# library's JSON with `vlessId`). Its freedom outbound may reach loopback (the tests' own
# echo servers): newer Xray blocks private addresses behind VLESS unless `finalRules`
# allow them; older versions ignore the key. Without XRAY_BIN it exports nothing and says
# so; scripts/test.sh always sets it, so CI always runs the Xray cases.

XRAY_PID=""
XRAY_UUID="b831381d-6324-4d53-ad4f-8cda48b30811"

start_xray_vless() {
    step "start Xray-core (VLESS over XHTTP/H3)"
    if [ -z "${XRAY_BIN:-}" ]; then
        echo "XRAY_BIN is not set: the cases against the real Xray are skipped"
        echo "(scripts/test.sh builds Xray and sets it)"
        return 0
    fi
    "$XRAY_BIN" version | sed -n 1p
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost \
        -keyout "$WORK/xray-key.pem" -out "$WORK/xray-cert.pem" 2>/dev/null
    local pin port
    pin="$(openssl x509 -in "$WORK/xray-cert.pem" -outform der | sha256sum | cut -d' ' -f1)"
    port="$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    cat > "$WORK/xray.json" <<JSON
{"log": {"loglevel": "warning"},
 "inbounds": [{"listen": "127.0.0.1", "port": $port, "protocol": "vless",
   "settings": {"clients": [{"id": "$XRAY_UUID"}], "decryption": "none"},
   "streamSettings": {"network": "xhttp", "security": "tls",
     "tlsSettings": {"alpn": ["h3"], "certificates": [{
       "certificateFile": "$WORK/xray-cert.pem", "keyFile": "$WORK/xray-key.pem"}]},
     "xhttpSettings": {"path": "/xh/"}}}],
 "outbounds": [{"protocol": "freedom",
   "settings": {"finalRules": [{"action": "allow", "ip": ["127.0.0.0/8"]}]}}]}
JSON
    "$XRAY_BIN" run -c "$WORK/xray.json" > "$WORK/xray.log" 2>&1 &
    XRAY_PID=$!
    for _ in $(seq 1 200); do
        grep -q started "$WORK/xray.log" 2>/dev/null && break
        if ! kill -0 "$XRAY_PID" 2>/dev/null; then break; fi
        sleep 0.1
    done
    if ! grep -q started "$WORK/xray.log"; then
        echo "Xray did not start:"; cat "$WORK/xray.log"; exit 1
    fi
    XH_XRAY_CONFIG="{\"address\":\"127.0.0.1\",\"port\":$port,\"vlessId\":\"$XRAY_UUID\",\"tlsSettings\":{\"serverName\":\"localhost\",\"pinnedPeerCertSha256\":\"$pin\",\"disableSystemRoot\":true},\"xhttpSettings\":{\"path\":\"/xh/\",\"mode\":\"auto\"}}"
    export XH_XRAY_CONFIG
    echo "$XH_XRAY_CONFIG"
}

stop_xray() {
    if [ -n "$XRAY_PID" ]; then kill "$XRAY_PID" 2>/dev/null || true; fi
}
