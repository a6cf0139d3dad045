//! Bad input never panics: seeded mutations of valid configs, share links, SOCKS5 and
//! VLESS bytes go through the parsers, which must answer with an error (or a value), never
//! a panic; and UDP framing split at random boundaries loses and duplicates nothing.
//!
//! Deterministic (fixed seeds): a failure names the input that caused it.

use serde_json::{Value, json};
use std::panic::{AssertUnwindSafe, catch_unwind};
use xhttp_mobile::config::xray::import;
use xhttp_mobile::proxy::socks::wire;
use xhttp_mobile::proxy::vless;

const ID: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Values that break assumptions: wrong types, signs, sizes, shapes.
fn nasty(rng: &mut Rng) -> Value {
    let long = "x".repeat(70_000);
    let choices = [
        Value::Null,
        json!(true),
        json!(-1),
        json!(0),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(1e308),
        json!(-0.5),
        json!(""),
        json!("x"),
        json!("-5-3"),
        json!("3-1"),
        json!("0-0"),
        json!("99999999999999999999-1"),
        json!("%zz"),
        json!("\u{0}"),
        json!(long),
        json!([]),
        json!([1, "a", null]),
        json!({}),
        json!({"from": -1, "to": -2}),
        json!({"from": 5, "to": 1}),
    ];
    choices[rng.below(choices.len())].clone()
}

/// Replaces one randomly chosen value anywhere in `v` (or adds a nasty key).
fn mutate(v: &mut Value, rng: &mut Rng) {
    match v {
        Value::Object(m) if !m.is_empty() && rng.below(4) != 0 => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[rng.below(keys.len())];
            let child = m.get_mut(k).unwrap();
            if rng.below(3) == 0 {
                *child = nasty(rng);
            } else {
                mutate(child, rng);
            }
        }
        Value::Object(m) => {
            let keys = [
                "xmux",
                "extra",
                "downloadSettings",
                "headers",
                "path",
                "mode",
            ];
            m.insert(keys[rng.below(keys.len())].to_string(), nasty(rng));
        }
        Value::Array(a) if !a.is_empty() => {
            let i = rng.below(a.len());
            mutate(&mut a[i], rng);
        }
        other => *other = nasty(rng),
    }
}

fn seeds() -> Vec<Value> {
    let xhttp = json!({
        "path": "/xh", "host": "h.example", "mode": "packet-up",
        "xPaddingBytes": "100-1000", "scMaxEachPostBytes": "500000-1000000",
        "scMinPostsIntervalMs": "10-50", "xPaddingObfsMode": true, "xPaddingKey": "pad",
        "xPaddingHeader": "X-Pad", "xPaddingPlacement": "queryInHeader",
        "xPaddingMethod": "tokenish", "sessionPlacement": "header", "sessionKey": "X-S",
        "seqPlacement": "query", "seqKey": "q", "uplinkDataPlacement": "body",
        "uplinkHTTPMethod": "PUT", "headers": {"X-A": "b"},
        "xmux": {"maxConcurrency": "2-4", "cMaxReuseTimes": 8, "hMaxRequestTimes": "600-900",
                 "hMaxReusableSecs": "1800-3000", "hKeepAlivePeriod": 10}
    });
    let tls = json!({"serverName": "s.example", "alpn": ["h3"],
                     "pinnedPeerCertSha256": "ab".repeat(32)});
    let stream = json!({"network": "xhttp", "security": "tls", "tlsSettings": tls,
                        "xhttpSettings": xhttp});
    let outbound = json!({"protocol": "vless", "tag": "proxy",
        "settings": {"vnext": [{"address": "example.com", "port": 443,
                                "users": [{"id": ID, "encryption": "none"}]}]},
        "streamSettings": stream});
    let mut with_download = outbound.clone();
    with_download["streamSettings"]["xhttpSettings"]["downloadSettings"] = json!({
        "address": "dl.example", "port": 8443, "network": "xhttp", "security": "tls",
        "tlsSettings": {"serverName": "dl.example", "alpn": ["h3"]},
        "xhttpSettings": {"path": "/dl", "xmux": {"maxConnections": 2}}});
    let library = json!({"address": "127.0.0.1", "port": 443, "vlessId": ID,
        "tlsSettings": {"serverName": "localhost", "pinnedPeerCertSha256": "cd".repeat(32),
                        "disableSystemRoot": true},
        "xhttpSettings": {"path": "/xh", "mode": "stream-up"}});
    let whole = json!({"outbounds": [{"protocol": "freedom"}, outbound.clone()]});
    vec![outbound, with_download, library, whole]
}

fn import_must_not_panic(input: &str) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        if let Ok(cfg) = import(input) {
            // A config that imports must also build a dialer (TLS material, shapes).
            let _ = xhttp_mobile::tunnel::Dialer::new(cfg);
        }
    }));
    assert!(r.is_ok(), "panic importing {:?}", truncate(input));
}

fn truncate(s: &str) -> String {
    s.chars().take(600).collect()
}

#[test]
fn mutated_configs_are_refused_or_accepted_never_a_panic() {
    let mut rng = Rng(0x5eed_c0f1);
    for seed in seeds() {
        import_must_not_panic(&seed.to_string());
        for _ in 0..8000 {
            let mut v = seed.clone();
            for _ in 0..1 + rng.below(3) {
                mutate(&mut v, &mut rng);
            }
            import_must_not_panic(&v.to_string());
        }
        // Raw text damage: truncation and byte flips.
        let text = seed.to_string();
        for _ in 0..300 {
            let mut b = text.clone().into_bytes();
            match rng.below(3) {
                0 => b.truncate(rng.below(b.len())),
                1 => {
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
                _ => {
                    let i = rng.below(b.len());
                    let n = 1 + rng.below(8);
                    b.splice(i..i, rng.bytes(n));
                }
            }
            import_must_not_panic(&String::from_utf8_lossy(&b));
        }
    }
}

#[test]
fn mutated_share_links_are_refused_or_accepted_never_a_panic() {
    let extra = "%7B%22xmux%22%3A%7B%22maxConcurrency%22%3A%222-3%22%7D%7D";
    let link = format!(
        "vless://{ID}@example.com:8443?encryption=none&security=tls&sni=s.example&alpn=h3\
         &type=xhttp&host=h.example&path=%2Fxh&mode=stream-up&pcs={}&extra={extra}#Name",
        "ab".repeat(32)
    );
    import_must_not_panic(&link);
    let pieces = [
        "%",
        "%2",
        "%zz",
        "%FF",
        "&",
        "=",
        "?",
        "#",
        "@",
        ":",
        "[",
        "]",
        "::1",
        ":99999",
        ":-1",
        "&extra=%7B",
        "&extra=%5B%5D",
        "&mode=",
        "&alpn=h2",
        "&type=tcp",
        "\u{0}",
        "&security=reality",
        "&path=",
        "&host=%00",
        "é",
        "&pcs=zz",
    ];
    let mut rng = Rng(0x11c4);
    for _ in 0..15000 {
        let mut s = link.clone();
        for _ in 0..1 + rng.below(3) {
            let mut at = rng.below(s.len());
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            match rng.below(3) {
                0 => s.insert_str(at, pieces[rng.below(pieces.len())]),
                1 => s.truncate(at),
                _ => {
                    let end = (at + 1 + rng.below(6)).min(s.len());
                    if s.is_char_boundary(end) {
                        s.replace_range(at..end, "");
                    }
                }
            }
        }
        import_must_not_panic(&s);
    }
}

#[test]
fn random_socks5_and_vless_bytes_never_panic() {
    let mut rng = Rng(0xb17e5);
    for i in 0..100_000 {
        let n = rng.below(300);
        let mut b = rng.bytes(n);
        // Bias towards plausible starts so parsers get past their first checks.
        if !b.is_empty() && i % 2 == 0 {
            b[0] = 5;
        }
        if b.len() > 3 && i % 3 == 0 {
            b[3] = [1u8, 3, 4][rng.below(3)];
        }
        let r = catch_unwind(|| {
            let _ = wire::parse_greeting(&b);
            let _ = wire::parse_auth(&b);
            let _ = wire::parse_request(&b);
            let _ = wire::parse_udp(&b);
            let _ = vless::parse_request_header(&b);
            let mut h = vless::ResponseHeader::default();
            let _ = h.consume(&b);
            let mut d = vless::UdpDeframer::default();
            d.push(&b);
            while d.next_datagram().is_some() {}
            if let Ok(s) = std::str::from_utf8(&b) {
                let _ = vless::Target::parse(s);
                let _ = vless::user_id("id", s);
            }
        });
        assert!(r.is_ok(), "panic on bytes {b:02x?}");
    }
}

#[test]
fn udp_frames_split_anywhere_come_out_whole_once_and_in_order() {
    let mut rng = Rng(0xf4a3e);
    for _ in 0..200 {
        let datagrams: Vec<Vec<u8>> = (0..1 + rng.below(20))
            .map(|_| {
                let n = [0, 1, 60, 1400, vless::MAX_UDP_PAYLOAD][rng.below(5)];
                rng.bytes(n)
            })
            .collect();
        let mut wire_bytes = Vec::new();
        for d in &datagrams {
            wire_bytes.extend(vless::frame_udp(d).expect("framable"));
        }
        let mut deframer = vless::UdpDeframer::default();
        let mut out = Vec::new();
        let mut at = 0;
        while at < wire_bytes.len() {
            let end = (at + 1 + rng.below(3000)).min(wire_bytes.len());
            deframer.push(&wire_bytes[at..end]);
            while let Some(d) = deframer.next_datagram() {
                out.push(d);
            }
            at = end;
        }
        assert_eq!(out, datagrams);
    }
    // Too large to frame: an error, not a truncated datagram.
    assert!(vless::frame_udp(&vec![0u8; vless::MAX_UDP_PAYLOAD + 1]).is_err());
}
