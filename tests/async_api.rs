//! The `*_async` API (what the Kotlin suspend functions and Swift async methods wrap),
//! polled by a plain-thread executor that has no tokio context, as uniffi polls it from
//! Kotlin and Swift: transfers checked by SHA-256, and what a dropped (cancelled) or
//! timed-out call leaves behind — nothing taken, nothing queued, or a tunnel ended; never
//! half a write that looks whole.

mod common;
use common::*;
use serde_json::json;
use std::future::Future;
use std::net::UdpSocket;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use xhttp_mobile::proxy::vless::Target;
use xhttp_mobile::{Client, Config, Error, Tunnel};
use xhttp_testserver::{Event, Outcome};

/// Wakes a parked thread: the smallest executor there is.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn waker() -> Waker {
    Arc::new(Unpark(std::thread::current())).into()
}

/// Polls `f` on this thread until it is ready.
fn run<F: Future>(f: F) -> F::Output {
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "the executor must not be a tokio runtime"
    );
    let mut f = std::pin::pin!(f);
    let w = waker();
    let mut cx = Context::from_waker(&w);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Polls `f` until it is ready or `wait` passed; the future is returned unfinished.
fn poll_for<F: Future + Unpin>(f: &mut F, wait: Duration) -> Option<F::Output> {
    let w = waker();
    let mut cx = Context::from_waker(&w);
    let end = Instant::now() + wait;
    loop {
        if let Poll::Ready(v) = Pin::new(&mut *f).poll(&mut cx) {
            return Some(v);
        }
        let now = Instant::now();
        if now >= end {
            return None;
        }
        std::thread::park_timeout(end - now);
    }
}

fn limited_client(e: &Env, mode: &str, limits: serde_json::Value) -> Client {
    let mut j = e.config_json(json!({"path": "/xh", "mode": mode}));
    j["memoryLimits"] = limits;
    Client::new(Config::from_json(&j).expect("valid config")).expect("client")
}

/// A stream-up tunnel whose QUIC windows and queues are 64 KiB or less.
fn small_windows(e: &Env) -> (Client, Tunnel) {
    let c = limited_client(
        e,
        "stream-up",
        json!({"streamReceiveWindow": 16384, "connectionReceiveWindow": 65536,
               "downloadQueue": 65536, "uploadQueue": 65536}),
    );
    let t = run(c.open_async(T)).expect("open");
    (c, t)
}

/// Far more than the queue and the windows of [`small_windows`] hold.
const LONG_WRITE: usize = 16 << 20;

/// A `write_async` of [`LONG_WRITE`] bytes polled until it stalls (nothing is read back),
/// and the bytes it queued by then.
fn stalled_long_write(
    c: &Client,
    t: &Tunnel,
) -> (Pin<Box<impl Future<Output = Result<usize, Error>>>>, u64) {
    let mut w = Box::pin(t.write_async(pattern(9, LONG_WRITE), T));
    assert!(
        poll_for(&mut w, Duration::from_millis(1000)).is_none(),
        "16 MiB went through windows of 64 KiB without anyone reading"
    );
    let queued = c.stats().bytes_up;
    assert!(queued > 0, "no part was queued");
    (w, queued)
}

/// Reads `n` bytes with `read_async`.
fn read_exactly(t: &Tunnel, n: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let b = run(t.read_async(65536, T)).expect("read");
        assert!(
            !b.is_empty(),
            "download ended after {} of {n} bytes",
            got.len()
        );
        got.extend_from_slice(&b);
    }
    got
}

#[test]
fn async_transfers_in_every_mode_from_a_foreign_executor() {
    let e = env(|_| {});
    for mode in ["packet-up", "stream-up", "stream-one"] {
        let c = e.client(json!({"path": "/xh", "mode": mode}));
        let t = run(c.open_async(T)).expect("open");
        let data = pattern(7, 3 << 20);
        let writer = {
            let (t, data) = (t.clone(), data.clone());
            std::thread::spawn(move || {
                for piece in data.chunks(300_000) {
                    assert_eq!(run(t.write_async(piece.to_vec(), T)), Ok(piece.len()));
                }
                if mode != "packet-up" {
                    run(t.shutdown_write_async(T)).expect("shutdown_write");
                    // Idempotent.
                    run(t.shutdown_write_async(T)).expect("shutdown_write again");
                }
            })
        };
        let got = read_exactly(&t, data.len());
        writer.join().expect("writer");
        assert_eq!(sha(&got), sha(&data), "{mode}: SHA-256 of the echo");
        if mode != "packet-up" {
            assert_eq!(run(t.read_async(16, T)), Ok(Vec::new()), "{mode}: EOF");
        }
        let p = run(c.probe_async(T)).expect("probe");
        assert!(p.round_trip > Duration::ZERO, "{mode}: {p:?}");
        t.close();
        assert_eq!(run(t.read_async(16, T)), Err(Error::Closed), "{mode}");
        c.close();
        assert_eq!(run(c.open_async(T)).err(), Some(Error::Closed), "{mode}");
    }
}

#[test]
fn many_tunnels_at_once_each_checked() {
    let e = env(|_| {});
    let c = e.client(json!({"path": "/xh", "mode": "stream-up"}));
    let threads: Vec<_> = (0..16u64)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || {
                let t = run(c.open_async(T)).expect("open");
                let data = pattern(100 + i, 200_000 + i as usize * 1000);
                let w = {
                    let (t, data) = (t.clone(), data.clone());
                    std::thread::spawn(move || {
                        assert_eq!(run(t.write_async(data.clone(), T)), Ok(data.len()));
                        run(t.shutdown_write_async(T)).unwrap();
                    })
                };
                let got = read_exactly(&t, data.len());
                w.join().unwrap();
                assert_eq!(sha(&got), sha(&data), "tunnel {i}");
                assert_eq!(run(t.read_async(16, T)), Ok(Vec::new()), "tunnel {i}: EOF");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("tunnel thread");
    }
    assert_eq!(c.stats().open_tunnels, 0);
}

#[test]
fn a_dropped_or_timed_out_read_takes_nothing() {
    let e = env(|_| {});
    let c = e.client(json!({"path": "/xh", "mode": "stream-up"}));
    let t = run(c.open_async(T)).expect("open");

    // Waiting for bytes that are not there: dropped, and timed out.
    let mut r = Box::pin(t.read_async(1024, T));
    assert!(poll_for(&mut r, Duration::from_millis(100)).is_none());
    drop(r);
    let start = Instant::now();
    assert_eq!(
        run(t.read_async(1024, Some(Duration::from_millis(150)))),
        Err(Error::Timeout(150))
    );
    assert!(start.elapsed() >= Duration::from_millis(150));

    // The wait saw bytes arrive (its task finished) but the future was dropped before it
    // was polled again: the bytes are still in the tunnel.
    let mut r = Box::pin(t.read_async(1024, T));
    assert!(poll_for(&mut r, Duration::from_millis(50)).is_none());
    let first = pattern(1, 5000);
    t.write(&first, T).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(r);

    let more = pattern(2, 70_000);
    assert_eq!(run(t.write_async(more.clone(), T)), Ok(more.len()));
    let got = read_exactly(&t, first.len() + more.len());
    assert_eq!(
        sha(&got),
        sha(&[first, more].concat()),
        "nothing lost, nothing reordered"
    );
    t.close();
}

#[test]
fn a_write_that_fits_the_queue_is_queued_whole_or_not_at_all() {
    // The echo is read back slowly, so the upload queue frees a little at a time while
    // writes that fit it keep giving up (a short timeout, or dropped after a short poll).
    // Each gave up having queued nothing, so what comes back is exactly the writes that
    // returned.
    let e = env(|_| {});
    let (_client, t) = small_windows(&e);
    let reader = {
        let t = t.clone();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                let b = run(t.read_async(16384, T)).expect("read");
                if b.is_empty() {
                    return got;
                }
                got.extend_from_slice(&b);
                std::thread::sleep(Duration::from_millis(8));
            }
        })
    };
    let mut accepted = Vec::new();
    let (mut timeouts, mut drops) = (0, 0);
    for i in 0..150u64 {
        let piece = pattern(1000 + i, 60_000);
        let done = if i % 2 == 0 {
            match run(t.write_async(piece.clone(), Some(Duration::from_millis(15)))) {
                Err(Error::Timeout(_)) => {
                    timeouts += 1;
                    None
                }
                r => Some(r),
            }
        } else {
            let mut w = Box::pin(t.write_async(piece.clone(), T));
            let r = poll_for(&mut w, Duration::from_millis(15));
            drops += usize::from(r.is_none());
            r
        };
        if let Some(r) = done {
            assert_eq!(
                r,
                Ok(piece.len()),
                "write {i}: a write that fits is never partial"
            );
            accepted.extend_from_slice(&piece);
        }
    }
    run(t.shutdown_write_async(T)).unwrap();
    let got = reader.join().expect("reader");
    assert!(
        timeouts >= 10 && drops >= 10,
        "the upload hardly ever filled ({timeouts} timeouts, {drops} drops)"
    );
    assert_eq!(
        got.len(),
        accepted.len(),
        "bytes echoed vs. writes that returned"
    );
    assert_eq!(
        sha(&got),
        sha(&accepted),
        "the echo is exactly the writes that returned"
    );
}

#[test]
fn a_long_write_dropped_part_way_ends_the_tunnel_and_resets_the_upload() {
    let e = env(|_| {});
    let (c, t) = small_windows(&e);
    let (w, queued) = stalled_long_write(&c, &t);
    drop(w);
    assert!(t.is_closed(), "a write dropped part-way ends the tunnel");
    let err = run(t.write_async(b"more".to_vec(), T)).unwrap_err();
    match &err {
        Error::Other(m) => assert!(
            m.contains("cancelled after") && m.contains(&queued.to_string()),
            "{m}"
        ),
        other => panic!("expected the cancelled write's error, got {other:?}"),
    }
    let ev = e
        .wait_for(
            |ev| matches!(ev, Event::UploadEnded { .. }),
            Duration::from_secs(10),
        )
        .expect("the server saw the upload end");
    match ev {
        Event::UploadEnded { outcome, .. } => assert!(
            matches!(outcome, Outcome::Reset(_) | Outcome::Error(_)),
            "the server saw {outcome:?}, not a reset"
        ),
        _ => unreachable!(),
    }
}

#[test]
fn a_dropped_open_leaves_no_tunnel() {
    let e = env(|_| {});
    let c = e.client(json!({"path": "/xh", "mode": "stream-up"}));
    // Dropped after the open finished on the runtime, before its result was taken.
    let mut o = Box::pin(c.open_async(T));
    let w = waker();
    assert!(o.as_mut().poll(&mut Context::from_waker(&w)).is_pending());
    let end = Instant::now() + Duration::from_secs(10);
    while c.stats().open_tunnels == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        c.stats().open_tunnels,
        1,
        "the open is under way on the runtime"
    );
    // Let it finish: the tunnel then waits in the hand-off for a poll that never comes.
    std::thread::sleep(Duration::from_millis(500));
    drop(o);
    let end = Instant::now() + Duration::from_secs(2);
    while c.stats().open_tunnels > 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.stats().open_tunnels, 0, "the untaken tunnel was closed");
    // The client is unharmed.
    let t = run(c.open_async(T)).expect("open");
    assert_eq!(run(t.write_async(b"ok".to_vec(), T)), Ok(2));
    assert_eq!(read_exactly(&t, 2), b"ok");
}

#[test]
fn a_client_close_ends_pending_opens_and_reads_at_once() {
    let e = env(|_| {});
    // A server that never answers: the dial would run to the QUIC handshake timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let nobody = e.client_via(silent.local_addr().unwrap(), json!({"path": "/xh"}));
    let live = e.client(json!({"path": "/xh", "mode": "packet-up"}));
    let t = run(live.open_async(T)).expect("open");

    let mut opening = Box::pin(nobody.open_async(T));
    assert!(poll_for(&mut opening, Duration::from_millis(300)).is_none());
    let mut reading = Box::pin(t.read_async(1024, T));
    assert!(poll_for(&mut reading, Duration::from_millis(100)).is_none());

    let start = Instant::now();
    nobody.close();
    live.close();
    assert_eq!(
        poll_for(&mut opening, Duration::from_secs(2)).map(|r| r.err()),
        Some(Some(Error::Closed))
    );
    assert_eq!(
        poll_for(&mut reading, Duration::from_secs(2)),
        Some(Err(Error::Closed))
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    // And an open dropped while dialling leaves nothing behind.
    let other = e.client_via(silent.local_addr().unwrap(), json!({"path": "/xh"}));
    let mut o = Box::pin(other.open_async(T));
    assert!(poll_for(&mut o, Duration::from_millis(200)).is_none());
    drop(o);
    assert_eq!(other.stats().open_tunnels, 0);
    assert_eq!(
        run(other.open_async(Some(Duration::from_millis(200)))).err(),
        Some(Error::Timeout(200))
    );
}

#[test]
fn a_close_wakes_a_long_write_which_returns_the_count_it_queued() {
    let e = env(|_| {});
    let (c, t) = small_windows(&e);
    let (mut w, queued) = stalled_long_write(&c, &t);
    let start = Instant::now();
    t.close();
    // Stopped part-way by the close: the exact count, as the blocking write reports it.
    let r = poll_for(&mut w, Duration::from_secs(2)).expect("the close woke the write");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r, Ok(queued as usize));
    assert!(queued < LONG_WRITE as u64);
    drop(w);
    assert_eq!(run(t.write_async(b"more".to_vec(), T)), Err(Error::Closed));
    assert_eq!(run(t.read_async(16, T)), Err(Error::Closed));
}

#[test]
fn a_dropped_or_timed_out_udp_receive_takes_no_datagram() {
    const ID: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";
    let id = xhttp_mobile::proxy::vless::user_id("id", ID).unwrap();
    let e = env(|o| o.target = xhttp_testserver::Target::Vless { id });
    let c = e.vless_client(json!({"path": "/xh", "mode": "stream-up"}), ID);
    let u = c.open_udp(T).expect("open_udp");
    // The destination answers by hand: two datagrams to one request.
    let dest = UdpSocket::bind("127.0.0.1:0").unwrap();
    dest.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let to = Target::parse(&dest.local_addr().unwrap().to_string()).unwrap();

    assert_eq!(
        run(u.recv_from_async(Some(Duration::from_millis(150)))),
        Err(Error::Timeout(150))
    );
    // The wait took "one" off the session (its task finished) but the future was dropped
    // before it was polled again: the next receive gets it, then "two".
    let mut r = Box::pin(u.recv_from_async(T));
    assert!(poll_for(&mut r, Duration::from_millis(50)).is_none());
    run(u.send_to_target_async(to.clone(), b"ping".to_vec(), T)).expect("send");
    let mut b = [0u8; 64];
    let (n, session_addr) = dest.recv_from(&mut b).expect("the datagram arrives");
    assert_eq!(&b[..n], b"ping");
    dest.send_to(b"one", session_addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    dest.send_to(b"two", session_addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(r);
    assert_eq!(u.recv_from(T), Ok((b"one".to_vec(), to.clone())));
    assert_eq!(run(u.recv_from_async(T)), Ok((b"two".to_vec(), to.clone())));

    // A close wakes a pending receive; a closed session refuses both calls.
    let mut r = Box::pin(u.recv_from_async(T));
    assert!(poll_for(&mut r, Duration::from_millis(100)).is_none());
    u.close();
    assert_eq!(
        poll_for(&mut r, Duration::from_secs(2)),
        Some(Err(Error::Closed))
    );
    assert_eq!(
        run(u.send_to_target_async(to, b"late".to_vec(), T)),
        Err(Error::Closed)
    );
}
