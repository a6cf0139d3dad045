//! The C ABI driven from Rust through its exported symbols (declared here as C would see
//! them, not through the crate's Rust paths): bad input, handle misuse, races between
//! free and blocked calls, many threads misusing the same handles, the log callback, and
//! the runtime stopping with the last client.
//!
//! Tests take one lock: each ends by checking that every handle is gone and the runtime
//! is stopped, which only holds when no other test has clients.

mod common;
use common::*;
use serde_json::json;
use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use xhttp_mobile::runtime::Runtime;

// --- the ABI as the header declares it -------------------------------------------------

#[repr(C)]
struct Opaque {
    _p: [u8; 0],
}
type Client = *mut Opaque;
type TunnelH = *mut Opaque;

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    bytes_up: u64,
    bytes_down: u64,
    open_tunnels: u64,
    live_connections: u64,
    raw_tunnels: u64,
    tcp_flows: u64,
    udp_flows: u64,
    mux_tunnels: u64,
}

type LogCb = Option<unsafe extern "C" fn(*mut c_void, u32, *const c_char, *const c_char)>;
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
struct ProbeOut {
    connect_us: u64,
    round_trip_us: u64,
}

type ProtectCb = Option<unsafe extern "C" fn(*mut c_void, i32) -> i32>;

unsafe extern "C" {
    fn xh_version() -> *const c_char;
    fn xh_result_message(code: u32) -> *const c_char;
    fn xh_last_error(buf: *mut c_char, len: usize, out_len: *mut usize) -> u32;
    fn xh_set_log_callback(cb: LogCb, ctx: *mut c_void, max_level: u32) -> u32;
    fn xh_client_new(config: *const c_char, out: *mut Client) -> u32;
    fn xh_client_open(client: Client, timeout_ms: u32, out: *mut TunnelH) -> u32;
    fn xh_client_stats(client: Client, out: *mut Stats) -> u32;
    fn xh_client_set_protect(client: Client, cb: ProtectCb, ctx: *mut c_void) -> u32;
    fn xh_client_network_changed(client: Client, moved: *mut u32) -> u32;
    fn xh_client_probe(client: Client, timeout_ms: u32, out: *mut ProbeOut) -> u32;
    fn xh_client_close(client: Client) -> u32;
    fn xh_client_free(client: Client) -> u32;
    fn xh_tunnel_read(
        t: TunnelH,
        buf: *mut u8,
        cap: usize,
        timeout_ms: u32,
        out: *mut usize,
    ) -> u32;
    fn xh_tunnel_write(
        t: TunnelH,
        buf: *const u8,
        len: usize,
        timeout_ms: u32,
        out: *mut usize,
    ) -> u32;
    fn xh_tunnel_shutdown_write(t: TunnelH, timeout_ms: u32) -> u32;
    fn xh_tunnel_local_addr(t: TunnelH, buf: *mut c_char, len: usize, out: *mut usize) -> u32;
    fn xh_tunnel_peer_addr(t: TunnelH, buf: *mut c_char, len: usize, out: *mut usize) -> u32;
    fn xh_tunnel_close(t: TunnelH) -> u32;
    fn xh_tunnel_free(t: TunnelH) -> u32;
}

const OK: u32 = 0;
const NULL_ARGUMENT: u32 = 1;
const INVALID_ARGUMENT: u32 = 2;
const INVALID_CONFIG: u32 = 3;
const INVALID_HANDLE: u32 = 4;
const CLOSED: u32 = 5;
const TIMEOUT: u32 = 6;
const WRITE_SHUTDOWN: u32 = 7;
const CONNECT_FAILED: u32 = 8;
const SERVER_STATUS: u32 = 9;
const REQUEST_FAILED: u32 = 10;
const WRONG_THREAD: u32 = 11;
const BUFFER_TOO_SMALL: u32 = 12;
const PANIC: u32 = 16;
const INFINITE: u32 = u32::MAX;
const T_MS: u32 = 30_000;

// --- safe-ish wrappers for the tests ----------------------------------------------------

/// Handles are plain integers to the tests (they are to the library too): `usize` is
/// `Send`, so threads can share them.
fn h(p: *mut Opaque) -> usize {
    p as usize
}
fn p(h: usize) -> *mut Opaque {
    h as *mut Opaque
}

fn last_error() -> String {
    let mut buf = vec![0 as c_char; 1024];
    let mut n = 0usize;
    // SAFETY: the buffer and out-param are valid for the call.
    assert_eq!(
        unsafe { xh_last_error(buf.as_mut_ptr(), buf.len(), &mut n) },
        OK
    );
    // SAFETY: xh_last_error NUL-terminates within the buffer.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn new_client(json: &str) -> Result<usize, (u32, String)> {
    let c = CString::new(json).unwrap();
    let mut out = null_mut();
    // SAFETY: valid C string and out-param.
    match unsafe { xh_client_new(c.as_ptr(), &mut out) } {
        OK => Ok(h(out)),
        rc => Err((rc, last_error())),
    }
}

fn open(client: usize, timeout_ms: u32) -> Result<usize, u32> {
    let mut out = null_mut();
    // SAFETY: valid out-param; the handle is only an integer to the library.
    match unsafe { xh_client_open(p(client), timeout_ms, &mut out) } {
        OK => Ok(h(out)),
        rc => Err(rc),
    }
}

fn read(t: usize, buf: &mut [u8], timeout_ms: u32) -> Result<usize, u32> {
    let mut n = 0;
    // SAFETY: `buf` is valid for its length; valid out-param.
    match unsafe { xh_tunnel_read(p(t), buf.as_mut_ptr(), buf.len(), timeout_ms, &mut n) } {
        OK => Ok(n),
        rc => Err(rc),
    }
}

fn write(t: usize, data: &[u8], timeout_ms: u32) -> Result<usize, u32> {
    let mut n = 0;
    // SAFETY: `data` is valid for its length; valid out-param.
    match unsafe { xh_tunnel_write(p(t), data.as_ptr(), data.len(), timeout_ms, &mut n) } {
        OK => Ok(n),
        rc => Err(rc),
    }
}

/// A writer and a reader thread keeping tunnel `t` busy both ways until a call fails (the
/// tunnel or its client was closed or freed).
struct Busy([std::thread::JoinHandle<()>; 2]);

impl Busy {
    fn join(self) {
        for h in self.0 {
            h.join().unwrap();
        }
    }
}

fn busy_both_ways(t: usize) -> Busy {
    let writer = std::thread::spawn(move || {
        let data = [7u8; 16 * 1024];
        while write(t, &data, T_MS).is_ok() {}
    });
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while matches!(read(t, &mut buf, T_MS), Ok(n) if n > 0) {}
    });
    Busy([writer, reader])
}

fn stats(c: usize) -> Result<Stats, u32> {
    let mut s = Stats::default();
    // SAFETY: valid out-param.
    match unsafe { xh_client_stats(p(c), &mut s) } {
        OK => Ok(s),
        rc => Err(rc),
    }
}

fn addr(t: usize, peer: bool) -> Result<String, u32> {
    let mut buf = vec![0 as c_char; 64];
    let mut n = 0;
    let f = if peer {
        xh_tunnel_peer_addr
    } else {
        xh_tunnel_local_addr
    };
    // SAFETY: buffer valid for its length; valid out-param.
    match unsafe { f(p(t), buf.as_mut_ptr(), buf.len(), &mut n) } {
        // SAFETY: NUL-terminated on success.
        OK => Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()),
        rc => Err(rc),
    }
}

fn close_t(t: usize) -> u32 {
    unsafe { xh_tunnel_close(p(t)) }
}
fn free_t(t: usize) -> u32 {
    unsafe { xh_tunnel_free(p(t)) }
}
fn close_c(c: usize) -> u32 {
    unsafe { xh_client_close(p(c)) }
}
fn free_c(c: usize) -> u32 {
    unsafe { xh_client_free(p(c)) }
}

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time, with a server; on drop checks that the test left nothing behind.
struct Fixture {
    env: Env,
    _serial: MutexGuard<'static, ()>,
}

fn fixture() -> Fixture {
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    Fixture {
        env: env(|_| {}),
        _serial: serial,
    }
}

impl Fixture {
    fn json(&self, mode: &str) -> String {
        self.env
            .config_json(json!({"path": "/xh", "mode": mode}))
            .to_string()
    }

    fn client(&self, mode: &str) -> usize {
        new_client(&self.json(mode)).expect("client")
    }

    /// Every handle freed: the runtime threads are stopped and joined.
    fn assert_all_released(&self) {
        assert_eq!(
            xhttp_mobile::ffi::live_handles(),
            (0, 0, 0, 0),
            "handles left behind"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Runtime::live() != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            Runtime::live(),
            0,
            "runtime still running after the last free"
        );
        // The stop joined every runtime thread: none left running past the bound...
        assert_eq!(Runtime::abandoned(), 0, "runtime threads left running");
        assert_eq!(Runtime::threads(), 0, "runtime threads not joined");
        // ...but the kernel lists a joined thread in /proc/self/task until it has finished
        // exiting, which can lag the join on a busy machine (a few joins in 10,000 in a C
        // loop of pthread_create/join; this check once failed right after the last free).
        let deadline = Instant::now() + Duration::from_secs(1);
        while runtime_threads() != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(runtime_threads(), 0, "xhttp-rt threads still alive");
    }
}

/// Threads named like the library's runtime workers (Linux).
fn runtime_threads() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .filter(|name| name.trim() == "xhttp-rt")
        .count()
}

// --- the tests ----------------------------------------------------------------------------

#[test]
fn bad_config_input_gives_a_code_and_a_message() {
    let f = fixture();
    let mut out: Client = 0x55 as Client;
    // SAFETY: NULL config is the point; the out-param is valid.
    assert_eq!(unsafe { xh_client_new(null(), &mut out) }, NULL_ARGUMENT);
    assert!(last_error().contains("config"), "{}", last_error());
    let not_utf8 = [0xffu8, 0xfe, b'{', b'}', 0];
    // SAFETY: NUL-terminated bytes.
    assert_eq!(
        unsafe { xh_client_new(not_utf8.as_ptr().cast(), &mut out) },
        INVALID_ARGUMENT
    );
    assert!(last_error().contains("UTF-8"), "{}", last_error());
    assert_eq!(out as usize, 0x55, "out-param written on failure");

    for (json, field) in [
        ("{not json", "JSON"),
        ("", "JSON"),
        ("{}", "address"),
        (r#"{"address":"x","port":0}"#, "port"),
        (
            r#"{"address":"x","port":1,"xhttpSettings":{"mode":"sideways"}}"#,
            "mode",
        ),
    ] {
        let (rc, msg) = new_client(json).expect_err(json);
        assert_eq!(rc, INVALID_CONFIG, "{json}");
        assert!(
            msg.starts_with("invalid config") && msg.contains(field),
            "{json}: {msg}"
        );
    }
    let cfg = CString::new(f.json("stream-up")).unwrap();
    // SAFETY: valid config, NULL out-param is the point.
    assert_eq!(
        unsafe { xh_client_new(cfg.as_ptr(), null_mut()) },
        NULL_ARGUMENT
    );
    f.assert_all_released();
}

#[test]
fn messages_version_and_last_error_buffer() {
    let _f = fixture();
    // SAFETY: static strings.
    let v = unsafe { CStr::from_ptr(xh_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    for code in 0..=PANIC {
        // SAFETY: static strings for every code.
        let m = unsafe { CStr::from_ptr(xh_result_message(code)) }
            .to_str()
            .unwrap();
        assert!(!m.is_empty() && m != "unknown result code", "{code}");
    }
    // SAFETY: as above.
    let unknown = unsafe { CStr::from_ptr(xh_result_message(999)) };
    assert_eq!(unknown.to_str().unwrap(), "unknown result code");

    assert!(new_client("{}").is_err());
    let full = last_error();
    let mut n = 0;
    // SAFETY: length query (NULL, 0) is allowed.
    assert_eq!(unsafe { xh_last_error(null_mut(), 0, &mut n) }, OK);
    assert_eq!(n, full.len());
    let mut small = [1 as c_char; 6];
    // SAFETY: buffer valid for its length.
    assert_eq!(
        unsafe { xh_last_error(small.as_mut_ptr(), small.len(), &mut n) },
        OK
    );
    // SAFETY: NUL-terminated by the call.
    let cut = unsafe { CStr::from_ptr(small.as_ptr()) }.to_str().unwrap();
    assert_eq!(cut, &full[..5]);
    // SAFETY: NULL with a length, and NULL out_len: refused without touching the message.
    assert_eq!(
        unsafe { xh_last_error(null_mut(), 4, &mut n) },
        NULL_ARGUMENT
    );
    assert_eq!(
        unsafe { xh_last_error(small.as_mut_ptr(), 6, null_mut()) },
        NULL_ARGUMENT
    );
    assert_eq!(last_error(), full);
    // Per thread: a fresh thread has none.
    std::thread::spawn(|| assert_eq!(last_error(), ""))
        .join()
        .unwrap();
}

#[test]
fn double_close_double_free_null_and_use_after_free() {
    let f = fixture();
    let c = f.client("stream-up");
    let t = open(c, T_MS).unwrap();
    assert_eq!(
        (close_c(0), free_c(0), close_t(0), free_t(0)),
        (OK, OK, OK, OK)
    );

    assert_eq!(close_t(t), OK);
    assert_eq!(close_t(t), OK);
    let mut buf = [0u8; 32];
    assert_eq!(read(t, &mut buf, T_MS), Err(CLOSED));
    assert_eq!(write(t, b"x", T_MS), Err(CLOSED));
    assert_eq!(unsafe { xh_tunnel_shutdown_write(p(t), T_MS) }, CLOSED);
    assert!(addr(t, true).is_ok(), "addresses still answer after close");
    assert_eq!(free_t(t), OK);
    assert_eq!(free_t(t), INVALID_HANDLE);
    assert_eq!(close_t(t), INVALID_HANDLE);
    assert_eq!(read(t, &mut buf, 0), Err(INVALID_HANDLE));
    assert_eq!(write(t, b"x", 0), Err(INVALID_HANDLE));
    assert_eq!(addr(t, false), Err(INVALID_HANDLE));
    assert!(
        last_error().contains("not a live tunnel handle"),
        "{}",
        last_error()
    );

    // The freed handle stays dead when its slot is reused.
    let t2 = open(c, T_MS).unwrap();
    assert_ne!(t2, t);
    assert_eq!(read(t, &mut buf, 0), Err(INVALID_HANDLE));
    assert_eq!(free_t(t2), OK);

    assert_eq!(close_c(c), OK);
    assert_eq!(close_c(c), OK);
    assert_eq!(open(c, T_MS), Err(CLOSED));
    assert!(stats(c).is_ok(), "stats still answer after close");
    assert_eq!(free_c(c), OK);
    assert_eq!(free_c(c), INVALID_HANDLE);
    assert_eq!(close_c(c), INVALID_HANDLE);
    assert_eq!(stats(c).err(), Some(INVALID_HANDLE));
    assert_eq!(open(c, T_MS), Err(INVALID_HANDLE));
    f.assert_all_released();
}

#[test]
fn wrong_kind_forged_handles_and_bad_buffers() {
    let f = fixture();
    let c = f.client("packet-up");
    let t = open(c, T_MS).unwrap();
    let mut buf = [0u8; 16];
    // A tunnel as a client and a client as a tunnel.
    assert_eq!(stats(t).err(), Some(INVALID_HANDLE));
    assert!(
        last_error().contains("is a tunnel handle, not a client"),
        "{}",
        last_error()
    );
    assert_eq!(open(t, 0), Err(INVALID_HANDLE));
    assert_eq!(free_c(t), INVALID_HANDLE);
    assert_eq!(read(c, &mut buf, 0), Err(INVALID_HANDLE));
    assert_eq!(free_t(c), INVALID_HANDLE);
    // Made-up values, real addresses and NULL: refused, never dereferenced.
    let on_stack = 7u64;
    for forged in [
        1usize,
        2,
        3,
        0x1234_5677,
        usize::MAX,
        &on_stack as *const u64 as usize,
    ] {
        assert_eq!(
            read(forged, &mut buf, 0),
            Err(INVALID_HANDLE),
            "{forged:#x}"
        );
        assert_eq!(free_t(forged), INVALID_HANDLE, "{forged:#x}");
        assert_eq!(free_c(forged), INVALID_HANDLE, "{forged:#x}");
    }
    assert_eq!(read(0, &mut buf, 0), Err(NULL_ARGUMENT));
    // The real handles are untouched by all that.
    assert_eq!(stats(c).unwrap().open_tunnels, 1);

    // Zero-length, NULL and too-small buffers.
    assert_eq!(read(t, &mut [], 0), Err(INVALID_ARGUMENT));
    assert!(last_error().contains("length 0"), "{}", last_error());
    assert_eq!(write(t, &[], 0), Err(INVALID_ARGUMENT));
    let mut n = 9usize;
    // SAFETY: NULL buffers are the point; out-params valid.
    unsafe {
        assert_eq!(
            xh_tunnel_read(p(t), null_mut(), 10, 0, &mut n),
            NULL_ARGUMENT
        );
        assert_eq!(xh_tunnel_write(p(t), null(), 10, 0, &mut n), NULL_ARGUMENT);
        assert_eq!(
            xh_tunnel_read(p(t), buf.as_mut_ptr(), 16, 0, null_mut()),
            NULL_ARGUMENT
        );
        let mut tiny = [b'q' as c_char; 4];
        assert_eq!(
            xh_tunnel_peer_addr(p(t), tiny.as_mut_ptr(), 4, &mut n),
            BUFFER_TOO_SMALL
        );
        assert_eq!(tiny[0], b'q' as c_char, "nothing written on failure");
        assert_eq!(
            xh_tunnel_local_addr(p(t), tiny.as_mut_ptr(), 0, &mut n),
            INVALID_ARGUMENT
        );
        assert_eq!(xh_client_stats(p(c), null_mut()), NULL_ARGUMENT);
    }
    assert_eq!(n, 9, "out-param written on failure");
    let peer = addr(t, true).unwrap();
    assert_eq!(peer, f.env.server.addr().to_string());

    assert_eq!(free_t(t), OK);
    assert_eq!(free_c(c), OK);
    f.assert_all_released();
}

#[test]
fn timeouts_zero_does_not_wait_and_huge_does_not_overflow() {
    let f = fixture();
    let c = f.client("stream-one");
    let t = open(c, u32::MAX - 1).unwrap();
    let mut buf = [0u8; 64];
    let start = Instant::now();
    assert_eq!(read(t, &mut buf, 0), Err(TIMEOUT));
    assert_eq!(read(t, &mut buf, 30), Err(TIMEOUT));
    assert!(start.elapsed() < Duration::from_secs(5));

    // A huge timeout blocks until close wakes it.
    let r = std::thread::spawn(move || read(t, &mut [0u8; 8], u32::MAX - 1));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!r.is_finished());
    assert_eq!(close_t(t), OK);
    assert_eq!(r.join().unwrap(), Err(CLOSED));
    assert_eq!(free_t(t), OK);

    // Nobody reads the echo: writes with timeout 0 queue what fits, then time out,
    // and a count is never lost.
    let t = open(c, T_MS).unwrap();
    let big = vec![3u8; 16 << 20];
    let mut total = 0;
    let last = loop {
        match write(t, &big, 0) {
            Ok(n) => {
                assert!(n > 0 && n <= big.len());
                total += n;
            }
            Err(rc) => break rc,
        }
    };
    assert_eq!(last, TIMEOUT);
    assert!(total > 0);
    let s = stats(c).unwrap();
    assert_eq!(
        s.bytes_up, total as u64,
        "every byte reported as written was counted"
    );
    assert_eq!(unsafe { xh_tunnel_shutdown_write(p(t), 0) }, OK);
    assert_eq!(write(t, b"late", 0), Err(WRITE_SHUTDOWN));
    assert_eq!(free_t(t), OK);
    assert_eq!(free_c(c), OK);
    f.assert_all_released();
}

#[test]
fn free_races_a_blocked_read_and_write() {
    let f = fixture();
    for (mode, block_in_write, use_free) in [
        ("packet-up", false, true),
        ("stream-up", false, false),
        ("stream-one", true, true),
        ("stream-up", true, false),
    ] {
        let c = f.client(mode);
        let t = open(c, T_MS).unwrap();
        let blocked = std::thread::spawn(move || {
            if block_in_write {
                let chunk = vec![1u8; 1 << 20];
                loop {
                    if let Err(rc) = write(t, &chunk, INFINITE) {
                        return (rc, Instant::now());
                    }
                }
            } else {
                (
                    read(t, &mut [0u8; 64], INFINITE).unwrap_err(),
                    Instant::now(),
                )
            }
        });
        std::thread::sleep(Duration::from_millis(if block_in_write {
            1500
        } else {
            200
        }));
        assert!(!blocked.is_finished(), "{mode}: did not block");
        let at = Instant::now();
        assert_eq!(if use_free { free_t(t) } else { close_t(t) }, OK);
        let (rc, woke) = blocked.join().unwrap();
        assert_eq!(rc, CLOSED, "{mode}");
        assert!(
            woke.duration_since(at) < Duration::from_secs(1),
            "{mode}: woke late"
        );
        assert_eq!(free_t(t), if use_free { INVALID_HANDLE } else { OK });
        assert_eq!(free_c(c), OK);
    }
    f.assert_all_released();
}

#[test]
fn client_free_closes_its_tunnels_and_spares_other_clients() {
    let f = fixture();
    let a = f.client("stream-up");
    let b = f.client("packet-up");
    let ta: Vec<usize> = (0..3).map(|_| open(a, T_MS).unwrap()).collect();
    let tb = open(b, T_MS).unwrap();
    let blocked = {
        let t = ta[0];
        std::thread::spawn(move || read(t, &mut [0u8; 64], INFINITE))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(free_c(a), OK);
    assert_eq!(blocked.join().unwrap(), Err(CLOSED));
    for &t in &ta {
        assert_eq!(read(t, &mut [0u8; 8], T_MS), Err(CLOSED));
        assert_eq!(write(t, b"x", T_MS), Err(CLOSED));
        assert_eq!(close_t(t), OK);
    }
    // The other client and its tunnel carry on.
    let data = pattern(11, 50_000);
    assert_eq!(write(tb, &data, T_MS), Ok(data.len()));
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    while got.len() < data.len() {
        let n = read(tb, &mut buf, T_MS).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(sha(&got), sha(&data));
    let s = stats(b).unwrap();
    assert_eq!(
        (s.bytes_up, s.bytes_down, s.open_tunnels),
        (50_000, 50_000, 1)
    );

    for &t in &ta {
        assert_eq!(free_t(t), OK);
    }
    assert_eq!(free_t(tb), OK);
    assert_eq!(free_c(b), OK);
    f.assert_all_released();
}

#[test]
fn eight_threads_misuse_the_same_tunnels_at_random() {
    const SLOTS: usize = 12;
    const ITERS: usize = 2_000;
    let f = fixture();
    let clients = [f.client("stream-up"), f.client("packet-up")];
    let slots: Arc<Vec<AtomicUsize>> = Arc::new(
        (0..SLOTS)
            .map(|i| AtomicUsize::new(open(clients[i % 2], T_MS).unwrap()))
            .collect(),
    );
    let start = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8u64)
        .map(|id| {
            let (slots, start) = (slots.clone(), start.clone());
            std::thread::spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(id + 1);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut buf = [id as u8; 256];
                start.wait();
                for i in 0..ITERS {
                    if id == 0 && i == ITERS / 2 {
                        assert_eq!(free_c(clients[1]), OK);
                    }
                    let slot = &slots[next() as usize % SLOTS];
                    let t = slot.load(Ordering::SeqCst);
                    let live = [OK, CLOSED, INVALID_HANDLE];
                    let (op, rc) = match next() % 10 {
                        0..=2 => (
                            "read",
                            read(t, &mut buf, (i % 3) as u32).err().unwrap_or(OK),
                        ),
                        3 | 4 => (
                            "write",
                            write(t, &buf[..1 + i % 255], 0).err().unwrap_or(OK),
                        ),
                        5 => ("close", close_t(t)),
                        6 => ("free", free_t(t)),
                        7 => ("stats", stats(clients[i % 2]).err().unwrap_or(OK)),
                        8 => ("wrong kind", stats(t).err().unwrap_or(OK)),
                        _ => {
                            if addr(t, false) != Err(INVALID_HANDLE) {
                                continue;
                            }
                            match open(clients[(next() % 2) as usize], T_MS) {
                                Ok(nt) => {
                                    if slot
                                        .compare_exchange(t, nt, Ordering::SeqCst, Ordering::SeqCst)
                                        .is_err()
                                    {
                                        assert_eq!(free_t(nt), OK);
                                    }
                                    ("open", OK)
                                }
                                Err(rc) => ("open", rc),
                            }
                        }
                    };
                    // A tunnel failing on its own (SERVER_STATUS, REQUEST_FAILED) is a
                    // documented result of the data calls, not a misuse failure.
                    let allowed: &[u32] = match op {
                        "read" => &[
                            OK,
                            CLOSED,
                            INVALID_HANDLE,
                            TIMEOUT,
                            SERVER_STATUS,
                            REQUEST_FAILED,
                        ],
                        "write" => &[
                            OK,
                            CLOSED,
                            INVALID_HANDLE,
                            TIMEOUT,
                            WRITE_SHUTDOWN,
                            SERVER_STATUS,
                            REQUEST_FAILED,
                        ],
                        "open" => &[OK, CLOSED, INVALID_HANDLE, SERVER_STATUS, REQUEST_FAILED],
                        "wrong kind" => &[INVALID_HANDLE],
                        _ => &live,
                    };
                    assert!(
                        allowed.contains(&rc),
                        "{op} returned {rc}: {}",
                        last_error()
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no panic in a misuse thread");
    }
    for s in slots.iter() {
        let rc = free_t(s.load(Ordering::SeqCst));
        assert!(rc == OK || rc == INVALID_HANDLE);
    }
    assert_eq!(free_c(clients[1]), INVALID_HANDLE);
    assert_eq!(free_c(clients[0]), OK);
    f.assert_all_released();
}

#[test]
fn open_racing_client_free_reports_closed_or_invalid_handle() {
    let f = fixture();
    for i in 0..40u64 {
        let c = f.client(if i % 2 == 0 { "stream-up" } else { "packet-up" });
        // Warm the connection half the time, so the race hits dialling and request sending.
        if i % 4 < 2 {
            let t = open(c, T_MS).unwrap();
            assert_eq!(free_t(t), OK);
        }
        let start = Arc::new(Barrier::new(2));
        let opener = {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                (0..4)
                    .map(|_| open(c, T_MS).map_err(|rc| (rc, last_error())))
                    .collect::<Vec<_>>()
            })
        };
        start.wait();
        std::thread::sleep(Duration::from_micros(i * 150));
        assert_eq!(free_c(c), OK);
        for r in opener.join().unwrap() {
            match r {
                Ok(t) => assert_eq!(free_t(t), OK),
                Err((rc, msg)) => assert!(
                    rc == CLOSED || rc == INVALID_HANDLE,
                    "open racing free returned {rc}: {msg}"
                ),
            }
        }
    }
    f.assert_all_released();
}

static LOG_RECORDS: AtomicUsize = AtomicUsize::new(0);
static LOG_REENTRY: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn on_log(
    ctx: *mut c_void,
    level: u32,
    target: *const c_char,
    message: *const c_char,
) {
    assert!((1..=5).contains(&level) && !target.is_null() && !message.is_null());
    // SAFETY: ctx is &LOG_RECORDS, set below.
    unsafe { &*(ctx as *const AtomicUsize) }.fetch_add(1, Ordering::SeqCst);
    let mut out = null_mut();
    // SAFETY: valid arguments; the call must be refused from here.
    let rc = unsafe { xh_client_new(c"{}".as_ptr(), &mut out) };
    let rc2 = unsafe { xh_set_log_callback(None, null_mut(), 0) };
    if rc == WRONG_THREAD && rc2 == WRONG_THREAD && out.is_null() {
        LOG_REENTRY.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn log_callback_receives_records_and_refuses_reentry() {
    let f = fixture();
    let ctx = &LOG_RECORDS as *const AtomicUsize as *mut c_void;
    // SAFETY: `on_log` and `ctx` live for the whole process.
    assert_eq!(
        unsafe { xh_set_log_callback(Some(on_log), ctx, 9) },
        INVALID_ARGUMENT
    );
    assert_eq!(unsafe { xh_set_log_callback(Some(on_log), ctx, 4) }, OK);
    let c = f.client("stream-up");
    let t = open(c, T_MS).unwrap();
    assert_eq!(free_t(t), OK);
    assert_eq!(free_c(c), OK); // closing connections logs at debug level
    assert_eq!(unsafe { xh_set_log_callback(None, null_mut(), 0) }, OK);
    let seen = LOG_RECORDS.load(Ordering::SeqCst);
    assert!(seen > 0, "no log record arrived");
    assert_eq!(
        LOG_REENTRY.load(Ordering::SeqCst),
        seen,
        "a call from the callback got through"
    );
    // Removed: nothing more arrives.
    let c = f.client("stream-up");
    let t = open(c, T_MS).unwrap();
    assert_eq!((free_t(t), free_c(c)), (OK, OK));
    assert_eq!(LOG_RECORDS.load(Ordering::SeqCst), seen);
    f.assert_all_released();
}

/// What the protect callback saw, and whether it accepts.
struct ProtectLog {
    fds: Mutex<Vec<i32>>,
    accept: std::sync::atomic::AtomicBool,
    reentry: AtomicUsize,
}

unsafe extern "C" fn on_protect(ctx: *mut c_void, fd: i32) -> i32 {
    // SAFETY: ctx is the &ProtectLog the test installed and keeps alive.
    let log = unsafe { &*(ctx as *const ProtectLog) };
    log.fds.lock().unwrap().push(fd);
    // Re-entering the ABI from the callback is refused, never a deadlock.
    if unsafe { xh_client_set_protect(null_mut(), None, null_mut()) } == WRONG_THREAD {
        log.reentry.fetch_add(1, Ordering::SeqCst);
    }
    log.accept.load(Ordering::SeqCst) as i32
}

#[test]
fn protect_callback_probe_and_network_change_through_the_abi() {
    let f = fixture();
    let log = ProtectLog {
        fds: Mutex::new(Vec::new()),
        accept: true.into(),
        reentry: AtomicUsize::new(0),
    };
    let ctx = &log as *const ProtectLog as *mut c_void;
    assert_eq!(
        unsafe { xh_client_set_protect(null_mut(), Some(on_protect), ctx) },
        NULL_ARGUMENT
    );
    let c = f.client("stream-up");
    assert_eq!(
        unsafe { xh_client_set_protect(p(c), Some(on_protect), ctx) },
        OK
    );
    // The probe dials its own connection: protected too, and the pool stays empty.
    let mut probe = ProbeOut::default();
    assert_eq!(
        unsafe { xh_client_probe(p(c), T_MS, null_mut()) },
        NULL_ARGUMENT
    );
    assert_eq!(unsafe { xh_client_probe(p(c), T_MS, &mut probe) }, OK);
    assert!(probe.connect_us > 0 && probe.round_trip_us > 0, "{probe:?}");
    assert_eq!(stats(c).unwrap().live_connections, 0);
    assert_eq!(
        log.fds.lock().unwrap().len(),
        1,
        "the probe's socket was offered"
    );
    log.fds.lock().unwrap().clear();
    let t = open(c, T_MS).unwrap();
    assert_eq!(
        log.fds.lock().unwrap().len(),
        1,
        "the dial's socket was offered"
    );
    let mut moved = 99u32;
    assert_eq!(unsafe { xh_client_network_changed(p(c), &mut moved) }, OK);
    assert_eq!(moved, 1);
    assert_eq!(unsafe { xh_client_network_changed(p(c), null_mut()) }, OK);
    assert_eq!(
        log.fds.lock().unwrap().len(),
        3,
        "each new socket was offered"
    );
    assert_eq!(
        log.reentry.load(Ordering::SeqCst),
        4,
        "re-entry got through"
    );
    // The tunnel still works on its moved connection.
    let data = pattern(4, 100_000);
    assert_eq!(write(t, &data, T_MS), Ok(data.len()));
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < data.len() {
        let n = read(t, &mut buf, T_MS).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(sha(&got), sha(&data));
    // Refusing: the next dial fails and says why.
    log.accept.store(false, Ordering::SeqCst);
    let c2 = f.client("stream-one");
    assert_eq!(
        unsafe { xh_client_set_protect(p(c2), Some(on_protect), ctx) },
        OK
    );
    assert_eq!(open(c2, T_MS), Err(CONNECT_FAILED));
    assert!(last_error().contains("protect"), "{}", last_error());
    // Removed before `log` goes away; a freed client answers like any bad handle.
    assert_eq!(
        unsafe { xh_client_set_protect(p(c2), None, null_mut()) },
        OK
    );
    assert_eq!((free_t(t), free_c(c), free_c(c2)), (OK, OK, OK));
    assert_eq!(
        unsafe { xh_client_network_changed(p(c), null_mut()) },
        INVALID_HANDLE
    );
    f.assert_all_released();
}

#[test]
fn a_transfer_through_the_abi_matches_by_sha256() {
    let f = fixture();
    for mode in ["packet-up", "stream-up", "stream-one"] {
        let c = f.client(mode);
        let t = open(c, T_MS).unwrap();
        let data = pattern(mode.len() as u64, 1 << 20);
        let want = sha(&data);
        let half_close = mode != "packet-up";
        let w = std::thread::spawn(move || {
            let mut off = 0;
            while off < data.len() {
                off += write(t, &data[off..(off + 70_000).min(data.len())], T_MS).unwrap();
            }
            if half_close {
                assert_eq!(unsafe { xh_tunnel_shutdown_write(p(t), T_MS) }, OK);
            }
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 40_000];
        while got.len() < 1 << 20 {
            let n = read(t, &mut buf, T_MS).unwrap();
            assert!(n > 0, "{mode}: early end");
            got.extend_from_slice(&buf[..n]);
        }
        w.join().unwrap();
        assert_eq!(sha(&got), want, "{mode}");
        if half_close {
            assert_eq!(read(t, &mut buf, T_MS), Ok(0), "{mode}: end of stream");
        }
        assert_eq!((free_t(t), free_c(c)), (OK, OK));
    }
    f.assert_all_released();
}

/// A log callback's `ctx`: counts records and says whether it is installed now, so a call
/// arriving after its removal returned is caught.
struct SwapSink {
    installed: std::sync::atomic::AtomicBool,
    records: AtomicUsize,
    after_removal: AtomicUsize,
}

impl SwapSink {
    const fn new() -> SwapSink {
        SwapSink {
            installed: std::sync::atomic::AtomicBool::new(false),
            records: AtomicUsize::new(0),
            after_removal: AtomicUsize::new(0),
        }
    }
}

unsafe extern "C" fn on_swap_log(
    ctx: *mut c_void,
    _level: u32,
    _target: *const c_char,
    _message: *const c_char,
) {
    // SAFETY: ctx is one of the test's `static` SwapSinks.
    let s = unsafe { &*(ctx as *const SwapSink) };
    s.records.fetch_add(1, Ordering::Relaxed);
    if !s.installed.load(Ordering::SeqCst) {
        s.after_removal.fetch_add(1, Ordering::SeqCst);
    }
}

/// Issue 9's lock cycle: a log callback at TRACE, clients freed while their connections
/// send, and the callback swapped and removed in a loop. Before the fix, a thread freeing
/// a client formatted a connection (which waited for quinn's connection mutex) under the
/// sink's read lock, a runtime thread holding that mutex logged, and a queued swap (write
/// lock) made its read wait: every thread stopped within seconds. A stall is reported by
/// a watchdog that ends the process (the stuck threads cannot be unwound).
#[test]
fn log_swaps_during_client_free_under_traffic_never_deadlock() {
    static SINKS: [SwapSink; 2] = [SwapSink::new(), SwapSink::new()];
    const RUN: Duration = Duration::from_secs(6);
    const STALL: Duration = Duration::from_secs(20);
    let f = fixture();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    {
        let (stop, progress) = (stop.clone(), progress.clone());
        std::thread::spawn(move || {
            let (mut seen, mut since) = (usize::MAX, Instant::now());
            while !stop.load(Ordering::SeqCst) {
                let now = progress.load(Ordering::SeqCst);
                if now != seen {
                    (seen, since) = (now, Instant::now());
                } else if since.elapsed() > STALL {
                    eprintln!(
                        "deadlock: no client freed and no log callback swapped for {STALL:?} \
                         (log callback at TRACE, client free under traffic, swaps in a loop)"
                    );
                    std::process::exit(101);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }
    let ctx = |i: usize| &SINKS[i] as *const SwapSink as *mut c_void;
    let swapper = {
        let (stop, progress) = (stop.clone(), progress.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let (next, prev) = (n % 2, (n + 1) % 2);
                let rc = if n % 5 == 4 {
                    // A removal; the next round installs afresh.
                    unsafe { xh_set_log_callback(None, null_mut(), 0) }
                } else {
                    // Marked first: its calls may begin before the swap returns.
                    SINKS[next].installed.store(true, Ordering::SeqCst);
                    unsafe { xh_set_log_callback(Some(on_swap_log), ctx(next), 5) }
                };
                assert_eq!(rc, OK);
                // The one replaced (or removed) is never called again from here on.
                SINKS[prev].installed.store(false, Ordering::SeqCst);
                n += 1;
                progress.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let churn: Vec<_> = ["packet-up", "stream-up", "stream-one"]
        .into_iter()
        .map(|mode| {
            let json = f.json(mode);
            let (stop, progress) = (stop.clone(), progress.clone());
            std::thread::spawn(move || {
                let mut frees = 0;
                while !stop.load(Ordering::SeqCst) {
                    let c = new_client(&json).expect("client");
                    let t = open(c, T_MS).expect("open");
                    // Both directions busy, so the connection is sending when freed.
                    let busy = busy_both_ways(t);
                    std::thread::sleep(Duration::from_millis(2 + frees % 10));
                    // Freed while its connection sends: closing logs the connection.
                    assert_eq!(free_c(c), OK);
                    busy.join();
                    assert_eq!(free_t(t), OK);
                    frees += 1;
                    progress.fetch_add(1, Ordering::SeqCst);
                }
                frees
            })
        })
        .collect();
    std::thread::sleep(RUN);
    stop.store(true, Ordering::SeqCst);
    let frees: u64 = churn.into_iter().map(|t| t.join().unwrap()).sum();
    swapper.join().unwrap();
    assert_eq!(unsafe { xh_set_log_callback(None, null_mut(), 0) }, OK);
    for s in &SINKS {
        s.installed.store(false, Ordering::SeqCst);
    }
    let records: usize = SINKS.iter().map(|s| s.records.load(Ordering::SeqCst)).sum();
    let late: usize = SINKS
        .iter()
        .map(|s| s.after_removal.load(Ordering::SeqCst))
        .sum();
    assert!(frees >= 4, "only {frees} clients freed");
    assert!(records > 1000, "only {records} records at TRACE");
    assert_eq!(late, 0, "a callback ran after its removal returned");
    f.assert_all_released();
}

/// The hook of the forced lock-cycle test below: once `armed`, the first record quinn's
/// connection logs on one of the library's runtime threads is held (the callback waits
/// until `release`, at most `HOLD_CAP`). quinn logs under the connection's state mutex,
/// so meanwhile the runtime thread holds the mutex that closing or inspecting the
/// connection needs.
struct Hold {
    armed: std::sync::atomic::AtomicBool,
    holding: std::sync::atomic::AtomicBool,
    release: std::sync::atomic::AtomicBool,
    held: AtomicUsize,
}

const HOLD_CAP: Duration = Duration::from_secs(10);

unsafe extern "C" fn on_hold_log(
    ctx: *mut c_void,
    _level: u32,
    target: *const c_char,
    _message: *const c_char,
) {
    // SAFETY: ctx is the test's `static` Hold; target is NUL-terminated for the call.
    let (s, target) = unsafe { (&*(ctx as *const Hold), CStr::from_ptr(target)) };
    if !target.to_bytes().starts_with(b"quinn_proto::connection")
        || std::thread::current().name() != Some("xhttp-rt")
        || !s.armed.swap(false, Ordering::SeqCst)
    {
        return;
    }
    s.holding.store(true, Ordering::SeqCst);
    let cap = Instant::now() + HOLD_CAP;
    while !s.release.swap(false, Ordering::SeqCst) && Instant::now() < cap {
        std::thread::sleep(Duration::from_millis(1));
    }
    s.holding.store(false, Ordering::SeqCst);
    s.held.fetch_add(1, Ordering::SeqCst);
}

/// Issue 9's lock cycle forced on real traffic, round after round: a runtime thread logs
/// under quinn's connection mutex and is held there by the callback (the hook above);
/// meanwhile the client is freed (closing logs the connection, and closing needs that
/// mutex) and then the callback is swapped. With the old sink (a read/write lock held
/// while formatting and calling back, and a connection `Debug` that asked quinn), the
/// free held the read lock waiting for the mutex, the swap queued for the write lock, and
/// the runtime thread's next record under the mutex queued behind the swap: each round
/// deadlocked. Now the free waits only until the hold ends, and the swap only for the
/// held call. A stall ends the process through a watchdog (stuck threads cannot unwind).
#[test]
fn a_swap_while_a_free_waits_for_a_connection_its_logging_thread_holds_does_not_deadlock() {
    static HOLD: Hold = Hold {
        armed: std::sync::atomic::AtomicBool::new(false),
        holding: std::sync::atomic::AtomicBool::new(false),
        release: std::sync::atomic::AtomicBool::new(false),
        held: AtomicUsize::new(0),
    };
    const ROUNDS: usize = 3;
    // Well above HOLD_CAP: a hold that ends on its cap is not yet a stall.
    const STALL: Duration = Duration::from_secs(30);
    // Time for a spawned thread to reach the point where it waits (free: quinn's mutex;
    // swap: the held call), so the interleaving is the one that deadlocked.
    const SETTLE: Duration = Duration::from_millis(150);
    let f = fixture();
    let ctx = &HOLD as *const Hold as *mut c_void;
    assert_eq!(
        unsafe { xh_set_log_callback(Some(on_hold_log), ctx, 5) },
        OK
    );
    let rounds_done = Arc::new(AtomicUsize::new(0));
    let watchdog = {
        let rounds_done = rounds_done.clone();
        std::thread::spawn(move || {
            let (mut seen, mut since) = (0, Instant::now());
            loop {
                let now = rounds_done.load(Ordering::SeqCst);
                if now == ROUNDS {
                    return;
                }
                if now != seen {
                    (seen, since) = (now, Instant::now());
                } else if since.elapsed() > STALL {
                    eprintln!(
                        "deadlock in round {now}: a client free and a log callback swap did \
                         not return within {STALL:?} of a runtime thread logging under \
                         quinn's connection mutex (held by the callback, then released)"
                    );
                    std::process::exit(101);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    for round in 0..ROUNDS {
        let c = f.client("stream-one");
        let t = open(c, T_MS).expect("open");
        // Both directions busy, so quinn's connection logs on the runtime threads.
        let busy = busy_both_ways(t);
        HOLD.release.store(false, Ordering::SeqCst);
        HOLD.armed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !HOLD.holding.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "round {round}: no quinn_proto::connection record on a runtime thread"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // The free reaches the connection and waits for the mutex; then the swap starts.
        let free = std::thread::spawn(move || free_c(c));
        std::thread::sleep(SETTLE);
        let swap = std::thread::spawn(move || {
            let ctx = &HOLD as *const Hold as *mut c_void;
            unsafe { xh_set_log_callback(Some(on_hold_log), ctx, 5) }
        });
        std::thread::sleep(SETTLE);
        // The runtime thread goes on under the mutex and logs its next record.
        HOLD.release.store(true, Ordering::SeqCst);
        assert_eq!(free.join().unwrap(), OK);
        assert_eq!(swap.join().unwrap(), OK);
        busy.join();
        assert_eq!(free_t(t), OK);
        rounds_done.fetch_add(1, Ordering::SeqCst);
    }
    watchdog.join().unwrap();
    assert_eq!(unsafe { xh_set_log_callback(None, null_mut(), 0) }, OK);
    assert_eq!(HOLD.held.load(Ordering::SeqCst), ROUNDS);
    f.assert_all_released();
}

thread_local! {
    /// A thread's last client and tunnel, freed by the thread-local's destructor.
    static FREE_AT_EXIT: FreeAtExit = const { FreeAtExit(std::cell::Cell::new((0, 0))) };
}

struct FreeAtExit(std::cell::Cell<(usize, usize)>);

/// What the destructor saw: the frees' results and the runtime threads right after.
static FREED_AT_EXIT: Mutex<Option<(u32, u32, usize)>> = Mutex::new(None);

impl Drop for FreeAtExit {
    fn drop(&mut self) {
        let (c, t) = self.0.get();
        let (ft, fc) = (free_t(t), free_c(c));
        *FREED_AT_EXIT.lock().unwrap() = Some((ft, fc, Runtime::threads()));
    }
}

/// The last free made from thread-exit code joins the runtime's threads too. The
/// thread-local holding the handles is registered before the thread's first call, so its
/// destructor runs after the library's and tokio's thread-locals on that thread are gone
/// (glibc destroys them in reverse order): tokio's own wait for its threads parks on those
/// and gave up at once there, leaving the threads running after the free returned.
#[test]
fn the_last_free_from_a_thread_local_destructor_joins_the_runtime() {
    let f = fixture();
    let c = f.client("stream-up");
    std::thread::spawn(move || {
        FREE_AT_EXIT.with(|_| ());
        let t = open(c, T_MS).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(read(t, &mut buf, 0), Err(TIMEOUT));
        FREE_AT_EXIT.with(|h| h.0.set((c, t)));
    })
    .join()
    .unwrap();
    let seen = FREED_AT_EXIT.lock().unwrap().take();
    assert_eq!(
        seen,
        Some((OK, OK, 0)),
        "(tunnel free, client free, threads after)"
    );
    f.assert_all_released();
}
