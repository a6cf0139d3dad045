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
pub use queue::Room;

use crate::error::{Error, Result};
use bytes::Bytes;
use std::future::Future;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::OwnedMutexGuard;
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
    /// A [`Carries`], set by the framing.
    carries: std::sync::atomic::AtomicU8,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            cancel: CancellationToken::new(),
            closed: AtomicBool::new(false),
            failure: OnceLock::new(),
            download_ended: AtomicBool::new(false),
            on_end: Mutex::new(None),
            carries: std::sync::atomic::AtomicU8::new(Carries::Raw as u8),
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

    pub(crate) fn carries(&self) -> Carries {
        Carries::from_u8(self.carries.load(Ordering::Relaxed))
    }

    /// The download task saw the server end the body.
    pub(crate) fn download_ended(&self) {
        self.download_ended.store(true, Ordering::Release);
    }
}

/// How a protocol carried inside a tunnel frames it (VLESS: a request header ahead of the
/// upload, a response header ahead of the download), applied by the tunnel itself so that
/// every way of reading and writing (blocking, async, C, bindings, inbounds) sees only the
/// payload.
pub struct Framing {
    /// What the framed tunnel carries (counted in [`ClientStats`]).
    pub carries: Carries,
    /// Goes out first. Held back up to `hold` so that it travels with the first write (one
    /// POST in packet-up, one DATA frame in the stream modes), as Xray's client does; sent
    /// alone after that, for protocols where the server speaks first.
    pub preamble: Bytes,
    pub hold: Duration,
    /// Strips the response's prefix from the start of the download.
    pub response: Box<dyn ResponsePrefix>,
}

/// What a tunnel carries, as [`ClientStats`] counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Carries {
    /// Raw bytes (no framing): for a `tunnel`/`dokodemo-door` inbound.
    Raw = 0,
    /// One VLESS TCP flow.
    VlessTcp = 1,
    /// One VLESS UDP flow to one destination.
    VlessUdp = 2,
    /// Mux.Cool carrying XUDP: every UDP flow of one full-cone session.
    Mux = 3,
}

impl Carries {
    fn from_u8(v: u8) -> Carries {
        match v {
            1 => Carries::VlessTcp,
            2 => Carries::VlessUdp,
            3 => Carries::Mux,
            _ => Carries::Raw,
        }
    }
}

/// The start of a download that belongs to the framing, not to the payload.
pub trait ResponsePrefix: Send {
    /// Consumes prefix bytes from the start of `data`; returns how many were prefix. An
    /// error (a malformed prefix) fails the tunnel.
    fn consume(&mut self, data: &[u8]) -> Result<usize>;
    /// The whole prefix has been consumed.
    fn done(&self) -> bool;
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
    /// `None` once the upload is shut down. In an `Arc` so that an [`Upload`] can hold it
    /// across threads.
    up: Arc<tokio::sync::Mutex<Option<queue::QueueTx>>>,
    /// The framing's preamble until it is queued. Taken only while holding `up`, so it is
    /// queued ahead of every payload byte.
    preamble: Arc<Mutex<Option<Bytes>>>,
    local: SocketAddr,
    remote: SocketAddr,
}

struct Download {
    rx: queue::QueueRx,
    pending: Bytes,
    eof: bool,
    /// The queue was seen closed (by `readable`, whose `recv` took the news).
    rx_closed: bool,
    /// After a failure, the download task's hand-over did not end within its bound: the
    /// failure is reported without waiting again.
    drained: bool,
    /// The framing's response prefix, until it has been stripped.
    prefix: Option<Box<dyn ResponsePrefix>>,
}

impl Download {
    /// Takes `b` as the next pending bytes, less what belongs to the response prefix.
    fn take(&mut self, mut b: Bytes) -> Result<()> {
        if let Some(p) = self.prefix.as_mut() {
            let used = p.consume(&b)?;
            let _ = b.split_to(used);
            if p.done() {
                self.prefix = None;
            }
        }
        self.pending = b;
        Ok(())
    }
}

/// Queues the preamble if it has not gone yet. The caller holds the upload lock.
fn queue_preamble(preamble: &Mutex<Option<Bytes>>, tx: &queue::QueueTx) {
    let p = preamble.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(p) = p {
        // Outside the byte bound: it is small and taken before any payload.
        let _ = tx.push_now(p);
    }
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
                rx_closed: false,
                drained: false,
                prefix: None,
            }),
            up: Arc::new(tokio::sync::Mutex::new(Some(up))),
            preamble: Arc::new(Mutex::new(None)),
            local,
            remote,
        }
    }

    /// Applies `framing` to a tunnel nobody has read or written yet: the preamble goes with
    /// the first write (or alone after `framing.hold`, or at `shutdown_write`), the response
    /// prefix is stripped from the download. Must run on the runtime (it starts the hold's
    /// timer).
    pub fn frame(&self, framing: Framing) {
        let Framing {
            carries,
            preamble,
            hold,
            response,
        } = framing;
        self.shared.carries.store(carries as u8, Ordering::Relaxed);
        *self.preamble.lock().unwrap_or_else(|p| p.into_inner()) = Some(preamble);
        self.down
            .try_lock()
            .expect("framing is applied before the tunnel is handed out")
            .prefix = Some(response);
        let (up, pre, token) = (
            self.up.clone(),
            self.preamble.clone(),
            self.shared.cancel.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(hold) => {}
            }
            if let Some(tx) = up.lock().await.as_ref() {
                queue_preamble(&pre, tx);
            }
        });
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
        loop {
            if let Some(r) = self.try_read_uninit(buf) {
                return r;
            }
            self.readable().await;
        }
    }

    /// Waits until a read would not wait: bytes are queued, the download ended, or the
    /// tunnel ended. Takes nothing out of the tunnel, so a read split into this wait and
    /// [`try_read`](Self::try_read) loses nothing when the wait is dropped part-way (the
    /// async bindings run the wait on the runtime and the take on the caller's thread).
    pub async fn readable(&self) {
        // Not raced with the tunnel's end: a reader holding the lock gives it up promptly
        // once the tunnel ends (at once on a close, within the bound below on a failure).
        let mut down = self.down.lock().await;
        if !down.pending.is_empty()
            || down.eof
            || down.rx_closed
            || down.drained
            || self.shared.closed_by_us()
        {
            return;
        }
        let token = self.shared.cancel.clone();
        let next = tokio::select! {
            biased;
            n = down.rx.recv() => n,
            _ = token.cancelled() => {
                if self.shared.closed_by_us() {
                    return;
                }
                // Ended by a failure: the download task hands over what its stream
                // already holds and stops; it never waits once cancelled, so this bound
                // only guards against a bug.
                match tokio::time::timeout(Duration::from_secs(1), down.rx.recv()).await {
                    Ok(n) => n,
                    Err(_) => {
                        down.drained = true;
                        return;
                    }
                }
            }
        };
        match next {
            Some(b) => {
                if let Err(e) = down.take(b) {
                    self.shared.fail(e);
                }
            }
            // The queue is closed: `try_read` tells EOF from an error by how it closed.
            None => down.rx_closed = true,
        }
    }

    /// [`read`](Self::read) without waiting: `None` when it would wait (nothing queued, or
    /// another reader holds the download at this instant).
    pub fn try_read(&self, buf: &mut [u8]) -> Option<Result<usize>> {
        // SAFETY: as in `read`.
        let buf = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        self.try_read_uninit(buf)
    }

    /// [`try_read`](Self::try_read) into memory that may be uninitialised.
    pub fn try_read_uninit(&self, buf: &mut [MaybeUninit<u8>]) -> Option<Result<usize>> {
        if buf.is_empty() {
            return Some(Ok(0));
        }
        let mut down = self.down.try_lock().ok()?;
        if self.shared.closed_by_us() {
            return Some(Err(Error::Closed));
        }
        // A loop only while a chunk held nothing but the framing's prefix.
        while down.pending.is_empty() && !down.eof {
            let next = match down.rx.try_recv() {
                Ok(b) => Some(b),
                Err(queue::TryRecvError::Disconnected) => None,
                Err(queue::TryRecvError::Empty) if down.rx_closed => None,
                Err(queue::TryRecvError::Empty) if down.drained => {
                    return Some(Err(self.shared.end_error()));
                }
                Err(queue::TryRecvError::Empty) => return None,
            };
            match next {
                Some(b) => {
                    if let Err(e) = down.take(b) {
                        self.shared.fail(e.clone());
                        return Some(Err(self.shared.end_error()));
                    }
                }
                None if self.shared.download_ended.load(Ordering::Acquire) => down.eof = true,
                None if self.shared.cancel.is_cancelled() => {
                    return Some(Err(self.shared.end_error()));
                }
                None => {
                    // The download task stopped without the body's end (it panicked):
                    // an error, never a silent EOF.
                    let e =
                        Error::Other("download stopped before the end of the response body".into());
                    self.shared.fail(e.clone());
                    return Some(Err(e));
                }
            }
        }
        if down.pending.is_empty() {
            return Some(match self.shared.failure.get() {
                Some(e) => Err(e.clone()),
                None => Ok(0),
            });
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
        Some(Ok(n))
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
        queue_preamble(&self.preamble, tx);
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

    /// Takes the upload for one writer: the bytes of writes made through it are never
    /// interleaved with another writer's, and the upload is not shut down while it is held.
    /// Waits for a writer holding it; cancel-safe.
    pub async fn upload(&self) -> Result<Upload> {
        let token = self.shared.cancel.clone();
        let guard = tokio::select! {
            biased;
            _ = token.cancelled() => return Err(self.shared.end_error()),
            g = self.up.clone().lock_owned() => g,
        };
        self.upload_from(guard)
    }

    /// [`upload`](Self::upload) without waiting: `Ok(None)` while another writer holds it.
    pub fn try_upload(&self) -> Result<Option<Upload>> {
        if self.shared.cancel.is_cancelled() {
            return Err(self.shared.end_error());
        }
        match self.up.clone().try_lock_owned() {
            Ok(guard) => self.upload_from(guard).map(Some),
            Err(_) => Ok(None),
        }
    }

    fn upload_from(&self, guard: OwnedMutexGuard<Option<queue::QueueTx>>) -> Result<Upload> {
        if guard.is_none() {
            return Err(Error::WriteShutdown);
        }
        Ok(Upload {
            guard,
            preamble: self.preamble.clone(),
            shared: self.shared.clone(),
            counters: self.counters.clone(),
        })
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
            mut up = self.up.lock() => {
                if let Some(tx) = up.as_ref() {
                    queue_preamble(&self.preamble, tx);
                }
                up.take();
            }
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

    /// Ends the tunnel with `e` (an upload left incomplete is reset): reads and writes
    /// report it from now on. Does nothing to a tunnel already ended.
    pub fn fail(&self, e: Error) {
        self.shared.fail(e);
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

/// The upload of one tunnel, held by one writer (see [`TunnelCore::upload`]). Writing is
/// two steps, so that the wait and the effect can run in different places:
/// [`room`](Self::room) waits for queue room and takes nothing if dropped;
/// [`commit`](Self::commit) queues bytes into that room at once and cannot be interrupted
/// part-way.
pub struct Upload {
    guard: OwnedMutexGuard<Option<queue::QueueTx>>,
    preamble: Arc<Mutex<Option<Bytes>>>,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
}

impl Upload {
    fn tx(&self) -> &queue::QueueTx {
        self.guard
            .as_ref()
            .expect("an Upload exists only for a live upload")
    }

    /// The most bytes one [`room`](Self::room) can hold: the upload queue's size
    /// (`memoryLimits.uploadQueue`, or the mode's default).
    pub fn capacity(&self) -> usize {
        self.tx().capacity()
    }

    /// Waits for room for `n` bytes (at most [`capacity`](Self::capacity)) in the upload
    /// queue. The future owns what it needs (it may run as a task of its own). Dropped
    /// part-way, it takes no room. Fails when the tunnel ends.
    pub fn room(&self, n: usize) -> impl Future<Output = Result<Room>> + Send + 'static {
        let shared = self.shared.clone();
        let wait = self.tx().room(n);
        let too_big = n > self.capacity();
        async move {
            if too_big {
                return Err(room_too_big(n));
            }
            let token = shared.cancel.clone();
            tokio::select! {
                biased;
                _ = token.cancelled() => Err(shared.end_error()),
                r = wait => r.map_err(|()| upload_gone(&shared)),
            }
        }
    }

    /// [`room`](Self::room) without waiting: `Ok(None)` when the queue has no room for `n`
    /// bytes now.
    pub fn try_room(&self, n: usize) -> Result<Option<Room>> {
        if n > self.capacity() {
            return Err(room_too_big(n));
        }
        self.tx()
            .try_room(n)
            .map_err(|()| upload_gone(&self.shared))
    }

    /// Queues `data` into `room` (taken for exactly `data.len()` bytes) without waiting.
    pub fn commit(&self, room: Room, data: &[u8]) -> Result<()> {
        if self.shared.cancel.is_cancelled() {
            return Err(self.shared.end_error());
        }
        queue_preamble(&self.preamble, self.tx());
        if self.tx().commit(room, data, WRITE_PIECE).is_err() {
            return Err(upload_gone(&self.shared));
        }
        self.counters
            .up
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Ends the tunnel with `e` (the first failure wins), e.g. when a write made through
    /// this upload was abandoned part-way.
    pub fn fail(&self, e: Error) {
        self.shared.fail(e);
    }
}

fn room_too_big(n: usize) -> Error {
    Error::Other(format!(
        "a room of {n} bytes is larger than the upload queue"
    ))
}

/// The upload task is gone: the tunnel ended, or (a live tunnel) the server is done reading.
fn upload_gone(shared: &Shared) -> Error {
    if shared.cancel.is_cancelled() {
        shared.end_error()
    } else {
        Error::WriteShutdown
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

    fn core_and_upload() -> (TunnelCore, queue::QueueTx, queue::QueueRx, Arc<Shared>) {
        let shared = Shared::new();
        let (down_tx, down_rx) = queue::queue(1 << 20);
        let (up_tx, up_rx) = queue::queue(1 << 20);
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let t = TunnelCore::new(shared.clone(), Arc::default(), down_rx, up_tx, addr, addr);
        (t, down_tx, up_rx, shared)
    }

    /// A prefix of `n` bytes, each of which must be `b'#'`.
    struct Hashes(usize);

    impl ResponsePrefix for Hashes {
        fn consume(&mut self, data: &[u8]) -> Result<usize> {
            let n = self.0.min(data.len());
            if data[..n].iter().any(|&b| b != b'#') {
                return Err(Error::Other("bad prefix".into()));
            }
            self.0 -= n;
            Ok(n)
        }
        fn done(&self) -> bool {
            self.0 == 0
        }
    }

    fn framing(prefix: usize) -> Framing {
        Framing {
            carries: Carries::VlessTcp,
            preamble: Bytes::from_static(b"HDR"),
            hold: Duration::from_millis(200),
            response: Box::new(Hashes(prefix)),
        }
    }

    fn queued(rx: &mut queue::QueueRx) -> Vec<u8> {
        let mut all = Vec::new();
        while let Ok(b) = rx.try_recv() {
            all.extend_from_slice(&b);
        }
        all
    }

    #[tokio::test]
    async fn the_preamble_rides_with_the_first_write_and_goes_once() {
        let (t, _down, mut up, _s) = core_and_upload();
        t.frame(framing(0));
        assert!(queued(&mut up).is_empty(), "held until a write");
        t.write(b"abc").await.unwrap();
        t.write(b"de").await.unwrap();
        assert_eq!(queued(&mut up), b"HDRabcde");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            queued(&mut up).is_empty(),
            "the hold's timer sent nothing twice"
        );
        // Through the two-step upload the async API uses, too.
        let (t, _down, mut up, _s) = core_and_upload();
        t.frame(framing(0));
        let u = t.upload().await.unwrap();
        let room = u.room(2).await.unwrap();
        u.commit(room, b"xy").unwrap();
        assert_eq!(queued(&mut up), b"HDRxy");
    }

    #[tokio::test]
    async fn the_preamble_goes_alone_after_the_hold_or_at_shutdown() {
        let (t, _down, mut up, _s) = core_and_upload();
        t.frame(framing(0));
        assert!(queued(&mut up).is_empty());
        // The hold is 200 ms; real time, so only "at least" is checked.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(queued(&mut up), b"HDR");
        t.write(b"z").await.unwrap();
        assert_eq!(queued(&mut up), b"z");

        let (t, _down, mut up, _s) = core_and_upload();
        t.frame(framing(0));
        t.shutdown_write().await.unwrap();
        assert_eq!(queued(&mut up), b"HDR");
    }

    #[tokio::test]
    async fn the_response_prefix_is_stripped_across_chunks() {
        let (t, tx, _up, shared) = core_and_upload();
        t.frame(framing(4));
        for c in [&b"#"[..], b"##", b"#pay", b"load"] {
            tx.send(Bytes::copy_from_slice(c)).await.unwrap();
        }
        shared.download_ended();
        drop(tx);
        let (got, end) = read_all(&t).await;
        assert_eq!(got, b"payload");
        assert!(matches!(end, Ok(0)), "{end:?}");

        // Through the non-waiting read the async API uses: a chunk of prefix alone is
        // "nothing yet", not EOF.
        let (t, tx, _up, _s) = core_and_upload();
        t.frame(framing(2));
        tx.send(Bytes::from_static(b"##")).await.unwrap();
        let mut buf = [0u8; 8];
        assert!(t.try_read(&mut buf).is_none());
        tx.send(Bytes::from_static(b"ok")).await.unwrap();
        assert_eq!(t.try_read(&mut buf).unwrap().unwrap(), 2);
        assert_eq!(&buf[..2], b"ok");
    }

    #[tokio::test]
    async fn a_malformed_response_prefix_fails_the_tunnel() {
        let (t, tx, _up, _s) = core_and_upload();
        t.frame(framing(2));
        tx.send(Bytes::from_static(b"#x rest")).await.unwrap();
        let (got, end) = read_all(&t).await;
        assert!(got.is_empty());
        assert!(
            matches!(&end, Err(Error::Other(m)) if m == "bad prefix"),
            "{end:?}"
        );
        assert!(t.is_closed());
        assert!(matches!(t.write(b"a").await, Err(Error::Other(_))));
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
