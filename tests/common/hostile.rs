//! The misbehaving HTTP/3 server (`tools/hostile`, Go): built with `go build` into a cache
//! directory named by the hash of its sources (so repeated runs only start it), run once per
//! test, killed on drop (and it exits when its stdin closes).
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;

/// The server's sources, in the order they are hashed.
const SOURCES: [&str; 3] = ["go.mod", "go.sum", "main.go"];

/// `HOSTILE_BIN`, else the cached build for the current sources (built now if missing).
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("HOSTILE_BIN") {
            return p.into();
        }
        build()
    })
    .clone()
}

fn build() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/hostile");
    let mut h = Sha256::new();
    for f in SOURCES {
        let text = std::fs::read(src.join(f)).unwrap_or_else(|e| panic!("tools/hostile/{f}: {e}"));
        h.update(f.as_bytes());
        h.update((text.len() as u64).to_le_bytes());
        h.update(&text);
    }
    let hash = hex::encode(&h.finalize()[..8]);
    let cache = std::env::var_os("XH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME or XH_CACHE"))
                .join(".cache/xhttp-mobile")
        });
    let dir = cache.join("hostile").join(hash);
    let bin = dir.join("hostile");
    if bin.exists() {
        return bin;
    }
    std::fs::create_dir_all(&dir).unwrap();
    // Built beside its final name and renamed: test binaries running at once never see a
    // half-written file.
    let tmp = dir.join(format!("hostile.{}.tmp", std::process::id()));
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&tmp)
        .arg(".")
        .current_dir(&src)
        // The module download (quic-go, from the Go module proxy) is part of the build.
        .env("GOFLAGS", "-mod=mod")
        .output()
        .unwrap_or_else(|e| panic!("running `go build` for tools/hostile (Go is needed): {e}"));
    assert!(
        out.status.success(),
        "go build of tools/hostile failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &bin).unwrap();
    bin
}

/// One running server.
pub struct Hostile {
    child: Child,
    // Held open: the server exits when it closes.
    _stdin: ChildStdin,
    pub port: u16,
    /// Hex SHA-256 of its certificate.
    pub pin: String,
}

impl Hostile {
    /// Starts a server with extra command-line `args` and waits for its ready line.
    pub fn start(args: &[&str]) -> Hostile {
        let mut child = Command::new(bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting tools/hostile");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("hostile server's ready line");
        let ready: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("hostile server's ready line {line:?}: {e}"));
        Hostile {
            child,
            _stdin: stdin,
            port: ready["port"].as_u64().expect("port") as u16,
            pin: ready["pin"].as_str().expect("pin").to_string(),
        }
    }

    /// Client JSON for this server, pinned to its certificate, with `xhttp` as its
    /// `xhttpSettings` (its `path` picks the server's behaviour).
    pub fn config_json(&self, xhttp: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "address": "127.0.0.1",
            "port": self.port,
            "tlsSettings": {
                "serverName": "localhost",
                "pinnedPeerCertSha256": self.pin,
                "disableSystemRoot": true
            },
            "xhttpSettings": xhttp
        })
    }

    /// A client whose tunnels go to `path` in `mode`.
    pub fn client(&self, path: &str, mode: &str) -> xhttp_mobile::Client {
        let j = self.config_json(serde_json::json!({"path": path, "mode": mode}));
        xhttp_mobile::Client::new(xhttp_mobile::Config::from_json(&j).expect("valid config"))
            .expect("client")
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
