//! Entry points on tunnels: read, write, shut down the write side, addresses, close, free.

use super::handles::{Kind, Registry};
use super::result::{Failure, xh_result};
use super::{call, call_release, check_buffer, copy_text, non_null, put, timeout};
use crate::api::Tunnel;
use std::ffi::c_char;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A tunnel: one bidirectional byte stream through the server. An opaque handle: the
/// library never dereferences it, so any value may be passed safely (a wrong one gives
/// `XH_RESULT_INVALID_HANDLE`). Created by `xh_client_open` (raw) or
/// `xh_client_connect_tcp` (a VLESS TCP flow), released by
/// `xh_tunnel_free`; usable from any thread, by several threads at once (typically one
/// reading and one writing).
#[allow(non_camel_case_types)]
pub struct xh_tunnel {
    _opaque: [u8; 0],
}

/// What a tunnel handle names. The tunnel is taken out when it is closed (by the app or
/// its client), so a closed handle holds neither connections nor the runtime; calls
/// already running keep their own reference and see the close.
pub(crate) struct TunnelEntry {
    tunnel: Mutex<Option<Tunnel>>,
    local: SocketAddr,
    peer: SocketAddr,
}

impl TunnelEntry {
    pub(crate) fn new(t: Tunnel) -> TunnelEntry {
        TunnelEntry {
            local: t.local_addr(),
            peer: t.peer_addr(),
            tunnel: Mutex::new(Some(t)),
        }
    }

    /// The tunnel, unless it was closed.
    fn live(&self) -> Result<Tunnel, Failure> {
        self.tunnel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| crate::Error::Closed.into())
    }

    /// Closes the tunnel and lets go of it. Idempotent, never blocks.
    pub(crate) fn detach(&self) {
        let t = self.tunnel.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            t.close();
        }
    }
}

impl super::client::Dependent for TunnelEntry {
    fn detach(&self) {
        TunnelEntry::detach(self);
    }
}

pub(crate) static TUNNELS: Registry<TunnelEntry> = Registry::new(Kind::Tunnel);

fn handle(p: *const xh_tunnel) -> usize {
    p.addr()
}

fn entry(p: *const xh_tunnel) -> Result<Arc<TunnelEntry>, Failure> {
    TUNNELS
        .get(handle(p))
        .map_err(|why| Failure::bad_handle("tunnel", Kind::Tunnel, why))
}

/// Reads downloaded bytes into `buf` (at most `cap`) and sets `*out_read` to how many.
/// `*out_read == 0` with `XH_RESULT_OK` means the server ended the download (end of
/// stream); every later read says the same. Blocks until at least one byte or the end is
/// there, or `timeout_ms` runs out (`XH_TIMEOUT_INFINITE`: no limit; 0: return what is
/// already there without waiting). A close or free on another thread wakes it with
/// `XH_RESULT_CLOSED`. One reader at a time is the normal use; concurrent reads are safe
/// and each byte goes to exactly one of them.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT`
/// (`cap` is 0), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_CLOSED`, `XH_RESULT_TIMEOUT`
/// (nothing was read), `XH_RESULT_SERVER_STATUS` / `XH_RESULT_REQUEST_FAILED` /
/// `XH_RESULT_CONNECT_FAILED` (the tunnel failed; every later call says so too),
/// `XH_RESULT_WRONG_THREAD`.
///
/// # Safety
/// `buf` must be NULL or valid for writes of `cap` bytes, and not be used by anything
/// else during the call; `out_read` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_tunnel_read(
    tunnel: *const xh_tunnel,
    buf: *mut u8,
    cap: usize,
    timeout_ms: u32,
    out_read: *mut usize,
) -> xh_result {
    call("xh_tunnel_read", || {
        check_buffer(buf, cap, "buf")?;
        non_null(out_read, "out_read")?;
        let t = entry(tunnel)?.live()?;
        // SAFETY: `buf` is non-NULL, `cap` is in 1..=isize::MAX, and the caller vouches for
        // `cap` writable bytes used by nothing else during this call. They may be
        // uninitialised (fresh from malloc), hence `MaybeUninit`.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.cast::<MaybeUninit<u8>>(), cap) };
        let n = t.read_uninit(dst, timeout(timeout_ms))?;
        // SAFETY: `out_read` checked non-NULL; the caller vouches it is writable.
        unsafe { put(out_read, n) };
        Ok(())
    })
}

/// Queues bytes of `buf` for upload and sets `*out_written` to how many. Waits while the
/// upload is full, until all `len` bytes are queued or `timeout_ms` runs out
/// (`XH_TIMEOUT_INFINITE`: no limit; 0: queue what fits without waiting). If the timeout
/// runs out after some bytes were queued, the result is `XH_RESULT_OK` with
/// `*out_written < len`: send the rest later. A close or free on another thread wakes it
/// with `XH_RESULT_CLOSED`.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT` (`len`
/// is 0), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_CLOSED`, `XH_RESULT_TIMEOUT` (nothing was
/// queued), `XH_RESULT_WRITE_SHUTDOWN`, `XH_RESULT_SERVER_STATUS` /
/// `XH_RESULT_REQUEST_FAILED` / `XH_RESULT_CONNECT_FAILED` (the tunnel failed),
/// `XH_RESULT_WRONG_THREAD`.
///
/// # Safety
/// `buf` must be NULL or valid for reads of `len` bytes during the call; `out_written`
/// must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_tunnel_write(
    tunnel: *const xh_tunnel,
    buf: *const u8,
    len: usize,
    timeout_ms: u32,
    out_written: *mut usize,
) -> xh_result {
    call("xh_tunnel_write", || {
        check_buffer(buf, len, "buf")?;
        non_null(out_written, "out_written")?;
        let t = entry(tunnel)?.live()?;
        // SAFETY: `buf` is non-NULL, `len` is in 1..=isize::MAX, and the caller vouches for
        // `len` readable bytes for the duration of this call.
        let src = unsafe { std::slice::from_raw_parts(buf, len) };
        let n = t.write_some(src, timeout(timeout_ms))?;
        // SAFETY: `out_written` checked non-NULL; the caller vouches it is writable.
        unsafe { put(out_written, n) };
        Ok(())
    })
}

/// Ends the upload cleanly once everything queued is sent (the download goes on; in
/// `stream-up`/`stream-one` the request body is finished, in `packet-up` the last POSTs
/// are flushed). Waits only for a write running on another thread to finish queueing, at
/// most `timeout_ms` (`XH_TIMEOUT_INFINITE`: no limit). Idempotent.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_HANDLE`,
/// `XH_RESULT_CLOSED`, `XH_RESULT_TIMEOUT`, `XH_RESULT_SERVER_STATUS` /
/// `XH_RESULT_REQUEST_FAILED` / `XH_RESULT_CONNECT_FAILED` (the tunnel failed before),
/// `XH_RESULT_WRONG_THREAD`.
#[unsafe(no_mangle)]
pub extern "C" fn xh_tunnel_shutdown_write(tunnel: *const xh_tunnel, timeout_ms: u32) -> xh_result {
    call("xh_tunnel_shutdown_write", || {
        let t = entry(tunnel)?.live()?;
        t.shutdown_write_within(timeout(timeout_ms))?;
        Ok(())
    })
}

/// Writes the tunnel's local address (`"ip:port"`, `"[ipv6]:port"`) into `buf` with a NUL
/// and sets `*out_len` to its length without the NUL: the address its connection had when
/// the tunnel opened (a later `xh_client_network_changed` moves the connection but does
/// not change this answer). `XH_ADDR_BUF_LEN` bytes always suffice. Never blocks; still
/// answers after the tunnel is closed.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT` (`len`
/// is 0), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_BUFFER_TOO_SMALL` (nothing written).
///
/// # Safety
/// `buf` must be NULL or valid for writes of `len` bytes; `out_len` must be NULL or valid
/// for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_tunnel_local_addr(
    tunnel: *const xh_tunnel,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> xh_result {
    call("xh_tunnel_local_addr", || {
        // SAFETY: forwarded caller promises (see above).
        unsafe { addr_into(tunnel, buf, len, out_len, |e| e.local) }
    })
}

/// Like `xh_tunnel_local_addr`, for the server's address (the one the QUIC connection
/// carrying the tunnel talks to), in every mode.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT` (`len`
/// is 0), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_BUFFER_TOO_SMALL` (nothing written).
///
/// # Safety
/// As `xh_tunnel_local_addr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_tunnel_peer_addr(
    tunnel: *const xh_tunnel,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> xh_result {
    call("xh_tunnel_peer_addr", || {
        // SAFETY: forwarded caller promises (see above).
        unsafe { addr_into(tunnel, buf, len, out_len, |e| e.peer) }
    })
}

/// # Safety
/// `buf` valid for `len` bytes and `out_len` for a write, each when non-NULL.
unsafe fn addr_into(
    tunnel: *const xh_tunnel,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
    which: impl FnOnce(&TunnelEntry) -> SocketAddr,
) -> Result<(), Failure> {
    check_buffer(buf, len, "buf")?;
    non_null(out_len, "out_len")?;
    let text = which(&*entry(tunnel)?).to_string();
    // SAFETY: `buf` is valid for `len` bytes (caller's promise).
    let n = unsafe { copy_text(&text, buf, len) }?;
    // SAFETY: `out_len` checked non-NULL; the caller vouches it is writable.
    unsafe { put(out_len, n) };
    Ok(())
}

/// Closes the tunnel: a blocked read or write on any thread returns `XH_RESULT_CLOSED` at
/// once, an unfinished upload is reset (the server never sees it as complete), and the
/// connection slot is released. The handle stays valid, answering `XH_RESULT_CLOSED`,
/// until `xh_tunnel_free`. Idempotent; never blocks; any thread.
///
/// Returns `XH_RESULT_OK` (also for NULL, which is ignored, and for a tunnel already
/// closed) or `XH_RESULT_INVALID_HANDLE` (freed or not a tunnel: nothing was done).
#[unsafe(no_mangle)]
pub extern "C" fn xh_tunnel_close(tunnel: *mut xh_tunnel) -> xh_result {
    call_release("xh_tunnel_close", || {
        if tunnel.is_null() {
            return Ok(());
        }
        entry(tunnel)?.detach();
        Ok(())
    })
}

/// Releases the tunnel handle, closing the tunnel first (see `xh_tunnel_close`); the
/// handle, and every copy of it, is invalid afterwards. Safe while another thread is
/// blocked in a read or write on it: that call returns `XH_RESULT_CLOSED`. Never blocks
/// for long (when this lets go of the last reference to the library's runtime, it joins
/// its threads; see `xh_client_free`); any thread.
///
/// Returns `XH_RESULT_OK` (also for NULL, which is ignored) or `XH_RESULT_INVALID_HANDLE`
/// (already freed or not a tunnel: nothing was done, so a double free is harmless).
#[unsafe(no_mangle)]
pub extern "C" fn xh_tunnel_free(tunnel: *mut xh_tunnel) -> xh_result {
    call_release("xh_tunnel_free", || {
        if tunnel.is_null() {
            return Ok(());
        }
        let e = TUNNELS
            .remove(handle(tunnel))
            .map_err(|why| Failure::bad_handle("tunnel", Kind::Tunnel, why))?;
        e.detach();
        Ok(())
    })
}
