//! Entry points on clients: create, open tunnels and VLESS TCP flows, stats, close, free.
//! (UDP sessions and SOCKS servers are created in [`super::udp`] and [`super::socks`].)

use super::handles::{Kind, Registry};
use super::result::{Failure, xh_result};
use super::tunnel::{TUNNELS, TunnelEntry, xh_tunnel};
use super::{call, call_release, non_null, put, timeout};
use crate::api::Client;
use crate::api::Tunnel;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::{Arc, Mutex, Weak};

/// A client: one server config with its QUIC connections and its tunnels. An opaque
/// handle: the library never dereferences it, so any value may be passed safely (a wrong
/// one gives `XH_RESULT_INVALID_HANDLE`). Created by `xh_client_new`, released by
/// `xh_client_free`; usable from any thread, by several threads at once.
#[allow(non_camel_case_types)]
pub struct xh_client {
    _opaque: [u8; 0],
}

/// What `xh_client_probe` measured, in microseconds.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xh_probe {
    /// Name resolution, QUIC handshake and HTTP/3 setup of a fresh connection.
    pub connect_us: u64,
    /// From sending the mode's first request to its 200 response head.
    pub round_trip_us: u64,
}

/// What a client has done so far (`xh_client_stats`).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xh_stats {
    /// Bytes accepted for upload on this client's tunnels and flows (app payload: VLESS
    /// headers and XUDP framing are not counted).
    pub bytes_up: u64,
    /// Bytes read from this client's tunnels and flows (app payload).
    pub bytes_down: u64,
    /// Tunnels open now: the sum of the four counts below.
    pub open_tunnels: u64,
    /// QUIC connections open now.
    pub live_connections: u64,
    /// Of `open_tunnels`: raw tunnels (`xh_client_open`, or inbounds without VLESS).
    pub raw_tunnels: u64,
    /// Of `open_tunnels`: VLESS TCP flows (`xh_client_connect_tcp`, SOCKS CONNECT).
    pub tcp_flows: u64,
    /// Of `open_tunnels`: VLESS UDP flows to one destination each (UDP to ports 53 and
    /// 443, or `packetEncoding` not `xudp`).
    pub udp_flows: u64,
    /// Of `open_tunnels`: Mux.Cool tunnels carrying XUDP, one per UDP session.
    pub mux_tunnels: u64,
}

/// What a client's close must end besides the client itself: tunnels, UDP sessions and
/// SOCKS servers made through it (their handles then answer "closed" and no longer hold
/// the runtime).
pub(crate) trait Dependent: Send + Sync {
    /// Ends it and lets go of what it holds. Idempotent, never blocks for long.
    fn detach(&self);
}

/// What a client handle names: the client and what was made through it.
pub(crate) struct ClientEntry {
    pub(crate) client: Client,
    dependents: Mutex<Dependents>,
}

struct Dependents {
    closed: bool,
    list: Vec<Weak<dyn Dependent>>,
}

impl ClientEntry {
    /// Closes the client, its tunnels and its connections, and stops its SOCKS servers.
    /// Idempotent; blocks only while a SOCKS listener closes (bounded, see `xh_client_close`).
    fn close(&self) {
        self.client.close();
        let list = {
            let mut d = self.dependents.lock().unwrap_or_else(|p| p.into_inner());
            d.closed = true;
            std::mem::take(&mut d.list)
        };
        for d in list.iter().filter_map(Weak::upgrade) {
            d.detach();
        }
    }

    /// Records something just made through the client; a client closed meanwhile ends it
    /// at once.
    pub(crate) fn adopt(&self, d: Arc<dyn Dependent>) -> Result<(), Failure> {
        let mut deps = self.dependents.lock().unwrap_or_else(|p| p.into_inner());
        if deps.closed {
            drop(deps);
            d.detach();
            return Err(crate::Error::Closed.into());
        }
        deps.list.retain(|w| w.strong_count() > 0);
        deps.list.push(Arc::downgrade(&d));
        Ok(())
    }
}

pub(crate) static CLIENTS: Registry<ClientEntry> = Registry::new(Kind::Client);

fn handle(p: *const xh_client) -> usize {
    p.addr()
}

pub(crate) fn entry(p: *const xh_client) -> Result<Arc<ClientEntry>, Failure> {
    CLIENTS
        .get(handle(p))
        .map_err(|why| Failure::bad_handle("client", Kind::Client, why))
}

/// Creates a client from `config` (the library's JSON config, an Xray outbound object, a
/// whole Xray client config or a `vless://` share link; see the README) and sets `*out`
/// to its handle. Does no network I/O: the first tunnel connects.
/// Starts the library's runtime threads if no other client or tunnel is live.
///
/// Memory: the library JSON's `memoryLimits` (`streamReceiveWindow`,
/// `connectionReceiveWindow`, `sendWindow`, `downloadQueue`, `uploadQueue`, in bytes) bounds
/// what the client buffers; smaller windows cap a tunnel's throughput at about one stream
/// window per round trip (measured numbers: README, "Memory limits").
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT` (`config` or `out` NULL),
/// `XH_RESULT_INVALID_ARGUMENT` (`config` is not UTF-8), `XH_RESULT_INVALID_CONFIG` (not
/// JSON, or a field breaks a rule: the last error names it), `XH_RESULT_TOO_MANY_HANDLES`,
/// `XH_RESULT_OTHER` (the runtime could not start).
///
/// # Safety
/// `config` must be NULL or a NUL-terminated string; `out` must be NULL or valid for a
/// write. The caller owns the new handle and must pass it to `xh_client_free` once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_client_new(
    config: *const c_char,
    out: *mut *mut xh_client,
) -> xh_result {
    call("xh_client_new", || {
        non_null(config, "config")?;
        non_null(out, "out")?;
        // SAFETY: non-NULL and NUL-terminated (caller's promise); only read during this call.
        let bytes = unsafe { CStr::from_ptr(config) };
        let json = bytes
            .to_str()
            .map_err(|e| Failure::invalid(format!("`config` is not UTF-8: {e}")))?;
        let client = Client::from_json(json)?;
        let e = Arc::new(ClientEntry {
            client,
            dependents: Mutex::new(Dependents {
                closed: false,
                list: Vec::new(),
            }),
        });
        let h = CLIENTS
            .insert(e)
            .ok_or_else(|| Failure::new(xh_result::TooManyHandles, "too many live clients"))?;
        // SAFETY: `out` checked non-NULL; the caller vouches it is writable.
        unsafe { put(out, std::ptr::without_provenance_mut(h)) };
        Ok(())
    })
}

/// Opens one tunnel through `client` and sets `*out` to its handle. Blocks until the
/// tunnel's requests are sent (connecting first if needed) or `timeout_ms` runs out
/// (`XH_TIMEOUT_INFINITE`: no limit; 0 fails with `XH_RESULT_TIMEOUT` unless it can be
/// done without waiting, which opening practically never can). Any thread except the
/// library's own; several opens may run at once. A close or free of the client on another
/// thread wakes it at once with `XH_RESULT_CLOSED`, also while it is still connecting.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_HANDLE`,
/// `XH_RESULT_CLOSED` (the client is or was meanwhile closed), `XH_RESULT_TIMEOUT`,
/// `XH_RESULT_CONNECT_FAILED`, `XH_RESULT_REQUEST_FAILED`, `XH_RESULT_WRONG_THREAD`,
/// `XH_RESULT_TOO_MANY_HANDLES`.
///
/// # Safety
/// `out` must be NULL or valid for a write. The caller owns the new handle and must pass
/// it to `xh_tunnel_free` once (freeing the client does not free it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_client_open(
    client: *const xh_client,
    timeout_ms: u32,
    out: *mut *mut xh_tunnel,
) -> xh_result {
    call("xh_client_open", || {
        non_null(out, "out")?;
        let c = entry(client)?;
        let t = c.client.open(timeout(timeout_ms))?;
        // SAFETY: forwarded caller promise.
        unsafe { hand_out(&c, t, out) }
    })
}

/// Opens a VLESS TCP flow through `client` to `target` and sets `*out` to its handle: an
/// `xh_tunnel` whose reads and writes carry the flow's payload (the VLESS headers are the
/// library's business), used and released exactly like one from `xh_client_open`. The
/// client's config must carry VLESS (`vlessId`, an Xray VLESS outbound or a `vless://`
/// link). `target` is `"host:port"`, `"1.2.3.4:port"` or `"[v6]:port"`: the server
/// connects there. Blocks, and is woken, as `xh_client_open`. The request header goes out
/// with the first write (or alone 200 ms after the open, for protocols where the server
/// speaks first), as Xray's client sends it. Whether the server reached `target` shows
/// only as data or as the end of the download, as with Xray's own client.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT`
/// (`target` is not UTF-8 or not `host:port`: no port, port 0, an IPv6 address without
/// brackets, a host over 255 bytes; the last error names it), `XH_RESULT_INVALID_CONFIG`
/// (the config has no VLESS id), and the results of `xh_client_open`.
///
/// # Safety
/// `target` must be NULL or a NUL-terminated string; `out` must be NULL or valid for a
/// write. The caller owns the new handle and must pass it to `xh_tunnel_free` once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_client_connect_tcp(
    client: *const xh_client,
    target: *const c_char,
    timeout_ms: u32,
    out: *mut *mut xh_tunnel,
) -> xh_result {
    call("xh_client_connect_tcp", || {
        non_null(out, "out")?;
        // SAFETY: forwarded caller promise.
        let target = unsafe { super::target_arg(target, "target") }?;
        let c = entry(client)?;
        let t = c
            .client
            .connect_tcp(&target.to_string(), timeout(timeout_ms))?;
        // SAFETY: forwarded caller promise.
        unsafe { hand_out(&c, t, out) }
    })
}

/// Registers a new tunnel of `c` and writes its handle to `*out`.
///
/// # Safety
/// `out` non-NULL and valid for a write.
unsafe fn hand_out(c: &ClientEntry, t: Tunnel, out: *mut *mut xh_tunnel) -> Result<(), Failure> {
    let t = Arc::new(TunnelEntry::new(t));
    c.adopt(t.clone())?;
    let h = match TUNNELS.insert(t.clone()) {
        Some(h) => h,
        None => {
            t.detach();
            return Err(Failure::new(
                xh_result::TooManyHandles,
                "too many live tunnels",
            ));
        }
    };
    // SAFETY: `out` checked non-NULL by the caller, who vouches it is writable.
    unsafe { put(out, std::ptr::without_provenance_mut(h)) };
    Ok(())
}

/// Writes the client's counters to `*out`. Never blocks; any thread; also after
/// `xh_client_close`.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_HANDLE`.
///
/// # Safety
/// `out` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_client_stats(
    client: *const xh_client,
    out: *mut xh_stats,
) -> xh_result {
    call("xh_client_stats", || {
        non_null(out, "out")?;
        let s = entry(client)?.client.stats();
        let stats = xh_stats {
            bytes_up: s.bytes_up,
            bytes_down: s.bytes_down,
            open_tunnels: s.open_tunnels,
            live_connections: s.live_connections,
            raw_tunnels: s.raw_tunnels,
            tcp_flows: s.tcp_flows,
            udp_flows: s.udp_flows,
            mux_tunnels: s.mux_tunnels,
        };
        // SAFETY: `out` checked non-NULL; the caller vouches it is writable.
        unsafe { put(out, stats) };
        Ok(())
    })
}

/// Measures the config's latency (`*out`) on a connection of its own: the client's
/// connections, tunnels and counters are untouched. The request is the one a tunnel would
/// send first (the download GET, or stream-one's POST, whose body is reset afterwards).
/// Blocks up to `timeout_ms` (`XH_TIMEOUT_INFINITE`: no limit). Any thread except the
/// library's own.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_HANDLE`,
/// `XH_RESULT_CLOSED` (the client is or was meanwhile closed: a close or free on another
/// thread wakes the probe at once), `XH_RESULT_TIMEOUT`, `XH_RESULT_CONNECT_FAILED`,
/// `XH_RESULT_SERVER_STATUS` (the server answered non-200: the last error names the
/// status), `XH_RESULT_REQUEST_FAILED`, `XH_RESULT_WRONG_THREAD`.
///
/// # Safety
/// `out` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_client_probe(
    client: *const xh_client,
    timeout_ms: u32,
    out: *mut xh_probe,
) -> xh_result {
    call("xh_client_probe", || {
        non_null(out, "out")?;
        let p = entry(client)?.client.probe(timeout(timeout_ms))?;
        let (connect_us, round_trip_us) = p.micros();
        // SAFETY: `out` checked non-NULL; the caller vouches it is writable.
        unsafe {
            put(
                out,
                xh_probe {
                    connect_us,
                    round_trip_us,
                },
            )
        };
        Ok(())
    })
}

/// Receives each UDP socket the client creates, before anything is sent on it; returns
/// non-zero to let the client use it (e.g. once Android's `VpnService.protect(fd)`
/// succeeded), 0 to refuse it (that dial fails with `XH_RESULT_CONNECT_FAILED`). `fd`
/// stays owned by the library: do not close it. (An `int`, not `bool`: bindings such as
/// JNA map a foreign boolean to `int`.)
///
/// Runs on the thread that needs the socket: the app's own thread inside
/// `xh_client_open`, `xh_client_probe` or `xh_client_network_changed`, or one of the
/// library's runtime threads when a packet-up tunnel moves to a new connection (XMUX).
/// It must return quickly, must not block on anything another `xh_` call might wait for,
/// must not unwind, and must not call `xh_` functions: those return
/// `XH_RESULT_WRONG_THREAD` there. On Android, a runtime thread calling into the JVM must
/// attach itself and detach before returning.
#[allow(non_camel_case_types)]
pub type xh_protect_callback = Option<unsafe extern "C" fn(ctx: *mut c_void, fd: c_int) -> c_int>;

struct ProtectFn {
    cb: unsafe extern "C" fn(*mut c_void, c_int) -> c_int,
    ctx: *mut c_void,
}

impl ProtectFn {
    fn call(&self, fd: crate::transport::RawSocket) -> bool {
        // SAFETY: the app vouches for `cb` with `ctx` while installed (`xh_client_set_protect`).
        super::log::in_app_callback(|| unsafe { (self.cb)(self.ctx, fd as c_int) }) != 0
    }
}

// SAFETY: the header requires `ctx` to be usable from any thread while installed; the
// library only passes it back to the app's own callback.
unsafe impl Send for ProtectFn {}
// SAFETY: as above; concurrent dials call the callback concurrently, which the header
// allows.
unsafe impl Sync for ProtectFn {}

/// Installs (or with `cb` NULL, removes) `client`'s socket protect callback; `ctx` is
/// passed back to it. Sockets created from now on go through it; sockets already open are
/// not revisited (call `xh_client_network_changed` to move them to new, protected ones).
/// When this returns, no call of a replaced callback is running any more, so its `ctx`
/// may be freed; the same holds once `xh_client_close` or `xh_client_free` returns (they
/// drop the callback, waiting for a call of it in progress). Any thread except inside a
/// library callback.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_NULL_ARGUMENT` (NULL
/// client), `XH_RESULT_WRONG_THREAD` (from inside a callback).
///
/// # Safety
/// `cb`, if set, must be safe to call with `ctx` from any thread until it is replaced or
/// the client is closed or freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_client_set_protect(
    client: *const xh_client,
    cb: xh_protect_callback,
    ctx: *mut c_void,
) -> xh_result {
    call("xh_client_set_protect", || {
        non_null(client, "client")?;
        let c = entry(client)?;
        let protect = cb.map(|cb| {
            let f = ProtectFn { cb, ctx };
            Arc::new(move |fd: crate::transport::RawSocket| f.call(fd)) as crate::transport::Protect
        });
        c.client.set_protect(protect);
        Ok(())
    })
}

/// Tells the client that the device changed networks (Wi-Fi to cellular, a new VPN
/// underlay): every open QUIC connection of the client moves to a new UDP socket (passed
/// through the protect callback) and its tunnels carry on over the new path (QUIC
/// connection migration). A connection that cannot move is retired; new tunnels dial
/// afresh. Sets `*moved`, when `moved` is not NULL, to how many connections moved. Does
/// not block on the network. Any thread except the library's own.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT` (NULL client),
/// `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_WRONG_THREAD`.
///
/// # Safety
/// `moved` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_client_network_changed(
    client: *const xh_client,
    moved: *mut u32,
) -> xh_result {
    call("xh_client_network_changed", || {
        non_null(client, "client")?;
        let n = entry(client)?.client.network_changed()?;
        if !moved.is_null() {
            // SAFETY: non-NULL; the caller vouches it is writable.
            unsafe { put(moved, u32::try_from(n).unwrap_or(u32::MAX)) };
        }
        Ok(())
    })
}

/// Closes the client: every tunnel opened through it is closed (blocked reads and writes
/// on other threads return `XH_RESULT_CLOSED` at once, their handles answer
/// `XH_RESULT_CLOSED` until freed), its QUIC connections are closed, and later opens
/// fail with `XH_RESULT_CLOSED`. The handle stays valid (stats still work) until
/// `xh_client_free`. SOCKS servers started through the client are stopped too, and this
/// waits (at most about 3 s, normally milliseconds) for their listeners to close, so their
/// ports are free when it returns; otherwise it never blocks. Idempotent; any thread, also
/// while other threads use the client or its tunnels.
///
/// Returns `XH_RESULT_OK` (also for NULL, which is ignored, and for a client already
/// closed) or `XH_RESULT_INVALID_HANDLE` (freed or not a client: nothing was done).
#[unsafe(no_mangle)]
pub extern "C" fn xh_client_close(client: *mut xh_client) -> xh_result {
    call_release("xh_client_close", || {
        if client.is_null() {
            return Ok(());
        }
        entry(client)?.close();
        Ok(())
    })
}

/// Releases the client handle, closing the client first (see `xh_client_close`); the
/// handle, and every copy of it, is invalid afterwards. Tunnel handles of this client stay
/// valid, answer `XH_RESULT_CLOSED`, and must still be freed. When this frees the last
/// live client and no other call is running, the library's runtime threads are stopped
/// and joined before it returns (bounded: at most about 2 s, normally milliseconds).
/// Any thread, also while other threads are blocked on the client's tunnels.
///
/// Returns `XH_RESULT_OK` (also for NULL, which is ignored) or `XH_RESULT_INVALID_HANDLE`
/// (already freed or not a client: nothing was done, so a double free is harmless).
#[unsafe(no_mangle)]
pub extern "C" fn xh_client_free(client: *mut xh_client) -> xh_result {
    call_release("xh_client_free", || {
        if client.is_null() {
            return Ok(());
        }
        let e = CLIENTS
            .remove(handle(client))
            .map_err(|why| Failure::bad_handle("client", Kind::Client, why))?;
        e.close();
        // The last reference usually goes here (calls running on other threads keep
        // theirs until they return); with it the client, and perhaps the runtime.
        drop(e);
        Ok(())
    })
}
