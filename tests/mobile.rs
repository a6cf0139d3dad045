//! The hooks a mobile VPN app needs: socket protection (Android `VpnService.protect`) and
//! network change (every QUIC connection moves to a new socket and its tunnels carry on).

mod common;
use common::netsim::{Impairment, Relay};
use common::*;
use serde_json::json;
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xhttp_mobile::Error;

/// The local address of the socket behind `fd`, without taking ownership of it.
fn socket_addr(fd: i32) -> SocketAddr {
    // SAFETY: the fd is a live UDP socket owned by the library for the duration of the
    // callback; ManuallyDrop keeps us from closing it.
    let s = ManuallyDrop::new(unsafe { UdpSocket::from_raw_fd(fd) });
    s.local_addr()
        .expect("the protected fd is a bound UDP socket")
}

#[test]
fn protect_sees_every_socket_before_use_and_can_refuse() {
    let e = env(|_| {});
    let c = e.client(json!({"path": "/xh", "mode": "stream-up", "xmux": {"maxConcurrency": 1}}));
    let seen: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
    let log = seen.clone();
    c.set_protect(Some(Arc::new(move |fd| {
        log.lock().unwrap().push(socket_addr(fd));
        true
    })));
    // maxConcurrency 1: two tunnels, two connections, two protected sockets.
    let (a, b) = (c.open(T).unwrap(), c.open(T).unwrap());
    echo_roundtrip(&a, 100_000, true);
    echo_roundtrip(&b, 100_000, true);
    let protected: Vec<u16> = seen.lock().unwrap().iter().map(|a| a.port()).collect();
    let mut used: Vec<u16> = c
        .pool_stats()
        .connections
        .iter()
        .filter_map(|c| c.local.map(|l| l.port()))
        .collect();
    used.sort();
    let mut p = protected.clone();
    p.sort();
    assert_eq!(p, used, "every connection's socket went through protect");
    assert_eq!(protected.len(), 2);

    // A refusing hook fails the dial with an error that says why; the client stays usable.
    let c2 = e.client(json!({"path": "/xh", "mode": "stream-one"}));
    c2.set_protect(Some(Arc::new(|_| false)));
    match c2.open(T) {
        Err(Error::Connect { detail, .. }) => assert!(detail.contains("protect"), "{detail}"),
        other => panic!("expected a refused socket, got {:?}", other.map(|_| ())),
    }
    c2.set_protect(None);
    echo_roundtrip(&c2.open(T).unwrap(), 10_000, true);
}

/// The phone moves from Wi-Fi to cellular: the old path stops working entirely. After
/// `network_changed`, every connection sends from a new (protected) socket and the open
/// tunnels carry on, intact, in every mode.
#[test]
fn network_change_moves_open_tunnels_to_a_new_socket() {
    let e = env(|_| {});
    for mode in ["packet-up", "stream-up", "stream-one"] {
        let relay = Relay::start(e.server.addr(), Impairment::default());
        let c = e.client_via(relay.addr(), json!({"path": "/xh", "mode": mode}));
        let protected = Arc::new(Mutex::new(0));
        let count = protected.clone();
        c.set_protect(Some(Arc::new(move |_| {
            *count.lock().unwrap() += 1;
            true
        })));
        let t = c.open(T).unwrap();
        let first = pattern(1, 200_000);
        t.write(&first, T).unwrap();
        let mut got = read_exact(&t, first.len());
        let old = relay.clients();
        assert_eq!(old.len(), 1, "{mode}: one client address so far");

        // The old network is gone: nothing from or to it gets through.
        relay.block_client(old[0]);
        t.write(b"lost?", T).unwrap();
        let mut buf = [0u8; 16];
        assert!(
            matches!(
                t.read(&mut buf, Some(Duration::from_millis(500))),
                Err(Error::Timeout(_))
            ),
            "{mode}: data crossed a dead path"
        );

        assert_eq!(
            c.network_changed().unwrap(),
            1,
            "{mode}: one connection moved"
        );
        assert_eq!(
            *protected.lock().unwrap(),
            2,
            "{mode}: the new socket was protected"
        );
        let second = pattern(2, 1_000_000);
        let writer = {
            let t = t.clone();
            let data = second.clone();
            std::thread::spawn(move || t.write(&data, T).map(|_| ()))
        };
        got.extend(read_exact(&t, 5 + second.len()));
        writer.join().unwrap().unwrap();
        let mut want = first.clone();
        want.extend_from_slice(b"lost?");
        want.extend_from_slice(&second);
        assert_eq!(
            sha(&got),
            sha(&want),
            "{mode}: echo across the move differs"
        );
        let now = relay.clients();
        assert_eq!(now.len(), 2, "{mode}: the client moved to a new address");
        let local = c.pool_stats().connections[0].local.unwrap();
        assert_eq!(
            local.port(),
            now[1].port(),
            "{mode}: pool reports the new socket"
        );
        t.close();
    }
}

fn read_exact(t: &xhttp_mobile::Tunnel, len: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(len);
    let mut buf = vec![0u8; 65536];
    while got.len() < len {
        let want = (len - got.len()).min(buf.len());
        let n = t.read(&mut buf[..want], T).expect("read");
        assert!(n > 0, "EOF after {} of {len} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// The latency probe, in every mode: one fresh connection, the mode's first request,
/// the pool untouched; a stream-one probe's body reaches the server as reset, never as a
/// complete (empty) upload.
#[test]
fn probe_times_connect_and_first_request_without_touching_the_pool() {
    use xhttp_testserver::{Event, Outcome, RequestKind};
    let e = env(|_| {});
    for (mode, kind) in [
        ("packet-up", RequestKind::StreamDown),
        ("stream-up", RequestKind::StreamDown),
        ("stream-one", RequestKind::StreamOne),
    ] {
        let c = e.client(json!({"path": "/xh", "mode": mode}));
        let before = e.server.stats().connections_accepted;
        let p = c.probe(T).unwrap_or_else(|err| panic!("{mode}: {err}"));
        assert!(
            p.connect > Duration::ZERO && p.round_trip > Duration::ZERO,
            "{p:?}"
        );
        assert_eq!(e.server.stats().connections_accepted, before + 1, "{mode}");
        let answered = e.wait_for(
            |ev| matches!(ev, Event::Request { kind: Some(k), status: 200, .. } if *k == kind),
            Duration::from_secs(5),
        );
        assert!(answered.is_some(), "{mode}: the server saw no {kind:?}");
        assert_eq!(
            c.pool_stats().live_connections,
            0,
            "{mode}: probe used the pool"
        );
        assert_eq!(c.stats().open_tunnels, 0);
        if mode == "stream-one" {
            let ended = e.wait_for(
                |ev| {
                    matches!(
                        ev,
                        Event::UploadEnded {
                            kind: RequestKind::StreamOne,
                            ..
                        }
                    )
                },
                Duration::from_secs(5),
            );
            assert!(
                matches!(
                    ended,
                    Some(Event::UploadEnded {
                        outcome: Outcome::Reset(_),
                        ..
                    })
                ),
                "stream-one probe body: {ended:?}"
            );
        }
    }
}

/// Through a path with 40 ms each way, both numbers include at least one round trip; a
/// wrong path is the 404 a tunnel would get; nothing listening is a connect error.
#[test]
fn probe_reports_the_path_and_the_failures() {
    let e = env(|_| {});
    let relay = Relay::start(
        e.server.addr(),
        Impairment {
            delay: Duration::from_millis(40),
            ..Default::default()
        },
    );
    let c = e.client_via(relay.addr(), json!({"path": "/xh", "mode": "stream-up"}));
    let p = c.probe(T).unwrap();
    assert!(p.connect >= Duration::from_millis(80), "{p:?}");
    assert!(p.round_trip >= Duration::from_millis(80), "{p:?}");

    let wrong = e.client(json!({"path": "/nowhere", "mode": "packet-up"}));
    match wrong.probe(T) {
        Err(Error::Status {
            status: 404,
            request,
        }) => {
            assert!(request.role.starts_with("stream-down"), "{request:?}")
        }
        other => panic!("expected 404, got {other:?}"),
    }

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = sock.local_addr().unwrap();
    drop(sock);
    let nobody = e.client_via(dead, json!({"path": "/xh"}));
    match nobody.probe(Some(Duration::from_secs(2))) {
        Err(Error::Connect { .. }) | Err(Error::Timeout(_)) => {}
        other => panic!("expected a connect failure, got {other:?}"),
    }
}
