//! Tunnels: one bidirectional byte stream carried by the requests of one XHTTP session.
//!
//! Every tunnel is a handful of tasks on the runtime (download, upload, response checks)
//! and a [`TunnelCore`] the app side holds. Close semantics are by construction:
//! - one cancellation token ends every task; closing twice or from many threads only
//!   cancels an already-cancelled token;
//! - each h3 receive half is owned by exactly one task and is only ever *dropped* (never
//!   `stop_sending` after a cancelled read, which panics in h3-quinn 0.0.10);
//! - each h3 send half sits in a [`streams::SendGuard`] that resets the stream unless a
//!   `finish()` succeeded, so a cancelled upload never looks complete to the server;
//! - the first failure is kept and reported to every later read and write.

mod dialer;
mod probe;
mod queue;
mod streams;

pub use dialer::{ClientStats, Dialer};
pub use probe::Probe;

use crate::error::{Error, Result};
use bytes::Bytes;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Writes (and downloaded chunks) are cut into pieces of at most this size before they are
/// queued.
const WRITE_PIECE: usize = 64 * 1024;

/// State shared by a tunnel's tasks and its handle.
pub(crate) struct Shared {
    cancel: CancellationToken,
    closed: AtomicBool,
    failure: OnceLock<Error>,
    /// Set by the download task when the server ended the body; a download channel that
    /// closes without it (a panicked or aborted task) is an error, not EOF.
    download_ended: AtomicBool,
    /// Runs exactly once when the tunnel ends however it ends (XMUX slot release).
    on_end: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            cancel: CancellationToken::new(),
            closed: AtomicBool::new(false),
            failure: OnceLock::new(),
            download_ended: AtomicBool::new(false),
            on_end: Mutex::new(None),
        })
    }

    /// Fails the tunnel with `e` (the first failure wins) and stops every task.
    pub(crate) fn fail(&self, e: Error) {
        // After a close, tasks see their streams die; that is not a failure to report.
        if !self.closed.load(Ordering::Acquire) && !self.cancel.is_cancelled() {
            log::debug!("tunnel failed: {e}");
            let _ = self.failure.set(e);
        }
        self.end();
    }

    /// Ends the tunnel as closed by this side.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.end();
    }

    fn end(&self) {
        self.cancel.cancel();
        let f = self.on_end.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(f) = f {
            f();
        }
    }

    /// The error a read or write reports once the tunnel has ended.
    fn end_error(&self) -> Error {
        if self.closed.load(Ordering::Acquire) {
            return Error::Closed;
        }
        if let Some(e) = self.failure.get() {
            return e.clone();
        }
        Error::Closed
    }

    /// Registers what must run exactly once when the tunnel ends (runs now if it already
    /// ended).
    pub(crate) fn on_end(&self, f: Box<dyn FnOnce() + Send>) {
        let mut slot = self.on_end.lock().unwrap_or_else(|p| p.into_inner());
        if self.cancel.is_cancelled() {
            drop(slot);
            f();
        } else {
            *slot = Some(f);
        }
    }

    pub(crate) fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    pub(crate) fn closed_by_us(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The download task saw the server end the body.
    pub(crate) fn download_ended(&self) {
        self.download_ended.store(true, Ordering::Release);
    }
}

/// Byte counters shared by a client's tunnels.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) up: std::sync::atomic::AtomicU64,
    pub(crate) down: std::sync::atomic::AtomicU64,
}

/// The async tunnel. `close` is synchronous, idempotent and callable from any thread.
pub struct TunnelCore {
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    down: tokio::sync::Mutex<Download>,
    up: tokio::sync::Mutex<Option<queue::QueueTx>>,
    local: SocketAddr,
    remote: SocketAddr,
}

struct Download {
    rx: queue::QueueRx,
    pending: Bytes,
    eof: bool,
}

impl TunnelCore {
    pub(crate) fn new(
        shared: Arc<Shared>,
        counters: Arc<Counters>,
        down: queue::QueueRx,
        up: queue::QueueTx,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> TunnelCore {
        TunnelCore {
            shared,
            counters,
            down: tokio::sync::Mutex::new(Download {
                rx: down,
                pending: Bytes::new(),
                eof: false,
            }),
            up: tokio::sync::Mutex::new(Some(up)),
            local,
            remote,
        }
    }

    /// Reads downloaded bytes into `buf`, as many as are queued (up to `buf.len()`), waiting
    /// only when none are. `Ok(0)` means the server ended the download and no request of the
    /// tunnel failed.
    ///
    /// After a close by this side reads fail at once. After a failure, bytes the tunnel
    /// already received are still read out first, then the failure is reported (in place
    /// of EOF too): what arrived is never dropped because another request of the tunnel
    /// failed, and a failed upload never ends in a clean-looking EOF.
    pub async fn read(&self, buf: &mut [u8]) -> Result<usize> {
        // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and `read_uninit`
        // only ever writes initialised bytes into it.
        let buf = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        self.read_uninit(buf).await
    }

    /// [`read`](Self::read) into memory that may be uninitialised (a C caller's buffer);
    /// the first `n` bytes are initialised when it returns `Ok(n)`.
    pub async fn read_uninit(&self, buf: &mut [MaybeUninit<u8>]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let token = self.shared.cancel.clone();
        let mut down = tokio::select! {
            biased;
            d = self.down.lock() => d,
            // Another reader holds the download; it reports the end itself.
            _ = token.cancelled() => return Err(self.shared.end_error()),
        };
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if down.pending.is_empty() && !down.eof {
            let next = tokio::select! {
                biased;
                n = down.rx.recv() => n,
                _ = token.cancelled() => {
                    // Ended by a failure: the download task hands over what its stream
                    // already holds and stops; it never waits once cancelled, so this
                    // bound only guards against a bug.
                    if self.shared.closed.load(Ordering::Acquire) {
                        return Err(Error::Closed);
                    }
                    tokio::time::timeout(Duration::from_secs(1), down.rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
            };
            match next {
                Some(b) => down.pending = b,
                None if self.shared.download_ended.load(Ordering::Acquire) => down.eof = true,
                None if token.is_cancelled() => return Err(self.shared.end_error()),
                None => {
                    // The download task stopped without the body's end (it panicked):
                    // an error, never a silent EOF.
                    let e =
                        Error::Other("download stopped before the end of the response body".into());
                    self.shared.fail(e.clone());
                    return Err(e);
                }
            }
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if down.pending.is_empty() {
            return match self.shared.failure.get() {
                Some(e) => Err(e.clone()),
                None => Ok(0),
            };
        }
        // Fill `buf` from what is queued without waiting for more.
        let mut n = 0;
        loop {
            let take = (buf.len() - n).min(down.pending.len());
            let piece = down.pending.split_to(take);
            // `write_copy_of_slice` needs Rust 1.93 (MSRV is 1.85); this loop compiles to
            // the same copy.
            for (d, s) in buf[n..n + take].iter_mut().zip(piece.iter()) {
                d.write(*s);
            }
            n += take;
            if n == buf.len() {
                break;
            }
            match down.rx.try_recv() {
                Ok(b) => down.pending = b,
                Err(_) => break,
            }
        }
        self.counters.down.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Queues `data` for upload; returns once all of it is queued (the upload task applies
    /// the mode's batching and flow control).
    pub async fn write(&self, data: &[u8]) -> Result<usize> {
        self.write_within(data, None).await
    }

    /// Like [`write`](Self::write), but gives up at `timeout` without losing count: returns
    /// how many bytes were queued when some were (possibly fewer than `data.len()`), and
    /// [`Error::Timeout`] when none were. Each piece is queued whole or not at all, so the
    /// count is exact. `Some(Duration::ZERO)` queues what fits without waiting.
    pub async fn write_within(&self, data: &[u8], timeout: Option<Duration>) -> Result<usize> {
        // A deadline too far away to represent is no deadline.
        let deadline = timeout.and_then(|d| tokio::time::Instant::now().checked_add(d));
        let expired = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        let timed_out = |sent: usize| {
            if sent > 0 {
                Ok(sent)
            } else {
                let ms = timeout.map_or(u64::MAX, |d| d.as_millis() as u64);
                Err(Error::Timeout(ms))
            }
        };
        let token = self.shared.cancel.clone();
        let up = tokio::select! {
            biased;
            _ = token.cancelled() => return Err(self.shared.end_error()),
            u = self.up.lock() => u,
            _ = &mut expired => return timed_out(0),
        };
        let Some(tx) = up.as_ref() else {
            return Err(Error::WriteShutdown);
        };
        let mut sent = 0;
        for piece in data.chunks(WRITE_PIECE) {
            tokio::select! {
                biased;
                _ = token.cancelled() => return Err(self.shared.end_error()),
                r = tx.send(Bytes::copy_from_slice(piece)) => {
                    if r.is_err() {
                        // Report what was queued; the next call gets the error. The upload
                        // task gone from a live tunnel means the server is done reading.
                        return if sent > 0 {
                            Ok(sent)
                        } else if self.shared.cancel.is_cancelled() {
                            Err(self.shared.end_error())
                        } else {
                            Err(Error::WriteShutdown)
                        };
                    }
                    self.counters.up.fetch_add(piece.len() as u64, Ordering::Relaxed);
                    sent += piece.len();
                }
                _ = &mut expired => return timed_out(sent),
            }
        }
        Ok(sent)
    }

    /// Ends the upload cleanly after everything queued is sent (stream-up and stream-one
    /// finish the request body; packet-up flushes its last POSTs). Idempotent.
    pub async fn shutdown_write(&self) -> Result<()> {
        if self.shared.cancel.is_cancelled() {
            return Err(self.shared.end_error());
        }
        // Waits only for a write in progress on another thread to finish queueing.
        let token = self.shared.cancel.clone();
        tokio::select! {
            biased;
            _ = token.cancelled() => return Err(self.shared.end_error()),
            mut up = self.up.lock() => { up.take(); }
        }
        Ok(())
    }

    /// Closes the tunnel: resets an unfinished upload, stops the download, wakes every
    /// blocked reader and writer with [`Error::Closed`], releases its XMUX slot. Idempotent,
    /// never blocks, safe from any thread and at any point (even before any response).
    pub fn close(&self) {
        self.shared.close();
    }

    pub fn is_closed(&self) -> bool {
        self.shared.cancel.is_cancelled()
    }

    /// The first failure, if the tunnel failed (not set by a plain close).
    pub fn failure(&self) -> Option<Error> {
        self.shared.failure.get().cloned()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.remote
    }
}

impl Drop for TunnelCore {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> (TunnelCore, queue::QueueTx, Arc<Shared>) {
        let shared = Shared::new();
        let (down_tx, down_rx) = queue::queue(1 << 20);
        let (up_tx, _up_rx) = queue::queue(1 << 20);
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let t = TunnelCore::new(shared.clone(), Arc::default(), down_rx, up_tx, addr, addr);
        (t, down_tx, shared)
    }

    async fn read_all(t: &TunnelCore) -> (Vec<u8>, Result<usize>) {
        let mut got = Vec::new();
        let mut buf = [0u8; 3];
        loop {
            match t.read(&mut buf).await {
                Ok(0) => return (got, Ok(0)),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, Err(e)),
            }
        }
    }

    #[tokio::test]
    async fn eof_only_after_the_server_ended_the_body() {
        let (t, tx, shared) = core();
        tx.send(Bytes::from_static(b"hello")).await.unwrap();
        shared.download_ended();
        drop(tx);
        let (got, end) = read_all(&t).await;
        assert_eq!(got, b"hello");
        assert!(matches!(end, Ok(0)), "{end:?}");
    }

    #[tokio::test]
    async fn a_download_task_that_vanished_is_an_error_not_eof() {
        // What a panicking download task leaves behind: its sender dropped, no end seen.
        let (t, tx, _) = core();
        tx.send(Bytes::from_static(b"part")).await.unwrap();
        drop(tx);
        let (got, end) = read_all(&t).await;
        assert_eq!(got, b"part");
        assert!(
            matches!(&end, Err(Error::Other(m)) if m.contains("before the end")),
            "{end:?}"
        );
        assert!(t.is_closed() && t.failure().is_some());
    }

    #[tokio::test]
    async fn queued_data_is_read_before_a_failure_but_not_after_a_close() {
        let (t, tx, shared) = core();
        tx.send(Bytes::from_static(b"before")).await.unwrap();
        shared.fail(Error::Other("boom".into()));
        drop(tx);
        let (got, end) = read_all(&t).await;
        assert_eq!(got, b"before");
        assert!(
            matches!(&end, Err(Error::Other(m)) if m == "boom"),
            "{end:?}"
        );

        let (t, tx, _) = core();
        tx.send(Bytes::from_static(b"dropped")).await.unwrap();
        t.close();
        let (got, end) = read_all(&t).await;
        assert!(got.is_empty());
        assert!(matches!(end, Err(Error::Closed)), "{end:?}");
    }

    #[tokio::test]
    async fn a_failure_after_the_body_ended_replaces_eof() {
        let (t, tx, shared) = core();
        tx.send(Bytes::from_static(b"all")).await.unwrap();
        shared.download_ended();
        drop(tx);
        shared.fail(Error::Other("upload refused".into()));
        let (got, end) = read_all(&t).await;
        assert_eq!(got, b"all");
        assert!(
            matches!(&end, Err(Error::Other(m)) if m == "upload refused"),
            "{end:?}"
        );
    }
}
