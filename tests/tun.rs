//! The TUN data plane end to end, entirely inside network namespaces this test creates, so no
//! packet can leave the machine:
//!
//! - the test re-runs itself under `unshare -n`: that process is the *outer* namespace, with
//!   its own loopback (the XHTTP server, our library), and an origin (HTTP, TCP echo, UDP
//!   echo) on addresses added to that loopback, which exist only there;
//! - a TUN device created there (its fd kept by the test, handed to the library) is moved
//!   into an *inner* namespace (a `unshare -n sleep` process) whose default routes point at
//!   it. Apps in the inner namespace (curl, and test threads that `setns` into it) reach the
//!   origin only through the library: TUN → XHTTP/H3 → VLESS server → origin.
//!
//! Without root or namespaces the test prints SKIPPED and why.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xhttp_mobile::tun::{PacketIo, TunOptions};
use xhttp_testserver::Target;

const ID: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";
/// Set in the re-run under `unshare -n` to the test it runs.
const NS_ENV: &str = "XH_TUN_TEST_NS";
const ORIGIN: &str = "10.77.0.1";
const ORIGIN6: &str = "fd77::1";
const HTTP_PORT: u16 = 8080;
const ECHO_PORT: u16 = 7007;
/// Accepts and never reads: a server slower than any app.
const STALL_PORT: u16 = 7008;
/// What a stalled flow may hold in flight end to end (the app's socket buffers, the stack's,
/// the tunnel's queue, QUIC flow control, the server's sockets): bounded, far below 64 MiB.
const IN_FLIGHT_BOUND: u64 = 32 << 20;
const UDP_PORT: u16 = 5353;
/// Nothing listens there.
const CLOSED_PORT: u16 = 9;
const VIRTUAL_DNS: &str = "198.18.0.2";
const BIG: usize = 64 << 20;
const TUN_NAME: &str = "xhtun0";

#[test]
fn tun_in_namespaces_against_the_test_server() {
    if !in_outer_namespace("tun_in_namespaces_against_the_test_server") {
        return;
    }
    let e = vless_env();
    let client = e.vless_client(serde_json::json!({"path": "/xh", "mode": "stream-one"}), ID);
    run_scenario(&client);
}

/// The same scenario against the real Xray-core (XRAY_BIN): a VLESS + XHTTP/H3 inbound whose
/// freedom outbound reaches the origin.
#[cfg(feature = "interop")]
#[test]
fn tun_in_namespaces_against_xray() {
    if !in_outer_namespace("tun_in_namespaces_against_xray") {
        return;
    }
    use serde_json::json;
    let bin = std::path::PathBuf::from(
        std::env::var_os("XRAY_BIN").expect("XRAY_BIN must point at an Xray-core binary"),
    );
    let dir = std::env::temp_dir().join(format!("xh-tun-xray-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    // The origin's addresses are private: newer Xray's freedom refuses them unless allowed
    // (older versions ignore `finalRules`).
    sh(&["ip", "link", "set", "lo", "up"]);
    let port = common::xray::free_udp_port();
    let cfg = json!({"log": {"loglevel": "warning"},
        "inbounds": [{"listen": "127.0.0.1", "port": port, "protocol": "vless",
            "settings": {"clients": [{"id": ID}], "decryption": "none"},
            "streamSettings": {"network": "xhttp", "security": "tls",
                "tlsSettings": {"alpn": ["h3"], "certificates": [{
                    "certificateFile": dir.join("cert.pem"), "keyFile": dir.join("key.pem")}]},
                "xhttpSettings": {"path": "/xh"}}}],
        "outbounds": [{"protocol": "freedom", "settings": {"finalRules": [
            {"action": "allow", "ip": ["10.77.0.0/16", "fd77::/16"]}]}}]});
    let _xray = common::xray::start(&bin, &dir.join("xray.json"), &cfg, true);
    let out = json!({"protocol": "vless",
        "settings": {"address": "127.0.0.1", "port": port, "id": ID, "encryption": "none"},
        "streamSettings": {"network": "xhttp", "security": "tls",
            "tlsSettings": {"serverName": "localhost", "alpn": ["h3"],
                "pinnedPeerCertSha256": hex::encode(sha(ck.cert.der()))},
            "xhttpSettings": {"path": "/xh", "mode": "stream-one"}}});
    let c = xhttp_mobile::config::xray::import(&out.to_string()).expect("import");
    let client = xhttp_mobile::Client::new(c).expect("client");
    run_scenario(&client);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `name` again inside a new network namespace and returns `false`; returns `true` when
/// already inside it (the caller then runs the scenario). Prints SKIPPED when namespaces are
/// unavailable.
fn in_outer_namespace(name: &str) -> bool {
    if std::env::var(NS_ENV).as_deref() == Ok(name) {
        return true;
    }
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED {name}: {why}");
        return false;
    }
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("unshare")
        .args(["-n", "--"])
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(NS_ENV, name)
        .status()
        .expect("run unshare");
    assert!(status.success(), "{name} failed inside its namespace");
    false
}

fn unavailable() -> Option<String> {
    for tool in ["unshare", "nsenter", "ip", "curl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    let probe = Command::new("unshare")
        .args([
            "-n", "--", "ip", "tuntap", "add", "dev", "probe0", "mode", "tun",
        ])
        .stderr(Stdio::piped())
        .output();
    match probe {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "cannot create a network namespace with a TUN device (needs root): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("unshare: {e}")),
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The inner namespace: held by a `sleep` started under `unshare -n`; killed on drop.
struct Inner {
    child: Child,
}

impl Inner {
    fn new() -> Inner {
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let child = Command::new("unshare")
            .args(["-n", "--", "sleep", "600"])
            .spawn()
            .unwrap();
        let inner = Inner { child };
        let path = format!("/proc/{}/ns/net", inner.pid());
        let t0 = Instant::now();
        // `unshare` enters the namespace before it runs `sleep`.
        while std::fs::read_link(&path).ok().as_ref() == Some(&ours) {
            assert!(t0.elapsed() < Duration::from_secs(5), "inner namespace");
            std::thread::sleep(Duration::from_millis(10));
        }
        inner
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn run(&self, args: &[&str]) {
        let pid = self.pid().to_string();
        let mut all = vec!["nsenter", "-t", &pid, "-n", "--"];
        all.extend_from_slice(args);
        sh(&all);
    }

    /// What curl downloads from `url` inside the inner namespace.
    fn curl(&self, url: &str) -> Vec<u8> {
        let file = std::env::temp_dir().join(format!("xh-tun-{}.bin", std::process::id()));
        let path = file.to_str().unwrap();
        self.run(&[
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "120",
            "-o",
            path,
            url,
        ]);
        let got = std::fs::read(&file).unwrap();
        let _ = std::fs::remove_file(&file);
        got
    }

    /// curl's exit code and stderr for `url` inside the inner namespace (body discarded).
    fn curl_status(&self, url: &str) -> (Option<i32>, String) {
        let pid = self.pid().to_string();
        let out = Command::new("nsenter")
            .args(["-t", &pid, "-n", "--", "curl", "-sS", "--noproxy", "*"])
            .args(["--max-time", "20", "-o", "/dev/null", url])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// Runs `f` on a thread inside the inner namespace (threads it spawns are there too).
    fn thread<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/proc/{}/ns/net", self.pid());
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with an fd we opened.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("inner thread")
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The origin in the outer namespace: HTTP (`/big`: 64 MiB, `/small`: 1 MiB), a TCP echo
/// (half-closes after echoing), a UDP echo answering `answer:` + the query.
fn start_origin() {
    sh(&["ip", "link", "set", "lo", "up"]);
    // On the outer namespace's own loopback (a dummy interface needs a kernel module that
    // may not be loadable here): the addresses exist nowhere else.
    sh(&["ip", "addr", "add", &format!("{ORIGIN}/32"), "dev", "lo"]);
    sh(&[
        "ip",
        "addr",
        "add",
        &format!("{ORIGIN6}/128"),
        "dev",
        "lo",
        "nodad",
    ]);
    for ip in [ORIGIN, ORIGIN6] {
        let http = TcpListener::bind(SocketAddr::new(ip.parse().unwrap(), HTTP_PORT)).unwrap();
        std::thread::spawn(move || {
            for s in http.incoming().flatten() {
                std::thread::spawn(move || serve_http(s));
            }
        });
    }
    let stall = TcpListener::bind((ORIGIN, STALL_PORT)).unwrap();
    std::thread::spawn(move || {
        let held: Vec<_> = stall.incoming().flatten().collect();
        drop(held);
    });
    common::xray::serve_tcp_echo(TcpListener::bind((ORIGIN, ECHO_PORT)).unwrap());
    let udp = UdpSocket::bind((ORIGIN, UDP_PORT)).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let mut reply = b"answer:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = udp.send_to(&reply, from);
        }
    });
}

fn serve_http(mut s: TcpStream) {
    let mut req = Vec::new();
    let mut b = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&b[..n]),
        }
    }
    let body = if req.starts_with(b"GET /big ") {
        pattern(1, BIG)
    } else {
        pattern(2, 1 << 20)
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(&body);
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Open fds of this process that refer to the TUN device.
fn tun_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|p| p.to_string_lossy().contains("net/tun"))
        })
        .count()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The library's warnings on stderr: a failed check then says why the flow failed.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("[{}] {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

fn run_scenario(client: &xhttp_mobile::Client) {
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    start_origin();
    let fd = xhttp_mobile::tun::linux::create_device(TUN_NAME).expect("TUN device");
    let inner = Inner::new();
    sh(&[
        "ip",
        "link",
        "set",
        TUN_NAME,
        "netns",
        &inner.pid().to_string(),
    ]);
    inner.run(&["ip", "link", "set", "lo", "up"]);
    inner.run(&["ip", "addr", "add", "10.0.0.2/24", "dev", TUN_NAME]);
    inner.run(&["ip", "addr", "add", "fd00::2/64", "dev", TUN_NAME, "nodad"]);
    inner.run(&["ip", "link", "set", TUN_NAME, "mtu", "1500", "up"]);
    inner.run(&["ip", "route", "add", "default", "dev", TUN_NAME]);
    inner.run(&["ip", "-6", "route", "add", "default", "dev", TUN_NAME]);

    let opts = TunOptions::from_json(
        1500,
        &format!(r#"{{"dnsAddress": "{VIRTUAL_DNS}", "dnsServer": "{ORIGIN}:{UDP_PORT}"}}"#),
    )
    .unwrap();
    let tun = client
        .start_tun(PacketIo::Fd(fd.as_raw_fd()), opts)
        .expect("tun starts");
    assert_eq!(tun_fds(), 2, "ours and the TUN's duplicate");

    // 64 MiB by curl, SHA-256 checked.
    let rss0 = rss_kib();
    let t0 = Instant::now();
    let got = inner.curl(&format!("http://{ORIGIN}:{HTTP_PORT}/big"));
    let took = t0.elapsed();
    assert_eq!(got.len(), BIG);
    assert!(sha(&got) == sha(&pattern(1, BIG)), "64 MiB differ");
    eprintln!(
        "tun: 64 MiB by curl in {took:?} ({:.0} MiB/s); RSS {} -> {} MiB",
        64.0 / took.as_secs_f64(),
        rss0 / 1024,
        rss_kib() / 1024
    );

    // IPv6 through the same TUN.
    let got = inner.curl(&format!("http://[{ORIGIN6}]:{HTTP_PORT}/small"));
    assert!(
        sha(&got) == sha(&pattern(2, 1 << 20)),
        "IPv6 download differs"
    );

    // UDP: to the origin directly (XUDP), and DNS-style to the virtual DNS address, whose
    // replies must come back from that address.
    inner.thread(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for (to, want_from) in [
            (
                format!("{ORIGIN}:{UDP_PORT}"),
                format!("{ORIGIN}:{UDP_PORT}"),
            ),
            (format!("{VIRTUAL_DNS}:53"), format!("{VIRTUAL_DNS}:53")),
        ] {
            let to: SocketAddr = to.parse().unwrap();
            let want_from: SocketAddr = want_from.parse().unwrap();
            let query = format!("query for {to}");
            let mut answered = None;
            // UDP may be lost: a few tries, as a resolver does.
            for _ in 0..5 {
                s.send_to(query.as_bytes(), to).unwrap();
                let mut buf = [0u8; 2048];
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    answered = Some((buf[..n].to_vec(), from));
                    break;
                }
            }
            let (reply, from) = answered.unwrap_or_else(|| panic!("no UDP reply from {to}"));
            assert_eq!(from, want_from);
            assert_eq!(reply, [b"answer:".as_slice(), query.as_bytes()].concat());
        }
    });

    // 100 parallel short TCP flows, each SHA-checked.
    inner.thread(|| {
        let flows: Vec<_> = (0..100u64)
            .map(|i| {
                std::thread::spawn(move || {
                    let data = pattern(100 + i, 16 * 1024);
                    let mut s = TcpStream::connect((ORIGIN, ECHO_PORT)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    s.write_all(&data).unwrap();
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut back = Vec::new();
                    s.read_to_end(&mut back).unwrap();
                    assert!(sha(&back) == sha(&data), "flow {i}: echo differs");
                })
            })
            .collect();
        for f in flows {
            f.join().expect("a parallel flow failed");
        }
    });

    // Backpressure, upload: the app writes as fast as it can to a server that never reads.
    // Its writes must block once a bounded amount is in flight.
    let up0 = tun.stats().bytes_up;
    let rss0 = rss_kib();
    let written = inner.thread(|| {
        let mut s = TcpStream::connect((ORIGIN, STALL_PORT)).unwrap();
        s.set_write_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut total = 0u64;
        while total < 2 * IN_FLIGHT_BOUND {
            match s.write(&chunk) {
                Ok(n) => total += n as u64,
                Err(_) => break,
            }
        }
        total
    });
    let carried = tun.stats().bytes_up - up0;
    eprintln!(
        "tun: to a server that never reads, the app could write {} KiB ({} KiB taken by the \
         TUN) before blocking; RSS {} -> {} MiB",
        written / 1024,
        carried / 1024,
        rss0 / 1024,
        rss_kib() / 1024
    );
    assert!(
        written < IN_FLIGHT_BOUND,
        "{written} bytes accepted: no backpressure"
    );

    // Backpressure, download: an app that does not read holds the server back; once it
    // reads, every byte arrives intact.
    let down0 = tun.stats().bytes_down;
    let (paused_tx, paused_rx) = std::sync::mpsc::channel();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
    let pid = inner.pid();
    let reader = std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        // SAFETY: setns on this thread only, with an fd we opened.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let mut s = TcpStream::connect((ORIGIN, HTTP_PORT)).unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: origin\r\n\r\n")
            .unwrap();
        paused_tx.send(()).unwrap();
        resume_rx.recv().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all
    });
    paused_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let held = tun.stats().bytes_down - down0;
    eprintln!(
        "tun: an app that does not read was sent {} KiB",
        held / 1024
    );
    assert!(
        held < IN_FLIGHT_BOUND,
        "{held} bytes sent to an app that does not read"
    );
    resume_tx.send(()).unwrap();
    let all = reader.join().unwrap();
    let body = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| &all[i + 4..])
        .expect("an HTTP response");
    assert!(
        body.len() == BIG && sha(body) == sha(&pattern(1, BIG)),
        "paused download differs"
    );

    // A closed port: the server reports the refused dial by ending the flow without a byte
    // (Xray flushes its response header and closes); the app's connection is reset, never
    // closed as if the origin had answered with nothing. The stack has completed the
    // handshake by then, so the app sees a reset, not a refusal of its connect.
    let refused0 = tun.stats().flows_open_failed;
    inner.thread(|| {
        let t0 = Instant::now();
        let mut s = TcpStream::connect((ORIGIN, CLOSED_PORT)).expect("the stack accepts");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 16];
        let end = s.write_all(b"hello?").and_then(|()| s.read(&mut b));
        match end {
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "the flow to a closed port: {e}"
            ),
            Ok(0) => panic!("the flow to a closed port ended with a FIN, not a reset"),
            Ok(n) => panic!("{n} bytes from a closed port"),
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
    });
    // curl: "Recv failure: Connection reset by peer" (exit 56), not an empty reply (52).
    let (code, err) = inner.curl_status(&format!("http://{ORIGIN}:{CLOSED_PORT}/"));
    assert_eq!(code, Some(56), "curl to a closed port: {err}");
    assert_eq!(
        tun.stats().flows_open_failed - refused0,
        2,
        "both refusals counted"
    );

    let st = tun.stats();
    eprintln!("tun: stats after the checks: {st:?}");
    assert!(st.tcp_flows_total >= 105, "{st:?}");
    assert!(st.udp_flows_total >= 1 && st.dns_queries >= 1, "{st:?}");
    assert!(
        st.bytes_down >= BIG as u64 && st.bytes_up >= 100 * 16 * 1024,
        "{st:?}"
    );
    assert_eq!(st.dropped.malformed, 0, "{st:?}");
    assert_eq!(
        st.flows_open_failed, 2,
        "only the closed port's flows: {st:?}"
    );

    // Stop while flows run: five open echo flows (and the UDP session), then stop.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let pid = inner.pid();
    let holder = std::thread::spawn(move || {
        let path = format!("/proc/{pid}/ns/net");
        let ns = std::fs::File::open(path).unwrap();
        // SAFETY: as in `Inner::thread`.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let mut held = Vec::new();
        for _ in 0..5 {
            let mut s = TcpStream::connect((ORIGIN, ECHO_PORT)).unwrap();
            s.write_all(b"ping").unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).unwrap();
            held.push(s);
        }
        ready_tx.send(()).unwrap();
        let _ = done_rx.recv();
        drop(held);
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("flows held");
    wait_until("5 TCP flows counted", Duration::from_secs(5), || {
        tun.stats().tcp_flows >= 5
    });
    assert!(client.stats().tcp_flows >= 5);
    let t0 = Instant::now();
    tun.stop();
    eprintln!("tun: stop with flows running took {:?}", t0.elapsed());
    wait_until("every flow ended", Duration::from_secs(5), || {
        let s = tun.stats();
        s.tcp_flows == 0 && s.udp_flows == 0
    });
    wait_until("every tunnel closed", Duration::from_secs(5), || {
        client.stats().open_tunnels == 0
    });
    assert_eq!(
        tun_fds(),
        1,
        "the TUN's duplicate fd is closed; ours is not"
    );
    // The caller's fd is still open and usable.
    // SAFETY: F_GETFD on our own fd.
    assert!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) } >= 0);
    done_tx.send(()).unwrap();
    holder.join().unwrap();
    drop(tun);
}

/// The packet API (iOS style) through the C ABI, no namespaces needed: UDP datagrams built
/// here go in with `xh_tun_input`, reach a UDP echo through the test server (XUDP, and the
/// virtual DNS addresses, IPv4 and IPv6, redirected), and come back as IP packets through the callback, with
/// checksums checked. Bad packets are counted by reason; stop, the client's close and free
/// behave as documented.
#[test]
fn packet_callback_through_the_c_abi() {
    use std::ffi::{CString, c_void};
    use std::sync::{Condvar, Mutex};
    use xhttp_mobile::ffi::client::{xh_client_close, xh_client_free};
    use xhttp_mobile::ffi::result::xh_result;
    use xhttp_mobile::ffi::tun::*;

    struct Inbox(Mutex<Vec<Vec<u8>>>, Condvar);
    unsafe extern "C" fn deliver(ctx: *mut c_void, p: *const u8, len: usize) {
        // SAFETY: `ctx` is the `Inbox` below, alive until the TUN stopped; `p` valid for
        // `len` bytes during the call.
        let (inbox, p) = unsafe { (&*(ctx as *const Inbox), std::slice::from_raw_parts(p, len)) };
        inbox.0.lock().unwrap().push(p.to_vec());
        inbox.1.notify_all();
    }

    let udp_echo = |at: &str| {
        let echo = UdpSocket::bind(at).unwrap();
        let addr = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        });
        addr
    };
    let echo_addr = udp_echo("127.0.0.1:0");
    let e = vless_env();
    let client = c_client(&e);

    let inbox = Box::new(Inbox(Mutex::new(Vec::new()), Condvar::new()));
    let ctx = &*inbox as *const Inbox as *mut c_void;
    let mut tun: *mut xh_tun = std::ptr::null_mut();
    let bad_opts = CString::new(r#"{"maxFlows": 0}"#).unwrap();
    // SAFETY: valid arguments throughout; the callback and ctx outlive the TUN.
    unsafe {
        assert_eq!(
            xh_tun_new_packets(
                client,
                1500,
                bad_opts.as_ptr(),
                Some(deliver),
                ctx,
                &mut tun
            ),
            xh_result::InvalidArgument
        );
        assert_eq!(
            xh_tun_new_packets(client, 100, std::ptr::null(), Some(deliver), ctx, &mut tun),
            xh_result::InvalidArgument
        );
        assert_eq!(
            xh_tun_new_packets(client, 1500, std::ptr::null(), None, ctx, &mut tun),
            xh_result::NullArgument
        );
    }
    let opts = CString::new(format!(
        r#"{{"dnsAddress": ["{VIRTUAL_DNS}", "fd00::53"], "dnsServer": "{echo_addr}"}}"#
    ))
    .unwrap();
    // SAFETY: as above.
    let r =
        unsafe { xh_tun_new_packets(client, 1500, opts.as_ptr(), Some(deliver), ctx, &mut tun) };
    assert_eq!(r, xh_result::Ok);

    let app: SocketAddr = "10.0.0.2:5000".parse().unwrap();
    let app_dns: SocketAddr = "10.0.0.2:5001".parse().unwrap();
    let app6: SocketAddr = "[fd00::2]:5002".parse().unwrap();
    let dns: SocketAddr = format!("{VIRTUAL_DNS}:53").parse().unwrap();
    // IPv6 packets, to the IPv6 virtual DNS address (the test server's UDP side is IPv4).
    let dns6: SocketAddr = "[fd00::53]:53".parse().unwrap();
    let exchanges = [
        (app, echo_addr, b"hello over XUDP".to_vec()),
        (app_dns, dns, b"a DNS-style query".to_vec()),
        (app6, dns6, b"a query over IPv6".to_vec()),
    ];
    let input = |p: &[u8]| {
        // SAFETY: `p` valid for its length.
        unsafe { xh_tun_input(tun, p.as_ptr(), p.len()) }
    };
    for (src, dst, payload) in &exchanges {
        // What comes back: from the address the app asked, to the app, the same payload.
        let want = udp_packet(*dst, *src, payload);
        let t0 = Instant::now();
        loop {
            assert_eq!(input(&udp_packet(*src, *dst, payload)), xh_result::Ok);
            let got = inbox.0.lock().unwrap();
            let (mut got, _) = inbox
                .1
                .wait_timeout(got, Duration::from_millis(500))
                .unwrap();
            if let Some(i) = got.iter().position(|p| same_udp(p, &want)) {
                got.remove(i);
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no reply for {src} -> {dst}"
            );
        }
    }

    // Bad packets, each counted by its reason.
    let good = udp_packet(app, echo_addr, b"x");
    let mut frag = good.clone();
    frag[6] |= 0x20; // more fragments
    fix_ipv4_checksum(&mut frag);
    let mut icmp = good.clone();
    icmp[9] = 1;
    fix_ipv4_checksum(&mut icmp);
    let mut bad_sum = good.clone();
    *bad_sum.last_mut().unwrap() ^= 0xff;
    for p in [
        &good[..10],
        &[0xffu8; 40][..],
        &bad_sum[..],
        &frag[..],
        &icmp[..],
        &[0x45; 2000][..],
    ] {
        assert_eq!(input(p), xh_result::Ok);
    }
    // SAFETY: NULL packet and out-of-range lengths are refused, not read.
    unsafe {
        assert_eq!(
            xh_tun_input(tun, std::ptr::null(), 1),
            xh_result::NullArgument
        );
        assert_eq!(
            xh_tun_input(tun, good.as_ptr(), 0),
            xh_result::InvalidArgument
        );
    }
    let mut st = xh_tun_counters::default();
    wait_until("bad packets counted", Duration::from_secs(5), || {
        // SAFETY: valid out pointer.
        assert_eq!(unsafe { xh_tun_stats(tun, &mut st) }, xh_result::Ok);
        st.dropped_malformed >= 3 && st.dropped_fragment >= 1 && st.dropped_protocol >= 1
    });
    assert_eq!(
        (
            st.dropped_malformed,
            st.dropped_fragment,
            st.dropped_protocol,
            st.dropped_oversized
        ),
        (3, 1, 1, 1),
        "{st:?}"
    );
    assert!(st.udp_flows_total >= 3 && st.dns_queries >= 1, "{st:?}");

    // The flow cap: four app sockets under `maxFlows: 2` end the two least recent; the
    // others end once quiet for `udpIdle`.
    let capped_opts = CString::new(r#"{"maxFlows": 2, "udpIdle": 0.3}"#).unwrap();
    let mut capped: *mut xh_tun = std::ptr::null_mut();
    // SAFETY: as above.
    let r = unsafe {
        xh_tun_new_packets(
            client,
            1500,
            capped_opts.as_ptr(),
            Some(deliver),
            ctx,
            &mut capped,
        )
    };
    assert_eq!(r, xh_result::Ok);
    for port in 6000..6004u16 {
        let p = udp_packet(SocketAddr::new(app.ip(), port), echo_addr, b"cap");
        // SAFETY: a valid packet.
        assert_eq!(
            unsafe { xh_tun_input(capped, p.as_ptr(), p.len()) },
            xh_result::Ok
        );
    }
    let mut cs = xh_tun_counters::default();
    wait_until("four UDP flows seen", Duration::from_secs(5), || {
        // SAFETY: valid out pointer.
        assert_eq!(unsafe { xh_tun_stats(capped, &mut cs) }, xh_result::Ok);
        cs.udp_flows_total == 4
    });
    assert_eq!(cs.flows_evicted, 2, "{cs:?}");
    // The evicted flows end (closing their sessions) on their own tasks.
    wait_until("evicted flows ended", Duration::from_secs(5), || {
        // SAFETY: valid out pointer.
        assert_eq!(unsafe { xh_tun_stats(capped, &mut cs) }, xh_result::Ok);
        cs.udp_flows <= 2
    });
    wait_until("quiet flows ended", Duration::from_secs(5), || {
        // SAFETY: valid out pointer.
        assert_eq!(unsafe { xh_tun_stats(capped, &mut cs) }, xh_result::Ok);
        cs.udp_flows == 0
    });
    assert_eq!(xh_tun_free(capped), xh_result::Ok);

    // Stop: input refused, stats kept; then a second TUN stopped by the client's close.
    assert_eq!(xh_tun_stop(tun), xh_result::Ok);
    assert_eq!(xh_tun_stop(tun), xh_result::Ok);
    assert_eq!(input(&good), xh_result::Closed);
    let mut after = xh_tun_counters::default();
    // SAFETY: valid out pointer.
    assert_eq!(unsafe { xh_tun_stats(tun, &mut after) }, xh_result::Ok);
    assert_eq!(after.udp_flows, 0, "{after:?}");
    let mut tun2: *mut xh_tun = std::ptr::null_mut();
    // SAFETY: as above.
    let r = unsafe {
        xh_tun_new_packets(
            client,
            1500,
            std::ptr::null(),
            Some(deliver),
            ctx,
            &mut tun2,
        )
    };
    assert_eq!(r, xh_result::Ok);
    assert_eq!(xh_client_close(client), xh_result::Ok);
    // SAFETY: a valid packet.
    assert_eq!(
        unsafe { xh_tun_input(tun2, good.as_ptr(), good.len()) },
        xh_result::Closed
    );
    assert_eq!(xh_tun_free(tun), xh_result::Ok);
    assert_eq!(xh_tun_free(tun), xh_result::InvalidHandle);
    assert_eq!(xh_tun_free(tun2), xh_result::Ok);
    assert_eq!(xh_client_free(client), xh_result::Ok);
    drop(inbox);
}

/// A packet callback that blocks (here until released, far past the TUN's stop bound)
/// sticks nothing: input is still taken, packets for the app beyond the callback's queue
/// are dropped and counted, the same client still carries a flow, stats answer, another
/// TUN is freed, and the blocked TUN's stop returns within its bound; the callback is not
/// called again once stop returned.
#[test]
fn a_blocking_packet_callback_sticks_nothing() {
    use std::ffi::{CString, c_void};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};
    use xhttp_mobile::ffi::client::{xh_client_connect_tcp, xh_client_free};
    use xhttp_mobile::ffi::result::xh_result;
    use xhttp_mobile::ffi::tun::*;
    use xhttp_mobile::ffi::tunnel::{xh_tunnel, xh_tunnel_free, xh_tunnel_read, xh_tunnel_write};
    use xhttp_mobile::tun::PACKET_QUEUE;

    struct Gate {
        calls: AtomicUsize,
        released: Mutex<bool>,
        cv: Condvar,
    }
    unsafe extern "C" fn blocks(ctx: *mut c_void, _p: *const u8, _len: usize) {
        // SAFETY: `ctx` is the `Gate` below, alive until the end of the test (after stop).
        let g = unsafe { &*(ctx as *const Gate) };
        g.calls.fetch_add(1, Ordering::SeqCst);
        let released = g.released.lock().unwrap();
        let _ =
            g.cv.wait_timeout_while(released, Duration::from_secs(120), |r| !*r)
                .unwrap();
    }
    unsafe extern "C" fn ignore(_ctx: *mut c_void, _p: *const u8, _len: usize) {}

    let e = vless_env();
    let client = c_client(&e);
    let gate = Box::new(Gate {
        calls: AtomicUsize::new(0),
        released: Mutex::new(false),
        cv: Condvar::new(),
    });
    let ctx = &*gate as *const Gate as *mut c_void;
    let (mut tun, mut other): (*mut xh_tun, *mut xh_tun) =
        (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: valid arguments; the callbacks and `gate` outlive the TUNs.
    unsafe {
        let r = xh_tun_new_packets(client, 1500, std::ptr::null(), Some(blocks), ctx, &mut tun);
        assert_eq!(r, xh_result::Ok);
        let r = xh_tun_new_packets(
            client,
            1500,
            std::ptr::null(),
            Some(ignore),
            std::ptr::null_mut(),
            &mut other,
        );
        assert_eq!(r, xh_result::Ok);
    }
    let stats = |t: *mut xh_tun| {
        let mut st = xh_tun_counters::default();
        // SAFETY: valid out pointer.
        assert_eq!(unsafe { xh_tun_stats(t, &mut st) }, xh_result::Ok);
        st
    };
    // Bare ACKs of connections the stack does not have: it answers each with a RST, so
    // every packet in makes one for the app, and no tunnel is involved.
    let app: SocketAddr = "10.0.0.2:40000".parse().unwrap();
    let ack = |port: u16| {
        let remote = SocketAddr::new("10.9.0.1".parse().unwrap(), port);
        tcp_packet(app, remote, 0x10, 1, 1)
    };
    // In batches, each taken in (or counted as dropped) before the next, until replies
    // overflow the callback's queue.
    let mut n = 0u64;
    let t0 = Instant::now();
    while stats(tun).dropped_output_full == 0 {
        assert!(
            n < 16 * PACKET_QUEUE as u64,
            "no reply dropped: {:?}",
            stats(tun)
        );
        for _ in 0..256 {
            let p = ack(1000 + n as u16);
            // SAFETY: a valid packet.
            assert_eq!(
                unsafe { xh_tun_input(tun, p.as_ptr(), p.len()) },
                xh_result::Ok
            );
            n += 1;
            if n == 1 {
                wait_until("the callback blocks", Duration::from_secs(5), || {
                    gate.calls.load(Ordering::SeqCst) == 1
                });
            }
        }
        wait_until("the batch taken in", Duration::from_secs(10), || {
            let st = stats(tun);
            st.packets_in + st.dropped_input_full == n && st.packets_out == st.packets_in
        });
    }
    eprintln!(
        "tun: {n} packets handed in around a blocked callback in {:?}",
        t0.elapsed()
    );
    let st = stats(tun);
    eprintln!("tun: with the callback blocked: {st:?}");
    // What did not fit the callback's queue was dropped: all but the queue and the one
    // packet being handed out.
    assert_eq!(
        st.dropped_output_full as usize,
        st.packets_out as usize - (PACKET_QUEUE + 1),
        "{st:?}"
    );

    // The same client still carries a flow (its runtime is not stuck).
    let echo = common::xray::spawn_tcp_echo();
    let target = CString::new(format!("127.0.0.1:{echo}")).unwrap();
    let mut flow: *mut xh_tunnel = std::ptr::null_mut();
    // SAFETY: valid arguments; buffers valid for their lengths.
    unsafe {
        assert_eq!(
            xh_client_connect_tcp(client, target.as_ptr(), 10_000, &mut flow),
            xh_result::Ok
        );
        let mut n = 0usize;
        assert_eq!(
            xh_tunnel_write(flow, b"ping".as_ptr(), 4, 10_000, &mut n),
            xh_result::Ok
        );
        assert_eq!(n, 4);
        let mut back = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            let mut r = 0usize;
            let rc = xh_tunnel_read(flow, back[got..].as_mut_ptr(), 4 - got, 10_000, &mut r);
            assert_eq!(rc, xh_result::Ok);
            assert!(r > 0, "the echo ended early");
            got += r;
        }
        assert_eq!(&back, b"ping");
    }
    assert_eq!(xh_tunnel_free(flow), xh_result::Ok);
    // Another TUN stops and frees at once.
    let t0 = Instant::now();
    assert_eq!(xh_tun_free(other), xh_result::Ok);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());

    // Stop returns within its bound with the callback still blocked; the counters stay
    // readable meanwhile (not zero) and after.
    let watcher = std::thread::spawn({
        let tun = tun as usize;
        move || {
            let t = tun as *mut xh_tun;
            let mut seen = Vec::new();
            for _ in 0..20 {
                let mut st = xh_tun_counters::default();
                // SAFETY: valid out pointer; the handle is freed only after this joins.
                assert_eq!(unsafe { xh_tun_stats(t, &mut st) }, xh_result::Ok);
                seen.push(st.packets_in);
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        }
    });
    let t0 = Instant::now();
    assert_eq!(xh_tun_stop(tun), xh_result::Ok);
    let took = t0.elapsed();
    eprintln!("tun: stop with the callback blocked took {took:?}");
    assert!(took < Duration::from_secs(8), "stop took {took:?}");
    let seen = watcher.join().unwrap();
    assert!(
        seen.iter().all(|&p| p == st.packets_in),
        "the counters read during stop: {seen:?}"
    );
    let calls = gate.calls.load(Ordering::SeqCst);
    *gate.released.lock().unwrap() = true;
    gate.cv.notify_all();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        gate.calls.load(Ordering::SeqCst),
        calls,
        "called again after stop returned"
    );
    assert_eq!(stats(tun).packets_in, st.packets_in);
    assert_eq!(xh_tun_free(tun), xh_result::Ok);
    assert_eq!(xh_client_free(client), xh_result::Ok);
    drop(gate);
}

/// A test server with a VLESS target for `ID`.
fn vless_env() -> Env {
    let id = xhttp_mobile::proxy::vless::user_id("id", ID).unwrap();
    env(|o| o.target = Target::Vless { id })
}

/// A client of `e` (stream-one, VLESS) made through the C ABI.
fn c_client(e: &Env) -> *mut xhttp_mobile::ffi::client::xh_client {
    let mut cfg = e.config_json(serde_json::json!({"path": "/xh", "mode": "stream-one"}));
    cfg["vlessId"] = ID.into();
    let cfg = std::ffi::CString::new(cfg.to_string()).unwrap();
    let mut client = std::ptr::null_mut();
    // SAFETY: valid C string and out pointer.
    let r = unsafe { xhttp_mobile::ffi::client::xh_client_new(cfg.as_ptr(), &mut client) };
    assert_eq!(r, xhttp_mobile::ffi::result::xh_result::Ok);
    client
}

/// An IPv4 or IPv6 TCP segment without payload or options (`flags` as in the header),
/// checksums correct.
fn tcp_packet(src: SocketAddr, dst: SocketAddr, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&src.port().to_be_bytes());
    tcp.extend_from_slice(&dst.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    let (s, d) = (ip_bytes(src), ip_bytes(dst));
    let mut pseudo = [s.as_slice(), d.as_slice()].concat();
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let sum = checksum(&[pseudo.as_slice(), tcp.as_slice()].concat());
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    ip_packet(src, dst, 6, &tcp)
}

/// `payload` of protocol `proto` in an IPv4 or IPv6 header (IPv4 checksum filled in).
fn ip_packet(src: SocketAddr, dst: SocketAddr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let (s, d) = (ip_bytes(src), ip_bytes(dst));
    let mut ip = if src.is_ipv4() {
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        ip[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        ip
    } else {
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        ip.extend_from_slice(&[proto, 64]);
        ip
    };
    ip.extend_from_slice(&s);
    ip.extend_from_slice(&d);
    ip.extend_from_slice(payload);
    if src.is_ipv4() {
        fix_ipv4_checksum(&mut ip);
    }
    ip
}

/// An IPv4 or IPv6 UDP packet with correct checksums.
fn udp_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let ulen = 8 + payload.len();
    let mut udp = Vec::with_capacity(ulen);
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&(ulen as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let (s, d) = (ip_bytes(src), ip_bytes(dst));
    let mut pseudo = [s.as_slice(), d.as_slice()].concat();
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(ulen as u16).to_be_bytes());
    let mut sum = checksum(&[pseudo.as_slice(), udp.as_slice()].concat());
    if sum == 0 {
        sum = 0xffff;
    }
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    ip_packet(src, dst, 17, &udp)
}

fn ip_bytes(a: SocketAddr) -> Vec<u8> {
    match a.ip() {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn fix_ipv4_checksum(p: &mut [u8]) {
    p[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// The same addresses, ports and payload, with valid checksums on `got` (the stack's TTL
/// and IPv4 identification may differ from ours).
fn same_udp(got: &[u8], want: &[u8]) -> bool {
    let v4 = want[0] >> 4 == 4;
    let hl = if v4 { 20 } else { 40 };
    if got.len() != want.len() || got[0] >> 4 != want[0] >> 4 {
        return false;
    }
    let addrs = if v4 { 12..20 } else { 8..40 };
    if got[addrs.clone()] != want[addrs] || got[hl..hl + 6] != want[hl..hl + 6] {
        return false;
    }
    if got[hl + 8..] != want[hl + 8..] {
        return false;
    }
    if v4 && checksum(&got[..20]) != 0 {
        return false;
    }
    let (s, d) = if v4 {
        (&got[12..16], &got[16..20])
    } else {
        (&got[8..24], &got[24..40])
    };
    let mut pseudo = [s, d].concat();
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&((got.len() - hl) as u16).to_be_bytes());
    checksum(&[pseudo.as_slice(), &got[hl..]].concat()) == 0
}
