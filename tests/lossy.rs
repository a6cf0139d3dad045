//! Tunnels over a bad network: loss, delay and reordering from a user-space relay
//! (tests/common/netsim.rs), a NAT rebinding mid-transfer, and a path that goes dead.

mod common;
use common::netsim::{Impairment, Relay, unit};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use xhttp_testserver::{Event, RequestKind};

fn lossy() -> Impairment {
    Impairment {
        loss: 0.03,
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(3),
        reorder: 0.01,
        ..Default::default()
    }
}

#[test]
fn the_drop_pattern_is_seeded() {
    let draw = |seed: u64| {
        let mut s = seed | 1;
        (0..1000).map(|_| unit(&mut s) < 0.05).collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
    let drops = draw(7).iter().filter(|&&d| d).count();
    assert!((20..=80).contains(&drops), "{drops} of 1000 at 5%");
}

/// Every mode moves 512 KiB each way intact through 3% loss each way, 5–8 ms one-way
/// delay and 1% of datagrams overtaken by later ones.
#[test]
fn every_mode_survives_loss_delay_and_reordering() {
    let e = env(|_| {});
    for (i, mode) in ["packet-up", "stream-up", "stream-one"].iter().enumerate() {
        let relay = Relay::start(
            e.server.addr(),
            Impairment {
                seed: 42 + i as u64,
                ..lossy()
            },
        );
        let c = e.client_via(relay.addr(), json!({"path": "/xh", "mode": mode}));
        let started = Instant::now();
        let t = c
            .open(T)
            .unwrap_or_else(|err| panic!("{mode}: open: {err}"));
        echo_roundtrip(&t, 512 * 1024, *mode != "packet-up");
        eprintln!(
            "{mode}: {:?}, {} datagrams dropped",
            started.elapsed(),
            relay.dropped()
        );
        t.close();
        assert!(
            relay.dropped() > 10 && relay.reordered() > 0,
            "{mode}: the relay dropped only {} and reordered {} datagrams",
            relay.dropped(),
            relay.reordered()
        );
    }
}

/// The server sees the client move to a new address mid-transfer (a phone's NAT
/// rebinding); QUIC migrates the connection and the transfer completes intact.
#[test]
fn a_nat_rebinding_mid_transfer_is_survived() {
    let e = env(|_| {});
    for mode in ["packet-up", "stream-up"] {
        let relay = Relay::start(e.server.addr(), Impairment::default());
        let c = e.client_via(relay.addr(), json!({"path": "/xh", "mode": mode}));
        let t = c.open(T).unwrap();
        let size = 4 << 20;
        let data = pattern(3, size);
        let writer = {
            let t = t.clone();
            let data = data.clone();
            std::thread::spawn(move || {
                for c in data.chunks(64 * 1024) {
                    t.write(c, T).expect("write");
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let mut got = Vec::with_capacity(size);
        let mut buf = vec![0u8; 65536];
        let mut moved_to = None;
        while got.len() < size {
            let n = t.read(&mut buf, T).expect("read");
            assert!(n > 0, "{mode}: EOF after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            if moved_to.is_none() && got.len() > size / 4 {
                moved_to = Some(relay.rebind());
            }
        }
        writer.join().unwrap();
        assert_eq!(sha(&got), sha(&data), "{mode}: echo differs");
        let moved_to = moved_to.unwrap();
        // A request after the move came from the new address: the server migrated.
        let post = t.write(b"after", T).map(|_| ());
        assert!(post.is_ok(), "{mode}: write after the move: {post:?}");
        let mut tail = [0u8; 5];
        let mut at = 0;
        while at < 5 {
            at += t.read(&mut tail[at..], T).expect("read after the move");
        }
        assert_eq!(&tail, b"after");
        if mode == "packet-up" {
            let seen = e.wait_for(
                |ev| matches!(ev, Event::Request { kind: Some(RequestKind::PacketUp), peer, .. } if *peer == moved_to),
                Duration::from_secs(5),
            );
            assert!(seen.is_some(), "no POST came from {moved_to}");
        }
    }
}

/// A path that goes dead mid-transfer: reads block (nothing arrives), and closing the
/// tunnel and then the client still end everything promptly, without waiting for QUIC's
/// idle timeout.
#[test]
fn a_dead_path_never_makes_close_hang() {
    let e = env(|_| {});
    let relay = Relay::start(e.server.addr(), Impairment::default());
    let c = e.client_via(relay.addr(), json!({"path": "/xh", "mode": "stream-up"}));
    let t = c.open(T).unwrap();
    echo_roundtrip(&t, 100_000, false);
    relay.blackhole(true);
    t.write(&pattern(5, 300_000), T)
        .expect("writes queue while the path is dead");
    let reader = {
        let t = t.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let start = Instant::now();
            let r = t.read(&mut buf, Some(Duration::from_secs(20)));
            (r, start.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let closed_at = Instant::now();
    t.close();
    let (r, _) = reader.join().unwrap();
    assert!(
        matches!(r, Err(xhttp_mobile::Error::Closed)),
        "blocked read ended with {r:?}"
    );
    assert!(closed_at.elapsed() < Duration::from_millis(500));
    let start = Instant::now();
    c.close();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "client close took {:?} on a dead path",
        start.elapsed()
    );
    assert_eq!(c.pool_stats().live_connections, 0, "{:?}", c.pool_stats());
}

/// A long, jittery path (120–140 ms one way, like a congested mobile link) that reorders:
/// packet-up's POSTs overlap in flight and some arrive out of order; the server puts them
/// back in seq order and the echo comes back intact.
#[test]
fn packet_up_posts_overlap_on_a_long_path() {
    let e = env(|_| {});
    let relay = Relay::start(
        e.server.addr(),
        Impairment {
            delay: Duration::from_millis(120),
            jitter: Duration::from_millis(20),
            reorder: 0.05,
            reorder_by: Duration::from_millis(60),
            seed: 5,
            ..Default::default()
        },
    );
    let c = e.client_via(relay.addr(), json!({"path": "/xh", "mode": "packet-up"}));
    let t = c.open(T).unwrap();
    let data = pattern(11, 24 * 3000);
    let writer = {
        let t = t.clone();
        let data = data.clone();
        std::thread::spawn(move || {
            // Spaced past scMinPostsIntervalMs so each write becomes its own POST.
            for piece in data.chunks(3000) {
                t.write(piece, T).expect("write");
                std::thread::sleep(Duration::from_millis(35));
            }
        })
    };
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < data.len() {
        let n = t.read(&mut buf, T).expect("read");
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    writer.join().unwrap();
    assert_eq!(sha(&got), sha(&data));
    assert!(relay.reordered() > 0, "nothing was reordered");
    let posts = e.server.stats().requests_packet_up;
    assert!(
        posts >= 12,
        "only {posts} POSTs: writes were not sent as they came"
    );
}

/// The first datagrams of the handshake are lost: QUIC retransmits and the tunnel opens.
#[test]
fn a_lossy_handshake_still_opens() {
    let e = env(|_| {});
    let relay = Relay::start(
        e.server.addr(),
        Impairment {
            loss: 0.25,
            seed: 9,
            ..Default::default()
        },
    );
    let c = e.client_via(relay.addr(), json!({"path": "/xh", "mode": "stream-one"}));
    let t = c.open(T).expect("open through 25% loss");
    echo_roundtrip(&t, 64 * 1024, true);
    assert!(relay.dropped() > 0);
}
