//! Close semantics: idempotent, concurrent, unblocking, safe before any response, and a
//! cancelled upload reaches the server as a reset, never as a complete body.

mod common;
use common::*;
use serde_json::json;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use xhttp_mobile::Error;
use xhttp_testserver::{Event, Fault, Outcome, RequestKind, Target};

const MODES: [&str; 3] = ["packet-up", "stream-up", "stream-one"];

#[test]
fn close_twice_and_use_after_close() {
    let e = env(|_| {});
    for mode in MODES {
        let t = e
            .client(json!({"path": "/xh", "mode": mode}))
            .open(T)
            .unwrap();
        t.close();
        t.close();
        assert!(t.is_closed());
        let mut buf = [0u8; 16];
        assert_eq!(t.read(&mut buf, T), Err(Error::Closed), "{mode}");
        assert_eq!(t.write(b"x", T), Err(Error::Closed), "{mode}");
        assert!(t.shutdown_write().is_err());
        t.close();
    }
}

#[test]
fn close_from_two_threads_at_once() {
    let e = env(|_| {});
    for mode in MODES {
        for _ in 0..20 {
            let t = e
                .client(json!({"path": "/xh", "mode": mode}))
                .open(T)
                .unwrap();
            let b = Arc::new(Barrier::new(2));
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let (t, b) = (t.clone(), b.clone());
                    std::thread::spawn(move || {
                        b.wait();
                        t.close();
                        t.close();
                    })
                })
                .collect();
            for h in hs {
                h.join().expect("no panic while closing");
            }
            assert!(t.is_closed());
        }
    }
}

#[test]
fn close_unblocks_a_blocked_reader_within_100ms() {
    let e = env(|_| {});
    for mode in MODES {
        let t = e
            .client(json!({"path": "/xh", "mode": mode}))
            .open(T)
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let t = t.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                let r = t.read(&mut buf, None); // no timeout: only close can end it
                tx.send(Instant::now()).unwrap();
                r
            })
        };
        // Let the reader block (no data is ever sent to it).
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            rx.try_recv().is_err(),
            "{mode}: reader returned before close"
        );
        let closed_at = Instant::now();
        t.close();
        let woke = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("reader woke");
        let waited = woke.saturating_duration_since(closed_at);
        assert!(
            waited < Duration::from_millis(100),
            "{mode}: reader woke after {waited:?}"
        );
        assert_eq!(reader.join().unwrap(), Err(Error::Closed));
    }
}

#[test]
fn close_before_the_download_response_arrives() {
    for (mode, kind) in [
        ("packet-up", RequestKind::StreamDown),
        ("stream-up", RequestKind::StreamDown),
        ("stream-one", RequestKind::StreamOne),
    ] {
        let e = env(|_| {});
        e.server.set_fault(Some(Fault::StallResponse { on: kind }));
        let t = e
            .client(json!({"path": "/xh", "mode": mode}))
            .open(T)
            .unwrap();
        let reader = {
            let t = t.clone();
            std::thread::spawn(move || t.read(&mut [0u8; 8], None))
        };
        std::thread::sleep(Duration::from_millis(100));
        t.close();
        t.close();
        assert_eq!(reader.join().unwrap(), Err(Error::Closed), "{mode}");
        // The server sees the stalled request go away.
        let ended = e.wait_for(
            |ev| matches!(ev, Event::StallEnded { .. }),
            Duration::from_secs(5),
        );
        assert!(ended.is_some(), "{mode}: server never saw the request end");
    }
}

#[test]
fn close_mid_upload_resets_the_upload_at_the_server() {
    for mode in ["stream-up", "stream-one"] {
        let e = env(|o| o.target = Target::Sink);
        let t = e
            .client(json!({"path": "/xh", "mode": mode}))
            .open(T)
            .unwrap();
        t.write(&pattern(3, 1_000_000), T).unwrap();
        // Make sure bytes reached the server before closing (upload in progress).
        std::thread::sleep(Duration::from_millis(300));
        t.close();
        let ev = e
            .wait_for(
                |ev| matches!(ev, Event::UploadEnded { .. }),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|| panic!("{mode}: server saw no end of upload"));
        match ev {
            Event::UploadEnded { outcome, .. } => assert!(
                matches!(outcome, Outcome::Reset(_)),
                "{mode}: server saw {outcome:?}, not a reset"
            ),
            _ => unreachable!(),
        }
        // And nothing reported the truncated upload as complete.
        assert!(
            e.server.events().iter().all(|ev| !matches!(
                ev,
                Event::UploadEnded {
                    outcome: Outcome::Finished,
                    ..
                }
            )),
            "{mode}: a cancelled upload looked complete"
        );
    }
}

#[test]
fn half_close_finishes_the_upload_cleanly() {
    for mode in ["stream-up", "stream-one"] {
        let e = env(|o| o.target = Target::Sink);
        let t = e
            .client(json!({"path": "/xh", "mode": mode}))
            .open(T)
            .unwrap();
        let data = pattern(4, 2_000_000);
        t.write(&data, T).unwrap();
        t.shutdown_write().unwrap();
        let ev = e
            .wait_for(
                |ev| matches!(ev, Event::SinkDone { .. }),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|| panic!("{mode}: sink never finished"));
        match ev {
            Event::SinkDone { bytes, sha256, .. } => {
                assert_eq!(bytes, data.len() as u64, "{mode}");
                assert_eq!(sha256, sha(&data), "{mode}");
            }
            _ => unreachable!(),
        }
        // The download ends after the upload did.
        assert_eq!(t.read(&mut [0u8; 8], T), Ok(0), "{mode}");
        t.close();
    }
}

#[test]
fn close_releases_the_stream_down_at_the_server() {
    // The seed's other bug: the stream-down body was never closed.
    for mode in ["packet-up", "stream-up"] {
        let e = env(|_| {});
        let t = e
            .client(json!({"path": "/xh", "mode": mode}))
            .open(T)
            .unwrap();
        echo_roundtrip(&t, 10_000, false);
        t.close();
        assert!(
            e.wait_for(
                |ev| matches!(ev, Event::DownloadEnded { .. }),
                Duration::from_secs(5)
            )
            .is_some(),
            "{mode}: the server's GET never ended"
        );
    }
}

#[test]
fn close_races_reads_and_writes_without_panic() {
    let e = env(|_| {});
    for mode in MODES {
        let c = e.client(json!({"path": "/xh", "mode": mode}));
        for i in 0..30 {
            let t = c.open(T).unwrap();
            let r = {
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = t.read(&mut buf, T) {
                        if n == 0 {
                            break;
                        }
                    }
                })
            };
            let w = {
                let t = t.clone();
                std::thread::spawn(move || {
                    let d = pattern(9, 8192);
                    while t.write(&d, T).is_ok() {}
                })
            };
            std::thread::sleep(Duration::from_millis((i % 5) * 3));
            t.close();
            r.join().expect("reader");
            w.join().expect("writer");
        }
        c.close();
    }
}

#[test]
fn client_close_closes_its_tunnels() {
    let e = env(|_| {});
    let c = e.client(json!({"path": "/xh", "mode": "stream-up"}));
    let ts: Vec<_> = (0..3).map(|_| c.open(T).unwrap()).collect();
    c.close();
    c.close();
    for t in &ts {
        assert_eq!(t.read(&mut [0u8; 8], T), Err(Error::Closed));
    }
    assert!(matches!(c.open(T), Err(Error::Closed)));
}

#[test]
fn dropping_a_tunnel_without_close_resets_its_upload() {
    let e = env(|o| o.target = Target::Sink);
    let c = e.client(json!({"path": "/xh", "mode": "stream-up"}));
    let t = c.open(T).unwrap();
    t.write(&pattern(5, 100_000), T).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(t);
    let ev = e.wait_for(
        |ev| matches!(ev, Event::UploadEnded { .. }),
        Duration::from_secs(5),
    );
    assert!(
        matches!(
            ev,
            Some(Event::UploadEnded {
                outcome: Outcome::Reset(_),
                ..
            })
        ),
        "{ev:?}"
    );
}

#[test]
fn dropping_the_client_and_tunnel_never_completes_the_upload() {
    // The last handles go at once: connections close with the tunnel. The server must see
    // the upload fail (reset or connection error), never finish.
    let e = env(|o| o.target = Target::Sink);
    let t = e
        .client(json!({"path": "/xh", "mode": "stream-one"}))
        .open(T)
        .unwrap();
    t.write(&pattern(6, 100_000), T).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(t);
    let ev = e.wait_for(
        |ev| matches!(ev, Event::UploadEnded { .. }),
        Duration::from_secs(5),
    );
    match ev {
        Some(Event::UploadEnded { outcome, .. }) => assert_ne!(outcome, Outcome::Finished),
        other => panic!("server saw no end of upload: {other:?}"),
    }
}
