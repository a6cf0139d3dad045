//! The library's error type. Every variant names what failed: the config field, the HTTP
//! status and request, or the transport step.

use std::fmt;

/// Which request of a tunnel an error belongs to (protocol doc §2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLabel {
    /// e.g. `GET`, `POST`.
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// `stream-down`, `packet-up #3`, `stream-up`, `stream-one`.
    pub role: String,
}

impl fmt::Display for RequestLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.method, self.target, self.role)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The configuration broke a rule; `field` is its JSON path.
    #[error("invalid config field `{field}`: {rule}")]
    Config { field: String, rule: String },
    /// The server answered a request of the tunnel with a non-200 status.
    #[error("server answered {status} {reason} to {request}", reason = status_reason(*status))]
    Status { status: u16, request: RequestLabel },
    /// A request failed below HTTP (stream reset, connection lost, h3 error).
    #[error("{request} failed: {detail}")]
    Request {
        request: RequestLabel,
        detail: String,
    },
    /// Establishing the QUIC/HTTP/3 connection failed.
    #[error("connecting to {addr} failed: {detail}")]
    Connect { addr: String, detail: String },
    /// The tunnel (or client) was closed by this side.
    #[error("tunnel closed")]
    Closed,
    /// The write side was shut down with `shutdown_write`.
    #[error("tunnel write side already shut down")]
    WriteShutdown,
    /// The operation did not complete within its timeout.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// A blocking call was made from the library's own runtime thread.
    #[error("blocking call made from inside the xhttp runtime; use the async API there")]
    WrongThread,
    /// A blocking call made while the calling thread is exiting (from a thread-local or
    /// `pthread_key` destructor, or an `atexit` handler), after the thread-local state the
    /// runtime needs on it was destroyed.
    #[error(
        "blocking call made while this thread is exiting (a thread-local or pthread_key destructor, or an atexit handler): the runtime's thread-local state on it is gone"
    )]
    ThreadExiting,
    /// A call in a child process made by `fork()` while the library's runtime ran in the
    /// parent: the runtime (threads, epoll instance) belongs to the parent.
    #[error(
        "the library cannot be used in a child made by fork() while its runtime ran in the parent; exec first, or fork before the first client"
    )]
    Forked,
    /// Anything else worth a message (I/O setup, TLS material).
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn config(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn status_reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}
