//! Throughput and cost of our client (`xh forward`) against Xray-core's own client, both as
//! separate processes in front of the same Xray-core server, measured in the same run.
//!
//! Run: `bash scripts/bench.sh [MiB] [mode]` (builds `xh` and this example in release, and
//! Xray-core as the test script does). Each client carries one TCP connection that sends MiB
//! up to a loopback echo behind the server while reading the echo back, VLESS inside XHTTP/H3.
//! Reported per client: wall time, MB/s each way, CPU seconds of the client process
//! (utime+stime from /proc), and its peak RSS (VmHWM).

#[path = "../tests/common/xray.rs"]
mod xray;

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

const UUID: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";

fn start_xray(
    bin: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    cfg: serde_json::Value,
) -> xray::Xray {
    xray::start(bin, &dir.join(format!("{name}.json")), &cfg, false)
}

/// (utime+stime seconds, VmHWM KiB) of a process.
fn cost(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, hwm)
}

/// Sends `size` bytes through `port` while reading the echo; returns seconds.
fn run(port: u16, size: usize) -> f64 {
    let mut data = vec![0u8; size];
    let mut x = 0x9e3779b97f4a7c15u64;
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let want = Sha256::digest(&data);
    let start = Instant::now();
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for c in data.chunks(256 * 1024) {
            w.write_all(c).unwrap();
        }
    });
    let mut r = s;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < size {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "EOF after {got}");
        h.update(&buf[..n]);
        got += n;
    }
    writer.join().unwrap();
    assert_eq!(h.finalize(), want, "echo differs");
    start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let mode = args.get(2).cloned().unwrap_or_else(|| "stream-up".into());
    let xray = PathBuf::from(std::env::var("XRAY_BIN").expect("XRAY_BIN"));
    let xh = PathBuf::from(std::env::var("XH_BIN").expect("XH_BIN"));
    let dir = std::env::temp_dir().join(format!("xh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("c.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("k.pem"), ck.signing_key.serialize_pem()).unwrap();
    let pin = hex::encode(Sha256::digest(ck.cert.der()));
    let echo = xray::spawn_tcp_echo();
    let sp = xray::free_udp_port();
    let _server = start_xray(
        &xray,
        &dir,
        "server",
        serde_json::json!({
        "log": {"loglevel": "warning"},
        "inbounds": [{"listen": "127.0.0.1", "port": sp, "protocol": "vless",
            "settings": {"clients": [{"id": UUID}], "decryption": "none"},
            "streamSettings": {"network": "xhttp", "security": "tls",
                "tlsSettings": {"alpn": ["h3"], "certificates": [{"certificateFile": dir.join("c.pem"), "keyFile": dir.join("k.pem")}]},
                "xhttpSettings": {"path": "/xh/"}}}],
        "outbounds": [{"protocol": "freedom"}]}),
    );
    let outbound = serde_json::json!({"protocol": "vless",
        "settings": {"vnext": [{"address": "127.0.0.1", "port": sp, "users": [{"id": UUID, "encryption": "none"}]}]},
        "streamSettings": {"network": "xhttp", "security": "tls",
            "tlsSettings": {"serverName": "localhost", "alpn": ["h3"], "pinnedPeerCertSha256": pin},
            "xhttpSettings": {"path": "/xh/", "mode": mode}}});

    // Xray-core's client: dokodemo-door (TCP) → VLESS over XHTTP/H3.
    let xp = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let xc = start_xray(
        &xray,
        &dir,
        "client",
        serde_json::json!({
        "log": {"loglevel": "warning"},
        "inbounds": [{"listen": "127.0.0.1", "port": xp, "protocol": "dokodemo-door",
            "settings": {"address": "127.0.0.1", "port": echo, "network": "tcp"}}],
        "outbounds": [outbound.clone()]}),
    );
    // Ours: `xh forward` with the same outbound JSON.
    let mut ours = Command::new(&xh)
        .args([
            "forward",
            "--config",
            &outbound.to_string(),
            "--listen",
            "127.0.0.1:0",
            "--to",
        ])
        .arg(format!("127.0.0.1:{echo}"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("xh forward");
    let mut line = String::new();
    BufReader::new(ours.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let op: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    // The guard kills it like the Xray processes.
    let ours = xray::Xray(ours);

    let size = mib << 20;
    println!("# {mib} MiB each way, mode {mode}, VLESS over XHTTP/H3 to Xray-core on loopback");
    let mut rows = Vec::new();
    for (name, port, pid) in [
        ("xray-core client", xp, xc.0.id()),
        ("xhttp-mobile (xh forward)", op, ours.0.id()),
    ] {
        run(port, 1 << 20); // warm up: connection set up, windows grown
        let (c0, _) = cost(pid);
        let secs = run(port, size);
        let (c1, hwm) = cost(pid);
        let mbs = size as f64 / 1e6 / secs;
        println!(
            "{name:28} {secs:7.2} s  {mbs:7.1} MB/s each way  cpu {:6.2} s  peak RSS {:6.1} MiB",
            c1 - c0,
            hwm as f64 / 1024.0
        );
        rows.push((secs, c1 - c0, hwm as f64));
    }
    let (x, o) = (rows[0], rows[1]);
    println!(
        "ratio ours/xray: time {:.2}x, cpu {:.2}x, peak RSS {:.2}x",
        o.0 / x.0,
        o.1 / x.1,
        o.2 / x.2
    );
}
