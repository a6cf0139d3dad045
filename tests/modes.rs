//! Every mode moves 8 MiB each way over real QUIC on loopback, SHA-256 checked, and reports
//! real socket addresses.

mod common;
use common::*;
use serde_json::json;
use std::net::SocketAddr;

const SIZE: usize = 8 * 1024 * 1024;

fn check_addrs(t: &xhttp_mobile::Tunnel, server: SocketAddr) {
    let (l, r) = (t.local_addr(), t.peer_addr());
    assert!(!l.ip().is_unspecified() && l.port() != 0, "local {l}");
    assert_eq!(r, server, "peer address");
}

fn run(mode: &str, half_close: bool) {
    let e = env(|_| {});
    let c = e.client(json!({"path": "/xh", "mode": mode}));
    let t = c.open(T).expect("open");
    check_addrs(&t, e.server.addr());
    echo_roundtrip(&t, SIZE, half_close);
    let s = c.stats();
    assert_eq!(
        (s.bytes_up, s.bytes_down, s.open_tunnels),
        (SIZE as u64, SIZE as u64, 1)
    );
    t.close();
    assert_eq!(c.stats().open_tunnels, 0);
}

#[test]
fn packet_up_moves_8_mib_each_way() {
    run("packet-up", false);
}

#[test]
fn stream_up_moves_8_mib_each_way() {
    run("stream-up", true);
}

#[test]
fn stream_one_moves_8_mib_each_way() {
    run("stream-one", true);
}

#[test]
fn auto_resolves_to_packet_up() {
    let e = env(|_| {});
    let c = e.client(json!({"path": "/xh"}));
    assert_eq!(c.mode(), xhttp_mobile::config::Mode::PacketUp);
    let t = c.open(T).expect("open");
    echo_roundtrip(&t, 200_000, false);
}

#[test]
fn stream_one_reports_its_remote_address() {
    // The Xray bug this project was born next to: stream-one reported zero addresses.
    let e = env(|_| {});
    let c = e.client(json!({"path": "/xh", "mode": "stream-one"}));
    let t = c.open(T).expect("open");
    check_addrs(&t, e.server.addr());
}

#[test]
fn many_tunnels_share_the_client() {
    let e = env(|_| {});
    let c = e.client(json!({"path": "/xh", "mode": "stream-up"}));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || {
                let t = c.open(T).expect("open");
                echo_roundtrip(&t, 100_000 + i * 777, true);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn download_settings_send_the_get_through_its_own_pool() {
    // Same server process (one session map), but the GET rides the download side's own
    // XMUX pool, hence its own QUIC connection.
    let e = env(|_| {});
    for mode in ["packet-up", "stream-up"] {
        let mut v = e.config_json(json!({"path": "/xh", "mode": mode}));
        let mut dl = e.config_json(json!({"path": "/xh", "xmux": {"maxConnections": 1}}));
        dl.as_object_mut().unwrap().remove("xhttpSettings");
        dl["xhttpSettings"] = json!({"path": "/xh/", "xmux": {"maxConnections": 1}});
        v["downloadSettings"] = dl;
        let c = xhttp_mobile::Client::new(xhttp_mobile::Config::from_json(&v).unwrap()).unwrap();
        let t = c.open(T).unwrap();
        echo_roundtrip(&t, 1_000_000, mode == "stream-up");
        let up = c.pool_stats();
        let down = c.dialer().download_pool_stats().unwrap();
        assert_eq!(
            down.requests_total, 1,
            "{mode}: one GET on the download side"
        );
        assert!(up.requests_total >= 1, "{mode}");
        let (ul, dl) = (up.connections[0].local, down.connections[0].local);
        assert_ne!(ul, dl, "{mode}: GET and uploads share a connection");
        t.close();
    }
    let bad = e.config_json(json!({"mode": "stream-one"}));
    let mut bad = bad;
    bad["downloadSettings"] = e.config_json(json!({}));
    assert!(matches!(
        xhttp_mobile::Config::from_json(&bad),
        Err(xhttp_mobile::Error::Config { field, .. }) if field == "downloadSettings"
    ));
}

/// A CDN in front of the server may gzip the download, since the client asks for gzip
/// (as Go's HTTP/3 client does on its own). Every mode's download must come out decoded,
/// byte for byte, while staying a stream (each write is flushed as it comes).
#[test]
fn gzip_encoded_downloads_are_decoded_in_every_mode() {
    for (mode, half_close) in [
        ("packet-up", false),
        ("stream-up", true),
        ("stream-one", true),
    ] {
        let e = env(|o| o.gzip_download = true);
        let c = e.client(json!({"path": "/xh", "mode": mode}));
        let t = c.open(T).expect("open");
        // An interactive exchange first: a compressing middlebox must not hold bytes back.
        t.write(b"ping", T).expect("write");
        let mut b = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            got += t
                .read(&mut b[got..], T)
                .expect("read the echo of a small write");
        }
        assert_eq!(&b, b"ping", "{mode}");
        echo_roundtrip(&t, 2 * 1024 * 1024, half_close);
        t.close();
        let s = e.server.stats();
        assert!(
            s.bytes_gzip_sent > 0 && s.bytes_downloaded > 0,
            "{mode}: the download was not gzip-encoded ({} gzip bytes)",
            s.bytes_gzip_sent
        );
    }
}
