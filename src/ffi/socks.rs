//! Entry points on local SOCKS5 servers: start, address, stop, free.

use super::client::{Dependent, entry as client_entry, xh_client};
use super::handles::{Kind, Registry};
use super::result::{Failure, xh_result};
use super::{call, call_release, check_buffer, copy_text, non_null, put, text_arg};
use crate::api::Inbound;
use crate::proxy::socks::SocksOptions;
use std::ffi::c_char;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A local SOCKS5 server (RFC 1928; CONNECT and UDP ASSOCIATE; optional RFC 1929
/// username/password) whose flows go through its client: with VLESS configured, each
/// CONNECT is a VLESS TCP flow and each UDP ASSOCIATE app address one full-cone UDP
/// session (as `xh_client_connect_tcp` and `xh_client_open_udp`); without it, each CONNECT
/// is a raw tunnel and UDP ASSOCIATE is refused. An opaque handle like `xh_tunnel`.
/// Created by `xh_socks_start`, released by `xh_socks_free`; any thread.
#[allow(non_camel_case_types)]
pub struct xh_socks {
    _opaque: [u8; 0],
}

/// `xh_socks_start` flag: allow a listen address other than loopback without a username
/// and password (anyone who can reach it could then use the server).
pub const XH_SOCKS_ALLOW_OPEN: u32 = 1;

/// What a SOCKS handle names: the running server until it is stopped, and its address.
pub(crate) struct SocksEntry {
    inbound: Mutex<Option<Inbound>>,
    addr: SocketAddr,
}

impl SocksEntry {
    /// Stops the server and its flows; waits (a few seconds at most) for the listener to
    /// close, so its port is free when this returns. Idempotent.
    fn stop(&self) {
        let i = self
            .inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(i) = i {
            i.stop();
        }
    }
}

impl Dependent for SocksEntry {
    fn detach(&self) {
        self.stop();
    }
}

pub(crate) static SOCKS: Registry<SocksEntry> = Registry::new(Kind::Socks);

fn handle(p: *const xh_socks) -> usize {
    p.addr()
}

fn entry(p: *const xh_socks) -> Result<Arc<SocksEntry>, Failure> {
    SOCKS
        .get(handle(p))
        .map_err(|why| Failure::bad_handle("socks", Kind::Socks, why))
}

/// What `xh_socks_start` was asked for, checked.
#[derive(Debug)]
struct StartArgs {
    addr: SocketAddr,
    auth: Option<(String, String)>,
    allow_open: bool,
}

/// Checks what `xh_socks_start` is asked for (the same rules as the Rust API, reported as
/// `XH_RESULT_INVALID_ARGUMENT`): a listen address, credentials both given or both absent
/// (each 1-255 bytes, RFC 1929), and no server open to the network without them unless the
/// caller says so.
fn check_start(listen: &str, auth: Option<(&str, &str)>, flags: u32) -> Result<StartArgs, Failure> {
    if flags & !XH_SOCKS_ALLOW_OPEN != 0 {
        return Err(Failure::invalid(format!(
            "`flags` {flags:#x} has bits that are not XH_SOCKS_ALLOW_OPEN"
        )));
    }
    let addr: SocketAddr = listen.parse().map_err(|_| {
        Failure::invalid(format!(
            "`listen` {listen:?} is not ip:port (e.g. \"127.0.0.1:1080\", \"[::1]:0\")"
        ))
    })?;
    let allow_open = flags & XH_SOCKS_ALLOW_OPEN != 0;
    crate::proxy::socks::check_start(addr, auth, allow_open).map_err(|e| {
        Failure::invalid(match e {
            crate::Error::Config { field, .. } if field == "listen" => format!(
                "`listen` {addr} is not loopback: give a user and password, or pass \
                 XH_SOCKS_ALLOW_OPEN to serve anyone who can reach it"
            ),
            crate::Error::Config { field, rule } => format!("`{field}` {rule}"),
            e => e.to_string(),
        })
    })?;
    Ok(StartArgs {
        addr,
        auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        allow_open,
    })
}

/// Starts a SOCKS5 server for `client` on `listen` (`"127.0.0.1:1080"`, `"[::1]:0"`; port
/// 0 picks a free one, see `xh_socks_local_addr`) and sets `*out` to its handle. With `user`
/// and `pass` (both, or both NULL) every SOCKS client must give them. A listen address that
/// is not loopback needs them, or `XH_SOCKS_ALLOW_OPEN` in `flags`. The config's `policy`
/// sets its timeouts. A SOCKS client that speaks garbage gets its connection closed; the
/// server and its other flows carry on. Stopping or freeing it, or closing or freeing the
/// client, closes its flows. Several servers may run on one client. Any thread except the
/// library's own.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT` (the
/// last error names `listen`, `user`, `pass` or `flags`), `XH_RESULT_INVALID_HANDLE`,
/// `XH_RESULT_CLOSED` (the client is closed), `XH_RESULT_OTHER` (the address could not be
/// bound, e.g. the port is in use: the last error says so), `XH_RESULT_TOO_MANY_HANDLES`,
/// `XH_RESULT_WRONG_THREAD`.
///
/// # Safety
/// `listen` must be NULL or a NUL-terminated string; `user` and `pass` must each be NULL
/// or a NUL-terminated string; `out` must be NULL or valid for a write. The caller owns the
/// new handle and must pass it to `xh_socks_free` once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_socks_start(
    client: *const xh_client,
    listen: *const c_char,
    user: *const c_char,
    pass: *const c_char,
    flags: u32,
    out: *mut *mut xh_socks,
) -> xh_result {
    call("xh_socks_start", || {
        non_null(out, "out")?;
        // SAFETY: forwarded caller promises.
        let listen = unsafe { text_arg(listen, "listen") }?;
        let auth = match (user.is_null(), pass.is_null()) {
            (true, true) => None,
            // SAFETY: forwarded caller promises.
            (false, false) => Some(unsafe { (text_arg(user, "user")?, text_arg(pass, "pass")?) }),
            _ => {
                return Err(Failure::invalid(
                    "`user` and `pass` must both be given or both be NULL",
                ));
            }
        };
        let args = check_start(listen, auth, flags)?;
        let c = client_entry(client)?;
        let opts = SocksOptions {
            auth: args.auth,
            allow_open: args.allow_open,
            ..SocksOptions::from_policy(&c.client.dialer().config().policy)
        };
        let inbound = c.client.start_socks_with(args.addr, opts)?;
        let e = Arc::new(SocksEntry {
            addr: inbound.local_addr(),
            inbound: Mutex::new(Some(inbound)),
        });
        c.adopt(e.clone())?;
        let Some(h) = SOCKS.insert(e.clone()) else {
            e.stop();
            return Err(Failure::new(
                xh_result::TooManyHandles,
                "too many live SOCKS servers",
            ));
        };
        // SAFETY: `out` checked non-NULL; the caller vouches it is writable.
        unsafe { put(out, std::ptr::without_provenance_mut(h)) };
        Ok(())
    })
}

/// Writes the address the server listens on (`"127.0.0.1:40123"`, with the real port when
/// started on port 0) into `buf` with a NUL and sets `*out_len` to its length without the
/// NUL; `XH_ADDR_BUF_LEN` bytes always suffice. Never blocks; still answers after a stop.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT` (`len`
/// 0), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_BUFFER_TOO_SMALL` (nothing written).
///
/// # Safety
/// `buf` must be NULL or valid for writes of `len` bytes; `out_len` must be NULL or valid
/// for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_socks_local_addr(
    socks: *const xh_socks,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> xh_result {
    call("xh_socks_local_addr", || {
        check_buffer(buf, len, "buf")?;
        non_null(out_len, "out_len")?;
        let text = entry(socks)?.addr.to_string();
        // SAFETY: `buf` is valid for `len` bytes (caller's promise).
        let n = unsafe { copy_text(&text, buf, len) }?;
        // SAFETY: `out_len` checked non-NULL; the caller vouches it is writable.
        unsafe { put(out_len, n) };
        Ok(())
    })
}

/// Stops the server: it accepts no more connections, every flow it carries is closed (app
/// sockets and tunnels), and its port is free when this returns (it waits a few seconds at
/// most for that). The handle stays valid until `xh_socks_free`. Idempotent; any thread
/// except the library's own.
///
/// Returns `XH_RESULT_OK` (also for NULL, which is ignored, and for a server already
/// stopped) or `XH_RESULT_INVALID_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn xh_socks_stop(socks: *mut xh_socks) -> xh_result {
    call_release("xh_socks_stop", || {
        if socks.is_null() {
            return Ok(());
        }
        entry(socks)?.stop();
        Ok(())
    })
}

/// Releases the handle, stopping the server first (see `xh_socks_stop`); the handle, and
/// every copy of it, is invalid afterwards.
///
/// Returns `XH_RESULT_OK` (also for NULL, which is ignored) or `XH_RESULT_INVALID_HANDLE`
/// (already freed or not a SOCKS server: nothing was done).
#[unsafe(no_mangle)]
pub extern "C" fn xh_socks_free(socks: *mut xh_socks) -> xh_result {
    call_release("xh_socks_free", || {
        if socks.is_null() {
            return Ok(());
        }
        let e = SOCKS
            .remove(handle(socks))
            .map_err(|why| Failure::bad_handle("socks", Kind::Socks, why))?;
        e.stop();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_arguments_are_checked_before_anything_binds() {
        let bad = |listen: &str, auth: Option<(&str, &str)>, flags: u32| {
            let e = check_start(listen, auth, flags).unwrap_err();
            assert_eq!(e.code, xh_result::InvalidArgument, "{}", e.detail);
            e.detail
        };
        assert!(bad("localhost:1080", None, 0).contains("`listen`"));
        assert!(bad("127.0.0.1", None, 0).contains("`listen`"));
        assert!(bad("::1:1080", None, 0).contains("`listen`"));
        assert!(bad("0.0.0.0:1080", None, 0).contains("not loopback"));
        assert!(bad("127.0.0.1:0", Some(("", "p")), 0).contains("`user`"));
        let long = "x".repeat(256);
        assert!(bad("127.0.0.1:0", Some(("u", &long)), 0).contains("`pass`"));
        assert!(bad("127.0.0.1:0", None, 2).contains("`flags`"));
        assert!(check_start("127.0.0.1:0", None, 0).is_ok());
        assert!(check_start("[::1]:0", None, 0).is_ok());
        assert!(check_start("0.0.0.0:0", Some(("u", "p")), 0).is_ok());
        assert!(check_start("0.0.0.0:0", None, XH_SOCKS_ALLOW_OPEN).is_ok());
    }
}
