//! The C ABI (`include/xhttp.h`, generated from this module by cbindgen).
//!
//! This layer only converts and delegates to [`crate::api`]: C arguments are checked
//! (NULL, lengths, UTF-8), handles are resolved through [`handles`], the blocking API is
//! called, and its result is turned into an [`xh_result`] plus a per-thread last error.
//! Every entry point runs inside [`call`], which catches panics and refuses re-entry from
//! the log callback. Out-parameters are written only when the result is `XH_RESULT_OK`.
//!
//! Modules: [`handles`] (the generation-checked registry), [`result`] (codes and last
//! error), [`log`] (the log callback), [`client`], [`tunnel`], [`udp`] and [`socks`] (the
//! entry points on each handle kind). Free-standing entry points (version, messages, last error, logging) are
//! below.

pub mod client;
pub(crate) mod handles;
pub mod log;
pub mod result;
pub mod socks;
pub mod tun;
pub mod tunnel;
pub mod udp;

pub use client::{xh_client, xh_stats};
pub use log::{xh_log_callback, xh_log_level};
pub use result::xh_result;
pub use socks::xh_socks;
pub use tunnel::xh_tunnel;
pub use udp::xh_udp;

use result::{Failure, record};
use std::any::Any;
use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

/// A `timeout_ms` value meaning "wait as long as it takes".
pub const XH_TIMEOUT_INFINITE: u32 = u32::MAX;

/// A buffer of this many bytes always holds an address written by `xh_tunnel_local_addr`
/// or `xh_tunnel_peer_addr` (the longest IPv6 form with port, plus the NUL).
pub const XH_ADDR_BUF_LEN: usize = 64;

/// `timeout_ms` → the Rust API's timeout. `XH_TIMEOUT_INFINITE` is no limit; every other
/// value is that many milliseconds (0: do not wait), which a `Duration` holds exactly.
pub(crate) fn timeout(ms: u32) -> Option<Duration> {
    (ms != XH_TIMEOUT_INFINITE).then(|| Duration::from_millis(u64::from(ms)))
}

fn panic_text(payload: Box<dyn Any + Send>) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    format!("panic inside the library: {what}")
}

/// The boundary every fallible entry point runs in: no panic crosses it, no call from
/// inside an app callback (log, protect) gets through, and a failure becomes a code plus
/// last error.
pub(crate) fn call(name: &str, f: impl FnOnce() -> Result<(), Failure>) -> xh_result {
    if log::in_callback() {
        return record(Failure::new(
            xh_result::WrongThread,
            format!("{name} called from inside a library callback (log or protect)"),
        ));
    }
    if crate::runtime::forked() {
        return record(Failure::new(
            xh_result::Forked,
            format!("{name}: {}", crate::Error::Forked),
        ));
    }
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => xh_result::Ok,
        Ok(Err(failure)) => record(failure),
        Err(payload) => record(Failure::new(xh_result::Panic, panic_text(payload))),
    }
}

/// [`call`] for `*_close` and `*_free`: in a child made by `fork()` they succeed at once
/// and do nothing, because the objects belong to the parent (closing them would reset
/// the parent's connections, releasing them would touch its runtime).
pub(crate) fn call_release(name: &str, f: impl FnOnce() -> Result<(), Failure>) -> xh_result {
    if crate::runtime::forked() && !log::in_callback() {
        return xh_result::Ok;
    }
    call(name, f)
}

/// Fails with `XH_RESULT_NULL_ARGUMENT` naming `name` when `p` is NULL.
pub(crate) fn non_null<T>(p: *const T, name: &str) -> Result<(), Failure> {
    if p.is_null() {
        Err(Failure::null(name))
    } else {
        Ok(())
    }
}

/// Checks a caller's buffer argument: non-NULL, non-empty, and a size Rust can address.
pub(crate) fn check_buffer<T>(buf: *const T, len: usize, name: &str) -> Result<(), Failure> {
    non_null(buf, name)?;
    if len == 0 {
        return Err(Failure::invalid(format!("`{name}` has length 0")));
    }
    if len > isize::MAX as usize {
        return Err(Failure::invalid(format!(
            "`{name}` length {len} is too large"
        )));
    }
    Ok(())
}

/// A C string argument as UTF-8 text, or an error naming `name`.
///
/// # Safety
/// `p` must be NULL or a NUL-terminated string that lives for the call.
pub(crate) unsafe fn text_arg<'a>(p: *const c_char, name: &str) -> Result<&'a str, Failure> {
    non_null(p, name)?;
    // SAFETY: non-NULL and NUL-terminated (caller's promise); only read during the call.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_str()
        .map_err(|e| Failure::invalid(format!("`{name}` is not UTF-8: {e}")))
}

/// A destination argument (`host:port`, `[v6]:port`), or `XH_RESULT_INVALID_ARGUMENT`
/// naming `name` and the rule it breaks.
///
/// # Safety
/// As [`text_arg`].
pub(crate) unsafe fn target_arg(
    p: *const c_char,
    name: &str,
) -> Result<crate::proxy::vless::Target, Failure> {
    // SAFETY: forwarded caller promise.
    let text = unsafe { text_arg(p, name) }?;
    crate::proxy::vless::Target::parse(text).map_err(|e| Failure::invalid(format!("`{name}`: {e}")))
}

/// Writes an out-parameter.
///
/// # Safety
/// `out` must be non-NULL and valid for a write of `T` (the caller's promise in the header).
pub(crate) unsafe fn put<T>(out: *mut T, value: T) {
    // SAFETY: guaranteed by the caller; `write_unaligned` neither reads nor drops the old
    // contents (C may have left them uninitialised) nor trusts C's alignment.
    unsafe { out.write_unaligned(value) }
}

/// Copies `text` plus a NUL into the caller's buffer if it fits, else
/// `XH_RESULT_BUFFER_TOO_SMALL`. Returns the length written without the NUL.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub(crate) unsafe fn copy_text(text: &str, buf: *mut c_char, len: usize) -> Result<usize, Failure> {
    if text.len() >= len {
        return Err(Failure::new(
            xh_result::BufferTooSmall,
            format!("needs {} bytes with the NUL, got {len}", text.len() + 1),
        ));
    }
    // SAFETY: `text.len() + 1 <= len` bytes fit in `buf` (caller's promise); the source is
    // a Rust string that cannot overlap the caller's buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        buf.add(text.len()).write(0);
    }
    Ok(text.len())
}

/// The library's version, e.g. `"0.1.0"`: a static NUL-terminated string, never NULL,
/// never to be freed. Any thread, any time.
#[unsafe(no_mangle)]
pub extern "C" fn xh_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// A fixed English description of a result code (any value; unknown codes get "unknown
/// result code"): a static NUL-terminated string, never NULL, never to be freed. Any
/// thread, any time. For the detail of a failure, see `xh_last_error`.
#[unsafe(no_mangle)]
pub extern "C" fn xh_result_message(code: u32) -> *const c_char {
    catch_unwind(|| xh_result::message_ptr(code))
        .unwrap_or_else(|_| c"unknown result code".as_ptr())
}

/// Copies this thread's last error into `buf`: the message of the most recent `xh_` call
/// on this thread that did not return `XH_RESULT_OK` (successful calls leave it as it
/// was; it is empty if no call on this thread failed yet). The text starts with the
/// code's `xh_result_message` and goes on with the detail (the config field, the server's
/// status, the handle at fault).
///
/// Works like `snprintf`: writes at most `len - 1` bytes plus a NUL (cut at a UTF-8
/// character boundary), and sets `*out_len` to the full length without the NUL, so
/// `*out_len >= len` means the text was cut. `buf` may be NULL only when `len` is 0 (to
/// ask for the length). This function never changes the last error.
///
/// Returns `XH_RESULT_OK`, or `XH_RESULT_NULL_ARGUMENT` (`out_len` NULL, or `buf` NULL
/// with `len > 0`).
///
/// # Safety
/// `buf` must be NULL or valid for writes of `len` bytes; `out_len` must be NULL or valid
/// for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_last_error(
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> xh_result {
    let run = || {
        if out_len.is_null() || (buf.is_null() && len > 0) {
            return xh_result::NullArgument;
        }
        result::with_last_error(|text| {
            if len > 0 {
                let mut n = text.len().min(len - 1);
                while !text.is_char_boundary(n) {
                    n -= 1;
                }
                // SAFETY: `n + 1 <= len` bytes fit in `buf` (non-NULL since `len > 0`).
                unsafe { copy_text(&text[..n], buf, n + 1) }.expect("fits by construction");
            }
            // SAFETY: checked non-NULL above; the caller vouches it is writable.
            unsafe { put(out_len, text.len()) };
        });
        xh_result::Ok
    };
    catch_unwind(run).unwrap_or(xh_result::Panic)
}

/// Sends the library's log records of `max_level` and more severe to `cb` with `ctx`, or,
/// with `cb` NULL, stops sending them (then `ctx` and `max_level` are ignored). See
/// `xh_log_callback` for the thread it runs on and what it must not do.
///
/// When this returns, no call of a previously installed callback is running any more and
/// none will start, so its `ctx` may be released. `ctx` must be usable from any thread.
/// Installing the callback is process-wide; in a Rust host that already installed a `log`
/// logger it fails with `XH_RESULT_LOGGER_UNAVAILABLE`.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_INVALID_ARGUMENT` (`max_level` above
/// `XH_LOG_LEVEL_TRACE`), `XH_RESULT_LOGGER_UNAVAILABLE`, or `XH_RESULT_WRONG_THREAD`
/// (called from inside the callback).
///
/// # Safety
/// `cb`, when not NULL, must be a function with the `xh_log_callback` signature that stays
/// callable, with `ctx`, until it is replaced or removed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_set_log_callback(
    cb: xh_log_callback,
    ctx: *mut c_void,
    max_level: xh_log_level,
) -> xh_result {
    // Removal in a forked child: nothing of the library runs there, so nothing can call
    // the callback; it succeeds like `*_free`.
    let run = || log::set_callback(cb, ctx, max_level);
    if cb.is_none() {
        call_release("xh_set_log_callback", run)
    } else {
        call("xh_set_log_callback", run)
    }
}

/// Live handles of each kind `(clients, tunnels, UDP sessions, SOCKS servers)`: for tests
/// and leak checks (Rust only).
pub fn live_handles() -> (usize, usize, usize, usize) {
    (
        client::CLIENTS.len(),
        tunnel::TUNNELS.len(),
        udp::UDP.len(),
        socks::SOCKS.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boundary_turns_a_panic_into_a_code_and_a_message() {
        let rc = call("xh_test", || panic!("boom {}", 42));
        assert_eq!(rc, xh_result::Panic);
        result::with_last_error(|e| assert!(e.contains("panic") && e.contains("boom 42"), "{e}"));
        assert_eq!(call("xh_test", || Ok(())), xh_result::Ok);
    }

    #[test]
    fn timeouts_map_without_overflow() {
        assert_eq!(timeout(0), Some(Duration::ZERO));
        assert_eq!(timeout(1500), Some(Duration::from_millis(1500)));
        assert_eq!(
            timeout(u32::MAX - 1),
            Some(Duration::from_millis(u64::from(u32::MAX - 1)))
        );
        assert_eq!(timeout(XH_TIMEOUT_INFINITE), None);
    }
}
