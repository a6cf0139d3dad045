//! The C ABI as a hostile or careless app drives it: the input is a sequence of calls
//! (create, open, connect, read, write, shut down, close, free, UDP, SOCKS) on a few handles
//! of each kind, mixed with stale handles, made-up values, NULLs, and reads racing frees on
//! another thread, against in-process test servers (raw echo and VLESS) over real QUIC.
//!
//! What must hold, whatever the sequence: no call panics (XH_RESULT_PANIC) or crashes
//! (AddressSanitizer watches every access); a stale or made-up handle is
//! XH_RESULT_INVALID_HANDLE, a NULL one XH_RESULT_NULL_ARGUMENT; after everything is freed
//! no handle of any kind is left.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::ffi::{CString, c_char};
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::ptr::{null, null_mut};
use std::sync::OnceLock;
use xhttp_mobile::ffi::client::{
    xh_client, xh_client_close, xh_client_connect_tcp, xh_client_free, xh_client_new,
    xh_client_open, xh_client_stats, xh_stats,
};
use xhttp_mobile::ffi::socks::{
    xh_socks, xh_socks_free, xh_socks_local_addr, xh_socks_start, xh_socks_stop,
};
use xhttp_mobile::ffi::tunnel::{
    xh_tunnel, xh_tunnel_close, xh_tunnel_free, xh_tunnel_read, xh_tunnel_shutdown_write,
    xh_tunnel_write,
};
use xhttp_mobile::ffi::udp::{
    xh_client_open_udp, xh_udp, xh_udp_close, xh_udp_free, xh_udp_recv_from, xh_udp_send_to,
};
use xhttp_mobile::ffi::{live_handles, xh_result};
use xhttp_testserver::{ServerOptions, Target, TestServer};

const ID: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";
/// Handles kept per kind: enough for interplay, few enough that inputs stay fast.
const KEEP: usize = 3;
const OPS: usize = 48;

struct World {
    /// Client configs: raw echo server, VLESS server.
    echo: String,
    vless: String,
    /// "127.0.0.1:port" of the TCP and UDP echoes VLESS flows go to.
    tcp_echo: CString,
    udp_echo: CString,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut configs = Vec::new();
                let mut servers = Vec::new();
                for vless in [false, true] {
                    let mut o = ServerOptions::default();
                    o.settings.path = "/xh".into();
                    if vless {
                        let id = xhttp_mobile::proxy::vless::user_id("id", ID).unwrap();
                        o.target = Target::Vless { id };
                    }
                    let s = TestServer::start(o).await.unwrap();
                    let mut j = serde_json::json!({
                        "address": "127.0.0.1", "port": s.addr().port(),
                        "tlsSettings": {"serverName": "localhost",
                            "pinnedPeerCertSha256": s.cert_sha256_hex(),
                            "disableSystemRoot": true},
                        "xhttpSettings": {"path": "/xh", "mode": "MODE"}});
                    if vless {
                        j["vlessId"] = ID.into();
                    }
                    configs.push(j.to_string());
                    servers.push(s);
                }
                tx.send(configs).unwrap();
                // The servers live as long as the process.
                std::future::pending::<()>().await;
                drop(servers);
            });
        });
        let configs = rx.recv().unwrap();
        World {
            echo: configs[0].clone(),
            vless: configs[1].clone(),
            tcp_echo: CString::new(format!("127.0.0.1:{}", tcp_echo())).unwrap(),
            udp_echo: CString::new(format!("127.0.0.1:{}", udp_echo())).unwrap(),
        }
    })
}

fn tcp_echo() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

fn udp_echo() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    port
}

/// The input, read a byte at a time (0 once it runs out).
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        if from.is_empty() {
            None
        } else {
            Some(from[usize::from(self.byte()) % from.len()])
        }
    }
}

/// A handle value: live ones from the library, stale ones kept after their free.
#[derive(Default)]
struct Handles {
    clients: Vec<*mut xh_client>,
    tunnels: Vec<*mut xh_tunnel>,
    udp: Vec<*mut xh_udp>,
    socks: Vec<*mut xh_socks>,
    stale: Vec<usize>,
}

/// Every call's result: never a panic caught at the boundary.
fn ok(rc: xh_result) -> xh_result {
    assert_ne!(rc, xh_result::Panic, "a call panicked inside the library");
    rc
}

fn remove<T: PartialEq + Copy>(v: &mut Vec<T>, h: T) {
    v.retain(|x| *x != h);
}

const MODES: [&str; 3] = ["packet-up", "stream-up", "stream-one"];

fuzz_target!(|data: &[u8]| {
    let w = world();
    let mut input = Input(data);
    let mut h = Handles::default();
    let mut racers = Vec::new();
    let mut buf = vec![0u8; 70000];
    for _ in 0..OPS {
        if input.0.is_empty() {
            break;
        }
        let op = input.byte() % 20;
        // SAFETY (all calls below): every pointer argument is NULL, a live buffer of the
        // stated length, or a valid out-parameter; handles may be anything (that is the
        // point): the ABI promises any value is safe.
        unsafe {
            match op {
                0 if h.clients.len() < KEEP => {
                    let which = input.byte();
                    let base = if which & 1 == 0 { &w.echo } else { &w.vless };
                    let mode = MODES[usize::from(which >> 1) % 3];
                    let cfg = if which % 11 == 10 {
                        "{\"address\": 5}".to_string() // bad input: a clear refusal
                    } else {
                        base.replace("MODE", mode)
                    };
                    let cfg = CString::new(cfg).unwrap();
                    let mut c = null_mut();
                    if ok(xh_client_new(cfg.as_ptr(), &mut c)) == xh_result::Ok {
                        h.clients.push(c);
                    } else {
                        assert!(c.is_null());
                    }
                }
                1 | 2 if h.tunnels.len() < KEEP => {
                    let Some(c) = input.pick(&h.clients) else {
                        continue;
                    };
                    let mut t = null_mut();
                    let rc = if op == 1 {
                        xh_client_open(c, 3000, &mut t)
                    } else {
                        xh_client_connect_tcp(c, w.tcp_echo.as_ptr(), 3000, &mut t)
                    };
                    if ok(rc) == xh_result::Ok {
                        h.tunnels.push(t);
                    }
                }
                3 => {
                    let Some(t) = input.pick(&h.tunnels) else {
                        continue;
                    };
                    let len = usize::from(input.byte()) * 97 + 1;
                    let mut n = 0;
                    ok(xh_tunnel_write(
                        t,
                        buf.as_ptr(),
                        len,
                        u32::from(input.byte() % 50),
                        &mut n,
                    ));
                    assert!(n <= len);
                }
                4 => {
                    let Some(t) = input.pick(&h.tunnels) else {
                        continue;
                    };
                    let cap = usize::from(input.byte()) * 61 + 1;
                    let mut n = 0;
                    ok(xh_tunnel_read(
                        t,
                        buf.as_mut_ptr(),
                        cap,
                        u32::from(input.byte() % 30),
                        &mut n,
                    ));
                    assert!(n <= cap);
                }
                5 => {
                    let Some(t) = input.pick(&h.tunnels) else {
                        continue;
                    };
                    ok(xh_tunnel_shutdown_write(t, 200));
                }
                6 => {
                    let Some(t) = input.pick(&h.tunnels) else {
                        continue;
                    };
                    assert_eq!(ok(xh_tunnel_close(t)), xh_result::Ok);
                }
                7 => {
                    let Some(t) = input.pick(&h.tunnels) else {
                        continue;
                    };
                    assert_eq!(ok(xh_tunnel_free(t)), xh_result::Ok);
                    remove(&mut h.tunnels, t);
                    h.stale.push(t.addr());
                }
                8 => {
                    let Some(c) = input.pick(&h.clients) else {
                        continue;
                    };
                    assert_eq!(ok(xh_client_close(c)), xh_result::Ok);
                }
                9 => {
                    let Some(c) = input.pick(&h.clients) else {
                        continue;
                    };
                    assert_eq!(ok(xh_client_free(c)), xh_result::Ok);
                    remove(&mut h.clients, c);
                    h.stale.push(c.addr());
                }
                10 => {
                    let Some(c) = input.pick(&h.clients) else {
                        continue;
                    };
                    let mut s = xh_stats::default();
                    assert_eq!(ok(xh_client_stats(c, &mut s)), xh_result::Ok);
                    assert_eq!(
                        s.open_tunnels,
                        s.raw_tunnels + s.tcp_flows + s.udp_flows + s.mux_tunnels
                    );
                }
                11 if h.udp.len() < KEEP => {
                    let Some(c) = input.pick(&h.clients) else {
                        continue;
                    };
                    let mut u = null_mut();
                    if ok(xh_client_open_udp(c, &mut u)) == xh_result::Ok {
                        h.udp.push(u);
                    }
                }
                12 => {
                    let Some(u) = input.pick(&h.udp) else {
                        continue;
                    };
                    let b = input.byte();
                    let len = usize::from(b) * 41; // 0 and above 8192 are refused
                    let target = if b % 5 == 4 {
                        c"127.0.0.1:0".as_ptr()
                    } else {
                        w.udp_echo.as_ptr()
                    };
                    let rc = ok(xh_udp_send_to(u, target, buf.as_ptr(), len, 1000));
                    if len == 0 || len > 8192 || b % 5 == 4 {
                        assert_eq!(rc, xh_result::InvalidArgument);
                    }
                }
                13 => {
                    let Some(u) = input.pick(&h.udp) else {
                        continue;
                    };
                    let cap = usize::from(input.byte()) * 40 + 1;
                    let mut from = [0 as c_char; 262];
                    let mut n = 0;
                    let rc = ok(xh_udp_recv_from(
                        u,
                        buf.as_mut_ptr(),
                        cap,
                        from.as_mut_ptr(),
                        from.len(),
                        20,
                        &mut n,
                    ));
                    if rc == xh_result::Ok {
                        assert!(n <= cap);
                    }
                }
                14 => {
                    let Some(u) = input.pick(&h.udp) else {
                        continue;
                    };
                    if input.byte() & 1 == 0 {
                        assert_eq!(ok(xh_udp_close(u)), xh_result::Ok);
                    } else {
                        assert_eq!(ok(xh_udp_free(u)), xh_result::Ok);
                        remove(&mut h.udp, u);
                        h.stale.push(u.addr());
                    }
                }
                15 if h.socks.len() < KEEP => {
                    let Some(c) = input.pick(&h.clients) else {
                        continue;
                    };
                    let mut s = null_mut();
                    if ok(xh_socks_start(
                        c,
                        c"127.0.0.1:0".as_ptr(),
                        null(),
                        null(),
                        0,
                        &mut s,
                    )) == xh_result::Ok
                    {
                        let mut addr = [0 as c_char; 64];
                        let mut n = 0;
                        assert_eq!(
                            ok(xh_socks_local_addr(s, addr.as_mut_ptr(), 64, &mut n)),
                            xh_result::Ok
                        );
                        h.socks.push(s);
                    }
                }
                16 => {
                    let Some(s) = input.pick(&h.socks) else {
                        continue;
                    };
                    if input.byte() & 1 == 0 {
                        assert_eq!(ok(xh_socks_stop(s)), xh_result::Ok);
                    } else {
                        assert_eq!(ok(xh_socks_free(s)), xh_result::Ok);
                        remove(&mut h.socks, s);
                        h.stale.push(s.addr());
                    }
                }
                17 => {
                    // A stale handle or a made-up value, as any kind: refused, nothing done.
                    let forged = (usize::from(input.byte()) << 3) | usize::from(input.byte());
                    let v = input.pick(&h.stale).unwrap_or(forged);
                    if v == 0 {
                        continue;
                    }
                    let mut n = 0;
                    let rcs = [
                        xh_tunnel_read(
                            std::ptr::without_provenance(v),
                            buf.as_mut_ptr(),
                            10,
                            0,
                            &mut n,
                        ),
                        xh_tunnel_close(std::ptr::without_provenance_mut(v)),
                        xh_client_close(std::ptr::without_provenance_mut(v)),
                        xh_udp_free(std::ptr::without_provenance_mut(v)),
                        xh_socks_stop(std::ptr::without_provenance_mut(v)),
                    ];
                    for rc in rcs {
                        assert_eq!(ok(rc), xh_result::InvalidHandle, "handle {v:#x}");
                    }
                }
                18 => {
                    // NULL where a pointer is required.
                    let c = input.pick(&h.clients).unwrap_or(null_mut());
                    let mut t = null_mut();
                    assert_eq!(
                        ok(xh_client_open(null(), 10, &mut t)),
                        xh_result::NullArgument
                    );
                    assert_eq!(
                        ok(xh_client_connect_tcp(c, null(), 10, &mut t)),
                        xh_result::NullArgument
                    );
                    assert_eq!(
                        ok(xh_client_open_udp(c, null_mut())),
                        xh_result::NullArgument
                    );
                    let mut n = 0;
                    if let Some(&tt) = h.tunnels.first() {
                        assert_eq!(
                            ok(xh_tunnel_read(tt, null_mut(), 10, 0, &mut n)),
                            xh_result::NullArgument
                        );
                    }
                }
                19 => {
                    // A read blocked on another thread while this one frees the tunnel.
                    let Some(t) = input.pick(&h.tunnels) else {
                        continue;
                    };
                    let tv = t.addr();
                    racers.push(std::thread::spawn(move || {
                        let mut b = [0u8; 64];
                        let mut n = 0;
                        let t: *const xh_tunnel = std::ptr::without_provenance(tv);
                        // (Inside the block's SAFETY: the handle may be freed meanwhile.)
                        ok(xh_tunnel_read(t, b.as_mut_ptr(), b.len(), 300, &mut n));
                    }));
                    if input.byte() & 1 == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        assert_eq!(ok(xh_tunnel_free(t)), xh_result::Ok);
                        remove(&mut h.tunnels, t);
                        h.stale.push(tv);
                    }
                }
                _ => {}
            }
        }
    }
    // Free everything in an order the input chose (clients first or last).
    {
        if input.byte() & 1 == 0 {
            for c in h.clients.drain(..) {
                assert_eq!(ok(xh_client_free(c)), xh_result::Ok);
            }
        }
        for t in h.tunnels.drain(..) {
            assert_eq!(ok(xh_tunnel_free(t)), xh_result::Ok);
        }
        for u in h.udp.drain(..) {
            assert_eq!(ok(xh_udp_free(u)), xh_result::Ok);
        }
        for s in h.socks.drain(..) {
            assert_eq!(ok(xh_socks_free(s)), xh_result::Ok);
        }
        for c in h.clients.drain(..) {
            assert_eq!(ok(xh_client_free(c)), xh_result::Ok);
        }
    }
    for r in racers {
        r.join().expect("a racing read panicked");
    }
    assert_eq!(live_handles(), (0, 0, 0, 0), "handles left behind");
});
