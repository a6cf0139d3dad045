//! Running Xray-core for interop tests and benchmarks: a process guard, start-and-wait, and
//! the loopback helpers both need. Shared by tests/interop.rs and examples/bench.rs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free UDP port on loopback (bound and released; Xray binds it right after).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP echo server on loopback (a thread per connection; half-closes after echoing).
pub fn spawn_tcp_echo() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    serve_tcp_echo(l);
    port
}

/// Echoes every connection `l` accepts (a thread each; half-closes after echoing).
pub fn serve_tcp_echo(l: TcpListener) {
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

/// One running Xray process; killed on drop.
pub struct Xray(pub Child);

impl Drop for Xray {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `cfg` to `cfg_path`, starts Xray on it and waits for its "started" line (printed
/// once every inbound listens). With `echo`, Xray's output is copied to stderr.
pub fn start(bin: &Path, cfg_path: &Path, cfg: &serde_json::Value, echo: bool) -> Xray {
    std::fs::write(cfg_path, serde_json::to_vec_pretty(cfg).unwrap()).unwrap();
    let mut child = Command::new(bin)
        .args(["run", "-c"])
        .arg(cfg_path)
        .stdout(Stdio::piped())
        .stderr(if echo {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("start xray");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("started") {
                let _ = tx.send(());
            }
            if echo {
                eprintln!("xray: {line}");
            }
        }
    });
    let xray = Xray(child);
    rx.recv_timeout(Duration::from_secs(20))
        .expect("xray did not start (its config or output tells why)");
    xray
}
