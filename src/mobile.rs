//! The Kotlin/Swift surface, exported with uniffi: thin objects over [`crate::api`] that
//! only convert and delegate, like the C ABI in `ffi/`.
//!
//! Names: uniffi-generated Kotlin does not compile with a method named `close` or
//! `destroy` (uniffi#2955; the generated class already has them for freeing the object),
//! so ending a client, tunnel, UDP session or SOCKS server is `shutdown()`, and ending a TUN
//! is `stop()` (as `xh_tun_stop`). Freeing is the binding's own `close()` / `destroy()`
//! (Kotlin) or deinit (Swift); both are idempotent.
//!
//! Timeouts are milliseconds as in the C ABI: `XH_TIMEOUT_INFINITE` (u32::MAX) waits
//! without limit, 0 does not wait.

use crate::api;
use crate::error::Error;
use crate::proxy::socks::SocksOptions;
use crate::proxy::vless::Target;
use std::net::SocketAddr;
use std::sync::Arc;

/// Every failure, as one exception type with a kind and the library's text in `detail`
/// (which names the field, the status or the request). Not `message`: Kotlin exceptions
/// already have one, and a field of that name does not compile.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum XhException {
    #[error("{detail}")]
    Config { detail: String },
    #[error("{detail}")]
    ServerStatus { status: u16, detail: String },
    #[error("{detail}")]
    Request { detail: String },
    #[error("{detail}")]
    Connect { detail: String },
    #[error("{detail}")]
    Closed { detail: String },
    #[error("{detail}")]
    WriteShutdown { detail: String },
    #[error("{detail}")]
    Timeout { detail: String },
    #[error("{detail}")]
    WrongThread { detail: String },
    #[error("{detail}")]
    Other { detail: String },
}

impl From<Error> for XhException {
    fn from(e: Error) -> Self {
        let detail = e.to_string();
        match e {
            Error::Config { .. } => XhException::Config { detail },
            Error::Status { status, .. } => XhException::ServerStatus { status, detail },
            Error::Request { .. } => XhException::Request { detail },
            Error::Connect { .. } => XhException::Connect { detail },
            Error::Closed => XhException::Closed { detail },
            Error::WriteShutdown => XhException::WriteShutdown { detail },
            Error::Timeout(_) => XhException::Timeout { detail },
            Error::WrongThread | Error::ThreadExiting | Error::Forked => {
                XhException::WrongThread { detail }
            }
            Error::Other(_) => XhException::Other { detail },
        }
    }
}

type R<T> = Result<T, XhException>;

/// The bindings pass the socket as an `i32` file descriptor (what `RawSocket` is on unix).
#[allow(clippy::unnecessary_cast)]
fn fd_i32(fd: crate::transport::RawSocket) -> i32 {
    fd as i32
}

fn timeout(ms: u32) -> Option<std::time::Duration> {
    crate::ffi::timeout(ms)
}

/// A `host:port` argument (`target`), refused as a `Config` error naming it.
fn target_arg(target: &str) -> Result<Target, Error> {
    Target::parse(target).map_err(|e| Error::config("target", e.to_string()))
}

/// What a client has done so far. `open_tunnels` is the sum of the four counts after
/// `live_connections`.
#[derive(Debug, Clone, uniffi::Record)]
pub struct XhStats {
    /// App payload queued for upload (VLESS headers and XUDP framing not counted).
    pub bytes_up: u64,
    /// App payload read.
    pub bytes_down: u64,
    pub open_tunnels: u64,
    pub live_connections: u64,
    /// Raw tunnels (`open`, or SOCKS CONNECT without VLESS).
    pub raw_tunnels: u64,
    /// VLESS TCP flows (`connectTcp`, SOCKS CONNECT).
    pub tcp_flows: u64,
    /// VLESS UDP flows to one destination each (UDP to ports 53 and 443).
    pub udp_flows: u64,
    /// Mux.Cool tunnels carrying XUDP, one per UDP session in use.
    pub mux_tunnels: u64,
}

/// What a latency probe measured, in microseconds.
#[derive(Debug, Clone, uniffi::Record)]
pub struct XhProbe {
    pub connect_us: u64,
    pub round_trip_us: u64,
}

impl From<crate::tunnel::Probe> for XhProbe {
    fn from(p: crate::tunnel::Probe) -> Self {
        let (connect_us, round_trip_us) = p.micros();
        XhProbe {
            connect_us,
            round_trip_us,
        }
    }
}

/// Implemented by the app: called with each UDP socket the client creates, before use
/// (Android: return `VpnService.protect(fd)`). Runs on a library thread; must be quick.
/// An exception it throws refuses the socket, like `false`.
#[uniffi::export(with_foreign)]
pub trait SocketProtector: Send + Sync {
    fn protect(&self, fd: i32) -> Result<bool, XhException>;
}

/// Calls the app's protector; an exception (any kind: uniffi hands one that is not an
/// `XhException` over as `Other`) refuses the socket. A panic cannot come through a
/// `Result`-returning callback, but one must never unwind into the dial, so it is contained
/// all the same.
fn protect_contained(p: &dyn SocketProtector, fd: i32) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.protect(fd))) {
        Ok(Ok(protected)) => protected,
        Ok(Err(e)) => {
            log::warn!("the socket protector threw ({e}); socket refused");
            false
        }
        Err(_) => {
            log::warn!("the socket protector panicked; socket refused");
            false
        }
    }
}

/// A client for one server config: the library JSON, an Xray outbound, a whole Xray
/// config or a `vless://` link.
///
/// Memory: the library JSON's `memoryLimits` (`streamReceiveWindow`,
/// `connectionReceiveWindow`, `sendWindow`, `downloadQueue`, `uploadQueue`, in bytes) bounds
/// what the client buffers (an iOS network extension dies at about 50 MB); smaller windows
/// cap a tunnel's throughput at about one stream window per round trip (numbers: README,
/// "Memory limits").
#[derive(uniffi::Object)]
pub struct XhClient {
    inner: api::Client,
}

#[uniffi::export]
impl XhClient {
    #[uniffi::constructor]
    pub fn new(config: String) -> R<Arc<Self>> {
        Ok(Arc::new(XhClient {
            inner: api::Client::from_json(&config)?,
        }))
    }

    /// Like the constructor, with `memoryLimits` (a JSON object) given apart, for configs
    /// that cannot carry it (Xray outbounds and configs, `vless://` links).
    #[uniffi::constructor]
    pub fn with_memory_limits(config: String, memory_limits: String) -> R<Arc<Self>> {
        let mut cfg = crate::config::xray::import(&config)?;
        let v: serde_json::Value = serde_json::from_str(&memory_limits)
            .map_err(|e| Error::config("memoryLimits", format!("not valid JSON: {e}")))?;
        if cfg.limits != crate::config::MemoryLimits::default() {
            return Err(
                Error::config("memoryLimits", "is also set in the config; set it once").into(),
            );
        }
        cfg.limits = crate::config::MemoryLimits::from_json("memoryLimits", &v)?;
        Ok(Arc::new(XhClient {
            inner: api::Client::new(cfg)?,
        }))
    }

    /// Opens one tunnel in the configured mode.
    pub fn open(&self, timeout_ms: u32) -> R<Arc<XhTunnel>> {
        let t = self.inner.open(timeout(timeout_ms))?;
        Ok(Arc::new(XhTunnel { inner: t }))
    }

    /// Opens a VLESS TCP flow to `target` (`host:port`, `[v6]:port`) as a tunnel whose
    /// reads and writes are the flow's payload. The config must carry a VLESS id. A bad
    /// target is a `Config` error naming `target`.
    pub fn connect_tcp(&self, target: String, timeout_ms: u32) -> R<Arc<XhTunnel>> {
        target_arg(&target)?;
        let t = self.inner.connect_tcp(&target, timeout(timeout_ms))?;
        Ok(Arc::new(XhTunnel { inner: t }))
    }

    /// Opens a full-cone UDP session (see [`XhUdp`]). Does no network I/O: the first
    /// datagram to a destination opens the tunnel it needs. The config must carry a VLESS
    /// id. `shutdown()` of the client ends the session.
    pub fn open_udp(&self) -> R<Arc<XhUdp>> {
        Ok(Arc::new(XhUdp {
            inner: self.inner.open_udp(None)?,
        }))
    }

    /// Starts a local SOCKS5 server (CONNECT and UDP ASSOCIATE) on `listen` (`ip:port`;
    /// port 0 picks a free one, see `localAddr()`), its flows going through this client.
    /// With `user` and `pass` (both or neither, 1-255 bytes each) every SOCKS client must
    /// give them. A listen address that is not loopback needs them, or `allow_open`.
    /// Refused with a `Config` error naming `listen`, `user` or `pass`; a port in use is
    /// `Other`. Several may run on one client; `shutdown()` of the client stops them.
    pub fn start_socks(
        &self,
        listen: String,
        user: Option<String>,
        pass: Option<String>,
        allow_open: bool,
    ) -> R<Arc<XhSocksServer>> {
        let addr: SocketAddr = listen.parse().map_err(|_| {
            Error::config(
                "listen",
                format!("{listen:?} is not ip:port (e.g. \"127.0.0.1:1080\", \"[::1]:0\")"),
            )
        })?;
        let auth = match (user, pass) {
            (None, None) => None,
            (Some(u), Some(p)) => Some((u, p)),
            (Some(_), None) => return Err(Error::config("pass", "missing: `user` is given").into()),
            (None, Some(_)) => return Err(Error::config("user", "missing: `pass` is given").into()),
        };
        let opts = SocksOptions {
            auth,
            allow_open,
            ..SocksOptions::from_policy(&self.inner.dialer().config().policy)
        };
        let inbound = self.inner.start_socks_with(addr, opts)?;
        Ok(Arc::new(XhSocksServer {
            addr: inbound.local_addr().to_string(),
            inner: inbound,
        }))
    }

    pub fn stats(&self) -> XhStats {
        let s = self.inner.stats();
        XhStats {
            bytes_up: s.bytes_up,
            bytes_down: s.bytes_down,
            open_tunnels: s.open_tunnels,
            live_connections: s.live_connections,
            raw_tunnels: s.raw_tunnels,
            tcp_flows: s.tcp_flows,
            udp_flows: s.udp_flows,
            mux_tunnels: s.mux_tunnels,
        }
    }

    /// Latency of the config on a connection of its own (the pool is untouched).
    pub fn probe(&self, timeout_ms: u32) -> R<XhProbe> {
        Ok(self.inner.probe(timeout(timeout_ms))?.into())
    }

    /// The device changed networks: every connection moves to a new, protected socket.
    pub fn network_changed(&self) -> R<u32> {
        let n = self.inner.network_changed()?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Sets (or with `None`, removes) the socket protector. A protector that throws refuses
    /// the socket: the dial fails with `Connect`, the library carries on.
    pub fn set_protect(&self, protector: Option<Arc<dyn SocketProtector>>) {
        self.inner.set_protect(protector.map(|p| {
            Arc::new(move |fd: crate::transport::RawSocket| protect_contained(&*p, fd_i32(fd)))
                as crate::transport::Protect
        }));
    }

    /// Closes every tunnel and connection of this client. Idempotent, never blocks.
    pub fn shutdown(&self) {
        self.inner.close();
    }
}

/// One tunnel: a bidirectional byte stream.
#[derive(uniffi::Object)]
pub struct XhTunnel {
    inner: api::Tunnel,
}

#[uniffi::export]
impl XhTunnel {
    /// Up to `max` downloaded bytes; empty means the server ended the download.
    pub fn read(&self, max: u32, timeout_ms: u32) -> R<Vec<u8>> {
        let mut buf = vec![0u8; max.clamp(1, 1 << 20) as usize];
        let n = self.inner.read(&mut buf, timeout(timeout_ms))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Queues `data` for upload; returns how many bytes were queued (all of them unless
    /// the timeout ran out part-way).
    pub fn write(&self, data: Vec<u8>, timeout_ms: u32) -> R<u64> {
        Ok(self.inner.write_some(&data, timeout(timeout_ms))? as u64)
    }

    /// Ends the upload cleanly after everything queued is sent.
    pub fn shutdown_write(&self, timeout_ms: u32) -> R<()> {
        Ok(self.inner.shutdown_write_within(timeout(timeout_ms))?)
    }

    /// Ends the tunnel: blocked reads and writes fail with `Closed`. Idempotent, never
    /// blocks, any thread.
    pub fn shutdown(&self) {
        self.inner.close();
    }

    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    pub fn local_addr(&self) -> String {
        self.inner.local_addr().to_string()
    }

    pub fn peer_addr(&self) -> String {
        self.inner.peer_addr().to_string()
    }
}

// Suspend functions (Kotlin) and async methods (Swift) for the calls that wait. The work
// runs on the library's runtime, never on the caller's thread or dispatcher; the futures
// need no runtime of the caller's (uniffi polls them from Kotlin/Swift). What a cancelled
// call did is stated in `api.rs`'s module doc and in bindings/README.md.

/// The calls that wait, as suspend functions (Kotlin) and async methods (Swift), with the
/// same timeouts as their blocking twins. Kotlin: cancelling the coroutine cancels the
/// call. Swift: uniffi's async calls ignore task cancellation; a timeout or `shutdown()`
/// ends them. `shutdown()` of the client ends its pending `openAsync`/`probeAsync` (and,
/// closing its tunnels, their reads and writes) with `Closed` at once.
#[uniffi::export]
impl XhClient {
    /// `open` without blocking a thread. Cancelled, it opens nothing (a tunnel it already
    /// opened is closed).
    pub async fn open_async(&self, timeout_ms: u32) -> R<Arc<XhTunnel>> {
        let t = self.inner.open_async(timeout(timeout_ms)).await?;
        Ok(Arc::new(XhTunnel { inner: t }))
    }

    /// `connectTcp` without blocking a thread. Cancelled, it opens nothing (a flow it
    /// already opened is closed).
    pub async fn connect_tcp_async(&self, target: String, timeout_ms: u32) -> R<Arc<XhTunnel>> {
        target_arg(&target)?;
        let t = self
            .inner
            .connect_tcp_async(&target, timeout(timeout_ms))
            .await?;
        Ok(Arc::new(XhTunnel { inner: t }))
    }

    /// `probe` without blocking a thread.
    pub async fn probe_async(&self, timeout_ms: u32) -> R<XhProbe> {
        Ok(self.inner.probe_async(timeout(timeout_ms)).await?.into())
    }
}

#[uniffi::export]
impl XhTunnel {
    /// `read` without blocking a thread: up to `max` bytes, empty at the end of the
    /// download. Cancelled (or timed out), it took nothing: the tunnel stays usable.
    pub async fn read_async(&self, max: u32, timeout_ms: u32) -> R<Vec<u8>> {
        let max = max.clamp(1, 1 << 20) as usize;
        Ok(self.inner.read_async(max, timeout(timeout_ms)).await?)
    }

    /// `write` without blocking a thread: queues all of `data` and returns its size, or
    /// what was queued when the timeout ran out part-way. Cancelled: a write no larger than
    /// the upload queue (`memoryLimits.uploadQueue`) queued nothing and the tunnel stays
    /// usable; a larger one cancelled after its first part closes the tunnel (reads and
    /// writes then fail naming the count), so the server never takes the part for the whole.
    pub async fn write_async(&self, data: Vec<u8>, timeout_ms: u32) -> R<u64> {
        Ok(self.inner.write_async(data, timeout(timeout_ms)).await? as u64)
    }

    /// `shutdownWrite` without blocking a thread. Idempotent; a cancelled one may have
    /// taken effect.
    pub async fn shutdown_write_async(&self, timeout_ms: u32) -> R<()> {
        Ok(self.inner.shutdown_write_async(timeout(timeout_ms)).await?)
    }

    // The halves of a read and a write that a cancellation cannot split: a wait that takes
    // nothing, then a call that never waits. uniffi 0.32's Kotlin drops a suspend call's
    // result when the coroutine is cancelled after the call finished and before it was
    // handed over, so `readAsync`/`writeAsync` for Kotlin are built from these
    // (bindings/kotlin-ext); Swift never cancels and uses the two above.

    /// Waits until `tryRead` would return something: bytes, the end, or the failure.
    /// Takes nothing: cancelled or timed out, nothing is lost.
    pub async fn readable(&self, timeout_ms: u32) -> R<()> {
        Ok(self.inner.readable_async(timeout(timeout_ms)).await?)
    }

    /// Up to `max` bytes already downloaded, without waiting: `null` when none are there
    /// yet, empty at the end of the download.
    pub fn try_read(&self, max: u32) -> R<Option<Vec<u8>>> {
        let mut buf = vec![0u8; max.clamp(1, 1 << 20) as usize];
        match self.inner.try_read(&mut buf) {
            None => Ok(None),
            Some(r) => {
                buf.truncate(r?);
                Ok(Some(buf))
            }
        }
    }

    /// Waits until the upload queue has room for the next part of a `len`-byte write and
    /// returns the part's size (`len` when it fits the queue). Takes nothing.
    pub async fn writable(&self, len: u64, timeout_ms: u32) -> R<u64> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        Ok(self.inner.writable_async(len, timeout(timeout_ms)).await? as u64)
    }

    /// Queues all of `data` if there is room for it now (`true`), else nothing (`false`).
    /// Never waits.
    pub fn try_write(&self, data: Vec<u8>) -> R<bool> {
        Ok(self.inner.try_write(&data)?)
    }

    /// Ends the tunnel because a write in parts was cancelled after `queued` of its
    /// `total` bytes were queued: the server never takes the part for the whole.
    pub fn abort_write(&self, queued: u64, total: u64) {
        self.inner.abort_write(queued, total);
    }
}

/// One datagram received by [`XhUdp`], and its source: `ip:port`, `[v6]:port`, or
/// `name:port` when the server reports the name the datagram was sent to.
#[derive(Debug, Clone, uniffi::Record)]
pub struct XhDatagram {
    pub data: Vec<u8>,
    pub from: String,
}

/// A full-cone UDP session through the server: one object sends datagrams to any number of
/// destinations and receives datagrams from any source, as Xray's client carries UDP (XUDP
/// over Mux.Cool in one tunnel; a plain VLESS UDP flow per destination for ports 53 and
/// 443). Any thread, several at once.
#[derive(uniffi::Object)]
pub struct XhUdp {
    inner: api::UdpSession,
}

impl XhUdp {
    /// The destination and datagram of a send, refused as `Config` errors naming `target`
    /// (not `host:port`, port 0) or `data` (empty, over 8192 bytes).
    fn datagram_args(target: &str, data: &[u8]) -> Result<Target, Error> {
        let t = target_arg(target)?;
        crate::proxy::xudp::check_datagram(&t, data.len())
            .map_err(|e| Error::config("data", e.to_string()))?;
        Ok(t)
    }
}

#[uniffi::export]
impl XhUdp {
    /// Sends one datagram (1-8192 bytes) to `target` (`host:port`, `[v6]:port`). Returns
    /// once it is queued whole (opening the tunnel it needs first), or fails having queued
    /// none of it. As with any UDP, a queued datagram may still be lost on the way.
    pub fn send_to(&self, target: String, data: Vec<u8>, timeout_ms: u32) -> R<()> {
        let t = Self::datagram_args(&target, &data)?;
        Ok(self.inner.send_to_target(&t, &data, timeout(timeout_ms))?)
    }

    /// The next datagram from any source, whole. Timeout 0 takes only one already there.
    pub fn recv_from(&self, timeout_ms: u32) -> R<XhDatagram> {
        let (data, from) = self.inner.recv_from(timeout(timeout_ms))?;
        Ok(XhDatagram {
            data,
            from: from.to_string(),
        })
    }

    /// `sendTo` without blocking a thread. Cancelled, the datagram was queued whole or not
    /// at all.
    pub async fn send_to_async(&self, target: String, data: Vec<u8>, timeout_ms: u32) -> R<()> {
        let t = Self::datagram_args(&target, &data)?;
        Ok(self
            .inner
            .send_to_target_async(t, data, timeout(timeout_ms))
            .await?)
    }

    /// `recvFrom` without blocking a thread. Cancelled (or timed out), it took no datagram:
    /// the next receive gets it.
    pub async fn recv_from_async(&self, timeout_ms: u32) -> R<XhDatagram> {
        let (data, from) = self.inner.recv_from_async(timeout(timeout_ms)).await?;
        Ok(XhDatagram {
            data,
            from: from.to_string(),
        })
    }

    /// Ends the session and its tunnels: blocked sends and receives fail with `Closed`.
    /// Idempotent, never blocks, any thread.
    pub fn shutdown(&self) {
        self.inner.close();
    }

    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
}

/// A local SOCKS5 server started by [`XhClient::start_socks`]: with VLESS configured, each
/// CONNECT is a VLESS TCP flow and each UDP ASSOCIATE a full-cone UDP session; without it,
/// each CONNECT is a raw tunnel and UDP ASSOCIATE is refused.
#[derive(uniffi::Object)]
pub struct XhSocksServer {
    inner: api::Inbound,
    addr: String,
}

#[uniffi::export]
impl XhSocksServer {
    /// The address it listens on, with the real port when started on port 0. Still
    /// answers after `shutdown()`.
    pub fn local_addr(&self) -> String {
        self.addr.clone()
    }

    /// Stops the server: it accepts no more connections and closes every flow it carries;
    /// its port is free when this returns (it waits a few seconds at most). Idempotent;
    /// any thread.
    pub fn shutdown(&self) {
        self.inner.stop();
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.is_stopped()
    }
}

/// Implemented by the app: receives the IP packets for the app from an [`XhTun`] started by
/// `XhTun.packets` (iOS: pass them to `packetFlow.writePackets`).
///
/// Called on a thread of the TUN's own, one call per burst: every packet queued by then, up
/// to 64, in order. Batches because each call into the JVM through JNA costs far more than a
/// packet's copy (the thread is attached to the JVM for each call). It should return
/// quickly: while it blocks, packets for the app queue (1024), then are dropped (counted in
/// `dropped.outputFull`); the runtime and every flow carry on. An exception it throws drops
/// that batch (logged); the TUN carries on. Never called after `stop()` returned.
#[uniffi::export(with_foreign)]
pub trait XhPacketSink: Send + Sync {
    fn packets(&self, packets: Vec<Vec<u8>>) -> Result<(), XhException>;
}

/// An exception thrown by the app's [`XhPacketSink`] that is not an [`XhException`]: uniffi
/// hands it over as this error instead of a panic.
impl From<uniffi::UnexpectedUniFFICallbackError> for XhException {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        XhException::Other { detail: e.reason }
    }
}

/// What a TUN has carried and dropped ([`XhTun::stats`]); the names and meanings of
/// docs/tun.md, "Stats". `*Flows` are open now; the rest count since start.
#[derive(Debug, Clone, uniffi::Record)]
pub struct XhTunStats {
    pub tcp_flows: u64,
    pub udp_flows: u64,
    pub tcp_flows_total: u64,
    pub udp_flows_total: u64,
    /// UDP datagrams and TCP connections to the virtual DNS address, redirected.
    pub dns_queries: u64,
    /// Payload bytes from the app / to the app.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// IP packets from / to the app.
    pub packets_in: u64,
    pub packets_out: u64,
    /// Flows ended to make room under `maxFlows`.
    pub flows_evicted: u64,
    /// TCP flows whose tunnel did not open or whose destination refused them (reset
    /// towards the app).
    pub flows_open_failed: u64,
    pub dropped: XhTunDropped,
}

/// Packets and datagrams a TUN dropped, by reason (docs/tun.md, "Stats").
#[derive(Debug, Clone, uniffi::Record)]
pub struct XhTunDropped {
    /// Not well-formed IPv4/IPv6 + TCP/UDP, or a bad checksum.
    pub malformed: u64,
    /// Larger than the MTU.
    pub oversized: u64,
    /// IP fragments.
    pub fragment: u64,
    /// ICMP and protocols other than TCP and UDP.
    pub protocol: u64,
    /// IPv6 with `"ipv6": false`.
    pub ipv6_off: u64,
    /// Given to `input` while the input queue was full.
    pub input_full: u64,
    /// For the app while the sink had not taken the previous ones.
    pub output_full: u64,
    /// UDP datagrams not carried (a flow's queue full, refused, or no packet can carry it).
    pub udp: u64,
}

impl From<crate::tun::TunStats> for XhTunStats {
    fn from(s: crate::tun::TunStats) -> Self {
        let d = s.dropped;
        XhTunStats {
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
            dropped: XhTunDropped {
                malformed: d.malformed,
                oversized: d.oversized,
                fragment: d.fragment,
                protocol: d.protocol,
                ipv6_off: d.ipv6_off,
                input_full: d.input_full,
                output_full: d.output_full,
                udp: d.udp,
            },
        }
    }
}

/// A TUN data plane (docs/tun.md): the device's IP packets in, every TCP connection and UDP
/// socket carried through its client as VLESS flows and full-cone XUDP sessions, the
/// replies out as IP packets. The client must carry VLESS; its `shutdown()` stops the TUN.
/// Any thread.
///
/// `mtu` is the device's (1280-65535); `optionsJson` (`null` or empty: every default) is
/// docs/tun.md's object: `dnsAddress`, `dnsServer`, `maxFlows`, `udpIdle`, `tcpBuffer`,
/// `ipv6`. A bad one is a `Config` error naming `mtu` or the field.
#[derive(uniffi::Object)]
pub struct XhTun {
    inner: crate::tun::Tun,
}

impl XhTun {
    fn start(client: &XhClient, io: crate::tun::PacketIo, mtu: u32, options: &str) -> R<Arc<Self>> {
        let opts = crate::tun::TunOptions::from_json(mtu as usize, options)?;
        Ok(Arc::new(XhTun {
            inner: client.inner.start_tun(io, opts)?,
        }))
    }
}

#[uniffi::export]
impl XhTun {
    /// Starts on the TUN device `fd` (Android: `ParcelFileDescriptor.getFd()` of
    /// `VpnService.Builder.establish()`). The library reads and writes a duplicate of `fd`
    /// and never closes the caller's: keep the `ParcelFileDescriptor` open until `stop()`,
    /// then close it. A bad `fd` is a `Config` error naming `fd`; one that cannot be
    /// duplicated or polled is `Other`.
    #[uniffi::constructor(default(options_json = None))]
    pub fn start_fd(
        client: Arc<XhClient>,
        fd: i32,
        mtu: u32,
        options_json: Option<String>,
    ) -> R<Arc<Self>> {
        let io = crate::tun::PacketIo::Fd(fd);
        Self::start(&client, io, mtu, options_json.as_deref().unwrap_or(""))
    }

    /// Starts a TUN fed by the app (iOS: `NEPacketTunnelProvider.packetFlow`): packets from
    /// the app go in through `input`/`inputBatch`, packets for the app come out through
    /// `sink` (see [`XhPacketSink`]).
    #[uniffi::constructor]
    pub fn packets(
        client: Arc<XhClient>,
        mtu: u32,
        options_json: Option<String>,
        sink: Arc<dyn XhPacketSink>,
    ) -> R<Arc<Self>> {
        // A sink that throws on every batch must not flood the app's log from the data path:
        // the first failure is a warning, the rest debug.
        let warned = std::sync::atomic::AtomicBool::new(false);
        let out = move |batch: Vec<Vec<u8>>| {
            if let Err(e) = sink.packets(batch) {
                if warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    log::debug!("tun: the packet sink threw; its packets are dropped: {e}");
                } else {
                    log::warn!(
                        "tun: the packet sink threw; its packets are dropped (further failures are logged at debug): {e}"
                    );
                }
            }
        };
        let io = crate::tun::PacketIo::Batches(Box::new(out));
        Self::start(&client, io, mtu, options_json.as_deref().unwrap_or(""))
    }

    /// Hands the TUN one IP packet from the app (copied). Never blocks: while the input
    /// queue is full the packet is dropped and counted (`dropped.inputFull`), as a link
    /// would lose it; a malformed one is counted and dropped later. `Closed` once stopped;
    /// `Other` on a TUN started on an fd.
    pub fn input(&self, packet: Vec<u8>) -> R<()> {
        Ok(self.inner.input(&packet)?)
    }

    /// `input` for several packets in one call (one JNA call instead of one per packet).
    /// Stops at the first error, having handed over the packets before it.
    pub fn input_batch(&self, packets: Vec<Vec<u8>>) -> R<()> {
        for p in &packets {
            self.inner.input(p)?;
        }
        Ok(())
    }

    /// The counters; also after `stop()` (the counters at the stop).
    pub fn stats(&self) -> XhTunStats {
        self.inner.stats().into()
    }

    /// Stops the TUN: every flow ends (tunnels closed), the fd's duplicate is closed, and the
    /// sink is not called again once this returns (it waits a few seconds at most for a
    /// sink call still running; called from inside the sink it does not wait for itself).
    /// Idempotent; any thread.
    pub fn stop(&self) {
        self.inner.stop();
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.is_stopped()
    }
}

/// A log level for [`enable_platform_log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum XhLogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<XhLogLevel> for log::LevelFilter {
    fn from(l: XhLogLevel) -> Self {
        match l {
            XhLogLevel::Off => log::LevelFilter::Off,
            XhLogLevel::Error => log::LevelFilter::Error,
            XhLogLevel::Warn => log::LevelFilter::Warn,
            XhLogLevel::Info => log::LevelFilter::Info,
            XhLogLevel::Debug => log::LevelFilter::Debug,
            XhLogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Sends the library's log records of `level` and more severe to the platform's log:
/// logcat with tag `xhttp` on Android, the unified log (subsystem `dev.xhttpmobile`) on iOS.
/// Call again to change the level. Returns `false` where the platform has no log of its own
/// (a desktop JVM). Records never contain VLESS ids, pins, links, session ids or padding.
#[uniffi::export]
pub fn enable_platform_log(level: XhLogLevel) -> R<bool> {
    Ok(crate::platform_log::install(level.into())?)
}
