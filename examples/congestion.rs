//! Upload throughput of quinn's Cubic against quinn's BBR through the lossy relay of the
//! tests (tests/common/netsim.rs), to decide which congestion controller the client uses
//! (Xray's client runs Hysteria's BBR; see src/transport/surface.rs).
//!
//! Run: `cargo run --release --example congestion [MiB=8] [runs=3]`. Each run opens one
//! HTTP/3 connection through the relay to the in-repo server (target: a hashing sink) and
//! streams MiB as a stream-one body; the time is from the first byte to the server's report
//! that the whole body arrived with the right SHA-256. Our congestion controller governs
//! this direction (the server only acknowledges). Runs alternate between the two
//! controllers with the same relay seeds, so both see the same drop pattern.

// The relay serves the tests too; this example uses only part of it.
#[allow(dead_code)]
#[path = "../tests/common/netsim.rs"]
mod netsim;

use netsim::{Impairment, Relay};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xhttp_mobile::config::{TlsSettings, XhttpSettings};
use xhttp_mobile::transport::{Congestion, H3Conn, QuicOptions, SocketHooks, tls};
use xhttp_mobile::xhttp::request::{RequestKind, Shaper};
use xhttp_testserver::{Event, ServerOptions, Target, TestServer};

/// One upload of `data` through `relay`; seconds until the server has it all.
async fn upload(server: &TestServer, relay: &Relay, cc: Congestion, data: &[u8]) -> f64 {
    let tls = TlsSettings {
        server_name: "localhost".into(),
        pinned_sha256: vec![Sha256::digest(server.cert_der()).into()],
        disable_system_root: true,
        ..Default::default()
    };
    let tls = Arc::new(tls::client_config(&tls).expect("tls"));
    let opts = QuicOptions {
        congestion: cc,
        ..QuicOptions::default()
    };
    let conn = H3Conn::connect(
        relay.addr(),
        "localhost",
        tls,
        &opts,
        Arc::new(SocketHooks::default()),
    )
    .await
    .expect("connect through the relay");
    let settings = XhttpSettings::from_json("x", &serde_json::json!({"path": "/cc"})).unwrap();
    let shaper = Shaper::new(&settings, "localhost");
    let req = shaper
        .build(RequestKind::StreamOne, None, None, &mut rand::rng())
        .unwrap();
    let want: [u8; 32] = Sha256::digest(data).into();
    let before = server.events().len();
    let started = Instant::now();
    let mut stream = conn.send_request(req).await.expect("request");
    for piece in data.chunks(64 * 1024) {
        stream
            .send_data(bytes::Bytes::copy_from_slice(piece))
            .await
            .expect("send");
    }
    stream.finish().await.expect("finish");
    let done = server
        .wait_for(
            |e| matches!(e, Event::SinkDone { sha256, .. } if *sha256 == want),
            Duration::from_secs(600),
        )
        .await;
    let secs = started.elapsed().as_secs_f64();
    assert!(done.is_some(), "the server never got the whole body");
    assert!(server.events().len() > before);
    conn.close();
    secs
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(8);
    let runs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(TestServer::start(ServerOptions {
            target: Target::Sink,
            settings: XhttpSettings::from_json("x", &serde_json::json!({"path": "/cc"})).unwrap(),
            ..Default::default()
        }))
        .expect("server");
    let data: Vec<u8> = (0..mib << 20).map(|i| (i * 31 % 251) as u8).collect();
    let paths = [
        ("clean, 10 ms one way", 0.0, 10),
        ("1% loss, 10 ms", 0.01, 10),
        ("3% loss, 20 ms", 0.03, 20),
        ("5% loss, 40 ms", 0.05, 40),
    ];
    println!("upload of {mib} MiB, {runs} runs per path and controller (seconds; MB/s)");
    for (name, loss, delay) in paths {
        let mut times = [Vec::new(), Vec::new()];
        for seed in 0..runs {
            for (i, cc) in [Congestion::Cubic, Congestion::Bbr].into_iter().enumerate() {
                let relay = Relay::start(
                    server.addr(),
                    Impairment {
                        loss,
                        delay: Duration::from_millis(delay),
                        jitter: Duration::from_millis(delay / 5),
                        seed: 100 + seed,
                        ..Default::default()
                    },
                );
                times[i].push(rt.block_on(upload(&server, &relay, cc, &data)));
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (c, b) = (median(&mut times[0]), median(&mut times[1]));
        let mbs = |s: f64| (mib << 20) as f64 / s / 1e6;
        println!(
            "{name:>22}: cubic {c:6.2} s ({:5.1} MB/s)  bbr {b:6.2} s ({:5.1} MB/s)  bbr/cubic time {:.2}  all: cubic {:?} bbr {:?}",
            mbs(c),
            mbs(b),
            b / c,
            times[0],
            times[1]
        );
    }
}
