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
