//! What `memoryLimits` costs in throughput: one stream-up tunnel echoing MiB through the
//! in-repo server behind a user-space relay that adds a fixed delay (a phone's round trip),
//! once per setting, each in a fresh child process so its peak RSS is its own.
//!
//! Run: `cargo run --release --example memory_limits [MiB=32] [one-way delay ms=20]`.
//! Reported per setting: MB/s of the echo (each way), and the peak RSS (VmHWM) of the
//! process, which holds the client, the server and the relay (so it is an upper bound of the
//! client's share). Not part of CI; the numbers go to README.md ("Memory limits").

// The lossy relay of the integration tests, of which this uses only the delay.
#[path = "../tests/common/netsim.rs"]
#[allow(dead_code)]
mod netsim;

use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use xhttp_mobile::{Client, Config};
use xhttp_testserver::{ServerOptions, Target, TestServer};

/// (name, memoryLimits JSON).
const SETTINGS: &[(&str, &str)] = &[
    ("default", "{}"),
    (
        "extension",
        r#"{"streamReceiveWindow": 1048576, "connectionReceiveWindow": 2097152,
            "sendWindow": 1048576, "downloadQueue": 131072, "uploadQueue": 131072}"#,
    ),
    (
        "tight",
        r#"{"streamReceiveWindow": 262144, "connectionReceiveWindow": 524288,
            "sendWindow": 262144, "downloadQueue": 65536, "uploadQueue": 65536}"#,
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--one") {
        let (name, mib, delay) = (&args[2], &args[3], &args[4]);
        let limits = SETTINGS.iter().find(|(n, _)| n == name).expect("setting").1;
        one(name, limits, mib.parse().unwrap(), delay.parse().unwrap());
        return;
    }
    let mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(32);
    let delay: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    println!(
        "stream-up echo of {mib} MiB, {delay} ms each way ({} ms RTT)",
        2 * delay
    );
    let me = std::env::current_exe().unwrap();
    for (name, _) in SETTINGS {
        let ok = std::process::Command::new(&me)
            .args(["--one", name, &mib.to_string(), &delay.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "{name} failed");
    }
}

fn one(name: &str, limits: &str, mib: usize, delay_ms: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(async {
            let mut o = ServerOptions::default();
            o.settings.path = "/xh".into();
            o.target = Target::Echo;
            TestServer::start(o).await
        })
        .expect("server");
    let relay = netsim::Relay::start(
        server.addr(),
        netsim::Impairment {
            delay: Duration::from_millis(delay_ms),
            ..Default::default()
        },
    );
    let json = format!(
        r#"{{"address": "127.0.0.1", "port": {},
            "tlsSettings": {{"serverName": "localhost", "pinnedPeerCertSha256": "{}",
                             "disableSystemRoot": true}},
            "xhttpSettings": {{"path": "/xh", "mode": "stream-up"}},
            "memoryLimits": {limits}}}"#,
        relay.addr().port(),
        server.cert_sha256_hex()
    );
    let client = Client::new(Config::from_json_str(&json).expect("config")).expect("client");
    let size = mib << 20;
    let t = Some(Duration::from_secs(120));
    let start = Instant::now();
    let tunnel = client.open(t).expect("open");
    let writer = {
        let tunnel = tunnel.clone();
        std::thread::spawn(move || {
            let mut h = Sha256::new();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let mut buf = vec![0u8; 256 * 1024];
            let mut left = size;
            while left > 0 {
                let n = left.min(buf.len());
                for b in &mut buf[..n] {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                h.update(&buf[..n]);
                tunnel.write(&buf[..n], t).expect("write");
                left -= n;
            }
            tunnel.shutdown_write().expect("shutdown_write");
            h.finalize()
        })
    };
    let mut h = Sha256::new();
    let mut got = 0;
    let mut buf = vec![0u8; 256 * 1024];
    while got < size {
        let n = tunnel.read(&mut buf, t).expect("read");
        assert!(n > 0, "download ended after {got} bytes");
        h.update(&buf[..n]);
        got += n;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(writer.join().unwrap(), h.finalize(), "SHA-256 of the echo");
    tunnel.close();
    client.close();
    let hwm = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    println!(
        "{name:<10} {:6.1} MB/s each way, peak RSS {:>6} KiB  memoryLimits {}",
        size as f64 / 1e6 / secs,
        hwm,
        limits.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    server.shutdown();
    drop(relay);
}
