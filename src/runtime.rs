//! The library's own runtime: a tokio runtime on threads we own, shared by every client in
//! the process, started with the first client and shut down (bounded) with the last.
//! The app never needs an async executor of its own.
//!
//! What it guarantees about the calling process and thread:
//! - **fork**: the runtime belongs to the process that started it. In a child made by
//!   `fork()` while it ran, [`forked`] is true: nothing may touch it there (its epoll
//!   instance is shared with the parent, its threads do not exist, its locks may be held
//!   by threads that vanished), so blocking calls fail with [`Error::Forked`] and a
//!   runtime dropped in the child is forgotten instead of shut down.
//! - **thread exit**: a blocking call made while the calling thread is exiting (from a
//!   thread-local or `pthread_key` destructor, or an `atexit` handler) after tokio's
//!   thread-locals on it are gone fails with [`Error::ThreadExiting`] instead of
//!   panicking inside tokio.
//! - **stop**: the last holder dropped on an app thread (at any stage of that thread's
//!   life, thread-exit code included) joins the runtime's threads before it returns,
//!   unless one is still busy after [`SHUTDOWN_BOUND`]; [`Runtime::abandoned`] counts
//!   the stops that left threads running.
//! - **idle means empty**: once the last runtime is shut down, no static of this module
//!   holds heap memory (so a library unloaded then leaves nothing behind).

use crate::error::{Error, Result};
use futures_util::FutureExt;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub struct Runtime {
    rt: Option<tokio::runtime::Runtime>,
}

static SHARED: Mutex<Weak<Runtime>> = Mutex::new(Weak::new());

/// Runtimes started and not yet shut down (0 or 1, briefly 2 when a new client starts one
/// while the last holder of the previous one is still shutting it down). Changed under
/// `SHARED`'s lock, with `OWNER`.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The process id of the process whose runtime is running, 0 when none runs.
static OWNER: AtomicU32 = AtomicU32::new(0);

/// The runtime's threads that started and have not yet reached their end (changed by
/// tokio's start and stop hooks, so a joined thread is never counted).
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Shutdowns that did not join every runtime thread: dropped on a runtime thread, or a
/// thread still busy at [`SHUTDOWN_BOUND`] (a stuck app callback, a name lookup in the
/// system resolver) and left to finish on its own.
static ABANDONED: AtomicUsize = AtomicUsize::new(0);

/// Time given to queued close frames when the last client goes.
const CLOSE_FLUSH: Duration = Duration::from_millis(30);

/// How long shutting the runtime down may take before its threads are abandoned.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(2);

thread_local! {
    /// True on the runtime's own threads. `const` and `Copy`: reading it registers no
    /// destructor, so it works on any thread at any stage of its life.
    static ON_RUNTIME: Cell<bool> = const { Cell::new(false) };
    /// Touched by a thread's blocking calls before tokio's thread-locals are, so it is
    /// destroyed after them when the thread exits (thread-local destructors run in
    /// reverse order of registration): once it is gone, tokio's are too.
    static CALLER: Caller = const { Caller };
}

struct Caller;

impl Drop for Caller {
    // Having a destructor is the point: it makes the slot's destruction observable.
    fn drop(&mut self) {}
}

/// True in a child process made by `fork()` while a runtime ran in the parent: nothing
/// of the parent's runtime may be used or released there.
pub fn forked() -> bool {
    let owner = OWNER.load(Ordering::Acquire);
    owner != 0 && owner != std::process::id()
}

/// True on one of the runtime's own threads.
pub fn on_runtime_thread() -> bool {
    ON_RUNTIME.try_with(Cell::get).unwrap_or(false)
}

fn lock_shared() -> std::sync::MutexGuard<'static, Weak<Runtime>> {
    SHARED.lock().unwrap_or_else(|p| p.into_inner())
}

impl Runtime {
    /// The process's runtime, started if no client holds it.
    pub fn shared() -> Result<Arc<Runtime>> {
        if forked() {
            return Err(Error::Forked);
        }
        let mut w = lock_shared();
        if let Some(rt) = w.upgrade() {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("xhttp-rt")
            .on_thread_start(|| {
                THREADS.fetch_add(1, Ordering::SeqCst);
                let _ = ON_RUNTIME.try_with(|c| c.set(true));
            })
            .on_thread_stop(|| {
                THREADS.fetch_sub(1, Ordering::SeqCst);
            })
            .enable_all()
            .build()
            .map_err(|e| Error::Other(format!("cannot start the runtime: {e}")))?;
        LIVE.fetch_add(1, Ordering::SeqCst);
        OWNER.store(std::process::id(), Ordering::Release);
        let rt = Arc::new(Runtime { rt: Some(rt) });
        *w = Arc::downgrade(&rt);
        Ok(rt)
    }

    /// How many runtimes are running now: 0 once every client and tunnel is gone and the
    /// shutdown (with its thread joins) has returned.
    pub fn live() -> usize {
        LIVE.load(Ordering::SeqCst)
    }

    /// How many runtime threads are running: 0 as soon as the last free has joined them
    /// (unlike the system's thread list, which may still show a joined thread for a moment
    /// while the kernel finishes its exit).
    pub fn threads() -> usize {
        THREADS.load(Ordering::SeqCst)
    }

    /// How many shutdowns so far left runtime threads running instead of joining them
    /// (see [`ABANDONED`]). While it stays 0, `live() == 0` means every runtime thread was
    /// joined: it returned and runs no more library code.
    pub fn abandoned() -> usize {
        ABANDONED.load(Ordering::SeqCst)
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        // `rt` is only taken in Drop.
        self.rt
            .as_ref()
            .map(|r| r.handle())
            .expect("runtime present until drop")
    }

    /// Waits up to `limit` for `done` (e.g. a task's end) when called from an app thread;
    /// from a runtime thread it does not wait (what it waits for happens on its own). For
    /// stops that promise "done when this returns, within a bound" (inbounds, TUNs).
    pub fn wait_from_app_thread(&self, done: impl Future, limit: Duration) {
        if tokio::runtime::Handle::try_current().is_err() {
            let _ = self
                .handle()
                .block_on(async { tokio::time::timeout(limit, done).await });
        }
    }

    /// Runs `fut` to completion from an app thread, giving up after `timeout` (`None` =
    /// no limit). Refuses to block a runtime thread (that would deadlock or panic), a
    /// thread that is exiting, and a forked child.
    pub fn block_on<T>(
        &self,
        timeout: Option<Duration>,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        check_caller()?;
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

/// Whether this thread may block on the runtime now (see the module comment).
pub fn check_caller() -> Result<()> {
    if forked() {
        return Err(Error::Forked);
    }
    if on_runtime_thread() {
        return Err(Error::WrongThread);
    }
    // Registers `CALLER` on a thread's first call, before tokio registers its own.
    CALLER.try_with(|_| ()).map_err(|_| Error::ThreadExiting)
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
        if forked() {
            // Nothing of the parent's runtime may be touched in a forked child (see the
            // module comment): not even a spawn, which wakes its driver.
            let _ = tx.send(Err(Error::Forked));
            return Handoff { rx, task: None };
        }
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
            task: Some(task.abort_handle()),
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
    /// `None` when nothing was spawned (in a forked child).
    task: Option<tokio::task::AbortHandle>,
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
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Shuts `rt` down from an app thread: gives queued close frames their moment, then joins
/// the runtime's threads unless they take longer than [`SHUTDOWN_BOUND`].
///
/// The wait runs on a helper thread. tokio parks the waiting thread on its thread-locals;
/// on a thread whose thread-locals are already destroyed (the last free made from a
/// `pthread_key` or thread-local destructor, or an `atexit` handler) its wait gives up at
/// once and the runtime's threads are left running. The helper's are fresh, and joining
/// the helper needs none.
fn stop_and_join(rt: tokio::runtime::Runtime) {
    let stop = |rt: tokio::runtime::Runtime| {
        // Connections closed just before (by the last client) still have their
        // CONNECTION_CLOSE queued: let the endpoint drivers send it, or the server would
        // only notice at its idle timeout. A plain sleep: the runtime's timer runs on its
        // workers, which a stuck app callback could hold; this must stay bounded regardless.
        std::thread::sleep(CLOSE_FLUSH);
        // tokio does not say whether its wait reached the bound: one that took that long
        // gave up.
        let start = Instant::now();
        rt.shutdown_timeout(SHUTDOWN_BOUND);
        if start.elapsed() >= SHUTDOWN_BOUND {
            ABANDONED.fetch_add(1, Ordering::SeqCst);
            log::warn!(
                "runtime threads still busy after {SHUTDOWN_BOUND:?} (a slow callback or \
                 name lookup?): left to finish on their own"
            );
        }
    };
    // Handed over through a slot, so it is still here if the helper cannot start.
    let slot = Arc::new(Mutex::new(Some(rt)));
    let theirs = slot.clone();
    let helper = std::thread::Builder::new()
        .name("xhttp-stop".into())
        .spawn(move || {
            let rt = theirs.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(rt) = rt {
                stop(rt);
            }
        });
    if let Ok(helper) = helper {
        let _ = helper.join();
    }
    // The helper did not start (no thread to spare) or ended before taking it.
    let rt = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(rt) = rt {
        stop(rt);
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let Some(rt) = self.rt.take() else { return };
        if forked() {
            // The parent's runtime: shutting it down here would deregister the parent's
            // sockets from the epoll instance both processes share, and wait for threads
            // that do not exist in this process.
            std::mem::forget(rt);
            return;
        }
        if on_runtime_thread() || tokio::runtime::Handle::try_current().is_ok() {
            // Dropped on a runtime thread (ours or another's): cannot wait here.
            rt.shutdown_background();
            ABANDONED.fetch_add(1, Ordering::SeqCst);
        } else {
            stop_and_join(rt);
        }
        let mut w = lock_shared();
        if LIVE.fetch_sub(1, Ordering::SeqCst) == 1 {
            OWNER.store(0, Ordering::Release);
        }
        if w.strong_count() == 0 {
            // The dangling `Weak` would keep this runtime's allocation alive.
            *w = Weak::new();
        }
    }
}
