//! The platform's own log, for apps that do not route the library's records themselves:
//! logcat on Android (tag `xhttp`, through `android_logger`), the unified log on iOS and
//! macOS (subsystem `dev.xhttpmobile`, category `xhttp`, through `os_log.c`). Elsewhere there
//! is none and the C callback (`xh_set_log_callback`, `ffi/log.rs`) is the only sink.
//!
//! The guarantee: a record reaches the platform log only at or above the level given to
//! [`install`], as `target: message`, without blocking on anything of the library's. What
//! the records contain is the call sites' business: none formats a VLESS id, a pin, a link,
//! a session id or padding (`tests/log_secrets.rs` greps a debug-level log of every mode).

use crate::error::{Error, Result};
use log::{Level, LevelFilter, Log, Metadata, Record};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// True where the platform has a log of its own (Android, Apple).
pub const AVAILABLE: bool = cfg!(any(target_os = "android", target_vendor = "apple"));

/// The platform log's level (a `LevelFilter` as usize); `Off` until [`install`].
static LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Off as usize);

/// Whether a record of `level` passes the platform log's level.
pub fn enabled(level: Level) -> bool {
    level as usize <= LEVEL.load(Ordering::Relaxed)
}

/// Sets the platform log's level without installing anything (for a `log` logger that
/// forwards here, such as the C sink's).
pub fn set_level(level: LevelFilter) {
    LEVEL.store(level as usize, Ordering::Relaxed);
}

/// Writes `record` to the platform log if its level passes; a no-op where there is none.
pub fn write(record: &Record) {
    if AVAILABLE && enabled(record.level()) {
        sys::write(record);
    }
}

/// The platform log as a `log` logger.
pub struct PlatformLogger;

impl Log for PlatformLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        AVAILABLE && enabled(metadata.level())
    }

    fn log(&self, record: &Record) {
        write(record);
    }

    fn flush(&self) {}
}

static LOGGER: PlatformLogger = PlatformLogger;

/// Sends the library's records of `level` and more severe to the platform log, and makes it
/// the process's `log` logger (once; later calls only change the level). Returns `false`
/// where the platform has no log (nothing is installed), and an error when another `log`
/// logger already holds the process (an app's own, or the C callback's sink).
pub fn install(level: LevelFilter) -> Result<bool> {
    if !AVAILABLE {
        return Ok(false);
    }
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    if !*INSTALLED.get_or_init(|| log::set_logger(&LOGGER).is_ok()) {
        return Err(Error::Other(
            "another `log` logger is installed in this process; the library's records go there"
                .into(),
        ));
    }
    set_level(level);
    log::set_max_level(level);
    Ok(true)
}

/// The unified log's `os_log_type_t` for a record level. Apple has no "warning": DEFAULT is
/// the level that is kept on disk without a profile, like errors.
#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
fn os_log_type(level: Level) -> u8 {
    const DEFAULT: u8 = 0x00;
    const INFO: u8 = 0x01;
    const DEBUG: u8 = 0x02;
    const ERROR: u8 = 0x10;
    match level {
        Level::Error => ERROR,
        Level::Warn => DEFAULT,
        Level::Info => INFO,
        Level::Debug | Level::Trace => DEBUG,
    }
}

/// Text for C: an interior NUL (never produced by the library) becomes U+FFFD.
#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
fn c_text(text: String) -> std::ffi::CString {
    std::ffi::CString::new(text.replace('\0', "\u{fffd}")).unwrap_or_default()
}

#[cfg(target_os = "android")]
mod sys {
    use android_logger::{AndroidLogger, Config};
    use log::{LevelFilter, Log, Record};
    use std::sync::OnceLock;

    /// android_logger writes `module::path: message` under the tag; the level is ours.
    pub(super) fn write(record: &Record) {
        static LOGCAT: OnceLock<AndroidLogger> = OnceLock::new();
        LOGCAT
            .get_or_init(|| {
                AndroidLogger::new(
                    Config::default()
                        .with_tag("xhttp")
                        .with_max_level(LevelFilter::Trace),
                )
            })
            .log(record);
    }
}

#[cfg(target_vendor = "apple")]
mod sys {
    use log::Record;
    use std::ffi::{c_char, c_void};
    use std::sync::OnceLock;

    unsafe extern "C" {
        /// libSystem; the strings are static (the unified log keeps the pointers).
        fn os_log_create(subsystem: *const c_char, category: *const c_char) -> *mut c_void;
        /// `os_log.c`.
        fn xhttp_os_log(log: *mut c_void, kind: u8, message: *const c_char);
    }

    struct Handle(*mut c_void);
    // SAFETY: an `os_log_t` is immutable once created and documented as usable from any
    // thread; it is never released (the log lives as long as the process).
    unsafe impl Send for Handle {}
    // SAFETY: as above.
    unsafe impl Sync for Handle {}

    pub(super) fn write(record: &Record) {
        static LOG: OnceLock<Handle> = OnceLock::new();
        let log = LOG.get_or_init(|| {
            // SAFETY: two static NUL-terminated strings.
            Handle(unsafe { os_log_create(c"dev.xhttpmobile".as_ptr(), c"xhttp".as_ptr()) })
        });
        if log.0.is_null() {
            return;
        }
        let text = super::c_text(format!("{}: {}", record.target(), record.args()));
        // SAFETY: `log.0` is a live os_log_t from os_log_create; `text` is NUL-terminated
        // and outlives the call, which copies it.
        unsafe { xhttp_os_log(log.0, super::os_log_type(record.level()), text.as_ptr()) };
    }
}

#[cfg(not(any(target_os = "android", target_vendor = "apple")))]
mod sys {
    pub(super) fn write(_record: &log::Record) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_pass_at_and_above_the_installed_one() {
        set_level(LevelFilter::Info);
        assert!(enabled(Level::Error) && enabled(Level::Warn) && enabled(Level::Info));
        assert!(!enabled(Level::Debug) && !enabled(Level::Trace));
        set_level(LevelFilter::Off);
        assert!(!enabled(Level::Error));
    }

    #[test]
    fn apple_log_types_keep_errors_and_warnings() {
        // ERROR and DEFAULT are persisted; INFO and DEBUG only with a profile or streaming.
        assert_eq!(os_log_type(Level::Error), 0x10);
        assert_eq!(os_log_type(Level::Warn), 0x00);
        assert_eq!(os_log_type(Level::Info), 0x01);
        assert_eq!(os_log_type(Level::Trace), 0x02);
    }

    #[test]
    fn without_a_platform_log_install_is_a_no() {
        if !AVAILABLE {
            assert!(!install(LevelFilter::Debug).unwrap());
        }
    }

    #[test]
    fn c_text_never_fails() {
        assert_eq!(c_text("a\0b".into()).to_str().unwrap(), "a\u{fffd}b");
    }
}
