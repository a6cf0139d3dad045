//! Our client against an HTTP/3 server that misbehaves on purpose (`tools/hostile`, Go and
//! quic-go, built by the test from the Go module proxy and cached). Every case: no panic, an
//! error that names what went wrong, an end well within a generous bound, memory bounded
//! where the server sends without end, and the client's other tunnels still working where
//! that makes sense (".once" paths misbehave for the first tunnel only).

mod common;
use common::hostile::Hostile;
use std::sync::RwLock;
use std::time::{Duration, Instant};
use xhttp_mobile::{Error, Tunnel};

/// Generous: every case must end far sooner than this.
const BOUND: Duration = Duration::from_secs(30);

/// Tests measuring this process's RSS take it for writing; the others for reading, so no
/// other test allocates while a measurement runs.
static RSS_LOCK: RwLock<()> = RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    RSS_LOCK.read().unwrap_or_else(|p| p.into_inner())
}

fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    RSS_LOCK.write().unwrap_or_else(|p| p.into_inner())
}

/// This process's resident set, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// At most a few MiB: the download queue (256 KiB) and QUIC's receive windows (2 MiB per
/// stream, 3 MiB per connection) are all a server can make the client hold.
const RSS_GROWTH_MAX: u64 = 8 << 20;

/// Reads until the tunnel fails and returns the error and how long that took. EOF is a
/// test failure: none of these downloads may end cleanly.
fn failure(t: &Tunnel) -> (Error, Duration) {
    let start = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match t.read(&mut buf, Some(BOUND)) {
            Ok(0) => panic!("the download ended cleanly; an error was expected"),
            Ok(_) => assert!(start.elapsed() < BOUND, "no failure within {BOUND:?}"),
            Err(e) => return (e, start.elapsed()),
        }
    }
}

/// Reads exactly `want.len()` bytes and checks them.
fn expect_bytes(t: &Tunnel, want: &[u8]) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < want.len() {
        match t.read(&mut buf[..want.len() - got.len()], Some(BOUND)) {
            Ok(0) => panic!("EOF after {:?}", String::from_utf8_lossy(&got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("after {:?}: {e}", String::from_utf8_lossy(&got)),
        }
    }
    assert_eq!(got, want);
}

/// A new tunnel of `client` reaches the healthy case ("hello").
fn another_tunnel_works(client: &xhttp_mobile::Client) {
    let t = client.open(Some(BOUND)).expect("a new tunnel opens");
    expect_bytes(&t, b"hello");
    t.close();
}

/// The error is a request failure (not a status, not our own timeout) whose text contains
/// every one of `words`.
fn expect_request_error(e: &Error, words: &[&str]) {
    let text = e.to_string();
    assert!(matches!(e, Error::Request { .. }), "{e:?}");
    for w in words {
        assert!(text.contains(w), "{text:?} does not mention {w:?}");
    }
}

/// Closing a tunnel (whatever the server is doing) is prompt and later reads say so.
fn close_is_prompt(t: &Tunnel) {
    let start = Instant::now();
    t.close();
    assert!(t.is_closed());
    let mut buf = [0u8; 16];
    assert!(matches!(t.read(&mut buf, Some(BOUND)), Err(Error::Closed)));
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn endless_download_with_an_app_that_never_reads_stays_bounded() {
    let _g = exclusive();
    let s = Hostile::start(&[]);
    for mode in ["packet-up", "stream-one"] {
        let c = s.client("/flood", mode);
        let t = c.open(Some(BOUND)).unwrap();
        // Data flows, so the windows fill from now on.
        let mut buf = vec![0u8; 64 * 1024];
        assert!(t.read(&mut buf, Some(BOUND)).unwrap() > 0);
        let before = rss();
        std::thread::sleep(Duration::from_secs(3));
        let grown = rss().saturating_sub(before);
        assert!(
            grown < RSS_GROWTH_MAX,
            "{mode}: RSS grew {} KiB while the app read nothing",
            grown >> 10
        );
        // Still flowing when the app reads again.
        let mut total = 0;
        while total < 8 << 20 {
            let n = t.read(&mut buf, Some(BOUND)).unwrap();
            assert!(n > 0, "{mode}: download ended");
            total += n;
        }
        close_is_prompt(&t);
    }
}

fn expect_status(e: &Error, status: u16, role: &str) {
    match e {
        Error::Status { status: s, request } => {
            assert_eq!(*s, status, "{e}");
            assert!(request.role.starts_with(role), "{e}");
            assert!(e.to_string().contains(&status.to_string()), "{e}");
        }
        other => panic!("expected status {status}, got {other:?}"),
    }
}

#[test]
fn error_status_on_the_download() {
    let _g = shared();
    let s = Hostile::start(&[]);
    for status in [400, 403, 404, 429, 500, 502, 503] {
        for (mode, role) in [("packet-up", "stream-down"), ("stream-one", "stream-one")] {
            let t = s
                .client(&format!("/status-{status}"), mode)
                .open(Some(BOUND))
                .unwrap();
            let (e, took) = failure(&t);
            expect_status(&e, status, role);
            assert!(took < Duration::from_secs(10), "{took:?}");
        }
    }
}

#[test]
fn error_status_on_uploads() {
    let _g = shared();
    let s = Hostile::start(&[]);
    for status in [403, 500] {
        for (mode, role) in [("packet-up", "packet-up #0"), ("stream-up", "stream-up")] {
            let t = s
                .client(&format!("/poststatus-{status}"), mode)
                .open(Some(BOUND))
                .unwrap();
            let start = Instant::now();
            // stream-up's POST is answered as soon as its head arrives, which may beat the
            // GET's "hello": then the first read already reports the status. Packet-up's
            // first POST goes only with the write below, after "hello".
            let mut got = Vec::new();
            let mut buf = [0u8; 8];
            let early = loop {
                if got.len() == 5 {
                    break None;
                }
                match t.read(&mut buf[..5 - got.len()], Some(BOUND)) {
                    Ok(0) => panic!("EOF after {:?}", String::from_utf8_lossy(&got)),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break Some(e),
                }
            };
            let e = match early {
                Some(e) => {
                    assert_eq!(mode, "stream-up", "{mode}: failed before its POST: {e}");
                    e
                }
                None => {
                    assert_eq!(got, b"hello");
                    // Queued: the write may succeed or already see the failure.
                    let _ = t.write(b"up", Some(BOUND));
                    failure(&t).0
                }
            };
            expect_status(&e, status, role);
            let took = start.elapsed();
            assert!(took < Duration::from_secs(10), "{took:?}");
        }
    }
}

#[test]
fn no_response_at_all() {
    let _g = shared();
    let s = Hostile::start(&[]);
    for mode in ["packet-up", "stream-one"] {
        let t = s.client("/silent", mode).open(Some(BOUND)).unwrap();
        // The library sets no deadline on a response (a download may legitimately be quiet
        // for long); the app's read deadline is what ends the wait, and says so.
        let mut buf = [0u8; 16];
        let start = Instant::now();
        assert!(matches!(
            t.read(&mut buf, Some(Duration::from_secs(1))),
            Err(Error::Timeout(1000))
        ));
        assert!(start.elapsed() < Duration::from_secs(5));
        close_is_prompt(&t);
    }
}

#[test]
fn stream_reset_mid_download() {
    let _g = shared();
    let s = Hostile::start(&[]);
    // H3_NO_ERROR, H3_INTERNAL_ERROR, H3_REQUEST_CANCELLED, a QUIC-level 0, the largest code.
    for (code, name) in [
        (0x100u64, "H3_NO_ERROR"),
        (0x102, "H3_INTERNAL_ERROR"),
        (0x10c, "H3_REQUEST_CANCELLED"),
        (0, "0x0"),
        ((1 << 62) - 1, "0x3fffffffffffffff"),
    ] {
        let c = s.client(&format!("/reset-{code}.once"), "packet-up");
        let t = c.open(Some(BOUND)).unwrap();
        let (e, took) = failure(&t);
        let text = e.to_string();
        assert!(matches!(e, Error::Request { .. }), "code {code}: {e:?}");
        assert!(text.contains("stream-down"), "{text}");
        assert!(text.contains("reset") && text.contains(name), "{text}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        // The connection is still good for the client's other tunnels.
        another_tunnel_works(&c);
        eprintln!("reset {code:#x}: {text}");
    }
}

#[test]
fn stream_reset_of_an_upload() {
    let _g = shared();
    let s = Hostile::start(&[]);
    let c = s.client("/postreset-268.once", "packet-up");
    let t = c.open(Some(BOUND)).unwrap();
    expect_bytes(&t, b"hello");
    let _ = t.write(b"up", Some(BOUND));
    let (e, took) = failure(&t);
    expect_request_error(&e, &["packet-up #0"]);
    assert!(took < Duration::from_secs(10), "{took:?}");
    another_tunnel_works(&c);
}

#[test]
fn connection_close_mid_download() {
    let _g = shared();
    for mode in ["packet-up", "stream-one"] {
        // A server each: ".once" is per server.
        let s = Hostile::start(&[]);
        let c = s.client("/close-42.once", mode);
        let t = c.open(Some(BOUND)).unwrap();
        let (e, took) = failure(&t);
        let text = e.to_string();
        // h3's words: "Connection error: Remote error: ApplicationClose: 0x2a".
        assert!(matches!(e, Error::Request { .. }), "{e:?}");
        assert!(
            text.contains("ApplicationClose") && text.contains("0x2a"),
            "{text}"
        );
        assert!(took < Duration::from_secs(10), "{took:?}");
        // A new tunnel dials a new connection.
        another_tunnel_works(&c);
        eprintln!("close: {text}");
    }
}

#[test]
fn black_hole_after_the_handshake_ends_by_idle_timeout() {
    let _g = shared();
    // The server offers a 3 s idle timeout; the smaller of both sides' applies.
    let s = Hostile::start(&["-idle", "3s"]);
    let t = s
        .client("/blackhole", "packet-up")
        .open(Some(BOUND))
        .unwrap();
    let (e, took) = failure(&t);
    let text = e.to_string();
    // h3's words: "Connection error: Timeout" (quinn's idle timer).
    assert!(
        matches!(e, Error::Request { .. }) && text.contains("Timeout"),
        "{e:?}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// The server sends a HEADERS frame declaring 1 GiB and then keeps sending its bytes: the
/// client must fail the tunnel at the frame's header, naming the limit, not buffer it.
#[test]
fn huge_response_headers() {
    let _g = exclusive();
    let s = Hostile::start(&[]);
    let c = s.client("/hugeheaders.once", "packet-up");
    let before = rss();
    let t = c.open(Some(BOUND)).unwrap();
    let (e, took) = failure(&t);
    let grown = rss().saturating_sub(before);
    expect_request_error(&e, &["stream-down", "declaring 1073741824 bytes", "limit"]);
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(grown < RSS_GROWTH_MAX, "RSS grew {} KiB", grown >> 10);
    // Only that request failed: its connection carries the next tunnel.
    another_tunnel_works(&c);
}

/// A frame of unknown type must be ignored (RFC 9114 §9), however long: it is skipped as
/// its bytes stream in (as quic-go does), never stored. Here one declares 1 GiB and its
/// bytes keep coming: the app sees no data and no error, memory stays flat while the
/// client skips for 3 s, and the tunnel closes promptly.
#[test]
fn huge_unknown_frame_after_the_response_is_skipped_in_bounded_memory() {
    let _g = exclusive();
    let s = Hostile::start(&[]);
    let t = s
        .client("/hugeframe", "packet-up")
        .open(Some(BOUND))
        .unwrap();
    let before = rss();
    let mut buf = [0u8; 64];
    match t.read(&mut buf, Some(Duration::from_secs(3))) {
        Err(Error::Timeout(_)) => {}
        other => panic!("expected no data and no error while the frame is skipped: {other:?}"),
    }
    let grown = rss().saturating_sub(before);
    assert!(grown < RSS_GROWTH_MAX, "RSS grew {} KiB", grown >> 10);
    close_is_prompt(&t);
}

/// The same on the control stream, after the response: the request's body still arrives,
/// and the connection carries on (another tunnel works) while the frame is skipped.
#[test]
fn huge_unknown_frame_on_the_control_stream_is_skipped_in_bounded_memory() {
    let _g = exclusive();
    let s = Hostile::start(&[]);
    let c = s.client("/hugecontrol", "packet-up");
    let before = rss();
    let t = c.open(Some(BOUND)).unwrap();
    expect_bytes(&t, b"hello");
    std::thread::sleep(Duration::from_secs(3));
    let grown = rss().saturating_sub(before);
    assert!(grown < RSS_GROWTH_MAX, "RSS grew {} KiB", grown >> 10);
    another_tunnel_works(&c);
    close_is_prompt(&t);
}

#[test]
fn invalid_response_headers() {
    let _g = shared();
    let s = Hostile::start(&[]);
    for path in ["/badheaders", "/nostatus"] {
        let t = s.client(path, "packet-up").open(Some(BOUND)).unwrap();
        let (e, took) = failure(&t);
        expect_request_error(&e, &["stream-down"]);
        assert!(took < Duration::from_secs(10), "{took:?}");
        eprintln!("{path}: {e}");
    }
}

#[test]
fn large_but_acceptable_response_header() {
    let _g = shared();
    let s = Hostile::start(&[]);
    let t = s
        .client("/bigheader-64", "packet-up")
        .open(Some(BOUND))
        .unwrap();
    expect_bytes(&t, b"hello");
}

#[test]
fn unknown_frames_are_ignored() {
    let _g = shared();
    let s = Hostile::start(&[]);
    let t = s
        .client("/unknownframe", "packet-up")
        .open(Some(BOUND))
        .unwrap();
    expect_bytes(&t, b"hello");
}

#[test]
fn unknown_server_streams_are_ignored() {
    let _g = shared();
    let s = Hostile::start(&[]);
    let c = s.client("/unistream", "packet-up");
    let t = c.open(Some(BOUND)).unwrap();
    expect_bytes(&t, b"hello");
    another_tunnel_works(&c);
}

/// RFC 9114 makes a push stream the client never allowed a connection error (H3_ID_ERROR);
/// h3 ignores it instead, which costs the client nothing: the tunnel and the connection
/// carry on.
#[test]
fn a_push_stream_never_allowed_is_ignored() {
    let _g = shared();
    let s = Hostile::start(&[]);
    let c = s.client("/push", "packet-up");
    let t = c.open(Some(BOUND)).unwrap();
    expect_bytes(&t, b"hello");
    another_tunnel_works(&c);
}

#[test]
fn an_empty_data_frame_does_not_end_the_body() {
    let _g = shared();
    let s = Hostile::start(&[]);
    let t = s
        .client("/emptydata", "packet-up")
        .open(Some(BOUND))
        .unwrap();
    expect_bytes(&t, b"hello");
}

#[test]
fn a_data_frame_cut_short_is_an_error() {
    let _g = shared();
    let s = Hostile::start(&[]);
    let t = s
        .client("/truncated", "packet-up")
        .open(Some(BOUND))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let err = loop {
        match t.read(&mut buf, Some(BOUND)) {
            Ok(0) => panic!("clean EOF after {got:?}: the cut-short frame was not noticed"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert!(b"hello".starts_with(&got), "{got:?}");
    expect_request_error(&err, &["stream-down", "truncated frame"]);
    eprintln!("{err}");
}

#[test]
fn early_hints_before_the_response() {
    let _g = shared();
    let s = Hostile::start(&[]);
    let t = s
        .client("/earlyhints", "packet-up")
        .open(Some(BOUND))
        .unwrap();
    expect_bytes(&t, b"hello");
}

#[test]
fn one_byte_a_second() {
    let _g = shared();
    let s = Hostile::start(&[]);
    let t = s.client("/trickle", "packet-up").open(Some(BOUND)).unwrap();
    // Each byte is delivered as it comes, not held back for more.
    expect_bytes(&t, b"t");
    expect_bytes(&t, b"t");
    close_is_prompt(&t);
    // Response headers at one byte a second: the app's deadline ends the wait.
    let t = s
        .client("/trickleheaders", "packet-up")
        .open(Some(BOUND))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(
        t.read(&mut buf, Some(Duration::from_secs(1))),
        Err(Error::Timeout(_))
    ));
    close_is_prompt(&t);
}

#[test]
fn goaway_moves_new_tunnels_to_a_new_connection() {
    let _g = shared();
    let s = Hostile::start(&[]);
    let c = s.client("/goaway", "packet-up");
    let first = c.open(Some(BOUND)).unwrap();
    expect_bytes(&first, b"hello");
    // Let the GOAWAY arrive.
    std::thread::sleep(Duration::from_millis(300));
    // New tunnels go elsewhere: the server refuses requests past its GOAWAY.
    for _ in 0..3 {
        another_tunnel_works(&c);
    }
    // The first tunnel's request was below the GOAWAY: it carries on (quiet, not failed).
    let mut buf = [0u8; 16];
    assert!(matches!(
        first.read(&mut buf, Some(Duration::from_millis(300))),
        Err(Error::Timeout(_))
    ));
    first.write(b"up", Some(BOUND)).unwrap();
    assert!(matches!(
        first.read(&mut buf, Some(Duration::from_millis(500))),
        Err(Error::Timeout(_))
    ));
}

#[test]
fn certificate_not_matching_the_pin() {
    let _g = shared();
    let s = Hostile::start(&[]);
    let mut j = s.config_json(serde_json::json!({"path": "/ok"}));
    let wrong = "11".repeat(32);
    j["tlsSettings"]["pinnedPeerCertSha256"] = wrong.clone().into();
    let c = xhttp_mobile::Client::new(xhttp_mobile::Config::from_json(&j).unwrap()).unwrap();
    let start = Instant::now();
    match c.open(Some(BOUND)) {
        Err(e @ Error::Connect { .. }) => {
            let text = e.to_string();
            assert!(text.contains("pinnedPeerCertSha256"), "{text}");
            assert!(
                text.contains(&s.pin),
                "the error names the server's pin: {text}"
            );
        }
        other => panic!("expected a connect error, got {:?}", other.map(|_| ())),
    }
    assert!(start.elapsed() < Duration::from_secs(10));
}
