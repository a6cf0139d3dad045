//! The log sink: the library's `log` records, formatted once, handed to each installed
//! destination (today the app's C callback; a platform logger can sit beside it).
//!
//! The guarantee this module owns: logging never takes part in a lock cycle, and removing
//! a destination never waits for anything but that destination's own calls.
//! - A record is formatted (its arguments' `Display`/`Debug` run) before any lock of
//!   this module is taken, so formatting that waits on something else (a connection's
//!   mutex) holds nothing a logger on another thread needs.
//! - A destination is looked up under a mutex held only to clone an `Arc` and count the
//!   call in flight; the call itself runs with no lock held. Swapping a destination takes
//!   the same short mutex and never waits behind loggers, and loggers never wait behind a
//!   swap.
//! - Removal (or replacement) returns only when no call of the old destination is running:
//!   it waits for the calls counted on that destination alone (new records already go to
//!   the new one), so an app may free the old callback's `ctx` once removal returns.

use super::result::{Failure, xh_result};
use std::cell::Cell;
use std::ffi::{CString, c_char, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A log level: one of the `XH_LOG_LEVEL_*` values.
#[allow(non_camel_case_types)]
pub type xh_log_level = u32;

/// No records (used as `max_level` to silence the callback).
pub const XH_LOG_LEVEL_OFF: xh_log_level = 0;
pub const XH_LOG_LEVEL_ERROR: xh_log_level = 1;
pub const XH_LOG_LEVEL_WARN: xh_log_level = 2;
pub const XH_LOG_LEVEL_INFO: xh_log_level = 3;
pub const XH_LOG_LEVEL_DEBUG: xh_log_level = 4;
pub const XH_LOG_LEVEL_TRACE: xh_log_level = 5;

/// Receives one log record. `level` is one of `XH_LOG_LEVEL_ERROR` .. `XH_LOG_LEVEL_TRACE`;
/// `target` (the Rust module) and `message` are NUL-terminated UTF-8, valid only during
/// the call (copy them to keep them).
///
/// Runs on whichever thread logged: one of the library's runtime threads or an app thread
/// inside an `xh_` call, possibly on several threads at once. The library holds none of
/// its locks while calling it. It must return quickly, must not block on anything another
/// `xh_` call might be waiting for, must not unwind (no C++ exceptions or Swift errors
/// through it), and must not call `xh_` functions: those return `XH_RESULT_WRONG_THREAD`
/// there (except `xh_version`, `xh_result_message` and `xh_last_error`). Records logged
/// from inside the callback are dropped.
#[allow(non_camel_case_types)]
pub type xh_log_callback = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        level: xh_log_level,
        target: *const c_char,
        message: *const c_char,
    ),
>;

/// A formatted record, as every destination receives it.
pub(crate) struct Record {
    pub(crate) level: log::Level,
    pub(crate) target: CString,
    pub(crate) message: CString,
}

/// Somewhere records go. Called with no lock of this module held, possibly on several
/// threads at once.
pub(crate) trait Destination: Send + Sync {
    fn write(&self, record: &Record);
}

/// The app's C callback with its `ctx`.
struct Callback {
    cb: unsafe extern "C" fn(*mut c_void, xh_log_level, *const c_char, *const c_char),
    ctx: *mut c_void,
}

// SAFETY: the header requires `ctx` to be usable from any thread for as long as the
// callback is installed; the library only passes it back to the app's own callback.
unsafe impl Send for Callback {}
// SAFETY: as above; concurrent loggers only read `cb` and `ctx`.
unsafe impl Sync for Callback {}

impl Destination for Callback {
    fn write(&self, r: &Record) {
        // SAFETY: `cb` is the app's callback installed with this `ctx`, which the app
        // vouches for until removal returns (and removal waits for this call); the
        // strings are valid NUL-terminated UTF-8 for the duration of the call.
        in_app_callback(|| unsafe {
            (self.cb)(
                self.ctx,
                to_level(r.level),
                r.target.as_ptr(),
                r.message.as_ptr(),
            )
        });
    }
}

/// One installed destination and the calls of it now running.
struct Installed {
    dest: Box<dyn Destination>,
    filter: log::LevelFilter,
    in_flight: AtomicUsize,
}

/// A place for one destination (the callback; a platform logger would get its own).
pub(crate) struct Slot {
    current: Mutex<Option<Arc<Installed>>>,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            current: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Installed>>> {
        // Held only to clone or replace an `Arc`: nothing in it can panic.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The destination for a record of `level`, counted as in flight until the guard goes.
    fn enter(&self, level: log::Level) -> Option<InFlight> {
        let current = self.lock();
        let i = current.as_ref()?;
        if level > i.filter {
            return None;
        }
        // Counted under the lock: a swap that takes `i` out sees this call.
        i.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(InFlight(i.clone()))
    }

    /// Puts `new` in place and returns once no call of the one it replaced is running.
    fn replace(&self, new: Option<Installed>) {
        let old = std::mem::replace(&mut *self.lock(), new.map(Arc::new));
        if let Some(old) = old {
            wait_idle(&old);
        }
    }

    fn filter(&self) -> log::LevelFilter {
        self.lock()
            .as_ref()
            .map_or(log::LevelFilter::Off, |i| i.filter)
    }
}

/// A call of an installed destination in progress.
struct InFlight(Arc<Installed>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits until no call of `old` runs. Only calls that began before it was taken out can
/// be counted, and each ends on its own (app callbacks must return quickly), so this
/// never waits on a lock or on new records.
fn wait_idle(old: &Installed) {
    let mut spins = 0u32;
    while old.in_flight.load(Ordering::SeqCst) != 0 {
        if spins < 100 {
            std::thread::yield_now();
            spins += 1;
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// The app's callback.
static CALLBACK: Slot = Slot::new();

thread_local! {
    // `const` and `Copy`: no destructor is registered for it on any thread.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// True on a thread that is inside an app callback (log or protect) right now.
pub(crate) fn in_callback() -> bool {
    IN_CALLBACK.try_with(Cell::get).unwrap_or(false)
}

/// Runs `f`, a call into an app callback, marked so that `xh_` calls made from inside it
/// are refused and records it logs are dropped (re-entering could deadlock or recurse).
pub(crate) fn in_app_callback<R>(f: impl FnOnce() -> R) -> R {
    let outer = in_callback();
    let _ = IN_CALLBACK.try_with(|c| c.set(true));
    let r = f();
    let _ = IN_CALLBACK.try_with(|c| c.set(outer));
    r
}

struct Forwarder;

static FORWARDER: Forwarder = Forwarder;

fn to_level(l: log::Level) -> xh_log_level {
    match l {
        log::Level::Error => XH_LOG_LEVEL_ERROR,
        log::Level::Warn => XH_LOG_LEVEL_WARN,
        log::Level::Info => XH_LOG_LEVEL_INFO,
        log::Level::Debug => XH_LOG_LEVEL_DEBUG,
        log::Level::Trace => XH_LOG_LEVEL_TRACE,
    }
}

fn to_filter(l: xh_log_level) -> Option<log::LevelFilter> {
    Some(match l {
        XH_LOG_LEVEL_OFF => log::LevelFilter::Off,
        XH_LOG_LEVEL_ERROR => log::LevelFilter::Error,
        XH_LOG_LEVEL_WARN => log::LevelFilter::Warn,
        XH_LOG_LEVEL_INFO => log::LevelFilter::Info,
        XH_LOG_LEVEL_DEBUG => log::LevelFilter::Debug,
        XH_LOG_LEVEL_TRACE => log::LevelFilter::Trace,
        _ => return None,
    })
}

/// Text for C: interior NULs (impossible in practice) become U+FFFD.
fn c_text(s: String) -> CString {
    CString::new(s).unwrap_or_else(|e| {
        let cleaned = String::from_utf8_lossy(&e.into_vec()).replace('\0', "\u{fffd}");
        CString::new(cleaned).unwrap_or_default()
    })
}

impl log::Log for Forwarder {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level() && !in_callback()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Formatting first, holding nothing: see the module comment.
        let r = Record {
            level: record.level(),
            target: c_text(record.target().to_string()),
            message: c_text(record.args().to_string()),
        };
        if let Some(call) = CALLBACK.enter(r.level) {
            call.0.dest.write(&r);
        }
    }

    fn flush(&self) {}
}

/// The most verbose level any destination wants (the `log` crate's global filter).
fn apply_max_level() {
    log::set_max_level(CALLBACK.filter());
}

/// Installs (or with `cb == None`, removes) the callback. See `xh_set_log_callback`.
pub(crate) fn set_callback(
    cb: xh_log_callback,
    ctx: *mut c_void,
    max_level: xh_log_level,
) -> Result<(), Failure> {
    let Some(cb) = cb else {
        // Removing never fails: `max_level` does not matter then (an app freeing `ctx`
        // after a removal must be able to rely on it).
        CALLBACK.replace(None);
        apply_max_level();
        return Ok(());
    };
    let filter = to_filter(max_level).ok_or_else(|| {
        Failure::invalid(format!(
            "`max_level` {max_level} is not an xh_log_level (0-5)"
        ))
    })?;
    // The forwarder is installed at most once per process, on first use.
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    if !*INSTALLED.get_or_init(|| log::set_logger(&FORWARDER).is_ok()) {
        return Err(Failure::new(
            xh_result::LoggerUnavailable,
            "another `log` logger is installed in this process; its records go there",
        ));
    }
    CALLBACK.replace(Some(Installed {
        dest: Box::new(Callback { cb, ctx }),
        filter,
        in_flight: AtomicUsize::new(0),
    }));
    apply_max_level();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Barrier, mpsc};
    use std::time::Instant;

    unsafe extern "C" fn count(
        ctx: *mut c_void,
        _: xh_log_level,
        _: *const c_char,
        _: *const c_char,
    ) {
        // SAFETY: ctx is the test's `static` counter.
        unsafe { &*(ctx as *const AtomicUsize) }.fetch_add(1, Ordering::SeqCst);
    }

    /// Formats as text only once `gate` opens, after telling `entered`: a record argument
    /// whose formatting waits on another thread (as H3Conn's once waited on quinn).
    struct Waits<'a> {
        entered: &'a Barrier,
        gate: &'a Mutex<()>,
    }

    impl std::fmt::Display for Waits<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.entered.wait();
            let _g = self.gate.lock().unwrap();
            f.write_str("formatted")
        }
    }

    /// Issue 9's lock cycle, step by step: thread A formats a record whose formatting
    /// waits for a lock that thread B holds; a swap of the callback starts (thread C);
    /// then B logs while holding that lock. With the sink's old read/write lock held
    /// across formatting, C queued behind A and B's log queued behind C: nobody moved.
    /// Now formatting holds nothing, so B's log, C's swap and then A all finish.
    #[test]
    fn formatting_that_waits_on_a_logging_thread_does_not_block_a_swap_or_the_logger() {
        static RECORDS: AtomicUsize = AtomicUsize::new(0);
        let ctx = &RECORDS as *const AtomicUsize as *mut c_void;
        set_callback(Some(count), ctx, XH_LOG_LEVEL_TRACE).unwrap();
        let gate = Arc::new(Mutex::new(()));
        let entered = Arc::new(Barrier::new(2));
        let (done_tx, done_rx) = mpsc::channel::<&str>();
        let held = gate.lock().unwrap(); // B holds the lock A's formatting needs
        let a = {
            let (gate, entered, done) = (gate.clone(), entered.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let arg = Waits {
                    entered: &entered,
                    gate: &gate,
                };
                log::debug!("A: {arg}");
                done.send("A logged").unwrap();
            })
        };
        entered.wait(); // A is formatting now
        let swapped = Arc::new(AtomicBool::new(false));
        let c = {
            let (done, swapped) = (done_tx.clone(), swapped.clone());
            std::thread::spawn(move || {
                let ctx = &RECORDS as *const AtomicUsize as *mut c_void;
                set_callback(Some(count), ctx, XH_LOG_LEVEL_TRACE).unwrap();
                swapped.store(true, Ordering::SeqCst);
                done.send("C swapped").unwrap();
            })
        };
        // Give C time to queue behind A if anything can make it wait.
        std::thread::sleep(Duration::from_millis(200));
        // B logs while holding the lock A waits for.
        let before = RECORDS.load(Ordering::SeqCst);
        let logged = {
            let done = done_tx.clone();
            std::thread::spawn(move || {
                log::debug!("B: holding the lock");
                done.send("B logged").unwrap();
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(what) => seen.push(what),
                Err(_) => panic!("lock cycle: only {seen:?} finished while A formats (issue 9)"),
            }
        }
        assert!(
            seen.contains(&"B logged") && seen.contains(&"C swapped"),
            "{seen:?}"
        );
        assert!(
            RECORDS.load(Ordering::SeqCst) > before,
            "B's record was not delivered"
        );
        drop(held);
        assert_eq!(
            done_rx.recv_timeout(Duration::from_secs(10)),
            Ok("A logged")
        );
        for t in [a, c, logged] {
            t.join().unwrap();
        }
        assert!(swapped.load(Ordering::SeqCst));
        set_callback(None, std::ptr::null_mut(), 0).unwrap();
    }
}
