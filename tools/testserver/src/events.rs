//! What the server observed: an event log tests can wait on, and cheap counters.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// The shape of a request after classification (protocol doc §3 step 9). `Any` is only
/// meaningful in a [`Fault`](super::Fault) filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `GET` with a session and no seq.
    StreamDown,
    /// Upload with a session and a seq.
    PacketUp,
    /// Upload with a session and no seq.
    StreamUp,
    /// Any request without a session.
    StreamOne,
    Any,
}

impl RequestKind {
    /// Whether a fault filter `self` applies to a request of kind `kind`.
    pub fn matches(self, kind: RequestKind) -> bool {
        self == RequestKind::Any || self == kind
    }
}

/// How a request body (upload) or a response body (download) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Ended cleanly: the client finished its body (FIN), or the server finished the response.
    Finished,
    /// The client reset the stream (RESET_STREAM) with this code.
    Reset(u64),
    /// The client stopped reading the response (STOP_SENDING) with this code.
    Stopped(u64),
    /// The server ended it (session closed, queue overflow, shutdown…); the text says why.
    Closed(String),
    /// A transport failure (connection lost, protocol error).
    Error(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Finished => write!(f, "finished"),
            Outcome::Reset(c) => write!(f, "reset by client (code {c:#x})"),
            Outcome::Stopped(c) => write!(f, "stopped by client (code {c:#x})"),
            Outcome::Closed(why) => write!(f, "closed by server: {why}"),
            Outcome::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// What a passive observer of a request's head sees besides its values: the names of
/// its parts. Recorded for every request so that tests can compare clients (the parity
/// test puts Xray's own client and ours side by side).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestShape {
    /// Header names, lowercase, each once (HTTP/3 sends them lowercase).
    pub header_names: BTreeSet<String>,
    /// Cookie names across every `cookie` header.
    pub cookie_names: BTreeSet<String>,
    /// Query parameter names.
    pub query_keys: BTreeSet<String>,
    /// The path with the configured prefix removed, each segment after it replaced by `*`
    /// (session ids and seqs differ per request; how many there are does not).
    pub path_rest: String,
    pub content_length: bool,
    /// Length of the padding the server extracted (0: none found).
    pub padding_len: usize,
}

/// One observation, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A request was answered (`status` 0: held without an answer by `Fault::StallResponse`).
    /// `kind` is `None` when it was rejected before classification (host, path, padding) or
    /// was an `OPTIONS` preflight.
    Request {
        kind: Option<RequestKind>,
        method: String,
        path_and_query: String,
        status: u16,
        peer: SocketAddr,
        shape: RequestShape,
    },
    /// A streaming upload body (stream-up, stream-one) ended, or a packet-up body failed.
    UploadEnded {
        kind: RequestKind,
        session: Option<String>,
        outcome: Outcome,
    },
    /// A download (stream-down GET or stream-one response) ended.
    DownloadEnded {
        session: Option<String>,
        outcome: Outcome,
    },
    /// `Target::Sink` finished consuming an upload.
    SinkDone {
        session: Option<String>,
        bytes: u64,
        sha256: [u8; 32],
    },
    /// `Target::Vless` refused a session or its destination failed.
    TargetFailed {
        session: Option<String>,
        reason: String,
    },
    /// No GET arrived within the session timeout.
    SessionReaped { session: String },
    /// A request held by `Fault::StallResponse` ended (the client went away).
    StallEnded { kind: RequestKind, outcome: Outcome },
    /// A QUIC connection closed.
    ConnectionClosed { peer: SocketAddr },
}

/// A snapshot of the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections_accepted: u64,
    pub connections_closed: u64,
    pub requests_stream_down: u64,
    pub requests_packet_up: u64,
    pub requests_stream_up: u64,
    pub requests_stream_one: u64,
    /// Requests rejected before classification, and `OPTIONS`.
    pub requests_unclassified: u64,
    /// Responses sent, by status code.
    pub responses: BTreeMap<u16, u64>,
    /// Upload payload bytes received (packet-up payloads and stream bodies).
    pub bytes_uploaded: u64,
    /// Download bytes written by the target (keep-alive padding not counted).
    pub bytes_downloaded: u64,
    /// Bytes of gzip-encoded download bodies sent (`ServerOptions::gzip_download`): what
    /// `bytes_downloaded` became on the wire; 0 when nothing was encoded.
    pub bytes_gzip_sent: u64,
}

impl Stats {
    /// Requests of one kind; `Any` counts all, unclassified included.
    pub fn requests(&self, kind: RequestKind) -> u64 {
        match kind {
            RequestKind::StreamDown => self.requests_stream_down,
            RequestKind::PacketUp => self.requests_packet_up,
            RequestKind::StreamUp => self.requests_stream_up,
            RequestKind::StreamOne => self.requests_stream_one,
            RequestKind::Any => {
                self.requests_stream_down
                    + self.requests_packet_up
                    + self.requests_stream_up
                    + self.requests_stream_one
                    + self.requests_unclassified
            }
        }
    }

    /// Responses sent with `status`.
    pub fn status_count(&self, status: u16) -> u64 {
        self.responses.get(&status).copied().unwrap_or(0)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server's event log and counters.
#[derive(Default)]
pub(crate) struct Recorder {
    events: Mutex<Vec<Event>>,
    notify: Notify,
    connections_accepted: AtomicU64,
    connections_closed: AtomicU64,
    requests: [AtomicU64; 5],
    responses: Mutex<BTreeMap<u16, u64>>,
    bytes_uploaded: AtomicU64,
    bytes_downloaded: AtomicU64,
    bytes_gzip_sent: AtomicU64,
}

impl Recorder {
    pub(crate) fn push(&self, e: Event) {
        log::debug!("testserver: {e:?}");
        lock(&self.events).push(e);
        self.notify.notify_waiters();
    }

    pub(crate) fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }

    pub(crate) fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut *lock(&self.events))
    }

    pub(crate) async fn wait_for(
        &self,
        pred: impl Fn(&Event) -> bool,
        timeout: Duration,
    ) -> Option<Event> {
        let now = tokio::time::Instant::now();
        // A huge timeout means "no timeout" (and must not overflow).
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(86_400 * 365));
        loop {
            // Register before looking, so a push between the look and the wait is not missed.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(e) = lock(&self.events).iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return lock(&self.events).iter().find(|e| pred(e)).cloned();
            }
        }
    }

    pub(crate) fn connection_accepted(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self, peer: SocketAddr) {
        self.connections_closed.fetch_add(1, Ordering::Relaxed);
        self.push(Event::ConnectionClosed { peer });
    }

    /// Counts one request by kind (`None`: unclassified).
    pub(crate) fn request(&self, kind: Option<RequestKind>) {
        let i = match kind {
            Some(RequestKind::StreamDown) => 0,
            Some(RequestKind::PacketUp) => 1,
            Some(RequestKind::StreamUp) => 2,
            Some(RequestKind::StreamOne) => 3,
            Some(RequestKind::Any) | None => 4,
        };
        self.requests[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn response(&self, status: u16) {
        *lock(&self.responses).entry(status).or_default() += 1;
    }

    pub(crate) fn uploaded(&self, n: usize) {
        self.bytes_uploaded.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn gzip_sent(&self, n: usize) {
        self.bytes_gzip_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn downloaded(&self, n: usize) {
        self.bytes_downloaded.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> Stats {
        let r = |i: usize| self.requests[i].load(Ordering::Relaxed);
        Stats {
            connections_accepted: self.connections_accepted.load(Ordering::Relaxed),
            connections_closed: self.connections_closed.load(Ordering::Relaxed),
            requests_stream_down: r(0),
            requests_packet_up: r(1),
            requests_stream_up: r(2),
            requests_stream_one: r(3),
            requests_unclassified: r(4),
            responses: lock(&self.responses).clone(),
            bytes_uploaded: self.bytes_uploaded.load(Ordering::Relaxed),
            bytes_downloaded: self.bytes_downloaded.load(Ordering::Relaxed),
            bytes_gzip_sent: self.bytes_gzip_sent.load(Ordering::Relaxed),
        }
    }
}
