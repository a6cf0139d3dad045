//! The library's own runtime: a tokio runtime on threads we own, shared by every client in
//! the process, started with the first client and shut down (bounded) with the last.
//! The app never needs an async executor of its own.

use crate::error::{Error, Result};
use futures_util::FutureExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub struct Runtime {
    rt: Option<tokio::runtime::Runtime>,
}

static SHARED: Mutex<Weak<Runtime>> = Mutex::new(Weak::new());

/// Runtimes started and not yet shut down (0 or 1, briefly 2 when a new client starts one
/// while the last holder of the previous one is still shutting it down).
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Time given to queued close frames when the last client goes.
const CLOSE_FLUSH: Duration = Duration::from_millis(30);

/// How long shutting the runtime down may take before its threads are abandoned.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(2);

impl Runtime {
    /// The process's runtime, started if no client holds it.
    pub fn shared() -> Result<Arc<Runtime>> {
        let mut w = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = w.upgrade() {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("xhttp-rt")
            .enable_all()
            .build()
            .map_err(|e| Error::Other(format!("cannot start the runtime: {e}")))?;
        LIVE.fetch_add(1, Ordering::SeqCst);
        let rt = Arc::new(Runtime { rt: Some(rt) });
        *w = Arc::downgrade(&rt);
        Ok(rt)
    }

    /// How many runtimes are running now: 0 once every client and tunnel is gone and the
    /// shutdown (with its thread joins) has returned.
    pub fn live() -> usize {
        LIVE.load(Ordering::SeqCst)
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        // `rt` is only taken in Drop.
        self.rt
            .as_ref()
            .map(|r| r.handle())
            .expect("runtime present until drop")
    }

    /// Runs `fut` to completion from an app thread, giving up after `timeout` (`None` =
    /// no limit). Refuses to block a runtime thread (that would deadlock or panic).
    pub fn block_on<T>(
        &self,
        timeout: Option<Duration>,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::WrongThread);
        }
        self.handle().block_on(async move {
            match timeout {
                None => fut.await,
                Some(d) => tokio::time::timeout(d, fut)
                    .await
                    .unwrap_or(Err(Error::Timeout(d.as_millis() as u64))),
            }
        })
    }
}

impl Runtime {
    /// Runs `work` as a task on this runtime and returns a future for its result that any
    /// executor can poll: no tokio context is needed to poll it (uniffi polls it from
    /// Kotlin's and Swift's threads). The task gives up at `deadline` with
    /// [`Error::Timeout`]. Dropping the returned future aborts the task, which stops at the
    /// await point it reached (as a timeout of a blocking call would stop it); a result
    /// the task already produced and nobody took is dropped with the future.
    pub fn hand_off<T, F>(&self, deadline: Deadline, work: F) -> Handoff<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = self.handle().spawn(async move {
            // A panic must not look like a runtime gone away (the oneshot dropped).
            let r = std::panic::AssertUnwindSafe(deadline.bound(work))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Other(
                        "internal error: a library task panicked".into(),
                    ))
                });
            let _ = tx.send(r);
        });
        Handoff {
            rx,
            task: task.abort_handle(),
        }
    }
}

/// When a call gives up: a point in time, or never.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Option<Instant>,
    /// The timeout as given, for the error.
    ms: u64,
}

impl Deadline {
    /// `timeout` from now; `None` (or a timeout too long to represent) is never.
    pub fn after(timeout: Option<Duration>) -> Deadline {
        Deadline {
            at: timeout.and_then(|d| Instant::now().checked_add(d)),
            ms: timeout.map_or(u64::MAX, |d| d.as_millis().try_into().unwrap_or(u64::MAX)),
        }
    }

    /// Runs `fut` until this deadline (on the runtime: it needs its timer).
    pub async fn bound<T>(self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        match self.at {
            None => fut.await,
            Some(at) => tokio::time::timeout_at(at.into(), fut)
                .await
                .unwrap_or(Err(Error::Timeout(self.ms))),
        }
    }

    /// Whether the deadline has passed.
    pub fn passed(&self) -> bool {
        self.at.is_some_and(|at| Instant::now() >= at)
    }

    /// The error of a call that ran out of time.
    pub fn error(&self) -> Error {
        Error::Timeout(self.ms)
    }
}

/// The result of a task on the library's runtime; see [`Runtime::hand_off`].
pub struct Handoff<T> {
    rx: tokio::sync::oneshot::Receiver<Result<T>>,
    task: tokio::task::AbortHandle,
}

impl<T> Future for Handoff<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            // The task dropped unfinished: the runtime shut down under it.
            r.unwrap_or(Err(Error::Closed))
        })
    }
}

impl<T> Drop for Handoff<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Dropped from a runtime thread (never ours by design): cannot wait here.
                rt.shutdown_background();
            } else {
                // Connections closed just before (by the last client) still have their
                // CONNECTION_CLOSE queued: let the endpoint drivers send it, or the server
                // would only notice at its idle timeout.
                // A plain sleep: the runtime's timer runs on its workers, which a stuck app
                // callback could hold; this must stay bounded regardless.
                std::thread::sleep(CLOSE_FLUSH);
                // Joins the worker threads unless they take longer than the bound.
                rt.shutdown_timeout(SHUTDOWN_BOUND);
            }
            LIVE.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
