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
    #[error(
        "server answered {status} {reason} to {request}{hint}",
        reason = status_reason(*status),
        hint = status_hint(*status)
    )]
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

/// What an Xray server's 404 and 400 most likely mean: it answers 404 when the path (or the
/// host) is not the one its xhttpSettings name, and 400 when the padding is missing or not
/// where (or how long) it expects it.
fn status_hint(status: u16) -> &'static str {
    match status {
        404 => {
            " (the server expects another `path` or `host`: check them against its xhttpSettings)"
        }
        400 => {
            " (the server rejected the padding or a placement: check `xPaddingBytes`, the \
             xPadding obfuscation settings, session/seq placements and user headers against \
             its xhttpSettings; servers before v26.7 read `sessionPlacement`/`sessionKey`, \
             not `sessionIDPlacement`/`sessionIDKey`)"
        }
        _ => "",
    }
}

fn status_reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_name_the_likely_cause() {
        let e = |status| {
            Error::Status {
                status,
                request: RequestLabel {
                    method: "GET".into(),
                    target: "/p/S".into(),
                    role: "stream-down".into(),
                },
            }
            .to_string()
        };
        assert!(
            e(404).contains("404 Not Found") && e(404).contains("`path`"),
            "{}",
            e(404)
        );
        assert!(e(400).contains("xPaddingBytes"), "{}", e(400));
        assert!(!e(502).contains("check"), "{}", e(502));
    }
}
