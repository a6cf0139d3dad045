//! Entry points on TUN data planes: start on a TUN fd or on a packet callback, input, stats,
//! stop, free.

use super::client::{Dependent, entry as client_entry, xh_client};
use super::handles::{Kind, Registry};
use super::result::{Failure, xh_result};
use super::{call, call_release, non_null, put};
use crate::tun::{PacketIo, Tun, TunOptions, TunStats};
use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex};

/// A TUN data plane: the device's IP packets in, every TCP connection and UDP socket
/// carried through its client as VLESS flows (TCP) and full-cone XUDP sessions (UDP), the
/// replies out as IP packets. An opaque handle like `xh_tunnel`. Created by
/// `xh_tun_start_fd` or `xh_tun_new_packets`, released by `xh_tun_free`; any thread.
#[allow(non_camel_case_types)]
pub struct xh_tun {
    _opaque: [u8; 0],
}

/// Receives one IP packet for the app (`xh_tun_new_packets`): `packet` is valid for `len`
/// bytes during the call only. Called on a thread of the TUN's own, one packet at a time,
/// never after `xh_tun_stop` returned. It should return quickly: while it blocks, packets
/// for the app queue (1024), then are dropped (counted in `dropped_output_full`). It must not
/// unwind.
#[allow(non_camel_case_types)]
pub type xh_tun_packet_callback =
    Option<unsafe extern "C" fn(ctx: *mut c_void, packet: *const u8, len: usize)>;

/// What a TUN has carried and dropped (`xh_tun_stats`). Counts since start; `*_flows` are
/// open now.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xh_tun_counters {
    /// TCP connections of the app being carried now.
    pub tcp_flows: u64,
    /// UDP sockets of the app being carried now.
    pub udp_flows: u64,
    pub tcp_flows_total: u64,
    pub udp_flows_total: u64,
    /// UDP datagrams and TCP connections to the virtual DNS address, redirected.
    pub dns_queries: u64,
    /// Payload bytes from the app / to the app.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// IP packets read from / written to the device.
    pub packets_in: u64,
    pub packets_out: u64,
    /// Flows ended to make room under `maxFlows`.
    pub flows_evicted: u64,
    /// TCP connections whose tunnel did not open or whose destination refused them (reset
    /// towards the app).
    pub flows_open_failed: u64,
    /// Packets dropped: not well-formed IPv4/IPv6 + TCP/UDP, or a bad checksum.
    pub dropped_malformed: u64,
    /// Packets dropped: larger than the MTU.
    pub dropped_oversized: u64,
    /// Packets dropped: IP fragments.
    pub dropped_fragment: u64,
    /// Packets dropped: ICMP and protocols other than TCP and UDP.
    pub dropped_protocol: u64,
    /// Packets dropped: IPv6 with `"ipv6": false`.
    pub dropped_ipv6_off: u64,
    /// Packets dropped: `xh_tun_input` while the input queue was full.
    pub dropped_input_full: u64,
    /// Packets dropped: for the app while the packet callback's queue was full.
    pub dropped_output_full: u64,
    /// UDP datagrams dropped: a flow's queue full, the session refused them, or a reply no
    /// packet can carry.
    pub dropped_udp: u64,
}

impl From<TunStats> for xh_tun_counters {
    fn from(s: TunStats) -> Self {
        xh_tun_counters {
            tcp_flows: s.tcp_flows,
            udp_flows: s.udp_flows,
            tcp_flows_total: s.tcp_flows_total,
            udp_flows_total: s.udp_flows_total,
            dns_queries: s.dns_queries,
            bytes_up: s.bytes_up,
            bytes_down: s.bytes_down,
            packets_in: s.packets_in,
            packets_out: s.packets_out,
            flows_evicted: s.flows_evicted,
            flows_open_failed: s.flows_open_failed,
            dropped_malformed: s.dropped.malformed,
            dropped_oversized: s.dropped.oversized,
            dropped_fragment: s.dropped.fragment,
            dropped_protocol: s.dropped.protocol,
            dropped_ipv6_off: s.dropped.ipv6_off,
            dropped_input_full: s.dropped.input_full,
            dropped_output_full: s.dropped.output_full,
            dropped_udp: s.dropped.udp,
        }
    }
}

/// What a TUN handle names: the running TUN until it is stopped, then its last counters.
pub(crate) struct TunEntry {
    tun: Mutex<Option<Tun>>,
    last: Mutex<TunStats>,
}

impl TunEntry {
    /// Stops the TUN and lets go of it (and of the runtime); keeps its counters. Idempotent.
    fn stop(&self) {
        let t = {
            let mut tun = self.tun.lock().unwrap_or_else(|p| p.into_inner());
            // The counters stay readable while the stop runs (it may wait seconds for a
            // blocked packet callback), not zero.
            if let Some(t) = tun.as_ref() {
                *self.last.lock().unwrap_or_else(|p| p.into_inner()) = t.stats();
            }
            tun.take()
        };
        if let Some(t) = t {
            t.stop();
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = t.stats();
        }
    }

    fn stats(&self) -> TunStats {
        match &*self.tun.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(t) => t.stats(),
            None => self.last.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

impl Dependent for TunEntry {
    fn detach(&self) {
        self.stop();
    }
}

pub(crate) static TUNS: Registry<TunEntry> = Registry::new(Kind::Tun);

fn handle(p: *const xh_tun) -> usize {
    p.addr()
}

fn entry(p: *const xh_tun) -> Result<Arc<TunEntry>, Failure> {
    TUNS.get(handle(p))
        .map_err(|why| Failure::bad_handle("TUN", Kind::Tun, why))
}

/// The options argument (NULL: every default), checked; a bad field is named.
///
/// # Safety
/// `options_json` must be NULL or a NUL-terminated string.
unsafe fn options(mtu: u32, options_json: *const c_char) -> Result<TunOptions, Failure> {
    let text = if options_json.is_null() {
        ""
    } else {
        // SAFETY: forwarded caller promise.
        unsafe { super::text_arg(options_json, "options_json") }?
    };
    TunOptions::from_json(mtu as usize, text).map_err(|e| match e {
        crate::Error::Config { field, rule } if field == "mtu" => {
            Failure::invalid(format!("`mtu` {rule}"))
        }
        crate::Error::Config { field, rule } => {
            Failure::invalid(format!("`options_json` field `{field}`: {rule}"))
        }
        e => Failure::invalid(format!("`options_json`: {e}")),
    })
}

/// Starts the TUN on `client` and registers it; shared by both starts.
fn start(client: *const xh_client, io: PacketIo, opts: TunOptions) -> Result<usize, Failure> {
    let c = client_entry(client)?;
    let tun = c.client.start_tun(io, opts)?;
    let e = Arc::new(TunEntry {
        tun: Mutex::new(Some(tun)),
        last: Mutex::new(TunStats::default()),
    });
    c.adopt(e.clone())?;
    TUNS.insert(e.clone()).ok_or_else(|| {
        e.stop();
        Failure::new(xh_result::TooManyHandles, "too many live TUNs")
    })
}

/// Starts a TUN on the TUN device `fd` (Linux, Android `VpnService`) whose packets are at
/// most `mtu` bytes (1280-65535), with `options_json` (NULL or a JSON object; see
/// docs/tun.md: `dnsAddress`, `dnsServer`, `maxFlows`, `udpIdle`, `tcpBuffer`, `ipv6`), and
/// sets `*out` to its handle. The client must carry VLESS. The library never closes `fd`: it
/// reads and writes a duplicate, closed by `xh_tun_stop` (so the device stays up until
/// then); the open file is switched to non-blocking mode. Stopping or freeing it, or
/// closing or freeing the client, ends every flow. Any thread except the library's own.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_ARGUMENT` (the last
/// error names `mtu` or the option field), `XH_RESULT_INVALID_CONFIG` (the client has no
/// VLESS), `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_CLOSED` (the client is closed),
/// `XH_RESULT_OTHER` (`fd` could not be duplicated or polled: the last error says why),
/// `XH_RESULT_TOO_MANY_HANDLES`, `XH_RESULT_WRONG_THREAD`.
///
/// # Safety
/// `options_json` must be NULL or a NUL-terminated string; `out` must be NULL or valid for
/// a write. The caller owns the new handle and must pass it to `xh_tun_free` once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_tun_start_fd(
    client: *const xh_client,
    fd: c_int,
    mtu: u32,
    options_json: *const c_char,
    out: *mut *mut xh_tun,
) -> xh_result {
    call("xh_tun_start_fd", || {
        non_null(out, "out")?;
        if fd < 0 {
            return Err(Failure::invalid(format!(
                "`fd` {fd} is not a file descriptor"
            )));
        }
        // SAFETY: forwarded caller promise.
        let opts = unsafe { options(mtu, options_json) }?;
        let h = start(client, PacketIo::Fd(fd), opts)?;
        // SAFETY: `out` checked non-NULL; the caller vouches it is writable.
        unsafe { put(out, std::ptr::without_provenance_mut(h)) };
        Ok(())
    })
}

/// The caller's context pointer, passed back to its callback from the TUN's thread.
struct Ctx(*mut c_void);
// SAFETY: the caller promises `ctx` is usable from any thread (see `xh_tun_new_packets`).
unsafe impl Send for Ctx {}
// SAFETY: as above.
unsafe impl Sync for Ctx {}

/// Starts a TUN fed by the app (iOS `NEPacketTunnelProvider.packetFlow`): packets from the
/// app go in through `xh_tun_input`, packets for the app come out through `out_cb` with
/// `ctx` (see `xh_tun_packet_callback`). `mtu`, `options_json` and the rest as
/// `xh_tun_start_fd`.
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT` (also a NULL `out_cb`),
/// `XH_RESULT_INVALID_ARGUMENT` (the last error names `mtu` or the option field),
/// `XH_RESULT_INVALID_CONFIG` (the client has no VLESS), `XH_RESULT_INVALID_HANDLE`,
/// `XH_RESULT_CLOSED` (the client is closed), `XH_RESULT_OTHER` (the output thread could
/// not start), `XH_RESULT_TOO_MANY_HANDLES`, `XH_RESULT_WRONG_THREAD`.
///
/// # Safety
/// As `xh_tun_start_fd`; `out_cb` must stay callable with `ctx`, and `ctx` usable from any
/// thread, until `xh_tun_stop` (or `xh_tun_free`, or the client's close) returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_tun_new_packets(
    client: *const xh_client,
    mtu: u32,
    options_json: *const c_char,
    out_cb: xh_tun_packet_callback,
    ctx: *mut c_void,
    out: *mut *mut xh_tun,
) -> xh_result {
    call("xh_tun_new_packets", || {
        non_null(out, "out")?;
        let Some(cb) = out_cb else {
            return Err(Failure::null("out_cb"));
        };
        // SAFETY: forwarded caller promise.
        let opts = unsafe { options(mtu, options_json) }?;
        let ctx = Ctx(ctx);
        let deliver = move |p: &[u8]| {
            let ctx = &ctx;
            // SAFETY: `cb` and `ctx` stay valid until the TUN stopped (caller's promise);
            // `p` is valid for its length during the call.
            unsafe { cb(ctx.0, p.as_ptr(), p.len()) }
        };
        let h = start(client, PacketIo::Callback(Box::new(deliver)), opts)?;
        // SAFETY: `out` checked non-NULL; the caller vouches it is writable.
        unsafe { put(out, std::ptr::without_provenance_mut(h)) };
        Ok(())
    })
}

/// Hands the TUN one IP packet from the app (`len` bytes at `packet`, copied before this
/// returns). Never blocks: while the input queue is full the packet is dropped and counted
/// (`dropped_input_full`), as a link would lose it; a malformed packet is counted and
/// dropped later. Any thread, including the packet callback's.
///
/// Returns `XH_RESULT_OK` (also for a packet dropped as above), `XH_RESULT_NULL_ARGUMENT`,
/// `XH_RESULT_INVALID_ARGUMENT` (`len` 0 or above 65535, or the TUN reads an fd),
/// `XH_RESULT_INVALID_HANDLE`, `XH_RESULT_CLOSED` (stopped).
///
/// # Safety
/// `packet` must be NULL or valid for reads of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_tun_input(
    tun: *const xh_tun,
    packet: *const u8,
    len: usize,
) -> xh_result {
    call("xh_tun_input", || {
        non_null(packet, "packet")?;
        if len == 0 || len > 65535 {
            return Err(Failure::invalid(format!(
                "`len` {len}: an IP packet is 1-65535 bytes"
            )));
        }
        // SAFETY: non-NULL, valid for `len` bytes (caller's promise), read during the call.
        let p = unsafe { std::slice::from_raw_parts(packet, len) };
        let e = entry(tun)?;
        let guard = e.tun.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = guard.as_ref() else {
            return Err(crate::Error::Closed.into());
        };
        t.input(p).map_err(|err| match err {
            crate::Error::Closed => err.into(),
            other => Failure::invalid(other.to_string()),
        })
    })
}

/// Writes the TUN's counters to `*out`. Never blocks; any thread; also after `xh_tun_stop`
/// (the counters at the stop).
///
/// Returns `XH_RESULT_OK`, `XH_RESULT_NULL_ARGUMENT`, `XH_RESULT_INVALID_HANDLE`.
///
/// # Safety
/// `out` must be NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xh_tun_stats(tun: *const xh_tun, out: *mut xh_tun_counters) -> xh_result {
    call("xh_tun_stats", || {
        non_null(out, "out")?;
        let s = entry(tun)?.stats();
        // SAFETY: `out` checked non-NULL; the caller vouches it is writable.
        unsafe { put(out, xh_tun_counters::from(s)) };
        Ok(())
    })
}

/// Stops the TUN: every flow ends (tunnels closed), the fd's duplicate is closed, and the
/// packet callback is not called again once this returns (it waits a few seconds at most
/// for a callback still running; called from inside the callback it does not wait). The
/// handle stays valid (stats still work) until `xh_tun_free`. Idempotent; any thread
/// except the library's own.
///
/// Returns `XH_RESULT_OK` (also for NULL, which is ignored, and for a TUN already stopped)
/// or `XH_RESULT_INVALID_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn xh_tun_stop(tun: *mut xh_tun) -> xh_result {
    call_release("xh_tun_stop", || {
        if tun.is_null() {
            return Ok(());
        }
        entry(tun)?.stop();
        Ok(())
    })
}

/// Releases the handle, stopping the TUN first (see `xh_tun_stop`); the handle, and every
/// copy of it, is invalid afterwards.
///
/// Returns `XH_RESULT_OK` (also for NULL, which is ignored) or `XH_RESULT_INVALID_HANDLE`
/// (already freed or not a TUN: nothing was done).
#[unsafe(no_mangle)]
pub extern "C" fn xh_tun_free(tun: *mut xh_tun) -> xh_result {
    call_release("xh_tun_free", || {
        if tun.is_null() {
            return Ok(());
        }
        let e = TUNS
            .remove(handle(tun))
            .map_err(|why| Failure::bad_handle("TUN", Kind::Tun, why))?;
        e.stop();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_name_the_argument_and_field() {
        let bad = |mtu: u32, json: &std::ffi::CStr| {
            // SAFETY: a valid C string.
            let e = unsafe { options(mtu, json.as_ptr()) }.unwrap_err();
            assert_eq!(e.code, xh_result::InvalidArgument, "{}", e.detail);
            e.detail
        };
        assert!(bad(100, c"{}").starts_with("`mtu`"));
        assert!(bad(1500, c"{\"maxFlows\": 0}").contains("`maxFlows`"));
        assert!(bad(1500, c"{\"bogus\": 1}").contains("`bogus`"));
        assert!(bad(1500, c"[").contains("`options_json`"));
        // SAFETY: NULL is allowed.
        assert!(unsafe { options(1500, std::ptr::null()) }.is_ok());
    }
}
