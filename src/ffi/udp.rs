//! Entry points on full-cone UDP sessions: open, send to, receive from, close, free.

use super::client::{Dependent, entry as client_entry, xh_client};
use super::handles::{Kind, Registry};
use super::result::{Failure, xh_result};
use super::{call, call_release, check_buffer, copy_text, non_null, put, target_arg, timeout};
use crate::api::UdpSession;
use crate::proxy::vless::Target;
use std::collections::VecDeque;
use std::ffi::c_char;
use std::sync::{Arc, Mutex};

/// A full-cone UDP session through the server: one handle sends datagrams to any number of
/// destinations and receives datagrams from any source, the way Xray's client carries UDP
/// (XUDP over Mux.Cool in one tunnel, with a plain VLESS UDP flow per destination for
/// ports 53 and 443). An opaque handle like `xh_tunnel`: any value may be passed safely.
/// Created by `xh_client_open_udp`, released by `xh_udp_free`; usable from any thread, by
/// several threads at once.
#[allow(non_camel_case_types)]
pub struct xh_udp {
    _opaque: [u8; 0],
}

/// The largest datagram `xh_udp_send_to` takes: what an Xray server carries intact.
pub const XH_UDP_MAX_DATAGRAM: usize = 8192;
// A literal for cbindgen; it must stay what the proxy layer enforces.
const _: () = assert!(XH_UDP_MAX_DATAGRAM == crate::proxy::xudp::MAX_XUDP_PAYLOAD);

/// A buffer of this many bytes always holds a source written by `xh_udp_recv_from`
/// (a 255-byte domain, `:`, a 5-digit port and the NUL).
pub const XH_TARGET_BUF_LEN: usize = 262;

/// What a UDP handle names: the session until it is closed, and datagrams a receive could
/// not hand over because the caller's buffer was too small (kept for the next receive:
/// a datagram is never cut or lost).
pub(crate) struct UdpEntry {
    session: Mutex<Option<UdpSession>>,
    held: Mutex<VecDeque<(Vec<u8>, Target)>>,
}

impl UdpEntry {
    fn live(&self) -> Result<UdpSession, Failure> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| crate::Error::Closed.into())
    }

    /// Closes the session and lets go of it. Idempotent, never blocks.
    fn detach(&self) {
        let s = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(s) = s {
            s.close();
        }
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Dependent for UdpEntry {
    fn detach(&self) {
        UdpEntry::detach(self);
    }
}

pub(crate) static UDP: Registry<UdpEntry> = Registry::new(Kind::Udp);

fn handle(p: *const xh_udp) -> usize {
    p.addr()
}

fn entry(p: *const xh_udp) -> Result<Arc<UdpEntry>, Failure> {
    UDP.get(handle(p))
        .map_err(|why| Failure::bad_handle("udp", Kind::Udp, why))
}

/// Opens a full-cone UDP session through `client` and sets `*out` to its handle. Does no
/// network I/O: the first datagram to a destination opens the tunnel it needs, within that
/// `xh_udp_send_to`'s timeout. The client's config must carry VLESS. Closing or freeing the
/// client closes the session. Any thread.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_HANDLE`,
/// `XH_RESULT_INVALID_CONFIG` (no VLESS id), `XH_RESULT_CLOSED` (the client is closed),
/// `XH_RESULT_TOO_MANY_HANDLES`, `XH_RESULT_WRONG_THREAD`.
///
/// # Safety
/// `out` must be NULL or valid for a write. The caller owns the new handle and must pass
/// it to `xh_udp_free` once (freeing the client does not free it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_client_open_udp(
    client: *const xh_client,
    out: *mut *mut xh_udp,
) -> xh_result {
    call("xh_client_open_udp", || {
        non_null(out, "out")?;
        let c = client_entry(client)?;
        let session = c.client.open_udp(None)?;
        let e = Arc::new(UdpEntry {
            session: Mutex::new(Some(session)),
            held: Mutex::new(VecDeque::new()),
        });
        c.adopt(e.clone())?;
        let Some(h) = UDP.insert(e.clone()) else {
            e.detach();
            return Err(Failure::new(
                xh_result::TooManyHandles,
                "too many live UDP sessions",
            ));
        };
        // SAFETY: `out` checked non-NULL; the caller vouches it is writable.
        unsafe { put(out, std::ptr::without_provenance_mut(h)) };
        Ok(())
    })
}

/// Sends one datagram of `len` bytes to `target` (`"host:port"`, `"1.2.3.4:port"`,
/// `"[v6]:port"`). Returns once it is queued whole (opening the tunnel it needs first, if
/// any), or fails having queued none of it. Waits at most `timeout_ms`
/// (`XH_TIMEOUT_INFINITE`: no limit). As with any UDP, a queued datagram may still be lost
/// on the way. A close or free on another thread wakes it with `XH_RESULT_CLOSED`.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT`
/// (`target` not `host:port` or port 0, `len` 0 or above `XH_UDP_MAX_DATAGRAM`; the last
/// error names it), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_CLOSED`, `XH_RESULT_TIMEOUT`,
/// `XH_RESULT_CONNECT_FAILED` / `XH_RESULT_SERVER_STATUS` / `XH_RESULT_REQUEST_FAILED`
/// (the tunnel could not be opened or failed; the next send opens a new one),
/// `XH_RESULT_OTHER` (refused by the config: UDP to port 443 under
/// `mux.xudpProxyUDP443: "reject"`), `XH_RESULT_WRONG_THREAD`.
///
/// # Safety
/// `target` must be NULL or a NUL-terminated string; `buf` must be NULL or valid for reads
/// of `len` bytes during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_udp_send_to(
    udp: *const xh_udp,
    target: *const c_char,
    buf: *const u8,
    len: usize,
    timeout_ms: u32,
) -> xh_result {
    call("xh_udp_send_to", || {
        // SAFETY: forwarded caller promise.
        let target = unsafe { target_arg(target, "target") }?;
        check_buffer(buf, len, "buf")?;
        crate::proxy::xudp::check_datagram(&target, len)
            .map_err(|e| Failure::invalid(e.to_string()))?;
        let s = entry(udp)?.live()?;
        // SAFETY: `buf` is non-NULL, `len` is in 1..=isize::MAX, and the caller vouches for
        // `len` readable bytes for the duration of this call.
        let data = unsafe { std::slice::from_raw_parts(buf, len) };
        s.send_to_target(&target, data, timeout(timeout_ms))?;
        Ok(())
    })
}

/// Receives the next datagram from any source into `buf` and sets `*out_len` to its
/// length; when `from` is not NULL, writes the source there with a NUL (`"ip:port"`,
/// `"[v6]:port"`, or `"name:port"` when the server reports the name the datagram was sent
/// to; `XH_TARGET_BUF_LEN` bytes always suffice). Waits until a datagram is there or
/// `timeout_ms` runs out (`XH_TIMEOUT_INFINITE`: no limit; 0: only take one already
/// there). A close or free on another thread wakes it with `XH_RESULT_CLOSED`.
///
/// A datagram is never cut: when it does not fit `cap` (or its source does not fit
/// `from_len`), nothing is written but `*out_len`, which is set to the datagram's length,
/// the result is `XH_RESULT_BUFFER_TOO_SMALL`, and the datagram stays first in line for
/// the next receive.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT` (`cap`
/// 0), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_CLOSED`, `XH_RESULT_TIMEOUT`,
/// `XH_RESULT_BUFFER_TOO_SMALL`, `XH_RESULT_WRONG_THREAD`.
///
/// # Safety
/// `buf` must be NULL or valid for writes of `cap` bytes; `from` must be NULL or valid
/// for writes of `from_len` bytes; `out_len` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_udp_recv_from(
    udp: *const xh_udp,
    buf: *mut u8,
    cap: usize,
    from: *mut c_char,
    from_len: usize,
    timeout_ms: u32,
    out_len: *mut usize,
) -> xh_result {
    call("xh_udp_recv_from", || {
        check_buffer(buf, cap, "buf")?;
        non_null(out_len, "out_len")?;
        if !from.is_null() && from_len == 0 {
            return Err(Failure::invalid("`from` has length 0"));
        }
        let e = entry(udp)?;
        let held = e.held.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let (data, source) = match held {
            Some(d) => d,
            None => e.live()?.recv_from(timeout(timeout_ms))?,
        };
        let source_text = source.to_string();
        if data.len() > cap || (!from.is_null() && source_text.len() >= from_len) {
            let needs = data.len();
            e.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_front((data, source));
            // SAFETY: `out_len` checked non-NULL; the caller vouches it is writable.
            unsafe { put(out_len, needs) };
            return Err(Failure::new(
                xh_result::BufferTooSmall,
                format!(
                    "the datagram needs {needs} bytes (buffer {cap}) and its source {} \
                     (buffer {from_len}); it is kept for the next receive",
                    source_text.len() + 1
                ),
            ));
        }
        if !from.is_null() {
            // SAFETY: `from` is valid for `from_len` bytes (caller's promise); it fits.
            unsafe { copy_text(&source_text, from, from_len) }?;
        }
        // SAFETY: `buf` is valid for `cap >= data.len()` bytes (caller's promise), and the
        // source is a Rust vector that cannot overlap it.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len()) };
        // SAFETY: `out_len` checked non-NULL; the caller vouches it is writable.
        unsafe { put(out_len, data.len()) };
        Ok(())
    })
}

/// Closes the session: blocked sends and receives on any thread return
/// `XH_RESULT_CLOSED` at once, its tunnels are closed. The handle stays valid, answering
/// `XH_RESULT_CLOSED`, until `xh_udp_free`. Idempotent; never blocks; any thread.
///
/// Returns `XH_RESULT_OK` (also for NULL, which is ignored) or `XH_RESULT_INVALID_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn xh_udp_close(udp: *mut xh_udp) -> xh_result {
    call_release("xh_udp_close", || {
        if udp.is_null() {
            return Ok(());
        }
        entry(udp)?.detach();
        Ok(())
    })
}

/// Releases the handle, closing the session first (see `xh_udp_close`); the handle, and
/// every copy of it, is invalid afterwards. Safe while another thread is blocked on it.
///
/// Returns `XH_RESULT_OK` (also for NULL, which is ignored) or `XH_RESULT_INVALID_HANDLE`
/// (already freed or not a UDP session: nothing was done).
#[unsafe(no_mangle)]
pub extern "C" fn xh_udp_free(udp: *mut xh_udp) -> xh_result {
    call_release("xh_udp_free", || {
        if udp.is_null() {
            return Ok(());
        }
        let e = UDP
            .remove(handle(udp))
            .map_err(|why| Failure::bad_handle("udp", Kind::Udp, why))?;
        e.detach();
        Ok(())
    })
}
