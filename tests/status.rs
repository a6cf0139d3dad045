//! Non-200 answers fail the tunnel with an error naming the status and the request.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;
use xhttp_mobile::Error;
use xhttp_testserver::{Fault, RequestKind};

/// Reads until the tunnel fails; returns the error.
fn failure_of(t: &xhttp_mobile::Tunnel) -> Error {
    let mut buf = [0u8; 1024];
    loop {
        match t.read(&mut buf, Some(Duration::from_secs(10))) {
            Ok(0) => panic!("download ended without an error"),
            Ok(_) => continue,
            Err(e) => return e,
        }
    }
}

/// `role` may list alternatives separated by `|` (e.g. both requests of stream-up can be
/// the first to be refused).
fn expect_status(err: Error, status: u16, role: &str) {
    let text = err.to_string();
    match err {
        Error::Status { status: s, request } => {
            assert_eq!(s, status, "{text}");
            assert!(
                role.split('|').any(|r| request.role.starts_with(r)),
                "{text}"
            );
            assert!(text.contains(&status.to_string()), "{text}");
        }
        other => panic!("expected status {status}, got {other:?}"),
    }
}

#[test]
fn wrong_path_is_404_on_the_download() {
    let e = env(|_| {});
    let t = e
        .client(json!({"path": "/elsewhere", "mode": "packet-up"}))
        .open(T)
        .unwrap();
    expect_status(failure_of(&t), 404, "stream-down");
    let t = e
        .client(json!({"path": "/elsewhere", "mode": "stream-one"}))
        .open(T)
        .unwrap();
    expect_status(failure_of(&t), 404, "stream-one");
}

#[test]
fn wrong_host_is_404() {
    let e = env(|o| o.settings.host = "right.example".into());
    let t = e
        .client(json!({"path": "/xh", "host": "wrong.example", "mode": "stream-up"}))
        .open(T)
        .unwrap();
    expect_status(failure_of(&t), 404, "stream-down|stream-up");
}

#[test]
fn padding_mismatch_is_400() {
    let e = env(|_| {});
    let t = e
        .client(json!({"path": "/xh", "mode": "stream-one", "xPaddingBytes": "10-20"}))
        .open(T)
        .unwrap();
    expect_status(failure_of(&t), 400, "stream-one");
}

#[test]
fn mode_refused_by_server_is_400() {
    let e = env(|o| o.settings.mode = xhttp_mobile::config::Mode::PacketUp);
    let t = e
        .client(json!({"path": "/xh", "mode": "stream-up"}))
        .open(T)
        .unwrap();
    expect_status(failure_of(&t), 400, "stream-down|stream-up");
}

#[test]
fn second_stream_up_is_409() {
    let e = env(|_| {});
    e.server.set_fault(Some(Fault::Status {
        status: 409,
        on: RequestKind::StreamUp,
    }));
    let t = e
        .client(json!({"path": "/xh", "mode": "stream-up"}))
        .open(T)
        .unwrap();
    expect_status(failure_of(&t), 409, "stream-up");
}

#[test]
fn oversized_post_is_413() {
    let e = env(|o| {
        o.settings.sc_max_each_post_bytes = xhttp_mobile::xhttp::range::Range::fixed(100_000)
    });
    let t = e
        .client(json!({"path": "/xh", "mode": "packet-up", "scMaxEachPostBytes": 400_000}))
        .open(T)
        .unwrap();
    // Writes may succeed (they are queued) or already see the failure.
    let _ = t.write(&pattern(1, 300_000), T);
    expect_status(failure_of(&t), 413, "packet-up #");
    // Later writes report the same failure.
    let err = t.write(b"more", T).unwrap_err();
    expect_status(err, 413, "packet-up #");
}

#[test]
fn server_error_is_500_on_a_post() {
    let e = env(|_| {});
    e.server.set_fault(Some(Fault::Status {
        status: 500,
        on: RequestKind::PacketUp,
    }));
    let t = e
        .client(json!({"path": "/xh", "mode": "packet-up"}))
        .open(T)
        .unwrap();
    t.write(b"hello", T).unwrap();
    expect_status(failure_of(&t), 500, "packet-up #0");
}

#[test]
fn connect_failure_names_the_address() {
    // A UDP port with nothing behind it: the QUIC handshake cannot complete.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    drop(sock);
    let cfg = xhttp_mobile::Config::from_json(&json!({"address": "127.0.0.1", "port": port,
        "tlsSettings": {"pinnedPeerCertSha256": "00".repeat(32), "disableSystemRoot": true}}))
    .unwrap();
    let c = xhttp_mobile::Client::new(cfg).unwrap();
    match c.open(Some(Duration::from_secs(2))) {
        Err(Error::Connect { addr, .. }) => assert!(addr.ends_with(&port.to_string())),
        Err(Error::Timeout(_)) => {}
        other => panic!("expected a connect error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn wrong_pin_fails_the_handshake() {
    let e = env(|_| {});
    let mut v = e.config_json(json!({"path": "/xh"}));
    v["tlsSettings"]["pinnedPeerCertSha256"] = json!("11".repeat(32));
    let c = xhttp_mobile::Client::new(xhttp_mobile::Config::from_json(&v).unwrap()).unwrap();
    match c.open(T) {
        Err(Error::Connect { detail, .. }) => assert!(
            detail.contains("pinnedPeerCertSha256") || detail.contains("certificate"),
            "{detail}"
        ),
        other => panic!("expected a TLS failure, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn data_already_downloaded_is_read_before_a_later_failure() {
    // POST #0 is echoed into the download; POST #1 is refused. The echo of #0 reached the
    // client before the failure: more than the tunnel's download queue holds, so part of
    // it still sits in the stream's receive buffer. The reader gets all of it, then the
    // 500: never EOF, never a dropped echo.
    let e = env(|_| {});
    let t = e
        .client(json!({"path": "/xh", "mode": "packet-up"}))
        .open(T)
        .unwrap();
    let first = pattern(7, 600_000);
    t.write(&first, T).unwrap();
    let posted = |ev: &xhttp_testserver::Event| {
        matches!(
            ev,
            xhttp_testserver::Event::Request {
                kind: Some(RequestKind::PacketUp),
                status: 200,
                ..
            }
        )
    };
    e.wait_for(posted, Duration::from_secs(5))
        .expect("POST #0 answered");
    // Let the echo travel back into the client's download queue.
    std::thread::sleep(Duration::from_millis(300));
    e.server.set_fault(Some(Fault::Status {
        status: 500,
        on: RequestKind::PacketUp,
    }));
    t.write(b"refused", T).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !t.is_closed() {
        assert!(
            std::time::Instant::now() < deadline,
            "POST #1's 500 never failed the tunnel"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let err = loop {
        match t.read(&mut buf, Some(Duration::from_secs(10))) {
            Ok(0) => panic!("EOF instead of the failure after {} bytes", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(
        sha(&got),
        sha(&first),
        "got {} of {} bytes",
        got.len(),
        first.len()
    );
    expect_status(err, 500, "packet-up #");
}
