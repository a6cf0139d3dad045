//! The log sink: the library's `log` records forwarded to one C callback.

use super::result::{Failure, xh_result};
use std::cell::Cell;
use std::ffi::{CString, c_char, c_void};
use std::sync::{OnceLock, RwLock};

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
/// inside an `xh_` call. It must return quickly, must not block on anything another
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

struct Sink {
    cb: unsafe extern "C" fn(*mut c_void, xh_log_level, *const c_char, *const c_char),
    ctx: *mut c_void,
}

// SAFETY: the header requires `ctx` to be usable from any thread for as long as the
// callback is installed; the library only passes it back to the app's own callback.
unsafe impl Send for Sink {}
// SAFETY: as above; the sink is only read (copied out) by concurrent loggers.
unsafe impl Sync for Sink {}

/// The installed callback. Loggers hold the read lock while calling it, so replacing it
/// (write lock) waits until no call of the old one is running.
static SINK: RwLock<Option<Sink>> = RwLock::new(None);

thread_local! {
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// True on a thread that is inside the app's log callback right now.
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
        let sink = SINK.read().unwrap_or_else(|p| p.into_inner());
        let Some(s) = sink.as_ref() else { return };
        let target = c_text(record.target().to_string());
        let message = c_text(record.args().to_string());
        // SAFETY: `cb` is the app's callback installed with this `ctx` (the app vouches
        // for both while installed; the read lock keeps them installed during the call);
        // the strings are valid NUL-terminated UTF-8 for the duration of the call.
        in_app_callback(|| unsafe {
            (s.cb)(
                s.ctx,
                to_level(record.level()),
                target.as_ptr(),
                message.as_ptr(),
            )
        });
    }

    fn flush(&self) {}
}

/// Installs (or with `cb == None`, removes) the callback. See `xh_set_log_callback`.
pub(crate) fn set_callback(
    cb: xh_log_callback,
    ctx: *mut c_void,
    max_level: xh_log_level,
) -> Result<(), Failure> {
    // Removing never fails: `max_level` does not matter then (an app freeing `ctx` after
    // a removal must be able to rely on it).
    let filter = match cb {
        None => log::LevelFilter::Off,
        Some(_) => to_filter(max_level).ok_or_else(|| {
            Failure::invalid(format!(
                "`max_level` {max_level} is not an xh_log_level (0-5)"
            ))
        })?,
    };
    let new = match cb {
        Some(cb) => {
            // The forwarder is installed at most once per process, on first use.
            static INSTALLED: OnceLock<bool> = OnceLock::new();
            if !*INSTALLED.get_or_init(|| log::set_logger(&FORWARDER).is_ok()) {
                return Err(Failure::new(
                    xh_result::LoggerUnavailable,
                    "another `log` logger is installed in this process; its records go there",
                ));
            }
            Some(Sink { cb, ctx })
        }
        None => None,
    };
    let filter = if new.is_some() {
        filter
    } else {
        log::LevelFilter::Off
    };
    let mut sink = SINK.write().unwrap_or_else(|p| p.into_inner());
    *sink = new;
    log::set_max_level(filter);
    Ok(())
}
