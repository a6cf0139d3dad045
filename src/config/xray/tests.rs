use super::*;
use crate::config::{Mode, Placement};

const ID: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";
const PIN: &str = "0101010101010101010101010101010101010101010101010101010101010101";

fn outbound_json(stream: Value) -> Value {
    json!({
        "protocol": "vless",
        "settings": {"address": "example.com", "port": 443, "id": ID, "encryption": "none", "flow": ""},
        "streamSettings": stream
    })
}

fn h3_stream(x: Value) -> Value {
    json!({"network": "xhttp", "security": "tls",
        "tlsSettings": {"serverName": "sni.example", "alpn": ["h3"], "fingerprint": "chrome",
            "pinnedPeerCertSha256": PIN},
        "xhttpSettings": x})
}

fn err(r: Result<Config>) -> (String, String) {
    match r {
        Err(Error::Config { field, rule }) => (field, rule),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn outbound_flat_and_vnext_forms() {
    let c =
        import(&outbound_json(h3_stream(json!({"path": "/xh", "mode": "stream-up"}))).to_string())
            .unwrap();
    assert_eq!((c.address.as_str(), c.port), ("example.com", 443));
    assert_eq!(c.vless.as_ref().unwrap().id[0], 0xb8);
    assert_eq!(c.tls.server_name, "sni.example");
    assert_eq!(c.tls.pinned_sha256, vec![[1u8; 32]]);
    assert_eq!(c.xhttp.mode, Mode::StreamUp);
    assert_eq!(c.authority(), "sni.example");

    let v = json!({"protocol": "VLESS",
        "settings": {"vnext": [{"address": "1.2.3.4", "port": "8443",
            "users": [{"id": "my-user", "encryption": "none", "level": 0}]}]},
        "streamSettings": {"network": "splithttp", "security": "tls", "tlsSettings": {"alpn": "h3"},
            "splithttpSettings": {"path": "/s", "host": "cdn.example"}}});
    let c = import(&v.to_string()).unwrap();
    assert_eq!((c.address.as_str(), c.port), ("1.2.3.4", 8443));
    assert_eq!(
        c.vless.as_ref().unwrap().id,
        crate::proxy::vless::user_id("x", "my-user").unwrap()
    );
    assert_eq!(
        (c.xhttp.path.as_str(), c.authority().as_str()),
        ("/s", "cdn.example")
    );
}

#[test]
fn method_overrides_network_and_xhttp_settings_win() {
    let mut s = h3_stream(json!({"path": "/a"}));
    s["network"] = json!("tcp");
    s["method"] = json!("xhttp");
    s["splithttpSettings"] = json!({"path": "/b"});
    let c = import(&outbound_json(s).to_string()).unwrap();
    assert_eq!(c.xhttp.path, "/a");
}

#[test]
fn every_xhttp_field_and_extra() {
    let x = json!({"host": "h.example", "path": "/p?ed=1", "mode": "packet-up",
        "headers": {"X-A": "1"}, "xPaddingBytes": "200-300", "xPaddingObfsMode": true,
        "xPaddingKey": "k", "xPaddingHeader": "X-K", "xPaddingPlacement": "cookie",
        "xPaddingMethod": "tokenish", "uplinkHTTPMethod": "put",
        "sessionPlacement": "header", "sessionKey": "X-S", "seqPlacement": "query", "seqKey": "n",
        "uplinkDataPlacement": "header", "uplinkDataKey": "X-D", "uplinkChunkSize": 100,
        "noGRPCHeader": true, "scMaxEachPostBytes": "5000-6000", "scMinPostsIntervalMs": "10-20",
        "xmux": {"maxConcurrency": "2-3", "hKeepAlivePeriod": 20},
        "sessionIDTable": "hex", "sessionIDLength": 16});
    let c = import(&outbound_json(h3_stream(x)).to_string()).unwrap();
    let s = &c.xhttp;
    assert_eq!(s.host, "h.example");
    assert_eq!(s.normalized_query(), "ed=1");
    assert_eq!(s.headers, vec![("X-A".to_string(), "1".to_string())]);
    assert_eq!((s.padding.bytes.from, s.padding.bytes.to), (200, 300));
    assert!(s.padding.obfs);
    assert_eq!(
        (s.padding.key.as_str(), s.padding.header.as_str()),
        ("k", "X-K")
    );
    assert_eq!(s.uplink_http_method, "PUT");
    assert_eq!(
        (s.session_placement, s.session_key.as_str()),
        (Placement::Header, "X-S")
    );
    assert_eq!(
        (s.seq_placement, s.seq_key.as_str()),
        (Placement::Query, "n")
    );
    assert_eq!(s.uplink_data_key, "X-D");
    assert!(s.no_grpc_header);
    assert_eq!(s.sc_max_each_post_bytes.to, 6000);
    assert_eq!(s.sc_min_posts_interval_ms.from, 10);
    assert_eq!(s.xmux.max_concurrency.to, 3);
    assert_eq!(
        s.xmux.keep_alive(),
        Some(std::time::Duration::from_secs(20))
    );

    // extra replaces everything but host/path/mode.
    let x = json!({"path": "/outer", "mode": "stream-up", "noGRPCHeader": true,
        "extra": {"path": "/inner", "xPaddingBytes": "10-20", "xmux": {"maxConnections": 1}}});
    let c = import(&outbound_json(h3_stream(x)).to_string()).unwrap();
    assert_eq!(c.xhttp.path, "/outer");
    assert!(!c.xhttp.no_grpc_header);
    assert_eq!(c.xhttp.padding.bytes.to, 20);
    assert_eq!(c.xhttp.xmux.max_connections.to, 1);
}

#[test]
fn download_settings_inside_xhttp_or_extra() {
    let dl = json!({"address": "dl.example", "port": 4443, "network": "xhttp", "security": "tls",
        "tlsSettings": {"alpn": ["h3"], "serverName": "dl.example"},
        "xhttpSettings": {"path": "/down", "xmux": {"maxConcurrency": 4}}});
    for x in [
        json!({"path": "/up", "downloadSettings": dl}),
        json!({"path": "/up", "extra": {"downloadSettings": dl}}),
    ] {
        let c = import(&outbound_json(h3_stream(x)).to_string()).unwrap();
        let d = c.download.as_ref().expect("download destination");
        assert_eq!(
            (d.address.as_str(), d.port, d.xhttp.path.as_str()),
            ("dl.example", 4443, "/down")
        );
        assert_eq!(d.xhttp.xmux.max_concurrency.to, 4);
        assert_eq!(c.xhttp.path, "/up");
    }
    let bad = json!({"path": "/up", "mode": "stream-one", "downloadSettings": dl});
    assert_eq!(
        err(import(&outbound_json(h3_stream(bad)).to_string())).0,
        "downloadSettings"
    );
    let no_addr = json!({"downloadSettings": {"port": 1, "network": "xhttp"}});
    assert_eq!(
        err(import(&outbound_json(h3_stream(no_addr)).to_string())).0,
        "streamSettings.xhttpSettings.downloadSettings.address"
    );
}

#[test]
fn whole_config_picks_first_vless_xhttp_or_tag() {
    let cfg = json!({
        "log": {"loglevel": "warning"},
        // comments are allowed, as in Xray
        "outbounds": [
            {"protocol": "freedom", "tag": "direct"},
            {"protocol": "vless", "tag": "tcp", "settings": {"address": "a", "port": 1, "id": ID},
             "streamSettings": {"network": "tcp"}},
            outbound_json(h3_stream(json!({"path": "/first"}))),
            {"tag": "second", "protocol": "vless", "settings": {"address": "b", "port": 2, "id": ID},
             "streamSettings": h3_stream(json!({"path": "/second"}))}
        ]
    })
    .to_string()
    .replace("\"log\"", "/* block */ \"log\"");
    assert_eq!(import(&cfg).unwrap().xhttp.path, "/first");
    assert_eq!(
        import_tagged(&cfg, Some("second")).unwrap().xhttp.path,
        "/second"
    );
    assert_eq!(err(import_tagged(&cfg, Some("nope"))).0, "outbounds");
    assert_eq!(
        err(import_tagged(&cfg, Some("tcp"))).0,
        "outbounds[1].streamSettings.network"
    );
}

#[test]
fn share_links_with_encoded_extra() {
    let extra = r#"{"xPaddingBytes":"50-60","downloadSettings":{"address":"d.example","port":444,"network":"xhttp","security":"tls","tlsSettings":{"alpn":["h3"]},"xhttpSettings":{"path":"/d"}}}"#;
    let enc: String = extra
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let link = format!(
        "vless://{ID}@example.com:8443?encryption=none&security=tls&sni=s.example&alpn=h3&fp=chrome&type=xhttp&host=h.example&path=%2Fxh%3Fed%3D2&mode=stream-up&pcs={PIN}&extra={enc}#My%20Server"
    );
    let c = import(&link).unwrap();
    assert_eq!((c.address.as_str(), c.port), ("example.com", 8443));
    assert_eq!(c.tls.server_name, "s.example");
    assert_eq!(c.tls.pinned_sha256, vec![[1u8; 32]]);
    assert_eq!(c.xhttp.path, "/xh?ed=2");
    assert_eq!(c.xhttp.host, "h.example");
    assert_eq!(c.xhttp.mode, Mode::StreamUp);
    assert_eq!(c.xhttp.padding.bytes.to, 60);
    assert_eq!(c.download.as_ref().unwrap().address, "d.example");
    // IPv6 host, no path, splithttp legacy type.
    let c = import(&format!(
        "vless://{ID}@[::1]:443?type=splithttp&security=tls&alpn=h3"
    ))
    .unwrap();
    assert_eq!((c.address.as_str(), c.xhttp.path.as_str()), ("::1", "/"));
}

#[test]
fn refused_inputs_have_clear_errors() {
    let cases: Vec<(String, &str, &str)> = vec![
        ("{bad".into(), "(root)", "not valid JSON"),
        (json!({"protocol": "vmess", "settings": {}, "streamSettings": {}}).to_string(), "protocol", "only vless"),
        (outbound_json(json!({"network": "ws", "security": "tls"})).to_string(), "streamSettings.network", "only xhttp"),
        (outbound_json(json!({"network": "xhttp", "security": "reality"})).to_string(), "streamSettings.security", "REALITY"),
        (outbound_json(json!({"network": "xhttp", "security": "none"})).to_string(), "streamSettings.security", "needs \"tls\""),
        (outbound_json(json!({"network": "xhttp", "security": "tls", "tlsSettings": {"alpn": ["h2"]}})).to_string(), "streamSettings.tlsSettings.alpn", "[\"h3\"]"),
        (outbound_json(json!({"network": "xhttp", "security": "tls", "tlsSettings": {"alpn": ["h3"], "allowInsecure": true}})).to_string(), "streamSettings.tlsSettings.allowInsecure", "pinnedPeerCertSha256"),
        (outbound_json(h3_stream(json!({"extra": [1]}))).to_string(), "streamSettings.xhttpSettings.extra", "JSON object"),
        (json!({"protocol": "vless", "settings": {"port": 1, "id": ID}, "streamSettings": h3_stream(json!({}))}).to_string(), "settings.address", "required"),
        (json!({"protocol": "vless", "settings": {"address": "a", "id": ID}, "streamSettings": h3_stream(json!({}))}).to_string(), "settings.port", "required"),
        (json!({"protocol": "vless", "settings": {"address": "a", "port": 1}, "streamSettings": h3_stream(json!({}))}).to_string(), "settings.id", "required"),
        (json!({"protocol": "vless", "settings": {"address": "a", "port": 1, "id": "b831381d-6324-4d53-ad4f-8cda48b3081z"}, "streamSettings": h3_stream(json!({}))}).to_string(), "settings.id", "UUID"),
        (json!({"protocol": "vless", "settings": {"address": "a", "port": 1, "id": ID, "flow": "xtls-rprx-vision"}, "streamSettings": h3_stream(json!({}))}).to_string(), "settings.flow", "cannot run over XHTTP"),
        (json!({"protocol": "vless", "settings": {"address": "a", "port": 1, "id": ID, "encryption": "aes"}, "streamSettings": h3_stream(json!({}))}).to_string(), "settings.encryption", "only \"none\""),
        (json!({"protocol": "vless", "settings": {"address": "a", "port": 1, "id": ID}}).to_string(), "streamSettings", "required"),
        (format!("vless://{ID}@example.com?type=xhttp"), "link", ":port"),
        ("vless://example.com:443?type=xhttp".to_string(), "link", "<id>@"),
        (format!("vless://{ID}@example.com:0?type=xhttp"), "link.port", "not a port"),
        (format!("vless://{ID}@e:443?type=xhttp&security=tls&alpn=h3&allowInsecure=1"), "link.allowInsecure", "pcs="),
        (format!("vless://{ID}@e:443?type=grpc&security=tls&alpn=h3"), "streamSettings.network", "only xhttp"),
        (format!("vless://{ID}@e:443?type=xhttp&security=tls&alpn=h3&extra=%7Bnope"), "link.extra", "not valid JSON"),
        (format!("vless://{ID}@e:443?type=xhttp&security=tls&alpn=h3&extra=%5B%5D"), "link.extra", "JSON object"),
        ("vless://nope@e:443?type=xhttp&security=tls&alpn=h3&pcs=zz".to_string(), "streamSettings.tlsSettings.pinnedPeerCertSha256", "not hex"),
        (format!("vless://{ID}@e:443?type=xhttp&security=tls&alpn=h3&path=%zz"), "link.path", "percent-encoding"),
        ("vless://%E4%B8@e:443?type=xhttp&security=tls&alpn=h3".to_string(), "link.id", "percent-encoding"),
        (format!("vless://{ID}@e:443?type=xhttp&security=tls&alpn=h3&ech=AEX%2B"), "link.ech", "Encrypted Client Hello"),
        (outbound_json(json!({"network": "xhttp", "security": "tls", "tlsSettings": {"alpn": ["h3"], "echConfigList": "AEX+"}})).to_string(), "streamSettings.tlsSettings.echConfigList", "Encrypted Client Hello"),
    ];
    for (input, field, rule) in cases {
        let (f, r) = err(import(&input));
        assert_eq!(f, field, "for {input}");
        assert!(r.contains(rule), "for {input}: {r}");
    }
}

#[test]
fn library_json_still_works_through_import() {
    let c = import(
        &json!({"address": "127.0.0.1", "port": 1, "vlessId": ID,
        "xhttpSettings": {"path": "/x", "downloadSettings": {"address": "127.0.0.2", "port": 2,
            "network": "xhttp", "security": "tls", "tlsSettings": {"alpn": ["h3"]}}}})
        .to_string(),
    )
    .unwrap();
    assert!(c.vless.is_some());
    assert_eq!(c.download.unwrap().address, "127.0.0.2");
}

#[test]
fn multi_byte_text_where_ascii_is_expected_is_an_error_not_a_panic() {
    // Both panicked once: a `str` index inside a multi-byte character (found by
    // tests/garbage.rs).
    for input in [
        "{\"addr\u{e9}ss\": 1}",
        "vless:/\u{e9}/x",
        "{\"p\": \"a\\\u{e9}b\"} // c\u{e9}",
    ] {
        assert!(import(input).is_err(), "{input:?}");
    }
}

#[test]
fn the_mux_object_shapes_udp_and_is_checked() {
    use crate::config::{MuxSettings, PacketEncoding, Udp443};
    // Absent: Xray's defaults (Mux off, XUDP for UDP).
    let c = import(&outbound_json(h3_stream(json!({}))).to_string()).unwrap();
    let v = c.vless.unwrap();
    assert_eq!(
        (v.packet_encoding, v.mux),
        (PacketEncoding::Xudp, MuxSettings::default())
    );
    let mut o = outbound_json(h3_stream(json!({})));
    o["mux"] = json!({"enabled": true, "concurrency": -1, "xudpConcurrency": 16,
        "xudpProxyUDP443": "skip"});
    let v = import(&o.to_string()).unwrap().vless.unwrap();
    assert_eq!(
        v.mux,
        MuxSettings {
            enabled: true,
            concurrency: -1,
            xudp_concurrency: 16,
            xudp_proxy_udp443: Udp443::Skip
        }
    );
    // "" is Xray's "reject".
    o["mux"] = json!({"enabled": true, "xudpProxyUDP443": ""});
    let v = import(&o.to_string()).unwrap().vless.unwrap();
    assert_eq!(v.mux.xudp_proxy_udp443, Udp443::Reject);
    for (m, field) in [
        (json!({"xudpProxyUDP443": "block"}), "mux.xudpProxyUDP443"),
        (json!({"concurrency": 99999}), "mux.concurrency"),
        (json!({"enabled": "yes"}), "mux.enabled"),
        (json!([1]), "mux"),
    ] {
        o["mux"] = m;
        assert_eq!(err(import(&o.to_string())).0, field);
    }
    // In the library's own JSON, beside vlessId (and refused without it).
    let own = |extra: Value| {
        let mut j = json!({"address": "a", "port": 1});
        j.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        Config::from_json(&j)
    };
    let c = own(json!({"vlessId": ID, "packetEncoding": "none"})).unwrap();
    assert_eq!(c.vless.unwrap().packet_encoding, PacketEncoding::None);
    assert_eq!(
        err(own(json!({"packetEncoding": "xudp"}))).0,
        "packetEncoding"
    );
    assert_eq!(err(own(json!({"mux": {"enabled": true}}))).0, "mux");
}

#[test]
fn what_would_change_where_traffic_goes_is_refused_by_name() {
    let with = |extra: Value| {
        let mut o = outbound_json(h3_stream(json!({"path": "/x"})));
        o.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        o.to_string()
    };
    let stream_with = |k: &str, v: Value| {
        let mut s = h3_stream(json!({"path": "/x"}));
        s[k] = v;
        outbound_json(s).to_string()
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (
            with(json!({"proxySettings": {"tag": "chain"}})),
            "proxySettings.tag",
            "go direct",
        ),
        (
            stream_with("sockopt", json!({"dialerProxy": "chain"})),
            "streamSettings.sockopt.dialerProxy",
            "go direct",
        ),
        (
            stream_with("finalmask", json!({"udp": [{"type": "salamander"}]})),
            "streamSettings.finalmask.udp",
            "finalmask",
        ),
        (
            stream_with("finalmask", json!({"quicParams": {"congestion": "bbr"}})),
            "streamSettings.finalmask.quicParams",
            "finalmask",
        ),
        (
            format!(
                "vless://{ID}@e:443?type=xhttp&security=tls&alpn=h3&fm=%7B%22udp%22%3A%5B%7B%22type%22%3A%22salamander%22%7D%5D%7D"
            ),
            "link.fm.udp",
            "finalmask",
        ),
        (
            format!("vless://{ID}@e:443?type=xhttp&security=tls&alpn=h3&fm=%7Bx"),
            "link.fm",
            "not valid JSON",
        ),
    ];
    for (input, field, rule) in cases {
        let (f, r) = err(import(&input));
        assert_eq!(f, field, "for {input}");
        assert!(r.contains(rule), "for {input}: {r}");
    }
    // What changes nothing is accepted: a disabled mux, empty masks, other sockopt fields.
    for ok in [
        with(json!({"mux": {"enabled": false, "concurrency": -1}, "proxySettings": {}})),
        stream_with("finalmask", json!({"udp": [], "tcp": []})),
        stream_with("sockopt", json!({"dialerProxy": "", "tcpFastOpen": true})),
        format!("vless://{ID}@e:443?type=xhttp&security=tls&alpn=h3&fm="),
    ] {
        import(&ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn links_without_sni_use_a_domain_host() {
    let link = |q: &str| format!("vless://{ID}@104.16.0.1:443?type=xhttp&security=tls&alpn=h3{q}");
    let c = import(&link("&host=cdn.example.com")).unwrap();
    assert_eq!(c.sni(), "cdn.example.com");
    assert_eq!(c.authority(), "cdn.example.com");
    let c = import(&link("&host=a.example,b.example")).unwrap();
    assert_eq!(c.sni(), "a.example");
    // An explicit sni wins; an IP host is no server name.
    let c = import(&link("&host=cdn.example.com&sni=other.example")).unwrap();
    assert_eq!(c.sni(), "other.example");
    for ip in ["10.0.0.1", "%5B2001%3Adb8%3A%3A1%5D", "2001:db8::1"] {
        let c = import(&link(&format!("&host={ip}"))).unwrap();
        assert_eq!(c.sni(), "104.16.0.1", "{ip}");
    }
}

#[test]
fn ids_and_stream_settings_xray_accepts() {
    // A UUID without dashes.
    let mut o = outbound_json(h3_stream(json!({})));
    o["settings"]["id"] = json!("b831381d63244d53ad4f8cda48b30811");
    let c = import(&o.to_string()).unwrap();
    assert_eq!(
        c.vless.unwrap().id,
        crate::proxy::vless::user_id("x", ID).unwrap()
    );
    // No xhttpSettings object: no XMUX limits, as Xray's protobuf defaults.
    let mut s = h3_stream(json!({}));
    s.as_object_mut().unwrap().remove("xhttpSettings");
    let c = import(&outbound_json(s).to_string()).unwrap();
    assert_eq!(c.xhttp.xmux, crate::xmux::XmuxSettings::default());
    let c = import(&outbound_json(h3_stream(json!({}))).to_string()).unwrap();
    assert_eq!(c.xhttp.xmux, crate::xmux::XmuxSettings::xray_defaults());
    // An IPv6 address in brackets.
    let mut o = outbound_json(h3_stream(json!({})));
    o["settings"]["address"] = json!("[2001:db8::1]");
    o["streamSettings"]["tlsSettings"]
        .as_object_mut()
        .unwrap()
        .remove("serverName");
    let c = import(&o.to_string()).unwrap();
    assert_eq!(
        (c.address.as_str(), c.sni()),
        ("2001:db8::1", "2001:db8::1")
    );
    assert_eq!(c.authority(), "[2001:db8::1]");
}
