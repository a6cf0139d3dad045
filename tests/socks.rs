//! The SOCKS5 inbound and the forwarder end to end: app socket → SOCKS → tunnel over real
//! QUIC → the test server's VLESS target (or echo for raw tunnels) → loopback servers.

mod common;
use common::socks::*;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use xhttp_mobile::{Client, Inbound};
use xhttp_testserver::{Event, Target};

const ID: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";
const SIZE: usize = 8 * 1024 * 1024;

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn vless_env() -> Env {
    let id = xhttp_mobile::proxy::vless::user_id("id", ID).unwrap();
    env(|o| o.target = Target::Vless { id })
}

fn vless_socks(e: &Env, mode: &str) -> (Client, Inbound) {
    let c = e.vless_client(json!({"path": "/xh", "mode": mode}), ID);
    let s = c.start_socks(local(), None).expect("SOCKS inbound starts");
    (c, s)
}

/// Polls until `c` has no open tunnel (flows close both sides when done).
fn wait_tunnels_closed(c: &Client) {
    let until = Instant::now() + Duration::from_secs(10);
    while c.stats().open_tunnels > 0 {
        assert!(
            Instant::now() < until,
            "tunnels still open: {:?}",
            c.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Received {
    bytes: usize,
    sha: [u8; 32],
    saw_eof: bool,
}

/// A destination that, on its one connection, sends `down` while hashing what arrives up to
/// `up_len` bytes; with `expect_eof` it then waits for the app's half-close. Then it closes.
fn exchange_server(
    down: Vec<u8>,
    up_len: usize,
    expect_eof: bool,
) -> (SocketAddr, JoinHandle<Received>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || w.write_all(&down).expect("destination write"));
        let mut got = Vec::with_capacity(up_len);
        let mut buf = vec![0u8; 65536];
        while got.len() < up_len {
            let n = s.read(&mut buf).expect("destination read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let saw_eof = expect_eof && matches!(s.read(&mut buf), Ok(0));
        writer.join().unwrap();
        Received {
            bytes: got.len(),
            sha: sha(&got),
            saw_eof,
        }
    });
    (addr, h)
}

/// 8 MiB each way through one CONNECT, independent data each way, SHA-256 checked on both
/// ends. Stream modes also carry the app's half-close to the destination.
fn connect_8_mib(mode: &str) {
    let e = vless_env();
    let (c, socks) = vless_socks(&e, mode);
    let up = pattern(1, SIZE);
    let down = pattern(2, SIZE);
    let half_close_arrives = mode != "packet-up";
    let (dest, server) = exchange_server(down.clone(), SIZE, half_close_arrives);

    let s = connect(socks.local_addr(), dest, None);
    let mut w = s.try_clone().unwrap();
    let up_sha = sha(&up);
    let writer = std::thread::spawn(move || {
        w.write_all(&up).expect("app write");
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::with_capacity(SIZE);
    (&s).read_to_end(&mut got).expect("app read to EOF");
    writer.join().unwrap();
    assert_eq!(got.len(), SIZE, "bytes down");
    assert_eq!(sha(&got), sha(&down), "SHA-256 of the download");
    let r = server.join().unwrap();
    assert_eq!(r.bytes, SIZE, "bytes up");
    assert_eq!(r.sha, up_sha, "SHA-256 of the upload");
    assert_eq!(
        r.saw_eof, half_close_arrives,
        "half-close reached the destination"
    );
    drop(s);
    wait_tunnels_closed(&c);
}

#[test]
fn connect_packet_up_8_mib_each_way() {
    connect_8_mib("packet-up");
}

#[test]
fn connect_stream_up_8_mib_each_way() {
    connect_8_mib("stream-up");
}

#[test]
fn connect_stream_one_8_mib_each_way() {
    connect_8_mib("stream-one");
}

/// Sends one datagram through the association until its echo comes back (loopback UDP
/// rarely drops, but a lost datagram must not fail the test).
fn udp_roundtrip(app: &UdpSocket, relay: SocketAddr, dest: SocketAddr, payload: &[u8]) {
    app.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = vec![0u8; 65536];
    for _ in 0..5 {
        app.send_to(&udp_datagram(dest, payload), relay).unwrap();
        if let Ok((n, from)) = app.recv_from(&mut buf) {
            assert_eq!(from, relay, "reply comes from the relay address");
            let (src, data) = parse_udp_reply(&buf[..n]);
            assert_eq!(src, dest, "reply names the destination");
            assert_eq!(data, payload, "datagram of {} bytes echoed", payload.len());
            return;
        }
    }
    panic!("no echo for a {}-byte datagram to {dest}", payload.len());
}

#[test]
fn udp_associate_relays_datagrams_to_several_destinations() {
    let e = vless_env();
    let (c, socks) = vless_socks(&e, "stream-up");
    let (echo_a, echo_b) = (udp_echo(), udp_echo());

    let (ctrl, relay) = udp_associate(socks.local_addr());
    assert_eq!(
        relay.ip(),
        socks.local_addr().ip(),
        "relay on the listener's IP"
    );

    let app = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns_sized = pattern(60, 60);
    let large = pattern(1400, 1400);
    udp_roundtrip(&app, relay, echo_a, &dns_sized);
    udp_roundtrip(&app, relay, echo_a, &large);
    udp_roundtrip(&app, relay, echo_b, &dns_sized);
    assert_eq!(
        c.stats().open_tunnels,
        1,
        "one XUDP tunnel carries every destination of the app address"
    );

    // A fragment is dropped, not relayed.
    let mut frag = udp_datagram(echo_a, b"fragment");
    frag[2] = 1;
    app.send_to(&frag, relay).unwrap();
    app.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(app.recv_from(&mut buf).is_err(), "fragment was relayed");

    // Closing the control connection ends the association and its tunnels.
    drop(ctrl);
    wait_tunnels_closed(&c);
}

#[test]
fn username_password_accepted_and_refused() {
    let e = vless_env();
    let c = e.vless_client(json!({"path": "/xh", "mode": "stream-one"}), ID);
    let auth = Some(("alice".to_string(), "s3cret".to_string()));
    let socks = c.start_socks(local(), auth).unwrap();
    let echo = tcp_echo();

    let mut ok = connect(socks.local_addr(), echo, Some(("alice", "s3cret")));
    echo_once(&mut ok, b"authenticated hello");

    let mut bad = tcp(socks.local_addr());
    bad.write_all(&[5, 1, 2]).unwrap();
    let mut m = [0u8; 2];
    bad.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 2]);
    bad.write_all(&auth_message("alice", "wrong")).unwrap();
    bad.read_exact(&mut m).unwrap();
    assert_eq!(m[0], 1);
    assert_ne!(m[1], 0, "wrong password must be refused");
    assert!(is_closed(&mut bad), "closed after a refused password");

    // Offering only "no authentication" to a server that requires a password.
    let mut none = tcp(socks.local_addr());
    none.write_all(&[5, 1, 0]).unwrap();
    none.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0xff], "no acceptable method");
    assert!(is_closed(&mut none));

    echo_once(&mut ok, b"still fine");
}

#[test]
fn garbage_is_refused_while_a_healthy_flow_continues() {
    let e = vless_env();
    let (_c, socks) = vless_socks(&e, "stream-up");
    let proxy = socks.local_addr();
    let echo = tcp_echo();
    let mut healthy = connect(proxy, echo, None);
    echo_once(&mut healthy, b"before");

    // Not SOCKS at all: closed without a reply.
    let mut g = tcp(proxy);
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(
        is_closed(&mut g),
        "an HTTP request on the SOCKS port is closed"
    );

    // SOCKS5 without any method.
    let mut g = tcp(proxy);
    g.write_all(&[5, 0]).unwrap();
    let mut m = [0u8; 2];
    g.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0xff]);
    assert!(is_closed(&mut g));

    // Bad requests get their RFC 1928 reply code, then a close.
    let cases: [(&[u8], u8); 5] = [
        (&[5, 9, 0, 1, 127, 0, 0, 1, 0, 80], 7), // unknown command
        (&[5, 2, 0, 1, 127, 0, 0, 1, 0, 80], 7), // BIND
        (&[5, 1, 0, 2, 1, 2, 3, 4, 0, 80], 8),   // unknown address type
        (&[4, 1, 0, 1, 127, 0, 0, 1, 0, 80], 1), // wrong version
        (&[5, 1, 0, 3, 0, 0, 80], 1),            // empty domain
    ];
    for (req, want) in cases {
        let mut g = tcp(proxy);
        greet(&mut g, None);
        g.write_all(req).unwrap();
        let (code, _) = read_reply(&mut g).expect("error reply");
        assert_eq!(code, want, "reply to {req:?}");
        assert!(is_closed(&mut g), "closed after refusing {req:?}");
    }

    // A client that stops mid-greeting just goes away.
    let mut g = tcp(proxy);
    g.write_all(&[5]).unwrap();
    drop(g);

    echo_once(&mut healthy, b"after the garbage");
    let mut fresh = connect(proxy, echo, None);
    echo_once(&mut fresh, b"new flows still work");
}

#[test]
fn unknown_vless_user_is_closed_by_the_server() {
    let e = vless_env();
    let c = e.vless_client(
        json!({"path": "/xh", "mode": "stream-up"}),
        "00000000-0000-4000-8000-000000000000",
    );
    let socks = c.start_socks(local(), None).unwrap();
    let echo = tcp_echo();
    let mut s = connect(socks.local_addr(), echo, None);
    s.write_all(b"hello?").unwrap();
    assert!(is_closed(&mut s), "server drops an unknown user");
    let ev = e.wait_for(
        |ev| matches!(ev, Event::TargetFailed { reason, .. } if reason.contains("unknown user")),
        Duration::from_secs(10),
    );
    assert!(
        ev.is_some(),
        "server recorded the refusal: {:?}",
        e.server.events()
    );
}

#[test]
fn test_server_relays_to_loopback_only() {
    let e = vless_env();
    let (_c, socks) = vless_socks(&e, "stream-one");
    let mut s = connect(socks.local_addr(), "192.0.2.1:9".parse().unwrap(), None);
    s.write_all(b"anyone there?").unwrap();
    assert!(is_closed(&mut s), "non-loopback destination refused");
    let ev = e.wait_for(
        |ev| matches!(ev, Event::TargetFailed { reason, .. } if reason.contains("loopback only")),
        Duration::from_secs(10),
    );
    assert!(ev.is_some(), "{:?}", e.server.events());
}

#[test]
fn raw_tunnels_through_forward_and_socks() {
    // No vlessId: raw tunnels to the server's echo; SOCKS destinations are ignored.
    let e = env(|_| {});
    let c = e.client(json!({"path": "/xh", "mode": "stream-up"}));

    let fwd = c.start_forward(local(), None).expect("forwarder starts");
    let mut s = TcpStream::connect(fwd.local_addr()).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let data = Arc::new(pattern(9, 1 << 20));
    let mut w = s.try_clone().unwrap();
    let d = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&d).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(sha(&back), sha(&data), "forwarded echo");

    let socks = c.start_socks(local(), None).unwrap();
    let nowhere: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let mut s = connect(socks.local_addr(), nowhere, None);
    echo_once(&mut s, b"raw bytes, destination ignored");

    // UDP needs VLESS framing.
    let mut u = tcp(socks.local_addr());
    greet(&mut u, None);
    u.write_all(&request(3, "0.0.0.0:0".parse().unwrap()))
        .unwrap();
    assert_eq!(
        read_reply(&mut u).unwrap().0,
        7,
        "UDP refused without VLESS"
    );

    // A destination makes no sense for a raw forwarder, and VLESS needs one.
    assert!(c.start_forward(local(), Some("127.0.0.1:1")).is_err());
    let v = e.vless_client(json!({"path": "/xh"}), ID);
    let err = v.start_forward(local(), None).err().expect("refused");
    assert!(err.to_string().contains("vlessId"), "{err}");
}

#[test]
fn stop_closes_the_listener_and_every_flow() {
    let e = vless_env();
    let (c, socks) = vless_socks(&e, "stream-one");
    let echo = tcp_echo();
    let addr = socks.local_addr();
    let mut s = connect(addr, echo, None);
    echo_once(&mut s, b"open");
    socks.stop();
    assert!(is_closed(&mut s), "flow closed by stop");
    assert!(TcpStream::connect(addr).is_err(), "listener closed by stop");
    socks.stop();
    assert!(socks.is_stopped());
    wait_tunnels_closed(&c);
    drop(socks);
}

#[test]
fn closing_the_client_stops_its_servers() {
    let e = vless_env();
    let (c, socks) = vless_socks(&e, "stream-up");
    let addr = socks.local_addr();
    let mut s = connect(addr, tcp_echo(), None);
    echo_once(&mut s, b"open");
    c.close();
    assert!(is_closed(&mut s), "flow closed by the client's close");
    // The close does not wait for the listener: it closes soon after.
    let until = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < until,
            "listener open after the client's close"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(socks.is_stopped());
    socks.stop();
}

/// A one-file HTTP/1.1 server: answers every GET with `body` and closes.
fn http_file_server(body: Arc<Vec<u8>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => return,
                    }
                }
                let ok = head.starts_with(b"GET /file ");
                let (status, body): (&str, &[u8]) = if ok {
                    ("200 OK", &body)
                } else {
                    ("404 Not Found", b"")
                };
                let h = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(h.as_bytes()).and_then(|_| s.write_all(body));
            });
        }
    });
    addr
}

#[test]
fn curl_downloads_a_file_through_socks() {
    if !std::process::Command::new("which")
        .arg("curl")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("curl not installed: skipping");
        return;
    }
    let e = vless_env();
    let c = e.vless_client(json!({"path": "/xh", "mode": "stream-up"}), ID);
    let file = Arc::new(pattern(77, 3 * 1024 * 1024 + 17));
    let web = http_file_server(file.clone());
    let url = format!("http://127.0.0.1:{}/file", web.port());

    let open = c.start_socks(local(), None).unwrap();
    let auth = Some(("u".to_string(), "p w".to_string()));
    let locked = c.start_socks(local(), auth).unwrap();
    for (socks, user) in [(&open, None), (&locked, Some("u:p w"))] {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--fail", "--max-time", "30", "--socks5-hostname"])
            .arg(socks.local_addr().to_string())
            .arg(&url);
        if let Some(u) = user {
            cmd.args(["--proxy-user", u]);
        }
        let out = cmd.output().expect("run curl");
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout.len(), file.len(), "downloaded size");
        assert_eq!(sha(&out.stdout), sha(&file), "downloaded SHA-256");
    }
    wait_tunnels_closed(&c);
}

#[test]
fn unbounded_timeouts_never_overflow() {
    // Duration::MAX for every timeout means "never": the flow works and nothing panics on
    // deadline arithmetic.
    let e = vless_env();
    let c = e.vless_client(json!({"path": "/xh", "mode": "packet-up"}), ID);
    let opts = xhttp_mobile::proxy::socks::SocksOptions {
        handshake_timeout: Duration::MAX,
        open_timeout: Duration::MAX,
        udp_idle_timeout: Duration::MAX,
        ..Default::default()
    };
    let socks = c.start_socks_with(local(), opts).unwrap();
    let (ctrl, relay) = udp_associate(socks.local_addr());
    let app = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo = udp_echo();
    udp_roundtrip(&app, relay, echo, &pattern(9, 512));
    udp_roundtrip(&app, relay, echo, &pattern(10, 1400));
    assert!(!socks.is_stopped(), "the inbound survived");
    drop(ctrl);
    wait_tunnels_closed(&c);
}
