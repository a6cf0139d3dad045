//! Socket tests: a plain h3 client (h3-quinn, trusting the server's certificate) against the
//! server.

use super::*;
use bytes::Buf;
use h3::error::Code;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::CertificateDer;
use std::future::Future;
use xhttp_mobile::config::Mode;
use xhttp_mobile::xhttp::range::Range;

type ClientStream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

struct Client {
    _endpoint: quinn::Endpoint,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
}

async fn connect(server: &TestServer) -> Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(server.cert_der())).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = within(endpoint.connect(server.addr(), "localhost").unwrap())
        .await
        .unwrap();
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Client {
        _endpoint: endpoint,
        send,
    }
}

fn padded(method: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header(
            "referer",
            format!("https://localhost/xh/?x_padding={}", "X".repeat(200)),
        )
        .body(())
        .unwrap()
}

fn bare(method: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .body(())
        .unwrap()
}

impl Client {
    async fn open(&mut self, req: http::Request<()>) -> ClientStream {
        within(self.send.send_request(req)).await.unwrap()
    }

    /// A whole exchange: request, body, response status and body.
    async fn fetch(
        &mut self,
        req: http::Request<()>,
        body: &[u8],
    ) -> (http::Response<()>, Vec<u8>) {
        let mut s = self.open(req).await;
        if !body.is_empty() {
            within(s.send_data(Bytes::copy_from_slice(body)))
                .await
                .unwrap();
        }
        within(s.finish()).await.unwrap();
        let resp = within(s.recv_response()).await.unwrap();
        let body = read_to_end(&mut s).await;
        (resp, body)
    }
}

async fn read_to_end(s: &mut ClientStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(mut b) = within(s.recv_data()).await.unwrap() {
        out.extend_from_slice(&b.copy_to_bytes(b.remaining()));
    }
    out
}

async fn read_at_least(s: &mut ClientStream, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < n {
        let mut b = within(s.recv_data())
            .await
            .unwrap()
            .expect("body ended early");
        out.extend_from_slice(&b.copy_to_bytes(b.remaining()));
    }
    out
}

fn xh_options() -> ServerOptions {
    ServerOptions {
        settings: XhttpSettings {
            path: "/xh".into(),
            ..XhttpSettings::default()
        },
        ..ServerOptions::default()
    }
}

#[tokio::test]
async fn answers_404_on_wrong_path_and_400_without_padding() {
    let server = TestServer::start(xh_options()).await.unwrap();
    let mut c = connect(&server).await;

    let (resp, body) = c.fetch(padded("GET", "/other/abc"), b"").await;
    assert_eq!(resp.status(), 404);
    assert!(body.is_empty());
    // A 404 comes before the CORS/padding step.
    assert!(resp.headers().get("x-padding").is_none());

    let (resp, _) = c.fetch(bare("GET", "/xh/abc"), b"").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let pad = resp.headers()["x-padding"].to_str().unwrap();
    assert!((100..1000).contains(&pad.len()) && pad.bytes().all(|b| b == b'X'));

    // Padding in the URL query is accepted when there is no Referer; 99 X's are too few.
    let short = format!("/xh/?x_padding={}", "X".repeat(99));
    assert_eq!(c.fetch(bare("POST", &short), b"").await.0.status(), 400);

    let stats = server.stats();
    assert_eq!(stats.status_count(404), 1);
    assert_eq!(stats.status_count(400), 2);
    assert_eq!(stats.connections_accepted, 1);
    let first = server.events().into_iter().next();
    assert!(matches!(
        first,
        Some(Event::Request { kind: None, status: 404, ref method, ref path_and_query, .. })
            if method == "GET" && path_and_query == "/other/abc"
    ));
}

#[tokio::test]
async fn host_mismatch_is_404_and_mode_filter_is_400() {
    let mut opts = xh_options();
    opts.settings.host = "example.com".into();
    opts.settings.mode = Mode::PacketUp;
    let server = TestServer::start(opts).await.unwrap();
    let mut c = connect(&server).await;
    assert_eq!(c.fetch(padded("GET", "/xh/s"), b"").await.0.status(), 404);
    let mut req = padded("POST", "/xh/");
    *req.uri_mut() = "https://EXAMPLE.com:443/xh/".parse().unwrap();
    // Host matches; a session-less request is refused in packet-up mode.
    assert_eq!(c.fetch(req, b"x").await.0.status(), 400);
}

#[tokio::test]
async fn stream_one_echoes_and_finishes() {
    let server = TestServer::start(xh_options()).await.unwrap();
    let mut c = connect(&server).await;
    let (resp, body) = c.fetch(padded("POST", "/xh/"), b"hello stream-one").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    assert_eq!(body, b"hello stream-one");
    let up = server
        .wait_for(|e| matches!(e, Event::UploadEnded { .. }), WAIT)
        .await;
    assert_eq!(
        up,
        Some(Event::UploadEnded {
            kind: RequestKind::StreamOne,
            session: None,
            outcome: Outcome::Finished
        })
    );
    let down = server
        .wait_for(|e| matches!(e, Event::DownloadEnded { .. }), WAIT)
        .await;
    assert_eq!(
        down,
        Some(Event::DownloadEnded {
            session: None,
            outcome: Outcome::Finished
        })
    );
    assert_eq!(server.stats().requests(RequestKind::StreamOne), 1);
}

#[tokio::test]
async fn packet_up_reorders_and_notices_a_stopped_get() {
    let server = TestServer::start(xh_options()).await.unwrap();
    let mut c = connect(&server).await;
    let mut get = c.open(padded("GET", "/xh/sess-1")).await;
    within(get.finish()).await.unwrap();
    let resp = within(get.recv_response()).await.unwrap();
    assert_eq!(resp.status(), 200);

    let (r1, _) = c.fetch(padded("POST", "/xh/sess-1/1"), b"world").await;
    let (r0, _) = c.fetch(padded("POST", "/xh/sess-1/0"), b"hello ").await;
    assert_eq!((r1.status().as_u16(), r0.status().as_u16()), (200, 200));
    assert_eq!(read_at_least(&mut get, 11).await, b"hello world");

    // A bad seq is a 500.
    assert_eq!(
        c.fetch(padded("POST", "/xh/sess-1/x"), b"!")
            .await
            .0
            .status(),
        500
    );

    // Dropping the client stream stops reading (STOP_SENDING 0). (h3-quinn's own
    // `stop_sending` would panic here: a read is still pending inside it.)
    drop(get);
    let ended = server
        .wait_for(|e| matches!(e, Event::DownloadEnded { .. }), WAIT)
        .await;
    assert_eq!(
        ended,
        Some(Event::DownloadEnded {
            session: Some("sess-1".into()),
            outcome: Outcome::Stopped(0)
        })
    );
    // The session is gone: a later packet makes a fresh orphan session (200, data lost).
    assert_eq!(
        c.fetch(padded("POST", "/xh/sess-1/2"), b"late")
            .await
            .0
            .status(),
        200
    );
    assert_eq!(server.stats().requests(RequestKind::PacketUp), 4);
}

#[tokio::test]
async fn stream_up_reset_is_seen_as_a_reset() {
    let server = TestServer::start(xh_options()).await.unwrap();
    let mut c = connect(&server).await;
    let mut get = c.open(padded("GET", "/xh/up-1")).await;
    within(get.finish()).await.unwrap();
    assert_eq!(within(get.recv_response()).await.unwrap().status(), 200);

    let mut post = c.open(padded("POST", "/xh/up-1")).await;
    within(post.send_data(Bytes::from_static(b"abc")))
        .await
        .unwrap();
    let resp = within(post.recv_response()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-type").is_none());
    // Keep-alive padding (a Referer was sent): X's right away.
    let pad = read_at_least(&mut post, 1).await;
    assert!(pad.iter().all(|&b| b == b'X'), "{pad:?}");
    assert_eq!(read_at_least(&mut get, 3).await, b"abc");

    // A second stream-up for the same session conflicts.
    assert_eq!(
        c.fetch(padded("POST", "/xh/up-1"), b"zz").await.0.status(),
        409
    );

    post.stop_stream(Code::H3_REQUEST_CANCELLED);
    let up = server
        .wait_for(|e| matches!(e, Event::UploadEnded { .. }), WAIT)
        .await;
    assert_eq!(
        up,
        Some(Event::UploadEnded {
            kind: RequestKind::StreamUp,
            session: Some("up-1".into()),
            outcome: Outcome::Reset(Code::H3_REQUEST_CANCELLED.value())
        })
    );
    // The failed upload ends the download (normally, like Xray).
    assert_eq!(read_to_end(&mut get).await, b"");
    let down = server
        .wait_for(|e| matches!(e, Event::DownloadEnded { .. }), WAIT)
        .await;
    assert!(
        matches!(
            down,
            Some(Event::DownloadEnded {
                outcome: Outcome::Closed(_),
                ..
            })
        ),
        "{down:?}"
    );
}

#[tokio::test]
async fn sink_hashes_a_finished_stream_up() {
    let mut opts = xh_options();
    opts.target = Target::Sink;
    let server = TestServer::start(opts).await.unwrap();
    let mut c = connect(&server).await;
    let mut get = c.open(padded("GET", "/xh/sink-1")).await;
    within(get.finish()).await.unwrap();
    assert_eq!(within(get.recv_response()).await.unwrap().status(), 200);

    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (resp, _) = c.fetch(padded("POST", "/xh/sink-1"), &data).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(read_to_end(&mut get).await, b"");
    let done = server
        .wait_for(|e| matches!(e, Event::SinkDone { .. }), WAIT)
        .await;
    assert_eq!(
        done,
        Some(Event::SinkDone {
            session: Some("sink-1".into()),
            bytes: data.len() as u64,
            sha256: Sha256::digest(&data).into(),
        })
    );
    let stats = server.stats();
    assert_eq!(stats.bytes_uploaded, data.len() as u64);
    assert_eq!(stats.bytes_downloaded, 0);
}

#[tokio::test]
async fn orphan_session_is_reaped_and_blocked_posts_fail() {
    let mut opts = xh_options();
    opts.session_timeout = Duration::from_millis(300);
    opts.settings.sc_max_buffered_posts = 1;
    let server = TestServer::start(opts).await.unwrap();
    let mut c = connect(&server).await;
    assert_eq!(
        c.fetch(padded("POST", "/xh/orphan/0"), b"x")
            .await
            .0
            .status(),
        200
    );
    // The queue (1 packet) is full and nobody reads it: this POST waits, then fails.
    assert_eq!(
        c.fetch(padded("POST", "/xh/orphan/1"), b"y")
            .await
            .0
            .status(),
        500
    );
    let e = server
        .wait_for(|e| matches!(e, Event::SessionReaped { .. }), WAIT)
        .await;
    assert_eq!(
        e,
        Some(Event::SessionReaped {
            session: "orphan".into()
        })
    );
}

#[tokio::test]
async fn a_reset_get_ends_the_download() {
    let server = TestServer::start(xh_options()).await.unwrap();
    let mut c = connect(&server).await;
    // The GET's request side stays open, then is reset (a client cancelling it).
    let mut get = c.open(padded("GET", "/xh/rst")).await;
    assert_eq!(within(get.recv_response()).await.unwrap().status(), 200);
    get.stop_stream(Code::H3_REQUEST_CANCELLED);
    let e = server
        .wait_for(|e| matches!(e, Event::DownloadEnded { .. }), WAIT)
        .await;
    assert_eq!(
        e,
        Some(Event::DownloadEnded {
            session: Some("rst".into()),
            outcome: Outcome::Reset(Code::H3_REQUEST_CANCELLED.value())
        })
    );
}

#[tokio::test]
async fn size_limit_is_413() {
    let mut opts = xh_options();
    opts.settings.sc_max_each_post_bytes = Range::fixed(10);
    let server = TestServer::start(opts).await.unwrap();
    let mut c = connect(&server).await;
    let mut req = padded("POST", "/xh/big/0");
    req.headers_mut()
        .insert("content-length", "11".parse().unwrap());
    assert_eq!(c.fetch(req, b"0123456789A").await.0.status(), 413);
    assert_eq!(
        c.fetch(padded("POST", "/xh/big/0"), b"0123456789A")
            .await
            .0
            .status(),
        413
    );
    assert_eq!(
        c.fetch(padded("POST", "/xh/big/0"), b"0123456789")
            .await
            .0
            .status(),
        200
    );
}

#[tokio::test]
async fn faults_status_and_stall() {
    let server = TestServer::start(xh_options()).await.unwrap();
    let mut c = connect(&server).await;
    server.set_fault(Some(Fault::Status {
        status: 503,
        on: RequestKind::PacketUp,
    }));
    assert_eq!(
        c.fetch(padded("POST", "/xh/f/0"), b"x").await.0.status(),
        503
    );
    assert_eq!(c.fetch(padded("POST", "/xh/"), b"x").await.0.status(), 200);

    server.set_fault(Some(Fault::StallResponse {
        on: RequestKind::StreamDown,
    }));
    let mut get = c.open(padded("GET", "/xh/stall")).await;
    within(get.finish()).await.unwrap();
    let seen = server
        .wait_for(|e| matches!(e, Event::Request { status: 0, .. }), WAIT)
        .await;
    assert!(seen.is_some());
    drop(get);
    let ended = server
        .wait_for(|e| matches!(e, Event::StallEnded { .. }), WAIT)
        .await;
    assert!(
        matches!(
            ended,
            Some(Event::StallEnded {
                kind: RequestKind::StreamDown,
                outcome: Outcome::Stopped(_)
            })
        ),
        "{ended:?}"
    );
}

#[tokio::test]
async fn shutdown_closes_connections_and_is_idempotent() {
    let server = TestServer::start(xh_options()).await.unwrap();
    let mut c = connect(&server).await;
    // One exchange, so the server surely finished the handshake.
    assert_eq!(c.fetch(padded("GET", "/nope"), b"").await.0.status(), 404);
    assert_eq!(
        server.cert_sha256_hex(),
        hex::encode(Sha256::digest(server.cert_der()))
    );
    server.shutdown();
    server.shutdown();
    let e = server
        .wait_for(|e| matches!(e, Event::ConnectionClosed { .. }), WAIT)
        .await;
    assert!(e.is_some());
    assert_eq!(server.stats().connections_closed, 1);
    drop(c);
}

#[test]
fn handles_are_thread_safe() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let server: Option<TestServer> = None;
    if let Some(s) = &server {
        send_sync(s);
        send(s.wait_for(|_| true, Duration::MAX));
    }
}

#[tokio::test]
async fn the_path_rule_follows_the_profile() {
    // Session and seq not in the path, path configured without a trailing `/`: servers
    // before v26.7.11 want `/xh/`, later ones accept `/xh` too.
    for (profile, bare_path) in [(XrayProfile::V26_3, 404), (XrayProfile::V26_7, 200)] {
        let mut o = xh_options();
        o.settings.session_placement = xhttp_mobile::config::Placement::Header;
        o.settings.seq_placement = xhttp_mobile::config::Placement::Header;
        o.profile = profile;
        let server = TestServer::start(o).await.unwrap();
        let mut c = connect(&server).await;
        let (resp, _) = c.fetch(padded("POST", "/xh"), b"").await;
        assert_eq!(resp.status(), bare_path, "{profile:?} /xh");
        let (resp, _) = c.fetch(padded("POST", "/xh/"), b"").await;
        assert_eq!(resp.status(), 200, "{profile:?} /xh/");
    }
}

#[test]
fn each_profile_reads_its_own_key_names() {
    use xhttp_mobile::config::Placement;
    let both = serde_json::json!({"sessionPlacement": "cookie", "sessionKey": "old",
        "sessionIDPlacement": "header", "sessionIDKey": "New"});
    let old = XrayProfile::V26_3.settings(&both).unwrap();
    assert_eq!(
        (old.session_placement, old.session_key.as_str()),
        (Placement::Cookie, "old")
    );
    let new = XrayProfile::V26_7.settings(&both).unwrap();
    assert_eq!(
        (new.session_placement, new.session_key.as_str()),
        (Placement::Header, "New")
    );
    // Bad values are still refused by name, whichever spelling the release reads.
    let bad = serde_json::json!({"sessionPlacement": "body"});
    let err = XrayProfile::V26_3.settings(&bad).unwrap_err().to_string();
    assert!(err.contains("sessionPlacement"), "{err}");
    assert!(
        XrayProfile::V26_7.settings(&bad).is_ok(),
        "v26.7 ignores the old name"
    );
}
