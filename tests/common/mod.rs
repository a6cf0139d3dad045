//! Shared test plumbing: the in-repo server on its own runtime, clients for it, and
//! SHA-256-checked transfers.
#![allow(dead_code)]

pub mod hostile;
pub mod netsim;
pub mod socks;

pub mod xray;

use sha2::{Digest, Sha256};
use std::time::Duration;
use xhttp_mobile::{Client, Config, Tunnel};
use xhttp_testserver::{Event, ServerOptions, TestServer};

pub const T: Option<Duration> = Some(Duration::from_secs(30));

/// The `xh` binary (package `xh`, a workspace member, so cargo does not hand its path to
/// this package's tests): `XH_BIN`, else the one beside this test's build directory
/// (`cargo build -p xh` or `cargo test --workspace` puts it there).
pub fn xh_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("XH_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<test> → target/<profile>/xh
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("xh"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p xh` or set XH_BIN",
        bin.display()
    );
    bin
}

/// A test server running on a runtime of its own (the client uses the library's).
pub struct Env {
    pub server: TestServer,
    pub rt: tokio::runtime::Runtime,
}

pub fn env(configure: impl FnOnce(&mut ServerOptions)) -> Env {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut o = ServerOptions::default();
    o.settings.path = "/xh".into();
    configure(&mut o);
    let server = rt
        .block_on(TestServer::start(o))
        .expect("test server starts");
    Env { server, rt }
}

impl Env {
    /// Client JSON for this server with `xhttp` as its `xhttpSettings`.
    pub fn config_json(&self, xhttp: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "address": "127.0.0.1",
            "port": self.server.addr().port(),
            "tlsSettings": {
                "serverName": "localhost",
                "pinnedPeerCertSha256": self.server.cert_sha256_hex(),
                "disableSystemRoot": true
            },
            "xhttpSettings": xhttp
        })
    }

    pub fn client(&self, xhttp: serde_json::Value) -> Client {
        let cfg = Config::from_json(&self.config_json(xhttp)).expect("valid client config");
        Client::new(cfg).expect("client")
    }

    /// A client that dials `via` (a relay in front of this server) instead of the server.
    pub fn client_via(&self, via: std::net::SocketAddr, xhttp: serde_json::Value) -> Client {
        let mut j = self.config_json(xhttp);
        j["address"] = via.ip().to_string().into();
        j["port"] = via.port().into();
        Client::new(Config::from_json(&j).expect("valid client config")).expect("client")
    }

    /// A client whose tunnels carry VLESS for user `id`.
    pub fn vless_client(&self, xhttp: serde_json::Value, id: &str) -> Client {
        let mut j = self.config_json(xhttp);
        j["vlessId"] = id.into();
        Client::new(Config::from_json(&j).expect("valid client config")).expect("client")
    }

    pub fn wait_for(&self, pred: impl Fn(&Event) -> bool, timeout: Duration) -> Option<Event> {
        self.rt.block_on(self.server.wait_for(pred, timeout))
    }
}

/// Deterministic test data.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Writes `bursts` separate pieces of `size` bytes, reading each one's echo back before
/// writing the next (so packet-up sends at least one POST per burst); checks SHA-256.
pub fn echo_bursts(t: &Tunnel, bursts: u64, size: usize, seed: u64) {
    let mut sent = Vec::new();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    for i in 0..bursts {
        let d = pattern(seed + i, size);
        t.write(&d, T).expect("write");
        sent.extend_from_slice(&d);
        while got.len() < sent.len() {
            let n = t.read(&mut buf, T).expect("read");
            assert!(n > 0, "download ended after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert_eq!(sha(&got), sha(&sent), "echo of {bursts} bursts differs");
}

/// Writes `size` bytes on one thread while reading the echo on this one; asserts the
/// SHA-256 of what came back equals what went up. Stream modes half-close after writing
/// and expect the download to end with EOF right after the echo.
pub fn echo_roundtrip(t: &Tunnel, size: usize, half_close: bool) {
    let data = pattern(size as u64, size);
    let want = sha(&data);
    let w = {
        let t = t.clone();
        std::thread::spawn(move || {
            for c in data.chunks(100_000) {
                assert_eq!(t.write(c, T).expect("write"), c.len());
            }
            if half_close {
                t.shutdown_write().expect("shutdown_write");
            }
        })
    };
    let mut got = Vec::with_capacity(size);
    let mut buf = vec![0u8; 65536];
    while got.len() < size {
        let n = t.read(&mut buf, T).expect("read");
        assert!(n > 0, "download ended after {} of {size} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    w.join().expect("writer thread");
    assert_eq!(got.len(), size);
    assert_eq!(
        sha(&got),
        want,
        "SHA-256 of the echo differs from what was sent"
    );
    if half_close {
        assert_eq!(
            t.read(&mut buf, T).expect("read at end"),
            0,
            "expected EOF after the echo"
        );
    }
}
