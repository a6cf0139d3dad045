use super::*;
use serde_json::json;

fn cfg(x: serde_json::Value) -> Result<Config> {
    Config::from_json(&json!({"address": "127.0.0.1", "port": 443, "xhttpSettings": x}))
}

fn err_of(r: Result<Config>) -> (String, String) {
    match r {
        Err(Error::Config { field, rule }) => (field, rule),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn defaults_match_xray_json_layer() {
    let c = cfg(json!({})).unwrap();
    let x = &c.xhttp;
    assert_eq!(x.mode, Mode::Auto);
    assert_eq!(x.mode.resolve(), Mode::PacketUp);
    assert_eq!(x.padding.bytes, crate::xhttp::range::Range::new(100, 1000));
    assert_eq!(x.sc_max_each_post_bytes.to, 1_000_000);
    assert_eq!(x.sc_min_posts_interval_ms.from, 30);
    assert_eq!(x.sc_max_buffered_posts, 30);
    assert_eq!(x.uplink_http_method, "POST");
    assert_eq!(
        (x.session_key.as_str(), x.seq_key.as_str()),
        ("x_session", "x_seq")
    );
    assert_eq!(x.normalized_path(), "/");
    assert_eq!(c.authority(), "127.0.0.1");
}

#[test]
fn keys_match_case_insensitively_and_extra_replaces_fields() {
    let c = cfg(json!({
        "PATH": "/a", "Mode": "stream-up", "noGRPCHeader": true,
        "extra": {"XPADDINGBYTES": "10-20", "path": "/ignored", "mode": "packet-up"}
    }))
    .unwrap();
    assert_eq!(c.xhttp.path, "/a");
    assert_eq!(c.xhttp.mode, Mode::StreamUp);
    assert_eq!(c.xhttp.padding.bytes.to, 20);
    // `extra` replaces every field but host/path/mode: the outer noGRPCHeader is dropped.
    assert!(!c.xhttp.no_grpc_header);
}

#[test]
fn header_keys_follow_placement() {
    let c = cfg(
        json!({"sessionIDPlacement": "header", "seqPlacement": "header",
        "mode": "packet-up", "uplinkDataPlacement": "cookie"}),
    )
    .unwrap();
    assert_eq!(
        (c.xhttp.session_key.as_str(), c.xhttp.seq_key.as_str()),
        ("X-Session", "X-Seq")
    );
    assert_eq!(c.xhttp.uplink_data_key, "x_data");
    assert_eq!(
        c.xhttp.uplink_chunk_size,
        crate::xhttp::range::Range::new(2048, 3072)
    );
    assert_eq!(c.xhttp.normalized_path(), "/");
}

#[test]
fn bad_input_is_rejected_naming_the_field() {
    let cases = [
        (
            json!({"mode": "packet-down"}),
            "xhttpSettings.mode",
            "unknown mode",
        ),
        (
            json!({"xPaddingBytes": "0-100"}),
            "xhttpSettings.xPaddingBytes",
            "cannot be disabled",
        ),
        (
            json!({"xPaddingBytes": -5}),
            "xhttpSettings.xPaddingBytes",
            "cannot be disabled",
        ),
        (
            json!({"xPaddingBytes": 2147483647}),
            "xhttpSettings.xPaddingBytes",
            "at most 1048576",
        ),
        (
            json!({"sessionIDTable": "ab/cd", "sessionIDLength": 32}),
            "xhttpSettings.sessionIDTable",
            "'/' is not allowed",
        ),
        (
            json!({"sessionIDTable": "abab", "sessionIDLength": 16}),
            "xhttpSettings.sessionIDLength",
            "too few possible session ids",
        ),
        (
            json!({"sessionIDTable": "Base62", "sessionIDLength": "1-2147483647"}),
            "xhttpSettings.sessionIDLength",
            "at most 256",
        ),
        (
            json!({"scMaxEachPostBytes": "0-1000"}),
            "xhttpSettings.scMaxEachPostBytes",
            "> 0",
        ),
        (
            json!({"scMaxEachPostBytes": "-1"}),
            "xhttpSettings.scMaxEachPostBytes",
            "> 0",
        ),
        (
            json!({"mode": "stream-up", "uplinkHTTPMethod": "get"}),
            "xhttpSettings.uplinkHTTPMethod",
            "only allowed in packet-up",
        ),
        (
            json!({"uplinkHTTPMethod": "GET"}),
            "xhttpSettings.uplinkHTTPMethod",
            "only allowed in packet-up",
        ),
        (
            json!({"mode": "stream-one", "uplinkDataPlacement": "header"}),
            "xhttpSettings.uplinkDataPlacement",
            "only allowed in packet-up",
        ),
        (
            json!({"mode": "stream-up", "uplinkDataPlacement": "cookie"}),
            "xhttpSettings.uplinkDataPlacement",
            "only allowed in packet-up",
        ),
        (
            json!({"uplinkHTTPMethod": "PO ST"}),
            "xhttpSettings.uplinkHTTPMethod",
            "not an HTTP method",
        ),
        (
            json!({"sessionIDPlacement": "body"}),
            "xhttpSettings.sessionIDPlacement",
            "unknown placement",
        ),
        (
            json!({"xPaddingMethod": "zeros"}),
            "xhttpSettings.xPaddingMethod",
            "unknown method",
        ),
        (
            json!({"headers": {"Host": "x"}}),
            "xhttpSettings.headers.Host",
            "not allowed",
        ),
        (
            json!({"sessionIDTable": "ab", "sessionIDLength": 8}),
            "xhttpSettings.sessionIDLength",
            "too few",
        ),
        (
            json!({"sessionIDTable": "hex"}),
            "xhttpSettings.sessionIDLength",
            "greater than 0",
        ),
        (json!({"extra": "x"}), "xhttpSettings.extra", "JSON object"),
        (
            json!({"xPaddingBytes": "abc"}),
            "xhttpSettings.xPaddingBytes",
            "not a number",
        ),
        (json!(7), "xhttpSettings", "JSON object"),
    ];
    for (x, field, rule) in cases {
        let (f, r) = err_of(cfg(x.clone()));
        assert_eq!(f, field, "for {x}");
        assert!(r.contains(rule), "for {x}: {r}");
    }
}

#[test]
fn tls_settings_pins_and_refusals() {
    let pin = "ab".repeat(32);
    let with_colons: String = pin
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let c = Config::from_json(&json!({"address": "h", "port": 1,
        "tlsSettings": {"serverName": "sni.example", "pinnedPeerCertSha256": format!("{pin}, {with_colons}")}}))
    .unwrap();
    assert_eq!(c.tls.pinned_sha256, vec![[0xab; 32], [0xab; 32]]);
    assert_eq!(
        (c.sni(), c.authority().as_str()),
        ("sni.example", "sni.example")
    );

    let bad = |t: serde_json::Value| {
        err_of(Config::from_json(
            &json!({"address": "h", "port": 1, "tlsSettings": t}),
        ))
    };
    let (f, r) = bad(json!({"pinnedPeerCertSha256": "zz"}));
    assert_eq!(f, "tlsSettings.pinnedPeerCertSha256");
    assert!(r.contains("not hex"));
    let (_, r) = bad(json!({"pinnedPeerCertSha256": "abcd"}));
    assert!(r.contains("2 bytes"));
    let (f, r) = bad(json!({"allowInsecure": true}));
    assert_eq!(f, "tlsSettings.allowInsecure");
    assert!(r.contains("pinnedPeerCertSha256"));
    let (f, _) = bad(json!({"alpn": ["h2"]}));
    assert_eq!(f, "tlsSettings.alpn");
    let (f, _) = bad(json!({"caPem": "not pem"}));
    assert_eq!(f, "tlsSettings.caPem");
}

#[test]
fn root_fields_are_required_and_checked() {
    assert_eq!(err_of(Config::from_json(&json!({"port": 1}))).0, "address");
    assert_eq!(
        err_of(Config::from_json(&json!({"address": "a"}))).0,
        "port"
    );
    assert_eq!(
        err_of(Config::from_json(&json!({"address": "a", "port": 70000}))).0,
        "port"
    );
    assert_eq!(
        err_of(Config::from_json(&json!({"address": "a", "port": "x"}))).0,
        "port"
    );
    assert_eq!(err_of(Config::from_json_str("{not json")).0, "(root)");
}

#[test]
fn keys_differing_only_in_case_are_refused() {
    let e = Config::from_json(&json!({"address": "a", "port": 1,
        "xhttpSettings": {"Path": "/b", "path": "/a"}}))
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("xhttpSettings.") && text.contains("differ only in case"),
        "{text}"
    );
}

#[test]
fn download_settings_are_used_or_refused_never_dropped() {
    let base =
        || json!({"address": "a", "port": 1, "vlessId": "b831381d-6324-4d53-ad4f-8cda48b30811"});
    // Xray's shape inside xhttpSettings, read by the library JSON too.
    let mut v = base();
    v["xhttpSettings"] = json!({"path": "/x", "downloadSettings": {"address": "d", "port": 2,
        "network": "xhttp", "security": "tls", "tlsSettings": {"alpn": ["h3"]}}});
    let c = Config::from_json(&v).unwrap();
    assert_eq!(c.download.unwrap().address, "d");
    // Both places at once, a vlessId or a nested downloadSettings: refused, named.
    let mut both = v.clone();
    both["downloadSettings"] = json!({"address": "e", "port": 3});
    let mut with_id = base();
    with_id["downloadSettings"] = json!({"address": "e", "port": 3, "vlessId": "x"});
    let mut nested = base();
    nested["downloadSettings"] = json!({"address": "e", "port": 3,
        "downloadSettings": {"address": "f", "port": 4}});
    for (v, field) in [
        (both, "xhttpSettings.downloadSettings"),
        (with_id, "downloadSettings.vlessId"),
        (nested, "downloadSettings.downloadSettings"),
    ] {
        match Config::from_json(&v) {
            Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn configs_xray_accepts_mean_the_same_here() {
    // Inverted ranges are swapped (Go's Int32Range), negative pacing means none.
    let c = cfg(
        json!({"xPaddingBytes": "500-100", "scMaxEachPostBytes": "9000-3000",
        "uplinkChunkSize": "5000-100", "scStreamUpServerSecs": "80-20",
        "scMinPostsIntervalMs": "-5-10", "mode": "packet-up"}),
    )
    .unwrap();
    let x = &c.xhttp;
    use crate::xhttp::range::Range;
    assert_eq!(x.padding.bytes, Range::new(100, 500));
    assert_eq!(x.sc_max_each_post_bytes, Range::new(3000, 9000));
    assert_eq!(x.uplink_chunk_size, Range::new(100, 5000));
    assert_eq!(x.sc_stream_up_server_secs, Range::new(20, 80));
    assert_eq!(x.sc_min_posts_interval_ms, Range::new(-5, 10));
    // sessionIDLength without a table: Xray generates UUIDs and so do we.
    let c = cfg(json!({"sessionIDLength": "8-16"})).unwrap();
    assert_eq!(c.xhttp.session_id, SessionIdShape::Uuid);
}

#[test]
fn a_missing_xhttp_settings_object_has_no_xmux_limits() {
    // Xray's protobuf defaults (no JSON layer ran): one connection, reused for everything.
    let c = Config::from_json(&json!({"address": "a", "port": 1})).unwrap();
    assert_eq!(c.xhttp.xmux, crate::xmux::XmuxSettings::default());
    assert_eq!(
        c.xhttp,
        XhttpSettings {
            xmux: crate::xmux::XmuxSettings::default(),
            ..cfg(json!({})).unwrap().xhttp
        }
    );
    // An empty object is the JSON layer: its XMUX defaults apply.
    assert_eq!(
        cfg(json!({})).unwrap().xhttp.xmux,
        crate::xmux::XmuxSettings::xray_defaults()
    );
}

#[test]
fn ipv6_addresses_are_bracketed_in_the_authority_only() {
    for address in ["::1", "[::1]"] {
        let c = Config::from_json(&json!({"address": address, "port": 443})).unwrap();
        assert_eq!(c.address, "::1");
        assert_eq!(c.authority(), "[::1]");
        assert_eq!(c.sni(), "::1");
    }
    let c = Config::from_json(
        &json!({"address": "::1", "port": 443, "xhttpSettings": {"host": "h.example"}}),
    )
    .unwrap();
    assert_eq!(c.authority(), "h.example");
}
