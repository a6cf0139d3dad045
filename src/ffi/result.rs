//! Result codes, their fixed messages, and the per-thread last error with detail.

use super::handles::{BadHandle, Kind};
use crate::error::Error;
use std::cell::RefCell;
use std::ffi::c_char;

/// What every fallible `xh_` function returns. `XH_RESULT_OK` (0) is success; any other
/// value is a failure whose detail `xh_last_error` gives on the same thread.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum xh_result {
    /// Success. Out-parameters were written.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// An argument is out of range or malformed: a zero-length buffer, a config that is
    /// not UTF-8, an unknown log level.
    InvalidArgument = 2,
    /// The config is not valid JSON or breaks a rule; the last error names the field.
    InvalidConfig = 3,
    /// The handle is not a live handle of the expected kind: already freed, never issued,
    /// or a handle of the other kind (a tunnel passed as a client). Nothing was done.
    InvalidHandle = 4,
    /// The tunnel or client was closed by this side (`xh_tunnel_close`, `xh_client_close`
    /// or `xh_client_free` of its client). The handle stays valid until freed.
    Closed = 5,
    /// The call's timeout ran out before anything was done.
    Timeout = 6,
    /// `xh_tunnel_write` after `xh_tunnel_shutdown_write`.
    WriteShutdown = 7,
    /// The QUIC/HTTP/3 connection to the server could not be established.
    ConnectFailed = 8,
    /// The server answered a request of the tunnel with a non-200 status.
    ServerStatus = 9,
    /// A request of the tunnel failed below HTTP (stream reset, connection lost).
    RequestFailed = 10,
    /// A call that may block was made where blocking is not allowed (on one of the
    /// library's runtime threads, inside another tokio runtime), or any call was made
    /// from inside a library callback (log, socket protect).
    WrongThread = 11,
    /// The caller's buffer is too small for the answer; nothing was written.
    BufferTooSmall = 12,
    /// Another `log` logger is already installed in this process (a Rust host app), so
    /// the log callback cannot be installed.
    LoggerUnavailable = 13,
    /// Too many live handles of one kind.
    TooManyHandles = 14,
    /// Any other failure; the last error says what.
    Other = 15,
    /// The library caught a panic (a bug). The call did nothing further; the process and
    /// every other handle are unaffected.
    Panic = 16,
    /// Called in a child process made by `fork()` while the library was running in the
    /// parent (see "fork" at the top of this header). Nothing was done.
    Forked = 17,
}

impl xh_result {
    pub(crate) fn message(self) -> &'static str {
        // Kept NUL-terminated for `xh_result_message`.
        self.message_nul().trim_end_matches('\0')
    }

    fn message_nul(self) -> &'static str {
        match self {
            xh_result::Ok => "ok\0",
            xh_result::NullArgument => "a required pointer argument is NULL\0",
            xh_result::InvalidArgument => "invalid argument\0",
            xh_result::InvalidConfig => "invalid config\0",
            xh_result::InvalidHandle => "not a live handle of the expected kind\0",
            xh_result::Closed => "closed\0",
            xh_result::Timeout => "timed out\0",
            xh_result::WriteShutdown => "write side already shut down\0",
            xh_result::ConnectFailed => "connecting to the server failed\0",
            xh_result::ServerStatus => "the server answered with an error status\0",
            xh_result::RequestFailed => "a request of the tunnel failed\0",
            xh_result::WrongThread => "call not allowed on this thread or inside a callback\0",
            xh_result::BufferTooSmall => "buffer too small\0",
            xh_result::LoggerUnavailable => "another logger is already installed\0",
            xh_result::TooManyHandles => "too many live handles\0",
            xh_result::Other => "error\0",
            xh_result::Panic => "internal panic caught\0",
            xh_result::Forked => "not usable in a child made by fork()\0",
        }
    }

    pub(crate) fn from_code(code: u32) -> Option<xh_result> {
        use xh_result::*;
        const ALL: [xh_result; 18] = [
            Ok,
            NullArgument,
            InvalidArgument,
            InvalidConfig,
            InvalidHandle,
            Closed,
            Timeout,
            WriteShutdown,
            ConnectFailed,
            ServerStatus,
            RequestFailed,
            WrongThread,
            BufferTooSmall,
            LoggerUnavailable,
            TooManyHandles,
            Other,
            Panic,
            Forked,
        ];
        ALL.into_iter().find(|r| *r as u32 == code)
    }

    /// The static NUL-terminated message for `code`.
    pub(crate) fn message_ptr(code: u32) -> *const c_char {
        let text = match xh_result::from_code(code) {
            Some(r) => r.message_nul(),
            None => "unknown result code\0",
        };
        text.as_ptr().cast()
    }
}

/// A failed call: its code and the detail for the thread's last error.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: xh_result,
    pub(crate) detail: String,
}

impl Failure {
    pub(crate) fn new(code: xh_result, detail: impl Into<String>) -> Failure {
        Failure {
            code,
            detail: detail.into(),
        }
    }

    pub(crate) fn null(arg: &str) -> Failure {
        Failure::new(xh_result::NullArgument, format!("`{arg}` is NULL"))
    }

    pub(crate) fn invalid(detail: impl Into<String>) -> Failure {
        Failure::new(xh_result::InvalidArgument, detail)
    }

    pub(crate) fn bad_handle(arg: &str, expected: Kind, why: BadHandle) -> Failure {
        match why {
            BadHandle::Null => Failure::null(arg),
            BadHandle::WrongKind(k) => Failure::new(
                xh_result::InvalidHandle,
                format!(
                    "`{arg}` is a {} handle, not a {} handle",
                    k.name(),
                    expected.name()
                ),
            ),
            BadHandle::Unknown => Failure::new(
                xh_result::InvalidHandle,
                format!(
                    "`{arg}` is not a live {} handle (already freed, or never issued by this library)",
                    expected.name()
                ),
            ),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match &e {
            Error::Config { .. } => xh_result::InvalidConfig,
            Error::Status { .. } => xh_result::ServerStatus,
            Error::Request { .. } => xh_result::RequestFailed,
            Error::Connect { .. } => xh_result::ConnectFailed,
            Error::Closed => xh_result::Closed,
            Error::WriteShutdown => xh_result::WriteShutdown,
            Error::Timeout(_) => xh_result::Timeout,
            Error::WrongThread | Error::ThreadExiting => xh_result::WrongThread,
            Error::Forked => xh_result::Forked,
            Error::Other(_) => xh_result::Other,
        };
        Failure::new(code, e.to_string())
    }
}

/// The longest last error kept, in bytes, with room for the NUL `xh_last_error` adds.
pub(crate) const LAST_ERROR_CAP: usize = 1024;

/// A thread's last error, inline: no heap and no destructor, so recording one never
/// allocates thread state that would outlive the thread (or keep the library loaded),
/// even from a thread-exit destructor.
struct LastError {
    len: usize,
    text: [u8; LAST_ERROR_CAP],
}

thread_local! {
    static LAST_ERROR: RefCell<LastError> = const {
        RefCell::new(LastError { len: 0, text: [0; LAST_ERROR_CAP] })
    };
}

/// `text` cut at a character boundary to at most `cap` bytes, ending in "..." when cut.
fn cut(text: &str, cap: usize) -> (&str, &'static str) {
    if text.len() <= cap {
        return (text, "");
    }
    let mut n = cap - 3;
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    (&text[..n], "...")
}

/// Records `f` as this thread's last error and returns its code.
pub(crate) fn record(f: Failure) -> xh_result {
    let text = format!("{}: {}", f.code.message(), f.detail);
    let (head, tail) = cut(&text, LAST_ERROR_CAP - 1);
    // `try_with`: during thread teardown the slot may be gone; the code still goes back.
    let _ = LAST_ERROR.try_with(|l| {
        let mut l = l.borrow_mut();
        l.text[..head.len()].copy_from_slice(head.as_bytes());
        l.text[head.len()..head.len() + tail.len()].copy_from_slice(tail.as_bytes());
        l.len = head.len() + tail.len();
    });
    f.code
}

/// Runs `f` with this thread's last error (empty if none).
pub(crate) fn with_last_error<R>(f: impl FnOnce(&str) -> R) -> R {
    let mut f = Some(f);
    let r = LAST_ERROR.try_with(|l| {
        let l = l.borrow();
        // Only whole characters are ever stored (see `cut`).
        let text = std::str::from_utf8(&l.text[..l.len]).unwrap_or("");
        (f.take().expect("called once"))(text)
    });
    match r {
        Ok(r) => r,
        Err(_) => (f.take().expect("not called"))(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_message_and_round_trips() {
        for code in 0..18u32 {
            let r = xh_result::from_code(code).expect("dense codes");
            assert_eq!(r as u32, code);
            assert!(r.message_nul().ends_with('\0'));
            assert!(!r.message().contains('\0'));
        }
        assert!(xh_result::from_code(18).is_none());
        assert!(xh_result::from_code(u32::MAX).is_none());
    }

    #[test]
    fn last_error_is_per_thread() {
        record(Failure::invalid("here"));
        std::thread::spawn(|| with_last_error(|e| assert_eq!(e, "")))
            .join()
            .unwrap();
        with_last_error(|e| assert_eq!(e, "invalid argument: here"));
    }

    #[test]
    fn a_long_last_error_is_cut_at_a_character_boundary() {
        let long = "é".repeat(LAST_ERROR_CAP);
        record(Failure::invalid(long));
        with_last_error(|e| {
            assert!(
                e.len() < LAST_ERROR_CAP && e.len() > LAST_ERROR_CAP - 8,
                "{}",
                e.len()
            );
            assert!(e.starts_with("invalid argument: éé") && e.ends_with("é..."));
        });
    }
}
