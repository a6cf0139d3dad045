//! What the server still holds: per connection, the request handlers still running and the
//! request streams not yet released (either half alive), and the live sessions.
//!
//! Tests assert these return to zero once tunnels end, however they end. A request the
//! client believes finished but the server still holds (stream credit never returned, a
//! download never released) then fails a test at once, instead of surfacing as a stall
//! hundreds of flows later.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A snapshot of what the server holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Connections that are open or still hold something.
    pub connections: Vec<ConnHeld>,
    /// Sessions not yet ended (waiting for a GET, or with a download running).
    pub sessions: usize,
}

/// What one connection holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnHeld {
    pub peer: SocketAddr,
    /// The QUIC connection is still open.
    pub open: bool,
    /// Request handlers still running.
    pub requests: usize,
    /// Request streams with a half still alive.
    pub streams: usize,
}

impl Held {
    pub fn requests(&self) -> usize {
        self.connections.iter().map(|c| c.requests).sum()
    }

    pub fn streams(&self) -> usize {
        self.connections.iter().map(|c| c.streams).sum()
    }

    /// No request, stream or session is held (connections may stay open for reuse).
    pub fn is_clear(&self) -> bool {
        self.requests() == 0 && self.streams() == 0 && self.sessions == 0
    }
}

/// The counts of one connection.
pub(crate) struct ConnCounts {
    peer: SocketAddr,
    open: AtomicBool,
    requests: AtomicUsize,
    streams: AtomicUsize,
}

impl ConnCounts {
    /// Counts a request handler until the guard drops.
    pub(crate) fn request(self: &Arc<Self>) -> Hold {
        self.requests.fetch_add(1, Ordering::AcqRel);
        Hold(self.clone(), Kind::Request)
    }

    /// Counts a request stream until the guard (shared by both halves) drops.
    pub(crate) fn stream(self: &Arc<Self>) -> Arc<Hold> {
        self.streams.fetch_add(1, Ordering::AcqRel);
        Arc::new(Hold(self.clone(), Kind::Stream))
    }

    pub(crate) fn closed(&self) {
        self.open.store(false, Ordering::Release);
    }

    fn snapshot(&self) -> ConnHeld {
        ConnHeld {
            peer: self.peer,
            open: self.open.load(Ordering::Acquire),
            requests: self.requests.load(Ordering::Acquire),
            streams: self.streams.load(Ordering::Acquire),
        }
    }
}

enum Kind {
    Request,
    Stream,
}

/// One counted request or stream; dropping it uncounts it.
pub(crate) struct Hold(Arc<ConnCounts>, Kind);

impl Drop for Hold {
    fn drop(&mut self) {
        let c = match self.1 {
            Kind::Request => &self.0.requests,
            Kind::Stream => &self.0.streams,
        };
        c.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every connection's counts.
#[derive(Default)]
pub(crate) struct Ledger {
    conns: Mutex<Vec<Arc<ConnCounts>>>,
}

impl Ledger {
    pub(crate) fn connection(&self, peer: SocketAddr) -> Arc<ConnCounts> {
        let c = Arc::new(ConnCounts {
            peer,
            open: AtomicBool::new(true),
            requests: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
        });
        self.lock().push(c.clone());
        c
    }

    /// Snapshots every connection that is open or holds something; forgets the others.
    pub(crate) fn snapshot(&self, sessions: usize) -> Held {
        let mut conns = self.lock();
        let connections: Vec<ConnHeld> = conns.iter().map(|c| c.snapshot()).collect();
        let busy = |c: &ConnHeld| c.open || c.requests > 0 || c.streams > 0;
        conns.retain(|c| busy(&c.snapshot()));
        Held {
            connections: connections.into_iter().filter(busy).collect(),
            sessions,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<ConnCounts>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}
