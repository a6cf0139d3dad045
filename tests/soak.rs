//! The soak (issue 8): `SOAK_SECS` (default 600) of churn in every mode at once, each mode's
//! client (one QUIC connection) behind its own lossy relay (1 % loss, 5 ms ± 3 ms), against
//! the test server: bursts of short flows (open, 1 KiB echo, close, or abandoned half-way),
//! a 1 MiB echo every few bursts, every byte checked by SHA-256, and `network_changed` on
//! every client every 30 s (a new UDP socket; the relay sees a NAT rebinding).
//!
//! Every 10 s it prints a row: elapsed, this process's RSS and heap in use (glibc's
//! `mallinfo2`: what a leak grows), open fds and threads, what the server still holds, and
//! flows done. The test server runs in this process too; its event log is emptied at each
//! sample, so growth is working state, not a log that grows by design.
//!
//! At the end it asserts: no failed flow; RSS and heap in use grew by less than 2 MiB from
//! the minute after warm-up to the last minute (comparing each minute's lowest sample: an
//! echo in flight is not growth); fds and threads back to their start; and the server holds
//! nothing once the clients are gone. scripts/soak.sh caps glibc's malloc arenas
//! (MALLOC_ARENA_MAX=2) so that per-thread arenas keeping freed memory do not dominate RSS.
//!
//! Ignored in `cargo test`: run it with `bash scripts/soak.sh` (release build).

mod common;
use common::netsim::{Impairment, Relay};
use common::*;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use xhttp_mobile::{Client, Tunnel};

fn proc_status(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    proc_status("VmRSS:")
}

/// Bytes the allocator has handed out and not had back (glibc's `mallinfo2`): what a leak
/// grows. RSS also holds memory freed but kept by the allocator for reuse.
fn heap_kib() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    ((m.uordblks + m.hblkhd) / 1024) as u64
}

fn threads() -> u64 {
    proc_status("Threads:")
}

fn fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

#[derive(Default)]
struct Counts {
    short: AtomicU64,
    abandoned: AtomicU64,
    bulk: AtomicU64,
    moved: AtomicU64,
    failures: AtomicU64,
}

/// One short flow: 1 KiB echoed and checked, or (one in five) abandoned after the write.
fn short_flow(c: &Client, seed: u64, counts: &Counts) -> Result<(), String> {
    let t = c.open(T).map_err(|e| format!("open: {e}"))?;
    let data = pattern(seed, 1024);
    t.write(&data, T).map_err(|e| format!("write: {e}"))?;
    if seed % 5 == 0 {
        drop(t); // abandoned: closed by its last handle
        counts.abandoned.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    read_back(&t, &data)?;
    t.close();
    counts.short.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn read_back(t: &Tunnel, data: &[u8]) -> Result<(), String> {
    let mut got = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 65536];
    while got.len() < data.len() {
        let n = t.read(&mut buf, T).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("EOF after {} of {} bytes", got.len(), data.len()));
        }
        got.extend_from_slice(&buf[..n]);
    }
    if sha(&got) != sha(data) {
        return Err("echo differs (SHA-256)".into());
    }
    Ok(())
}

fn bulk_flow(c: &Client, seed: u64) -> Result<(), String> {
    let t = c.open(T).map_err(|e| format!("open: {e}"))?;
    let data = pattern(seed, 1 << 20);
    let writer = {
        let (t, data) = (t.clone(), data.clone());
        std::thread::spawn(move || -> Result<(), String> {
            for chunk in data.chunks(64 * 1024) {
                t.write(chunk, T).map_err(|e| format!("bulk write: {e}"))?;
            }
            Ok(())
        })
    };
    let r = read_back(&t, &data);
    let w = writer
        .join()
        .map_err(|_| "bulk writer panicked".to_string())?;
    t.close();
    r.and(w)
}

#[test]
#[ignore = "a long run: bash scripts/soak.sh"]
fn soak() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let e = leak_free_env();
    let start_fds = fds();
    let start_threads = threads();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut relays = Vec::new();
    let mut workers = Vec::new();
    let mut clients = Vec::new();
    for (i, mode) in ["packet-up", "stream-up", "stream-one"].iter().enumerate() {
        let relay = Relay::start(
            e.server.addr(),
            Impairment {
                loss: 0.01,
                delay: Duration::from_millis(5),
                jitter: Duration::from_millis(3),
                seed: 7 + i as u64,
                ..Default::default()
            },
        );
        // One connection per client: the relay models one NAT client at a time (it answers
        // the address that sent last), so the three connections of XMUX's defaults would
        // take each other's downlink. XMUX rotation under churn is tests/xmux.rs' and
        // tests/leaks.rs' business.
        let c = e.client_via(
            relay.addr(),
            json!({"path": "/xh", "mode": mode, "xmux": {"maxConnections": 1}}),
        );
        relays.push(relay);
        clients.push(c.clone());
        let (counts, stop) = (counts.clone(), stop.clone());
        let mode = mode.to_string();
        workers.push(std::thread::spawn(move || {
            let mut seed = (i as u64) << 40;
            let mut last_move = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    seed += 1;
                    if let Err(err) = short_flow(&c, seed, &counts) {
                        counts.failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{mode}: short flow {seed}: {err}");
                    }
                }
                if seed % 100 == 0 {
                    match bulk_flow(&c, seed) {
                        Ok(()) => counts.bulk.fetch_add(1, Ordering::Relaxed),
                        Err(err) => {
                            eprintln!("{mode}: bulk flow {seed}: {err}");
                            counts.failures.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                if last_move.elapsed() >= Duration::from_secs(30) {
                    match c.network_changed() {
                        Ok(n) => counts.moved.fetch_add(n as u64, Ordering::Relaxed),
                        Err(err) => {
                            eprintln!("{mode}: network_changed: {err}");
                            counts.failures.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    last_move = Instant::now();
                }
            }
            c.close();
        }));
    }

    println!(
        "   secs  rss_kib heap_kib  fds  threads  srv_requests  srv_streams  short  abandoned  bulk  moved  failures"
    );
    let begun = Instant::now();
    let mut samples = Vec::new();
    loop {
        let now = Instant::now();
        let done = now >= deadline;
        // The in-process test server logs every request; emptied so that RSS measures the
        // client, not a log that grows by design.
        drop(e.server.take_events());
        let h = e.server.held();
        let row = (
            begun.elapsed().as_secs(),
            rss_kib(),
            heap_kib(),
            fds(),
            threads(),
        );
        samples.push(row);
        println!(
            "{:>7} {:>8} {:>8} {:>4} {:>8} {:>13} {:>12} {:>6} {:>10} {:>5} {:>6} {:>9}",
            row.0,
            row.1,
            row.2,
            row.3,
            row.4,
            h.requests(),
            h.streams(),
            counts.short.load(Ordering::Relaxed),
            counts.abandoned.load(Ordering::Relaxed),
            counts.bulk.load(Ordering::Relaxed),
            counts.moved.load(Ordering::Relaxed),
            counts.failures.load(Ordering::Relaxed),
        );
        if done {
            break;
        }
        std::thread::sleep(Duration::from_secs(10).min(deadline - now));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a soak worker panicked");
    }
    drop(clients);
    if let Err(h) =
        e.rt.block_on(e.server.wait_released(Duration::from_secs(15)))
    {
        panic!("after the soak the server still holds {h:#?}");
    }
    drop(relays);

    assert_eq!(counts.failures.load(Ordering::Relaxed), 0, "failed flows");
    // Floors, not single samples: a 1 MiB echo in flight adds a few MiB for a moment (its
    // buffers on both sides), a leak raises the floor. The floor of the minute after a
    // minute of warm-up (allocator pools, connection windows, the set of live sessions reach
    // their steady size) against the floor of the last minute.
    let floor = |from: u64, to: u64, pick: fn(&(u64, u64, u64, u64, u64)) -> u64| {
        samples
            .iter()
            .filter(|s| s.0 >= from && s.0 <= to)
            .map(pick)
            .min()
            .unwrap_or(0)
    };
    let end = samples.last().unwrap().0;
    let (w0, w1) = if end >= 180 { (60, 120) } else { (0, end / 3) };
    let (l0, l1) = (end.saturating_sub(60).max(w1), end);
    let (rss_warm, rss_last) = (floor(w0, w1, |s| s.1), floor(l0, l1, |s| s.1));
    let (heap_warm, heap_last) = (floor(w0, w1, |s| s.2), floor(l0, l1, |s| s.2));
    let rss_growth = rss_last as i64 - rss_warm as i64;
    let heap_growth = heap_last as i64 - heap_warm as i64;
    println!(
        "floor growth ({w0}-{w1} s → {l0}-{l1} s): RSS {rss_growth} KiB ({rss_warm} → {rss_last}), \
         heap in use {heap_growth} KiB ({heap_warm} → {heap_last})"
    );
    assert!(heap_growth < 2048, "heap in use grew by {heap_growth} KiB");
    assert!(rss_growth < 2048, "RSS grew by {rss_growth} KiB");
    // The clients are closed and dropped: their sockets and the runtime go with them.
    let until = Instant::now() + Duration::from_secs(10);
    while (fds() > start_fds || threads() > start_threads) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        fds() <= start_fds,
        "fds: {} at start, {} at the end",
        start_fds,
        fds()
    );
    assert!(
        threads() <= start_threads,
        "threads: {} at start, {} at the end",
        start_threads,
        threads()
    );
}

/// The test server with short session reaping, so an abandoned session whose GET never
/// came does not count as held for long.
fn leak_free_env() -> Env {
    env(|o| o.session_timeout = Duration::from_millis(500))
}
