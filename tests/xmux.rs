//! XMUX against the in-repo server, which counts the QUIC connections and requests it saw.

mod common;
use common::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use xhttp_mobile::{Client, Tunnel};
use xhttp_testserver::Event;

const MODES: [&str; 3] = ["packet-up", "stream-up", "stream-one"];

fn x(mode: &str, xmux: Value) -> Value {
    json!({"path": "/xh", "mode": mode, "scMinPostsIntervalMs": 5, "xmux": xmux})
}

/// Requests the server answered, per client connection (peer address).
fn server_requests(e: &Env) -> HashMap<SocketAddr, u64> {
    let mut m = HashMap::new();
    for ev in e.server.events() {
        if let Event::Request {
            kind: Some(_),
            status,
            peer,
            ..
        } = ev
        {
            if status != 0 {
                *m.entry(peer).or_default() += 1;
            }
        }
    }
    m
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens `n` tunnels concurrently from `n` threads; each echoes a little data.
fn open_concurrently(c: &Client, n: usize, mode: &str) -> Vec<Tunnel> {
    let hs: Vec<_> = (0..n)
        .map(|i| {
            let c = c.clone();
            let half = mode != "packet-up";
            std::thread::spawn(move || {
                let t = c.open(T).expect("open");
                echo_roundtrip(&t, 1000 + i, half);
                t
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn max_concurrency_2_puts_10_tunnels_on_5_connections() {
    for mode in MODES {
        let e = env(|_| {});
        let c = e.client(x(mode, json!({"maxConcurrency": 2})));
        let ts = open_concurrently(&c, 10, mode);
        assert_eq!(e.server.stats().connections_accepted, 5, "{mode}");
        let s = c.pool_stats();
        assert_eq!(s.live_connections, 5, "{mode}");
        assert_eq!(s.running, 10, "{mode}");
        assert!(
            s.connections.iter().all(|c| c.stats.running == 2),
            "{mode}: {s:?}"
        );
        for t in &ts {
            t.close();
        }
        // Slots come back as each tunnel's tasks finish (after their streams are reset).
        eventually("all slots released", || c.pool_stats().running == 0);
        // Nothing is spent, so the five connections stay for reuse.
        assert_eq!(c.pool_stats().live_connections, 5, "{mode}");
    }
}

#[test]
fn max_connections_3_carries_30_tunnels() {
    for mode in MODES {
        let e = env(|_| {});
        let c = e.client(x(mode, json!({"maxConnections": 3})));
        let ts = open_concurrently(&c, 30, mode);
        assert_eq!(e.server.stats().connections_accepted, 3, "{mode}");
        assert_eq!(c.pool_stats().live_connections, 3, "{mode}");
        drop(ts);
        eventually("all slots released", || c.pool_stats().running == 0);
    }
}

#[test]
fn c_max_reuse_times_2_gives_the_third_tunnel_a_new_connection() {
    for mode in MODES {
        let e = env(|_| {});
        let c = e.client(x(mode, json!({"cMaxReuseTimes": 2})));
        let a = c.open(T).unwrap();
        let b = c.open(T).unwrap();
        eventually("server accepted one connection", || {
            e.server.stats().connections_accepted == 1
        });
        let third = c.open(T).unwrap();
        // open() returns once the requests are sent; the server may finish its side of the
        // handshake a moment later.
        eventually("server accepted a second connection", || {
            e.server.stats().connections_accepted == 2
        });
        assert_eq!(c.pool_stats().connections.len(), 2);
        assert_ne!(third.local_addr(), a.local_addr());
        assert_eq!(a.local_addr(), b.local_addr());
        // The spent connection drains, then closes once its tunnels are gone.
        assert_eq!(c.pool_stats().draining, 1);
        a.close();
        b.close();
        eventually("retired connection closed at the server", || {
            e.server
                .events()
                .iter()
                .any(|ev| matches!(ev, Event::ConnectionClosed { peer } if *peer == a.local_addr()))
        });
        let s = c.pool_stats();
        assert_eq!((s.draining, s.live_connections), (0, 1), "{mode}: {s:?}");
        third.close();
    }
}

#[test]
fn h_max_request_times_moves_a_long_packet_up_tunnel() {
    let e = env(|_| {});
    let c = e.client(
        json!({"path": "/xh", "mode": "packet-up", "scMinPostsIntervalMs": 1,
        "xmux": {"hMaxRequestTimes": 4}}),
    );
    let t = c.open(T).unwrap();
    // 12 separate bursts → at least 12 POSTs: the GET and 3 POSTs fill the first connection.
    echo_bursts(&t, 12, 5000, 1);
    let accepted = e.server.stats().connections_accepted;
    assert!(
        accepted >= 4,
        "12 POSTs + GET at 4 requests each need ≥ 4 connections, saw {accepted}"
    );
    // Server-side counts equal client-side charges, in total and per connection still held.
    // The server records a POST when it answers it, which may come after its data was
    // echoed: wait for the answers before comparing.
    eventually("the server answered every charged request", || {
        server_requests(&e).values().sum::<u64>() == c.pool_stats().requests_total
    });
    let server = server_requests(&e);
    let s = c.pool_stats();
    assert_eq!(
        server.values().sum::<u64>(),
        s.requests_total,
        "{server:?} vs {s:?}"
    );
    assert!(server.values().all(|&n| n <= 4), "{server:?}");
    for conn in &s.connections {
        let local = conn.local.unwrap();
        assert_eq!(
            server.get(&local).copied().unwrap_or(0),
            conn.stats.requests,
            "{local}"
        );
    }
    // The tunnel's own slot keeps the GET's connection; after close every retired one closes.
    t.close();
    eventually("retired connections closed", || {
        let s = c.pool_stats();
        s.draining == 0 && s.running == 0 && s.live_connections <= 1
    });
    eventually("server saw the closes", || {
        let st = e.server.stats();
        st.connections_closed + c.pool_stats().live_connections as u64 == st.connections_accepted
    });
}

/// With `downloadSettings` the GET rides the download pool, so a long packet-up tunnel
/// holds no main-pool connection but the one its next POST goes on: each connection it
/// used up closes while the tunnel is still open.
#[test]
fn packet_up_with_download_settings_lets_used_up_connections_close_mid_tunnel() {
    let e = env(|_| {});
    let mut v = e.config_json(x("packet-up", json!({"hMaxRequestTimes": 2})));
    let mut dl = e.config_json(json!({}));
    dl["xhttpSettings"] = json!({"path": "/xh/"});
    v["downloadSettings"] = dl;
    let c = Client::new(xhttp_mobile::Config::from_json(&v).unwrap()).unwrap();
    let t = c.open(T).unwrap();
    echo_bursts(&t, 8, 3000, 40);
    assert!(c.pool_stats().requests_total >= 8);
    // 8 POSTs at 2 per connection: at least 4 connections, all but the current one
    // retired, and none of those may linger while the tunnel is open.
    eventually(
        "used-up connections closed while the tunnel is open",
        || {
            let s = c.pool_stats();
            s.draining == 0 && s.live_connections <= 1
        },
    );
    assert!(!t.is_closed());
}

#[test]
fn h_max_reusable_secs_stops_picking_old_connections() {
    for mode in MODES {
        let e = env(|_| {});
        let c = e.client(x(mode, json!({"hMaxReusableSecs": 1})));
        let a = c.open(T).unwrap();
        assert_eq!(
            c.open(T).unwrap().local_addr(),
            a.local_addr(),
            "{mode}: reused while young"
        );
        std::thread::sleep(Duration::from_millis(1100));
        let b = c.open(T).unwrap();
        assert_ne!(
            b.local_addr(),
            a.local_addr(),
            "{mode}: old connection picked"
        );
        a.close();
        b.close();
        // Both connections are past their time and idle: closed within a second.
        eventually("expired connections closed", || {
            c.pool_stats().live_connections == 0
        });
        eventually("server saw both closes", || {
            e.server.stats().connections_closed == 2
        });
    }
}

#[test]
fn stream_one_charges_exactly_one_request() {
    let e = env(|_| {});
    let c = e.client(x("stream-one", json!({"maxConnections": 1})));
    let t = c.open(T).unwrap();
    echo_roundtrip(&t, 50_000, true);
    let s = c.pool_stats();
    assert_eq!(s.requests_total, 1);
    assert_eq!(s.connections[0].stats.requests, 1);
    assert_eq!(server_requests(&e).values().sum::<u64>(), 1);
    // stream-up charges its GET and its POST.
    let c = e.client(x("stream-up", json!({"maxConnections": 1})));
    let t = c.open(T).unwrap();
    echo_roundtrip(&t, 1000, true);
    assert_eq!(c.pool_stats().requests_total, 2);
}

#[test]
fn slots_are_released_exactly_once_however_tunnels_end() {
    let e = env(|_| {});
    let c = e.client(x("stream-up", json!({"maxConcurrency": 3})));
    let a = c.open(T).unwrap();
    let b = c.open(T).unwrap();
    let d = c.open(T).unwrap();
    assert_eq!(c.pool_stats().running, 3);
    a.close();
    a.close();
    eventually("a's slot released", || c.pool_stats().running == 2);
    drop(b); // the last handle of b
    eventually("b's slot released", || c.pool_stats().running == 1);
    let d2 = d.clone();
    let h = std::thread::spawn(move || d2.close());
    d.close();
    h.join().unwrap();
    eventually("d's slot released", || c.pool_stats().running == 0);
    // Nothing was released twice: the counts never went below zero or double-freed a slot
    // (a double release would have closed the still-wanted connection).
    assert_eq!(c.pool_stats().live_connections, 1);
    c.close();
    assert_eq!(c.pool_stats().running, 0);
}

#[test]
fn stress_2000_tunnels_on_8_threads_with_random_close_timing() {
    let e = env(|_| {});
    let clients: Vec<Client> = MODES
        .iter()
        .map(|m| e.client(x(m, json!({"maxConcurrency": 4}))))
        .collect();
    let completed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let hs: Vec<_> = (0..8u64)
        .map(|th| {
            let clients = clients.clone();
            let completed = completed.clone();
            std::thread::spawn(move || {
                let mut rng = th * 7919 + 1;
                for i in 0..250u64 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let mode = (i % 3) as usize;
                    let t = match clients[mode].open(T) {
                        Ok(t) => t,
                        Err(err) => panic!("open failed: {err}"),
                    };
                    match rng % 5 {
                        // Before any response.
                        0 => t.close(),
                        // Mid-transfer.
                        1 => {
                            let _ = t.write(&pattern(rng, 20_000), T);
                            let _ = t.read(&mut [0u8; 100], T);
                            t.close();
                        }
                        // Twice, from two threads.
                        2 => {
                            let t2 = t.clone();
                            let h = std::thread::spawn(move || t2.close());
                            t.close();
                            h.join().unwrap();
                        }
                        // Concurrently with a blocked read.
                        3 => {
                            let t2 = t.clone();
                            let h = std::thread::spawn(move || t2.read(&mut [0u8; 64], None));
                            std::thread::sleep(Duration::from_millis(rng % 3));
                            t.close();
                            let _ = h.join().unwrap();
                        }
                        // A complete, checksummed transfer.
                        _ => {
                            echo_roundtrip(&t, 4096 + (rng % 4096) as usize, mode != 0);
                            completed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            t.close();
                        }
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().expect("no panic");
    }
    assert!(completed.load(std::sync::atomic::Ordering::Relaxed) > 100);
    for c in &clients {
        eventually("zero running slots and nothing draining", || {
            let s = c.pool_stats();
            s.running == 0 && s.draining == 0
        });
    }
}

/// Opens `n` long-lived tunnels from `n` threads at once (each `timeout`); the results in
/// order.
fn open_many(c: &Client, n: usize, timeout: Duration) -> Vec<xhttp_mobile::Result<Tunnel>> {
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || c.open(Some(timeout)))
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect()
}

/// A server allowing 4 request streams per connection, and 12 stream-up tunnels (2 streams
/// each) opened at once and kept open: XMUX without a connection cap dials the connections
/// the stream limit needs, and no tunnel sits holding its GET while waiting for its POST.
#[test]
fn connections_out_of_streams_get_siblings_when_xmux_allows() {
    for mode in MODES {
        let e = env(|o| {
            o.max_streams = 4;
            o.session_timeout = Duration::from_secs(1);
        });
        let c = e.client(x(mode, json!({"maxConcurrency": 64})));
        let tunnels: Vec<Tunnel> = open_many(&c, 12, Duration::from_secs(10))
            .into_iter()
            .map(|r| r.unwrap_or_else(|err| panic!("{mode}: open: {err}")))
            .collect();
        for (i, t) in tunnels.iter().enumerate() {
            echo_bursts(t, 1, 200, i as u64);
        }
        let live = c.pool_stats().live_connections;
        // Long-lived streams per tunnel: the GET and the POST in stream-up, one otherwise.
        let per_tunnel = if mode == "stream-up" { 2 } else { 1 };
        assert!(
            live >= 12 * per_tunnel / 4,
            "{mode}: {live} connections for {} streams at 4 per connection",
            12 * per_tunnel
        );
        drop(tunnels);
        if let Err(h) =
            e.rt.block_on(e.server.wait_released(Duration::from_secs(10)))
        {
            panic!("{mode}: server still holds {h:#?}");
        }
    }
}

/// With the default XMUX (3 connections) and 4 streams each, tunnels that do not fit get
/// overflow connections (unlike Xray's client, which would wait): all 8 stream-up tunnels
/// open, and once they end the pool is back to its 3 connections.
#[test]
fn a_capped_pool_out_of_streams_opens_overflow_connections_then_shrinks_back() {
    let e = env(|o| {
        o.max_streams = 4;
        o.session_timeout = Duration::from_secs(1);
    });
    let c = e.client(json!({"path": "/xh", "mode": "stream-up"}));
    // 3 connections × 4 streams hold 6 stream-up tunnels; 2 more need a fourth connection.
    let tunnels: Vec<Tunnel> = open_many(&c, 8, Duration::from_secs(10))
        .into_iter()
        .map(|r| r.unwrap_or_else(|err| panic!("open: {err} {:#?}", c.pool_stats())))
        .collect();
    for (i, t) in tunnels.iter().enumerate() {
        echo_bursts(t, 1, 200, i as u64);
    }
    let s = c.pool_stats();
    let overflow = s.connections.iter().filter(|c| c.stats.overflow).count();
    assert!(
        overflow >= 1 && s.live_connections >= 4,
        "8 stream-up tunnels at 4 streams per connection: {s:#?}"
    );
    drop(tunnels);
    if let Err(h) =
        e.rt.block_on(e.server.wait_released(Duration::from_secs(10)))
    {
        panic!("server still holds {h:#?}");
    }
    eventually("the overflow connections closed once idle", || {
        let s = c.pool_stats();
        s.running == 0 && s.connections.iter().all(|c| !c.stats.overflow)
    });
    assert!(
        c.pool_stats().live_connections <= 3,
        "{:#?}",
        c.pool_stats()
    );
    let t = c.open(T).expect("an open after tunnels ended");
    echo_bursts(&t, 1, 100, 2);
}

/// Overflow connections are bounded: with one stream per connection and `maxConnections` 1,
/// 1 + MAX_OVERFLOW stream-one tunnels open; the next ones wait within their deadline and
/// fail with a timeout, never hang; once a tunnel ends, an open succeeds again.
#[test]
fn overflow_connections_are_bounded_and_opens_past_them_wait_within_their_deadline() {
    let e = env(|o| {
        o.max_streams = 1;
        o.session_timeout = Duration::from_secs(1);
    });
    let c = e.client(x("stream-one", json!({"maxConnections": 1})));
    let fit = 1 + xhttp_mobile::xmux::MAX_OVERFLOW;
    let mut ok: Vec<Tunnel> = open_many(&c, fit, Duration::from_secs(10))
        .into_iter()
        .map(|r| r.unwrap_or_else(|err| panic!("open: {err} {:#?}", c.pool_stats())))
        .collect();
    assert_eq!(
        c.pool_stats().live_connections,
        fit,
        "{:#?}",
        c.pool_stats()
    );
    let started = Instant::now();
    for r in open_many(&c, 2, Duration::from_secs(2)) {
        match r {
            Err(xhttp_mobile::Error::Timeout(_)) => {}
            Err(e) => panic!("an open past the bound ends with its deadline: {e}"),
            Ok(_) => panic!("an open past the bound succeeded: {:#?}", c.pool_stats()),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "opens were bounded"
    );
    for (i, t) in ok.iter().enumerate() {
        echo_bursts(t, 1, 100, i as u64);
    }
    ok.pop();
    let t = c
        .open(Some(Duration::from_secs(10)))
        .expect("an open after a tunnel ended");
    echo_bursts(&t, 1, 100, 99);
}
