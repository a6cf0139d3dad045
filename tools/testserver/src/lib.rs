//! A faithful XHTTP server over HTTP/3 for tests (protocol doc §3): Xray's status codes,
//! padding validation, session/seq placements, upload reordering with back-pressure, session
//! reaping and stream-up keep-alive padding, behind an echo, a hashing sink or a VLESS relay. It records
//! what it saw (events, counters) and injects faults (wrong status, stalled responses).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use xhttp_testserver::{ServerOptions, TestServer};
//! let server = TestServer::start(ServerOptions::default()).await?;
//! let (addr, pin) = (server.addr(), server.cert_sha256_hex());
//! // … point a client at `addr` with pinnedPeerCertSha256 = pin …
//! # let _ = (addr, pin);
//! server.shutdown();
//! # Ok(()) }
//! ```

mod download;
mod events;
mod exchange;
mod handler;
mod held;
mod quic;
mod request;
mod run_end;
mod session;
mod signal;
mod streams;
mod target;
#[cfg(test)]
mod tests;
mod tls;
mod vless;
mod xudp;

pub use events::{Event, Outcome, RequestKind, RequestShape, Stats};
pub use held::{ConnHeld, Held};

use bytes::Bytes;
use events::Recorder;
use request::Keys;
use session::Sessions;
use sha2::{Digest, Sha256};
use signal::Signal;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xhttp_mobile::config::XhttpSettings;

/// What the server does with a session's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// Writes every uploaded byte back on the download, in order; finishes the download once
    /// a streaming upload (stream-up, stream-one) finished cleanly and all was echoed.
    #[default]
    Echo,
    /// Consumes the upload, records [`Event::SinkDone`] (byte count, SHA-256) when it ends,
    /// sends nothing; finishes the download once a streaming upload finished cleanly.
    Sink,
    /// A VLESS inbound for user `id` (protocol doc §8): relays to the destination named in
    /// the request header over TCP or UDP, the way Xray's VLESS inbound plus a freedom
    /// outbound would. A wrong version or unknown user ends the session without a byte; a
    /// destination that refuses the connection, with the response header alone (as Xray);
    /// both record [`Event::TargetFailed`]. Meant for loopback destinations in tests.
    Vless { id: [u8; 16] },
}

/// Misbehaviour on demand, applied after classification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer matching requests with `status` and an empty body.
    Status { status: u16, on: RequestKind },
    /// Never answer matching requests; hold them until the client goes away.
    StallResponse { on: RequestKind },
}

/// How to run the server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The server's view of `xhttpSettings`: host, path, mode (a filter), padding, placements,
    /// uplinkDataPlacement, scMaxEachPostBytes (`to` is the limit), scMaxBufferedPosts,
    /// scStreamUpServerSecs, noSSEHeader.
    pub settings: XhttpSettings,
    pub target: Target,
    /// A session without a GET is reaped after this (Xray: 30 s).
    pub session_timeout: Duration,
    /// QUIC idle timeout (Xray's server: quic-go's 30 s default).
    pub idle_timeout: Duration,
    /// Concurrent request streams a client may open (QUIC MAX_STREAMS); quinn's and
    /// quic-go's (Xray's) default is 100. Lower it to test clients at the limit.
    pub max_streams: u32,
    pub bind: SocketAddr,
    /// Which Xray server release's rules to follow where releases differ.
    pub profile: XrayProfile,
    /// gzip-encode downloads (stream-down, stream-one) whose request accepts gzip, as a CDN
    /// in front of the server may. Xray itself never does.
    pub gzip_download: bool,
}

/// Where Xray server releases differ in what they accept (docs/interop.md), the release
/// the test server behaves as. Tests run both, so our client is checked against the
/// servers in the field and the newest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XrayProfile {
    /// Before v26.7.11 (CI's pinned v26.3.27): a request path must start with the
    /// configured path plus a trailing `/`, whatever the placements.
    V26_3,
    /// v26.7.11 and later: the configured path as it is, with a `/` added only when the
    /// session id or seq go in the path.
    #[default]
    V26_7,
}

impl XrayProfile {
    /// The `xhttpSettings` keys this release's server does not know. Xray ignores unknown
    /// keys, so a config written for the other release silently falls back to defaults
    /// there: v26.7.x renamed `sessionPlacement`/`sessionKey` to `sessionIDPlacement`/
    /// `sessionIDKey` (and added the session-id table, which only clients use).
    fn unknown_keys(self) -> &'static [&'static str] {
        match self {
            XrayProfile::V26_3 => &[
                "sessionIDPlacement",
                "sessionIDKey",
                "sessionIDTable",
                "sessionIDLength",
            ],
            XrayProfile::V26_7 => &["sessionPlacement", "sessionKey"],
        }
    }

    /// Reads a server's `xhttpSettings` as this release does: the keys it does not know
    /// are ignored, the rest parsed by the library's own (strict) parser.
    pub fn settings(self, v: &serde_json::Value) -> xhttp_mobile::Result<XhttpSettings> {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            for k in self.unknown_keys() {
                o.remove(*k);
            }
        }
        XhttpSettings::from_json("xhttpSettings", &v)
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            settings: XhttpSettings::default(),
            target: Target::Echo,
            session_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            max_streams: 100,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            profile: XrayProfile::default(),
            gzip_download: false,
        }
    }
}

/// State shared by every connection and request.
pub(crate) struct Shared {
    pub(crate) settings: XhttpSettings,
    pub(crate) keys: Keys,
    /// The normalized path every request must start with.
    pub(crate) path: String,
    pub(crate) target: Target,
    pub(crate) rec: Arc<Recorder>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) gzip_download: bool,
    fault: Mutex<Option<Fault>>,
    pub(crate) shutdown: Signal,
    ledger: held::Ledger,
}

impl Shared {
    pub(crate) fn fault(&self) -> Option<Fault> {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running server; dropping it shuts it down.
pub struct TestServer {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    cert_der: Vec<u8>,
}

impl TestServer {
    /// Binds and starts serving. Call inside a tokio runtime.
    pub async fn start(opts: ServerOptions) -> io::Result<TestServer> {
        let identity = tls::Identity::self_signed()?;
        let config = identity.quinn_config(opts.idle_timeout, opts.max_streams)?;
        let endpoint = quinn::Endpoint::server(config, opts.bind)?;
        let addr = endpoint.local_addr()?;
        let rec = Arc::new(Recorder::default());
        let shutdown = Signal::default();
        let max_buffered = usize::try_from(opts.settings.sc_max_buffered_posts)
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or(30);
        let sessions = Sessions::new(
            max_buffered,
            opts.session_timeout,
            rec.clone(),
            shutdown.clone(),
        );
        let shared = Arc::new(Shared {
            keys: Keys::of(&opts.settings),
            path: match opts.profile {
                XrayProfile::V26_3 => opts.settings.legacy_normalized_path(),
                XrayProfile::V26_7 => opts.settings.normalized_path(),
            },
            settings: opts.settings,
            target: opts.target,
            rec,
            sessions,
            gzip_download: opts.gzip_download,
            fault: Mutex::new(None),
            shutdown,
            ledger: held::Ledger::default(),
        });
        tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        log::debug!("testserver: listening on {addr}");
        Ok(TestServer {
            shared,
            endpoint,
            addr,
            cert_der: identity.cert_der,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The self-signed leaf certificate (DER), valid for `localhost` and `127.0.0.1`.
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert_der.clone()
    }

    /// Hex SHA-256 of the leaf certificate, for `pinnedPeerCertSha256`.
    pub fn cert_sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(&self.cert_der))
    }

    pub fn settings(&self) -> &XhttpSettings {
        &self.shared.settings
    }

    pub fn stats(&self) -> Stats {
        self.shared.rec.stats()
    }

    /// Everything recorded so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.shared.rec.events()
    }

    /// Takes everything recorded so far out of the log (which otherwise grows with every
    /// request): for long runs that measure memory in the same process (the soak).
    pub fn take_events(&self) -> Vec<Event> {
        self.shared.rec.take_events()
    }

    /// The first recorded event matching `pred` (already recorded or arriving within
    /// `timeout`).
    pub async fn wait_for(
        &self,
        pred: impl Fn(&Event) -> bool,
        timeout: Duration,
    ) -> Option<Event> {
        self.shared.rec.wait_for(pred, timeout).await
    }

    /// What the server still holds right now: per connection, running request handlers
    /// and unreleased request streams; live sessions.
    pub fn held(&self) -> Held {
        self.shared.ledger.snapshot(self.shared.sessions.len())
    }

    /// Waits until the server holds no request, stream or session (connections may stay
    /// open); on timeout returns what it still holds.
    pub async fn wait_released(&self, timeout: Duration) -> Result<(), Held> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let h = self.held();
            if h.is_clear() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(h);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sets or clears the fault applied to later requests.
    pub fn set_fault(&self, fault: Option<Fault>) {
        *self.shared.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// Closes every connection and stops serving. Idempotent.
    pub fn shutdown(&self) {
        self.shared.shutdown.fire();
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"server shutdown");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve_connection(incoming, shared.clone()));
    }
}

async fn serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            log::debug!("testserver: handshake failed: {e}");
            return;
        }
    };
    let peer = conn.remote_address();
    shared.rec.connection_accepted();
    let counts = shared.ledger.connection(peer);
    let watches = quic::StopWatches::default();
    let built = h3::server::builder()
        .build::<_, Bytes>(quic::Conn::new(
            conn.clone(),
            watches.clone(),
            counts.clone(),
        ))
        .await;
    match built {
        Ok(mut h3_conn) => loop {
            tokio::select! {
                r = h3_conn.accept() => match r {
                    Ok(Some(resolver)) => {
                        // Per request, not per connection: a migrated client shows its new address.
                        let from = conn.remote_address();
                        let held = counts.request();
                        let serve = handler::serve(shared.clone(), resolver, watches.clone(), from);
                        tokio::spawn(async move {
                            serve.await;
                            drop(held);
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        log::debug!("testserver: connection from {peer} ended: {e}");
                        break;
                    }
                },
                _ = shared.shutdown.fired() => break,
            }
        },
        Err(e) => log::debug!("testserver: h3 setup with {peer} failed: {e}"),
    }
    // The h3 connection is dropped by now, which closes the QUIC connection if still open.
    let reason = conn.closed().await;
    log::debug!("testserver: connection from {peer} closed: {reason}");
    counts.closed();
    shared.rec.connection_closed(peer);
}
