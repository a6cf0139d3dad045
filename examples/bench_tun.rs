//! What the TUN data plane costs against the ways an app reaches the same server today, all
//! in the same run, against the same Xray-core server, entirely inside network namespaces
//! this benchmark creates (no packet can leave the machine):
//!
//! 1. `xh tun`: the library holds the TUN device (our stack → VLESS/XHTTP/H3);
//! 2. `xh socks`: the app speaks SOCKS5 to our client directly (no TUN at all);
//! 3. tun2proxy holding the TUN, forwarding to `xh socks`;
//! 4. tun2proxy holding the TUN, forwarding to Xray-core's client (SOCKS inbound, the same
//!    VLESS/XHTTP/H3 outbound).
//!
//! Run: `bash scripts/bench-tun.sh [MiB=256] [mode=stream-one] [flows=1000]` (root; builds
//! what it needs). The benchmark re-runs itself under `unshare -n`: that *outer* namespace
//! holds loopback, the Xray server, the clients and a TCP echo origin on 10.77.0.1 (an
//! address that exists only there). A TUN path's device is created there by its holder and
//! moved into an *inner* namespace (`unshare -n sleep`) whose default route is the TUN; the
//! app (threads of this process that `setns` into it) reaches the origin only through it.
//!
//! Per path, with fresh client processes: a 1 MiB warm-up; MiB sent up while the echo is
//! read back on one TCP connection (SHA-256 checked), timed, with the CPU (utime+stime) of
//! the client-side processes over that transfer; then their RSS (VmRSS, summed) before and
//! with `flows` idle TCP flows open through the path (each flow's echo answered first, so it
//! reaches the origin).

#[path = "../tests/common/xray.rs"]
mod xray;

#[path = "../tests/common/socks.rs"]
#[allow(dead_code)]
mod socks;

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ID: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";
/// Set in the re-run under `unshare -n`.
const NS_ENV: &str = "XH_BENCH_TUN_NS";
const ORIGIN: &str = "10.77.0.1";
const ECHO_PORT: u16 = 7007;
const MTU: u16 = 1500;
/// Idle flows are opened (and their first echo awaited) this many at a time: more at once
/// would overflow the origin's accept backlog and time SYN retries instead of the path.
const FLOW_BATCH: usize = 100;
/// How long the idle flows stay open before RSS is read.
const SETTLE: Duration = Duration::from_secs(3);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if std::env::var_os(NS_ENV).is_none() {
        // Everything happens in a namespace of our own, so the origin's address, the TUN
        // routes and every client socket vanish with it.
        let status = Command::new("unshare")
            .args(["-n", "--"])
            .args(&args)
            .env(NS_ENV, "1")
            .status()
            .expect("run unshare (root needed; scripts/bench-tun.sh checks and skips)");
        std::process::exit(status.code().unwrap_or(1));
    }
    let mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let mode = args.get(2).cloned().unwrap_or_else(|| "stream-one".into());
    let flows: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1000);
    // Which paths to run, e.g. "14" (default all): for looking into one of them.
    let only = args.get(4).cloned().unwrap_or_else(|| "1234".into());
    // One XMUX setting for both clients. Their defaults differ (v26.3.27's is one tunnel per
    // connection, ours is Xray's newer three connections), and three connections cannot carry
    // 1,000 flows: a quic-go server allows 100 streams on each.
    let xmux: serde_json::Value = serde_json::from_str(
        &std::env::var("BENCH_XMUX").unwrap_or_else(|_| r#"{"maxConcurrency": "16-32"}"#.into()),
    )
    .expect("BENCH_XMUX: JSON");
    let bin = |var: &str| PathBuf::from(std::env::var(var).unwrap_or_else(|_| panic!("{var}")));
    let (xray_bin, xh, t2p) = (bin("XRAY_BIN"), bin("XH_BIN"), bin("TUN2PROXY_BIN"));

    raise_fd_limit();
    let origin_on = start_origin();
    let dir = std::env::temp_dir().join(format!("xh-bench-tun-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("c.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("k.pem"), ck.signing_key.serialize_pem()).unwrap();
    let sp = xray::free_udp_port();
    // The origin's address is private: newer Xray's freedom refuses it unless allowed.
    let _server = xray::start(
        &xray_bin,
        &dir.join("server.json"),
        &serde_json::json!({
        "log": {"loglevel": "warning", "access": "none"},
        "inbounds": [{"listen": "127.0.0.1", "port": sp, "protocol": "vless",
            "settings": {"clients": [{"id": ID}], "decryption": "none"},
            "streamSettings": {"network": "xhttp", "security": "tls",
                "tlsSettings": {"alpn": ["h3"], "certificates": [{"certificateFile": dir.join("c.pem"), "keyFile": dir.join("k.pem")}]},
                "xhttpSettings": {"path": "/xh/"}}}],
        "outbounds": [{"protocol": "freedom", "settings": {"finalRules": [
            {"action": "allow", "ip": ["10.77.0.0/16"]}]}}]}),
        false,
    );
    let outbound = serde_json::json!({"protocol": "vless",
        "settings": {"vnext": [{"address": "127.0.0.1", "port": sp, "users": [{"id": ID, "encryption": "none"}]}]},
        "streamSettings": {"network": "xhttp", "security": "tls",
            "tlsSettings": {"serverName": "localhost", "alpn": ["h3"],
                "pinnedPeerCertSha256": hex::encode(Sha256::digest(ck.cert.der()))},
            "xhttpSettings": {"path": "/xh/", "mode": mode, "xmux": xmux}}});
    let tools = Tools {
        xray: xray_bin,
        xh,
        t2p,
        dir: dir.clone(),
        outbound,
    };

    let data = Arc::new(pattern(mib << 20));
    println!(
        "# {mib} MiB each way, mode {mode}, xmux {xmux}, {flows} idle flows; VLESS over \
         XHTTP/H3 to Xray-core in network namespaces (origin on {origin_on}), MTU {MTU}"
    );
    println!(
        "{:34} {:>7} {:>9} {:>7} {:>9} {:>10} {:>12} {:>9}",
        "path", "time s", "MB/s", "CPU s", "CPU s/GiB", "RSS MiB", "RSS+flows", "KiB/flow"
    );
    let builders: [(&str, Builder); 4] = [
        ("1 xh tun", Tools::xh_tun),
        ("2 xh socks (no TUN)", Tools::xh_socks_direct),
        ("3 tun2proxy + xh socks", Tools::t2p_xh),
        ("4 tun2proxy + Xray client socks", Tools::t2p_xray),
    ];
    let mut rows = Vec::new();
    for (i, (name, build)) in builders.iter().enumerate() {
        if !only.contains(&(i + 1).to_string()) {
            rows.push(None);
            continue;
        }
        let setup = build(&tools, &format!("xhbench{}", i + 1));
        let row = measure(&setup, &data, flows);
        drop(setup);
        println!(
            "{name:34} {:7.2} {:9.1} {:7.2} {:9.2} {:10.1} {:12.1} {:9.1}",
            row.secs,
            data.len() as f64 / 1e6 / row.secs,
            row.cpu,
            row.cpu / (2.0 * data.len() as f64 / (1u64 << 30) as f64),
            row.rss_idle as f64 / 1024.0,
            row.rss_flows as f64 / 1024.0,
            row.rss_flows.saturating_sub(row.rss_idle) as f64 / flows as f64,
        );
        rows.push(Some(row));
    }
    for (base, label) in [(3, "tun2proxy + Xray client"), (2, "tun2proxy + xh socks")] {
        let Some(b) = &rows[base] else { continue };
        println!("ratios against {label} (path {}):", base + 1);
        for (i, (name, _)) in builders.iter().enumerate().filter(|&(i, _)| i != base) {
            let Some(r) = &rows[i] else { continue };
            println!(
                "  {name:34} time {:.2}x  CPU/GiB {:.2}x  RSS+flows {:.2}x",
                r.secs / b.secs,
                r.cpu / b.cpu,
                r.rss_flows as f64 / b.rss_flows as f64
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts a path's processes; given the TUN device name it may use.
type Builder = fn(&Tools, &str) -> Setup;

/// What one path measured.
struct Row {
    secs: f64,
    /// CPU seconds of the client-side processes during the measured transfer.
    cpu: f64,
    /// KiB, summed over the client-side processes.
    rss_idle: u64,
    rss_flows: u64,
}

fn measure(setup: &Setup, data: &Arc<Vec<u8>>, flows: usize) -> Row {
    let pids: Vec<u32> = setup.procs.iter().map(|p| p.0.id()).collect();
    // Warm-up: connections up, windows grown, lazily built state in place.
    echo(&setup.app, &Arc::new(pattern(1 << 20)));
    let c0 = cpu_secs(&pids);
    let secs = echo(&setup.app, data);
    let cpu = cpu_secs(&pids) - c0;
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = rss_kib(&pids);
    let held = open_flows(&setup.app, flows);
    std::thread::sleep(SETTLE);
    let rss_flows = rss_kib(&pids);
    drop(held);
    Row {
        secs,
        cpu,
        rss_idle,
        rss_flows,
    }
}

/// How the app reaches the origin on a path.
enum App {
    /// Plain TCP from inside the inner namespace, whose default route is the TUN.
    Tun(Inner),
    /// SOCKS5 CONNECT through the proxy at this address (outer namespace).
    Socks(SocketAddr),
}

impl App {
    /// Opens `n` connections to the origin through the path.
    fn dial(&self, n: usize) -> Vec<TcpStream> {
        let origin: SocketAddr = (ORIGIN.parse::<std::net::IpAddr>().unwrap(), ECHO_PORT).into();
        match self {
            App::Tun(inner) => inner.thread(move || {
                (0..n)
                    .map(|_| {
                        let s = TcpStream::connect(origin).expect("connect through the TUN");
                        s.set_read_timeout(Some(socks::IO_TIMEOUT)).unwrap();
                        s
                    })
                    .collect()
            }),
            App::Socks(proxy) => (0..n)
                .map(|_| socks::connect(*proxy, origin, None))
                .collect(),
        }
    }
}

/// Sends `data` up on one connection while reading the echo back; checks SHA-256; returns
/// the seconds it took (connecting included: a flow through a TUN opens lazily).
fn echo(app: &App, data: &Arc<Vec<u8>>) -> f64 {
    let want = Sha256::digest(&data[..]);
    let start = Instant::now();
    let s = app.dial(1).pop().unwrap();
    let mut w = s.try_clone().unwrap();
    let up = Arc::clone(data);
    let writer = std::thread::spawn(move || {
        for c in up.chunks(256 * 1024) {
            w.write_all(c).expect("upload");
        }
    });
    let mut r = s;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < data.len() {
        let n = r.read(&mut buf).expect("download");
        assert!(n > 0, "EOF after {got} of {} bytes", data.len());
        h.update(&buf[..n]);
        got += n;
    }
    writer.join().expect("writer");
    assert_eq!(h.finalize(), want, "the echo differs from what was sent");
    start.elapsed().as_secs_f64()
}

/// `n` flows open through the path, each having carried one byte to the origin and back.
fn open_flows(app: &App, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    while held.len() < n {
        let mut batch = app.dial(FLOW_BATCH.min(n - held.len()));
        for s in &mut batch {
            s.write_all(b"x").expect("idle flow: write");
        }
        for (i, s) in batch.iter_mut().enumerate() {
            let mut b = [0u8; 1];
            if let Err(e) = s.read_exact(&mut b) {
                panic!("idle flow {}: no echo: {e}", held.len() + i + 1);
            }
        }
        held.append(&mut batch);
    }
    held
}

/// A path's client-side processes (killed on drop) and how the app reaches them.
struct Setup {
    // Dropped first: the holder's TUN goes with the inner namespace's routes.
    app: App,
    procs: Vec<xray::Xray>,
}

struct Tools {
    xray: PathBuf,
    xh: PathBuf,
    t2p: PathBuf,
    dir: PathBuf,
    outbound: serde_json::Value,
}

impl Tools {
    fn xh_tun(&self, dev: &str) -> Setup {
        // maxFlows above the idle flows (the default, 512, would evict); all else default
        // unless BENCH_TUN_OPTIONS adds fields (e.g. {"tcpBuffer": 65536}).
        let mut opts: serde_json::Value = serde_json::from_str(
            &std::env::var("BENCH_TUN_OPTIONS").unwrap_or_else(|_| "{}".into()),
        )
        .expect("BENCH_TUN_OPTIONS: a JSON object");
        opts["maxFlows"] = 4096.into();
        let mut child = spawn(
            Command::new(&self.xh)
                .args([
                    "tun",
                    "--config",
                    &self.outbound.to_string(),
                    "--dev",
                    dev,
                    "--mtu",
                    &MTU.to_string(),
                    "--options",
                    &opts.to_string(),
                ])
                .stdout(Stdio::piped()),
        );
        ready_line(&mut child, "tun running on");
        let procs = vec![xray::Xray(child)];
        Setup {
            app: App::Tun(Inner::with_tun(dev)),
            procs,
        }
    }

    /// `xh socks` on a free loopback port: the process and its address.
    fn xh_socks(&self) -> (xray::Xray, SocketAddr) {
        let mut child = spawn(
            Command::new(&self.xh)
                .args([
                    "socks",
                    "--config",
                    &self.outbound.to_string(),
                    "--listen",
                    "127.0.0.1:0",
                ])
                .stdout(Stdio::piped()),
        );
        let line = ready_line(&mut child, "listening on ");
        let addr = line["listening on ".len()..].trim().parse().unwrap();
        (xray::Xray(child), addr)
    }

    fn xh_socks_direct(&self, _dev: &str) -> Setup {
        let (p, addr) = self.xh_socks();
        Setup {
            app: App::Socks(addr),
            procs: vec![p],
        }
    }

    /// Xray-core's client: a SOCKS inbound in front of the same outbound.
    fn xray_socks(&self) -> (xray::Xray, SocketAddr) {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let x = xray::start(
            &self.xray,
            &self.dir.join("client.json"),
            &serde_json::json!({
                "log": {"loglevel": "warning", "access": "none"},
                "inbounds": [{"listen": "127.0.0.1", "port": port, "protocol": "socks",
                    "settings": {"auth": "noauth", "udp": false}}],
                "outbounds": [self.outbound.clone()]}),
            false,
        );
        (x, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn t2p_xh(&self, dev: &str) -> Setup {
        let (p, addr) = self.xh_socks();
        self.behind_t2p(dev, p, addr)
    }

    fn t2p_xray(&self, dev: &str) -> Setup {
        let (p, addr) = self.xray_socks();
        self.behind_t2p(dev, p, addr)
    }

    /// tun2proxy holding `dev` in front of the SOCKS server at `socks`. Its session cap
    /// (200 by default) is raised above the idle flows, and it advertises the MSS an MTU of
    /// 1500 allows (by default it sends none, and the kernel then segments at 536 bytes):
    /// tun2proxy at its best, not at its defaults.
    fn behind_t2p(&self, dev: &str, provider: xray::Xray, socks: SocketAddr) -> Setup {
        let child = spawn(
            Command::new(&self.t2p)
                .args([
                    "--tun",
                    dev,
                    "--proxy",
                    &format!("socks5://{socks}"),
                    "--mtu",
                    &MTU.to_string(),
                    "--tcp-mss",
                    &(MTU - 40).to_string(),
                    "--max-sessions",
                    "4096",
                    "--verbosity",
                    "warn",
                ])
                .stdout(Stdio::null()),
        );
        let t2p = xray::Xray(child);
        let t0 = Instant::now();
        // Asked of `ip`: /sys still shows the namespace that mounted it.
        while !Command::new("ip")
            .args(["link", "show", dev])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "tun2proxy made no {dev}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Setup {
            app: App::Tun(Inner::with_tun(dev)),
            procs: vec![t2p, provider],
        }
    }
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.spawn()
        .unwrap_or_else(|e| panic!("{:?}: {e}", cmd.get_program()))
}

/// Waits for the line a tool prints once ready (a dead tool ends the read: a panic naming it).
fn ready_line(child: &mut Child, prefix: &str) -> String {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with(prefix) {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "the tool exited before printing {prefix:?}");
    }
    line
}

/// The inner namespace: held by a `sleep` started under `unshare -n`; killed on drop.
struct Inner(Child);

impl Inner {
    /// A new namespace, with the TUN device `dev` (now in ours) moved in as its default route.
    fn with_tun(dev: &str) -> Inner {
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let inner = Inner(
            Command::new("unshare")
                .args(["-n", "--", "sleep", "3600"])
                .spawn()
                .unwrap(),
        );
        let ns = format!("/proc/{}/ns/net", inner.0.id());
        let t0 = Instant::now();
        // `unshare` enters the namespace before it runs `sleep`.
        while std::fs::read_link(&ns).ok().as_ref() == Some(&ours) {
            assert!(t0.elapsed() < Duration::from_secs(5), "inner namespace");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = inner.0.id().to_string();
        sh(&["ip", "link", "set", dev, "netns", &pid]);
        let mtu = MTU.to_string();
        for cmd in [
            &["ip", "link", "set", "lo", "up"][..],
            &["ip", "addr", "add", "10.0.0.2/24", "dev", dev],
            &["ip", "link", "set", dev, "mtu", &mtu, "up"],
            &["ip", "route", "add", "default", "dev", dev],
        ] {
            let mut all = vec!["nsenter", "-t", &pid, "-n", "--"];
            all.extend_from_slice(cmd);
            sh(&all);
        }
        inner
    }

    /// Runs `f` on a thread inside the namespace (sockets it opens stay there).
    fn thread<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/proc/{}/ns/net", self.0.id());
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with an fd we opened.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("inner namespace thread")
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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

/// The TCP echo origin on ORIGIN, on a dummy interface when the kernel has the module, else
/// on this namespace's loopback (either way the address exists only here). Returns which.
fn start_origin() -> &'static str {
    sh(&["ip", "link", "set", "lo", "up"]);
    let on = if Command::new("ip")
        .args(["link", "add", "xhorigin", "type", "dummy"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        sh(&["ip", "link", "set", "xhorigin", "up"]);
        "xhorigin"
    } else {
        "lo"
    };
    sh(&["ip", "addr", "add", &format!("{ORIGIN}/32"), "dev", on]);
    xray::serve_tcp_echo(TcpListener::bind((ORIGIN, ECHO_PORT)).unwrap());
    if on == "lo" {
        "loopback (no dummy interface module)"
    } else {
        "a dummy interface"
    }
}

/// Idle flows hold a socket each on both sides of every hop: lift the soft limit to the hard
/// one (the clients inherit it; Go raises its own).
fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Incompressible test data (xorshift).
fn pattern(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let mut x = 0x9e3779b97f4a7c15u64;
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    data
}

/// utime+stime of the processes, summed, in seconds.
fn cpu_secs(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command name (which may hold spaces): utime is the 12th.
            let f: Vec<u64> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse().ok())
                .collect();
            f.iter().sum::<u64>() as f64 / hz
        })
        .sum()
}

/// VmRSS of the processes, summed, in KiB.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        })
        .sum()
}
