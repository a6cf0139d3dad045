//! The full-cone UDP session (`Client::open_udp`) end to end over real QUIC against the test
//! server's Mux.Cool/XUDP side, and the refusals that need no server. The same behaviours
//! against the real Xray are in tests/interop.rs.

mod common;
use common::*;
use serde_json::json;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xhttp_mobile::{Client, Config, Error};
use xhttp_testserver::Target;

const ID: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";

fn vless_env() -> Env {
    let id = xhttp_mobile::proxy::vless::user_id("id", ID).unwrap();
    env(|o| o.target = Target::Vless { id })
}

/// A client for `e` with extra top-level config fields (`packetEncoding`, `mux`).
fn client_with(e: &Env, mode: &str, extra: serde_json::Value) -> Client {
    let mut j = e.config_json(json!({"path": "/xh", "mode": mode}));
    j["vlessId"] = ID.into();
    for (k, v) in extra.as_object().unwrap() {
        j[k] = v.clone();
    }
    Client::new(Config::from_json(&j).expect("config")).expect("client")
}

/// A UDP echo that records the source of every datagram.
fn recording_echo() -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut b = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut b) {
            let mut l = log.lock().unwrap();
            if !l.contains(&from) {
                l.push(from);
            }
            drop(l);
            let _ = s.send_to(&b[..n], from);
        }
    });
    (addr, seen)
}

#[test]
fn one_handle_many_destinations_one_mapping_full_cone() {
    let e = vless_env();
    for mode in ["packet-up", "stream-up", "stream-one"] {
        let c = client_with(&e, mode, json!({}));
        let u = c.open_udp(T).expect("open_udp");
        let echoes: Vec<_> = (0..3).map(|_| recording_echo()).collect();
        for round in 0..2u64 {
            for (i, (addr, _)) in echoes.iter().enumerate() {
                let d = pattern(round * 7 + i as u64, 40 + 3000 * i);
                u.send_to(&addr.to_string(), &d, T).expect("send_to");
                let (back, from) = u.recv_from(T).expect("recv_from");
                assert_eq!(sha(&back), sha(&d), "{mode} echo {i}");
                assert_eq!(from.to_string(), addr.to_string(), "{mode} source");
            }
        }
        assert_eq!(c.stats().open_tunnels, 1, "{mode}: one XUDP tunnel");
        let mapped = echoes[0].1.lock().unwrap().clone();
        assert_eq!(mapped.len(), 1);
        for (_, seen) in &echoes {
            assert_eq!(*seen.lock().unwrap(), mapped, "{mode}: one outbound socket");
        }
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b"unsolicited", mapped[0]).unwrap();
        let (back, from) = u.recv_from(T).expect("unsolicited datagram");
        assert_eq!(back, b"unsolicited");
        assert_eq!(from.to_string(), stranger.local_addr().unwrap().to_string());
        u.close();
    }
}

#[test]
fn packet_encoding_none_opens_a_plain_tunnel_per_destination() {
    let e = vless_env();
    let c = client_with(&e, "stream-up", json!({"packetEncoding": "none"}));
    let u = c.open_udp(T).unwrap();
    let (a, seen_a) = recording_echo();
    let (b, seen_b) = recording_echo();
    for to in [a, b, a] {
        u.send_to(&to.to_string(), b"ping", T).unwrap();
        let (back, from) = u.recv_from(T).unwrap();
        assert_eq!(
            (back.as_slice(), from.to_string()),
            (&b"ping"[..], to.to_string())
        );
    }
    assert_eq!(
        c.stats().open_tunnels,
        2,
        "one plain VLESS UDP tunnel per destination"
    );
    assert_ne!(*seen_a.lock().unwrap(), *seen_b.lock().unwrap());
    u.close();
}

#[test]
fn a_broken_tunnel_is_replaced_with_the_same_global_id() {
    let e = vless_env();
    let c = client_with(&e, "stream-up", json!({}));
    let u = c.open_udp(T).unwrap();
    let (echo, seen) = recording_echo();
    u.send_to(&echo.to_string(), b"one", T).unwrap();
    assert_eq!(u.recv_from(T).unwrap().0, b"one");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(u.session().break_xudp_tunnel());
    u.send_to(&echo.to_string(), b"two", T)
        .expect("send after the break");
    assert_eq!(u.recv_from(T).expect("reply").0, b"two");
    assert_eq!(seen.lock().unwrap().len(), 1, "the server kept the mapping");
    // Two handles never share a GlobalID (or one would take the other's mapping).
    let u2 = c.open_udp(T).unwrap();
    assert_ne!(u.session().global_id(), u2.session().global_id());
    u2.send_to(&echo.to_string(), b"three", T).unwrap();
    assert_eq!(u2.recv_from(T).unwrap().0, b"three");
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "a second handle, a second mapping"
    );
    u.send_to(&echo.to_string(), b"four", T).unwrap();
    assert_eq!(
        u.recv_from(T).unwrap().0,
        b"four",
        "the first handle is intact"
    );
}

#[test]
fn close_wakes_blocked_calls_and_ends_the_tunnel() {
    let e = vless_env();
    let c = client_with(&e, "packet-up", json!({}));
    let u = c.open_udp(T).unwrap();
    let (echo, _) = recording_echo();
    u.send_to(&echo.to_string(), b"warm", T).unwrap();
    assert_eq!(u.recv_from(T).unwrap().0, b"warm");
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..3).map(|_| s.spawn(|| u.recv_from(None))).collect();
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        for _ in 0..4 {
            let u = u.clone();
            s.spawn(move || u.close());
        }
        for r in readers {
            assert!(matches!(r.join().unwrap(), Err(Error::Closed)));
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    });
    assert!(matches!(
        u.send_to(&echo.to_string(), b"x", T),
        Err(Error::Closed)
    ));
    u.close();
    let until = Instant::now() + Duration::from_secs(5);
    while c.stats().open_tunnels > 0 {
        assert!(Instant::now() < until, "the tunnel outlived its session");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn idle_tunnels_end_and_the_next_datagram_reopens() {
    let e = vless_env();
    let c = client_with(&e, "stream-up", json!({}));
    let u = c
        .open_udp_with(
            T,
            xhttp_mobile::api::UdpOptions {
                idle_timeout: Duration::from_millis(300),
            },
        )
        .unwrap();
    let (echo, seen) = recording_echo();
    u.send_to(&echo.to_string(), b"a", T).unwrap();
    assert_eq!(u.recv_from(T).unwrap().0, b"a");
    let until = Instant::now() + Duration::from_secs(5);
    while c.stats().open_tunnels > 0 {
        assert!(Instant::now() < until, "idle tunnel still open");
        std::thread::sleep(Duration::from_millis(20));
    }
    u.send_to(&echo.to_string(), b"b", T).unwrap();
    assert_eq!(u.recv_from(T).unwrap().0, b"b");
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "same mapping after the idle close"
    );
}

#[test]
fn bad_input_is_refused_by_name_without_a_server() {
    // Nothing listens here: every refusal happens before a tunnel is opened.
    let c = Client::new(
        Config::from_json(&json!({"address": "127.0.0.1", "port": 9, "vlessId": ID,
            "mux": {"enabled": true}}))
        .unwrap(),
    )
    .unwrap();
    let u = c.open_udp(T).unwrap();
    let big = vec![0u8; 70_000];
    for (target, data, want) in [
        ("not-a-target", &b"x"[..], "no :port"),
        ("2001:db8::1:443", b"x", "needs brackets"),
        ("127.0.0.1:0", b"x", "port 0"),
        ("127.0.0.1:9000", &big[..], "70000 bytes"),
        ("127.0.0.1:9000", b"", "empty"),
        ("127.0.0.1:443", b"x", "xudpProxyUDP443"),
    ] {
        let e = u.send_to(target, data, T).unwrap_err().to_string();
        assert!(e.contains(want), "{target}: {e}");
    }
    assert_eq!(c.stats().open_tunnels, 0);
    // UDP needs VLESS.
    let raw = Client::new(Config::from_json(&json!({"address": "127.0.0.1", "port": 9})).unwrap())
        .unwrap();
    let e = raw.open_udp(T).err().expect("refused").to_string();
    assert!(e.contains("vlessId"), "{e}");
    // The config fields are checked when the client is made.
    for (extra, field) in [
        (json!({"packetEncoding": "packetaddr"}), "packetEncoding"),
        (
            json!({"mux": {"xudpProxyUDP443": "drop"}}),
            "mux.xudpProxyUDP443",
        ),
        (
            json!({"mux": {"xudpConcurrency": 40000}}),
            "mux.xudpConcurrency",
        ),
    ] {
        let mut j = json!({"address": "127.0.0.1", "port": 9, "vlessId": ID});
        for (k, v) in extra.as_object().unwrap() {
            j[k] = v.clone();
        }
        match Config::from_json(&j) {
            Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{extra}: {other:?}"),
        }
    }
}

#[test]
fn closing_the_client_closes_its_udp_sessions() {
    let e = vless_env();
    let c = client_with(&e, "stream-one", json!({}));
    let u = c.open_udp(T).unwrap();
    let (echo, _) = recording_echo();
    u.send_to(&echo.to_string(), b"up", T).unwrap();
    assert_eq!(u.recv_from(T).unwrap().0, b"up");
    std::thread::scope(|s| {
        let blocked = s.spawn(|| u.recv_from(None));
        std::thread::sleep(Duration::from_millis(100));
        c.close();
        assert!(matches!(blocked.join().unwrap(), Err(Error::Closed)));
    });
    assert!(u.is_closed());
    assert!(matches!(c.open_udp(T), Err(Error::Closed)));
}
